"""Prompt scoring, `moduleformer eval` and `moduleformer prune` on the demo model:
prompt_logprobs equal the training code's log-softmax (through gRPC, prefix cache or not),
eval's perplexity equals the training code's evaluation on the same text, and a pruned
checkpoint keeps the chosen experts' exact weights, loads in the server with its counts, and
scores its statistics' text as the full model does when nothing is removed."""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))
import checkpoint  # noqa: E402
import harness  # noqa: E402
import train  # noqa: E402
from harness import pb  # noqa: E402

CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
DEMO = os.path.join(ROOT, "models", "demo")
FORTUNES = "/usr/share/games/fortunes/computers"


def cli(*args, stdin=None):
    result = subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"moduleformer {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def perplexity_line(output):
    match = re.search(r"perplexity ([0-9.]+) over (\d+) tokens\n$", output)
    assert match, output
    return float(match.group(1)), int(match.group(2))


class EvalPruneTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.TemporaryDirectory()
        with open(FORTUNES, encoding="utf-8", errors="replace") as f:
            cls.text = f.read()[:6000]
        cls.text_file = os.path.join(cls.workdir.name, "text.txt")
        with open(cls.text_file, "w") as f:
            f.write(cls.text)
        cls.ids = json.loads(cli("tokenize", "--model", DEMO, stdin=cls.text))
        cls.model = checkpoint.load_model(DEMO, dtype=torch.float64)

    @classmethod
    def tearDownClass(cls):
        cls.workdir.cleanup()

    def test_eval_matches_the_training_codes_perplexity(self):
        loss, _ = train.evaluate(self.model, torch.tensor(self.ids), 128, torch.device("cpu"))
        expected = math.exp(loss)
        local = perplexity_line(cli("eval", "--model", DEMO, "--text-file", self.text_file, "--context", "129",
                                    "--stride", "128"))
        self.assertEqual(local[1], len(self.ids) - 1)
        self.assertLess(abs(local[0] / expected - 1), 1e-3, (local, expected))
        server = harness.Server(None)
        try:
            remote = perplexity_line(cli("eval", "--server", server.address, "--text-file", self.text_file,
                                         "--context", "129", "--stride", "128"))
        finally:
            server.close()
        self.assertEqual(remote[1], local[1])
        self.assertLess(abs(remote[0] / local[0] - 1), 1e-6)
        # Overlapping windows give every token more context: lower perplexity, same tokens.
        overlapping = perplexity_line(cli("eval", "--model", DEMO, "--text-file", self.text_file, "--context", "256",
                                          "--stride", "64"))
        self.assertEqual(overlapping[1], len(self.ids) - 1)
        self.assertLess(overlapping[0], local[0])

    def test_prompt_logprobs_equal_the_training_codes_log_softmax(self):
        prompt = self.ids[:40]
        with torch.no_grad():
            logits, _ = self.model(torch.tensor(prompt)[None])
        expected = torch.log_softmax(logits[0], dim=-1)
        server = harness.Server(None)
        try:
            for attempt in range(2):  # the second time the prompt's blocks are in the prefix cache
                reply = server.stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=1,
                                                                prompt_logprobs=3), timeout=60)
                self.assertEqual(len(reply.prompt_logprobs), len(prompt) - 1)
                self.assertEqual(reply.usage.cached_prompt_tokens, 0)
                for position, scored in enumerate(reply.prompt_logprobs, start=1):
                    self.assertEqual(scored.token_id, prompt[position])
                    self.assertAlmostEqual(scored.logprob, expected[position - 1, prompt[position]].item(), delta=2e-4)
                    top = torch.topk(expected[position - 1], 3)
                    self.assertEqual([t.token_id for t in scored.top], top.indices.tolist())
        finally:
            server.close()

    def test_prune_keeps_the_chosen_experts_and_loads_with_their_counts(self):
        server = harness.Server(None)
        try:
            cli("eval", "--server", server.address, "--text-file", self.text_file, "--context", "129", "--stride",
                "128", "--stats-tag", "computers")
            stats_json = cli("expert-stats", "--server", server.address, "--tag", "computers", "--json")
        finally:
            server.close()
        stats = json.loads(stats_json)
        windows = math.ceil((len(self.ids) - 1) / 128)  # each window re-runs the token before it
        self.assertEqual(stats["tokens"], len(self.ids) + windows - 1)
        stats_file = os.path.join(self.workdir.name, "stats.json")
        with open(stats_file, "w") as f:
            f.write(stats_json)
        out = os.path.join(self.workdir.name, "pruned")
        cli("prune", "--model", DEMO, "--stats", stats_file, "--out", out, "--keep-mlp", "0.5", "--keep-attention", "0.75")
        with open(os.path.join(out, "pruning.json")) as f:
            record = json.load(f)
        self.assertEqual(record["statistics"]["tokens"], stats["tokens"])
        self.assertEqual(record["statistics"]["stats_tag"], "computers")
        source = checkpoint.read_safetensors(os.path.join(DEMO, "model.safetensors"))
        pruned = checkpoint.read_safetensors(os.path.join(out, "model.safetensors"))
        self.assertEqual(set(source), set(pruned))
        for layer, kept in enumerate(record["kept_experts"]):
            counts = stats["layers"][layer]["mlp"]["counts"]
            self.assertEqual(len(kept["mlp"]), 4)
            self.assertEqual(len(kept["attention"]), 6)
            self.assertGreaterEqual(min(counts[e] for e in kept["mlp"]),
                                    max(c for e, c in enumerate(counts) if e not in kept["mlp"]))
            for name, experts in ((f"transformer.h.{layer}.mlpf.experts.weight", kept["mlp"]),
                                  (f"transformer.h.{layer}.mlpf.gate.w_gate.3.weight", kept["mlp"]),
                                  (f"transformer.h.{layer}.attn.q_proj.output_experts.weight", kept["attention"])):
                self.assertTrue(torch.equal(pruned[name], source[name][experts]), name)
        self.assertTrue(torch.equal(pruned["lm_head.weight"], source["lm_head.weight"]))
        self.assertTrue(os.path.exists(os.path.join(out, "tokenizer.json")))
        server = harness.Server(out)
        try:
            info = server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
            self.assertEqual([(layer.attention_experts, layer.mlp_experts) for layer in info.layers], [(6, 4)] * 4)
            self.assertGreater(len(server.stub.Generate(pb.GenerateRequest(text="Computers", max_new_tokens=8),
                                                        timeout=60).token_ids), 0)
        finally:
            server.close()
        random_out = os.path.join(self.workdir.name, "random")
        cli("prune", "--model", DEMO, "--stats", stats_file, "--out", random_out, "--keep-mlp", "0.5", "--random", "3")
        with open(os.path.join(random_out, "pruning.json")) as f:
            self.assertEqual(json.load(f)["random_seed"], 3)

    def test_pruning_nothing_scores_exactly_as_the_full_model(self):
        stats = {"tokens": 1, "stats_tag": "", "layers": [
            {"layer": layer, "attention": {"counts": [1] * 8}, "mlp": {"counts": [1] * 8}} for layer in range(4)]}
        stats_file = os.path.join(self.workdir.name, "uniform.json")
        with open(stats_file, "w") as f:
            json.dump(stats, f)
        out = os.path.join(self.workdir.name, "identity")
        cli("prune", "--model", DEMO, "--stats", stats_file, "--out", out)
        # One window at a time: with several in flight, which windows share a step depends on
        # timing, and the products of a different batch round differently in the last bits.
        window = ["--text-file", self.text_file, "--context", "129", "--stride", "128", "--parallel", "1"]
        full = cli("eval", "--model", DEMO, *window)
        same = cli("eval", "--model", out, *window)
        self.assertEqual(perplexity_line(full), perplexity_line(same))

    def test_bad_statistics_are_refused_naming_the_problem(self):
        stats_file = os.path.join(self.workdir.name, "short.json")
        with open(stats_file, "w") as f:
            json.dump({"layers": [{"layer": 0, "attention": {"counts": [1, 2]}, "mlp": {"counts": [1] * 8}}]}, f)
        result = subprocess.run([CLI, "prune", "--model", DEMO, "--stats", stats_file, "--out",
                                 os.path.join(self.workdir.name, "never")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("layer 0 attention has 2 counts; the checkpoint has 8 experts", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.workdir.name, "never", "model.safetensors")))


class PruningExampleTest(unittest.TestCase):
    def test_pruning_by_statistics_beats_random_pruning_on_text_of_the_same_kind(self):
        with tempfile.TemporaryDirectory() as workdir:
            results_file = os.path.join(workdir, "results.json")
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pruning_example.py"), "--quick", "--json",
                            results_file], check=True, timeout=900)
            with open(results_file) as f:
                results = json.load(f)
        row = results["pruned"][0]
        self.assertLess(row["by_statistics"]["bible"], row["random_mean"]["bible"])
        self.assertGreater(row["by_statistics"]["bible"], results["full"]["bible"])


if __name__ == "__main__":
    unittest.main()
