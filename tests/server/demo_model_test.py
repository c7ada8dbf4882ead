"""The built-in demo model: the server starts on it without --model and answers text
prompts with the continuations the training code (PyTorch, float64) computed."""
import json
import os
import subprocess
import unittest

import harness
from harness import pb


def demo_cases():
    with open(os.path.join(harness.DEMO_MODEL, "cases.json")) as handle:
        return json.load(handle)["cases"]


class DemoModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(None)  # no --model: the default

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_default_model_is_the_demo_model(self):
        info = self.server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        self.assertEqual(os.path.realpath(info.model_name), os.path.realpath(harness.DEMO_MODEL))
        self.assertTrue(info.has_tokenizer)
        with open(os.path.join(harness.DEMO_MODEL, "config.json")) as handle:
            config = json.load(handle)
        self.assertEqual((info.vocab_size, info.n_layer, info.n_embd),
                         (config["vocab_size"], config["n_layer"], config["n_embd"]))

    def test_text_prompts_continue_as_the_training_code_computed(self):
        for case in demo_cases():
            reply = self.server.stub.Generate(
                pb.GenerateRequest(text=case["text"], max_new_tokens=len(case["greedy"]), temperature=0.0,
                                   ignore_eos=True), timeout=30)
            self.assertEqual(list(reply.token_ids), case["greedy"], case["text"])
            self.assertEqual(reply.usage.prompt_tokens, len(case["prompt"]), case["text"])
            self.assertTrue(reply.text.strip())

    def test_cli_prints_text(self):
        case = demo_cases()[0]
        output = subprocess.run([harness.CLI, "generate", "--server", self.server.address, case["text"],
                                 "--max-new-tokens", str(len(case["greedy"])), "--ignore-eos"],
                                check=True, capture_output=True, text=True, timeout=60).stdout
        reply = self.server.stub.Generate(
            pb.GenerateRequest(text=case["text"], max_new_tokens=len(case["greedy"]), temperature=0.0,
                               ignore_eos=True), timeout=30)
        self.assertEqual(output.rstrip("\n"), reply.text)
        # The same on a local model: the CLI also defaults to the demo model and its tokenizer.
        local = subprocess.run([harness.CLI, "generate", case["text"], "--max-new-tokens", str(len(case["greedy"]))],
                               check=True, capture_output=True, text=True, timeout=120).stdout
        self.assertEqual(local.rstrip("\n"), reply.text)


if __name__ == "__main__":
    unittest.main()
