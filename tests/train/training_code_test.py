"""The demo model's training code (tools/train): its model against the original
implementation's fixtures, its tokenizer against the C++ one, and a whole small
train -> export -> `moduleformer verify` pipeline on the CPU."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))

import bpe  # noqa: E402
import checkpoint  # noqa: E402
import corpus  # noqa: E402
import make_cases  # noqa: E402
import modeling  # noqa: E402
import reference_test  # noqa: E402

CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
FIXTURES = os.environ.get("MF_FIXTURES_DIR", os.path.join(ROOT, "tests", "fixtures"))
DEMO = os.path.join(ROOT, "models", "demo")


class ReferenceFixtures(unittest.TestCase):
    def test_model_reproduces_every_fixture(self):
        root = os.path.join(FIXTURES, "reference")
        names = sorted(os.listdir(root))
        self.assertGreaterEqual(len(names), 3)
        for name in names:
            model = checkpoint.load_model(os.path.join(root, name), torch.float64)
            with open(os.path.join(root, name, "cases.json")) as handle:
                for index, case in enumerate(json.load(handle)["cases"]):
                    worst, errors = reference_test.check_case(model, case)
                    self.assertEqual(errors, [], f"{name} case {index}")
                    self.assertLess(worst, 1e-4)

    def test_stick_breaking_matches_the_definition(self):
        torch.manual_seed(0)
        q, k, v = (torch.randn(5, 3, dtype=torch.float64) for _ in range(3))
        logits = q @ k.T / 3 ** 0.5
        expected = torch.zeros(5, 3, dtype=torch.float64)
        for i in range(5):
            for j in range(i + 1):
                weight = torch.sigmoid(logits[i, j])
                for m in range(j + 1, i + 1):
                    weight = weight * (1 - torch.sigmoid(logits[i, m]))
                expected[i] += weight * v[j]
        torch.testing.assert_close(modeling.stick_breaking(q, k, v), expected)

    def test_mutual_information_loss_prefers_balanced_confident_routing(self):
        balanced = torch.eye(4, dtype=torch.float64).repeat(8, 1) * 0.97 + 0.01  # each token sure, all experts used
        collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]], dtype=torch.float64).repeat(32, 1)
        uniform = torch.full((32, 4), 0.25, dtype=torch.float64)
        loss = lambda probs: modeling.mutual_information_loss([[(probs, None, None)]]).item()  # noqa: E731
        self.assertLess(loss(balanced), loss(uniform))
        self.assertLess(loss(balanced), loss(collapsed))
        self.assertAlmostEqual(loss(uniform), 0.0, places=6)


class Tokenizer(unittest.TestCase):
    def test_training_learns_frequent_merges_and_round_trips(self):
        tokenizer = bpe.train(["the cat the hat the bat"] * 10 + ["naïve café ☕"], 300)
        # "at" and "he" both occur 30 times: the tie goes to the smaller pair; then "the" (30) beats " t" (20).
        self.assertEqual(tokenizer.merges[:3], [("a", "t"), ("h", "e"), ("t", "he")])
        for text in ["the cat", "naïve café ☕ \n\t x", "unseen words 123"]:
            self.assertEqual(tokenizer.decode(tokenizer.encode(text)), text)

    def test_demo_tokenizer_matches_the_server_tokenizer(self):
        tokenizer = bpe.Tokenizer.load(os.path.join(DEMO, "tokenizer.json"))
        text = "\n".join(corpus.fortunes()[:300]) + " In the beginning God created the heaven. Ünïcødé 😀 42!"
        cpp = subprocess.run([CLI, "tokenize", "--tokenizer", DEMO], input=text.encode(), check=True,
                             capture_output=True).stdout
        self.assertEqual(json.loads(cpp), tokenizer.encode(text))


class Pipeline(unittest.TestCase):
    def test_train_export_and_the_engine_agree(self):
        """A few CPU steps of train.py on a tiny corpus, exported; the C++ engine verifies its cases."""
        work = tempfile.mkdtemp(prefix="mf-train-")
        data, out = os.path.join(work, "data"), os.path.join(work, "model")
        os.makedirs(data)
        documents = corpus.fortunes()[:400]
        tokenizer = bpe.train(documents, 512)
        tokenizer.save(os.path.join(data, "tokenizer.json"))
        ids = []
        for document in documents:
            ids += tokenizer.encode(document) + [tokenizer.eos_id]
        np.array(ids[:-2000], dtype=np.uint16).tofile(os.path.join(data, "train.bin"))
        np.array(ids[-2000:], dtype=np.uint16).tofile(os.path.join(data, "validation.bin"))
        with open(os.path.join(data, "stats.json"), "w") as handle:
            json.dump({"vocab_size": tokenizer.vocab_size, "eos_token_id": tokenizer.eos_id,
                       "unigram_validation_perplexity": 0.0}, handle)
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train", "train.py"), "--data", data,
                        "--out", out, "--max-steps", "40", "--eval-every", "20", "--batch", "8", "--seq", "64",
                        "--n-layer", "2", "--n-embd", "32", "--ffd-hidden", "48", "--gating-size", "16",
                        "--experts", "4", "--warmup", "5", "--lr", "3e-3"], check=True, capture_output=True)
        with open(os.path.join(out, "training_log.jsonl")) as handle:
            log = [json.loads(line) for line in handle]
        self.assertLess(log[-1]["validation_loss"], np.log(tokenizer.vocab_size))  # it learned something
        with open(os.path.join(out, "training_summary.json")) as handle:
            summary = json.load(handle)
        self.assertEqual(len(summary["expert_selection"]), 4)  # 2 layers x 2 mixtures
        model = checkpoint.load_model(out, torch.float64)
        cases = [make_cases.make_case(model, tokenizer.encode(text), 4)
                 for text in ["The cat", "A", "Never", "What is", "Time flies", "I think"]]
        # Near ties may legitimately resolve differently in float32; the tool skips them the same way.
        cases = [c for c in cases if min(c["min_routing_logit_margin"], c["min_greedy_logit_margin"]) >= 1e-3]
        self.assertGreater(len(cases), 0)
        with open(os.path.join(out, "cases.json"), "w") as handle:
            json.dump({"cases": cases}, handle)
        verify = subprocess.run([CLI, "verify", "--model", out, "--cases", os.path.join(out, "cases.json")],
                                capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)


if __name__ == "__main__":
    unittest.main()
