"""The OpenAI-compatible API through the official `openai` npm client: starts the server on
the demo model with an API key, computes with gRPC Generate what the same requests must
return, and runs tests/openai_client/openai_client.test.mjs (node:test) against it."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import harness
from harness import pb

CLIENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "openai_client")
PROMPT = "The best thing about computers is"
API_KEY = "client-test-key"


class OpenAiClientTest(unittest.TestCase):
    def test_official_openai_client(self):
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is missing: run scripts/setup.sh")
        self.assertTrue(os.path.isdir(os.path.join(CLIENT_DIR, "node_modules", "openai")),
                        "the openai npm package is missing: run scripts/setup.sh")
        workdir = tempfile.TemporaryDirectory()
        self.addCleanup(workdir.cleanup)
        key_file = os.path.join(workdir.name, "keys")
        with open(key_file, "w") as f:
            f.write(API_KEY + "\n")
        server = harness.Server(None, "--api-key-file", key_file)
        self.addCleanup(server.close)
        metadata = [("authorization", f"Bearer {API_KEY}")]

        def generate(text, max_tokens, **sampling):
            request = pb.GenerateRequest(text=text, max_new_tokens=max_tokens, **sampling)
            return server.stub.Generate(request, timeout=60, metadata=metadata)

        chat_prompt = "System: You answer briefly.\n\nUser: Name a colour.\n\nAssistant:"  # the plain template
        chat = generate(chat_prompt, 16, temperature=0.0)
        expected = {
            "prompt": PROMPT,
            "greedy_completion": generate(PROMPT, 24, temperature=0.0).text,
            "seeded_completion": generate(PROMPT, 16, temperature=0.9, top_p=0.95, seed=123).text,
            "greedy_chat": chat.text,
            "chat_prompt_tokens": chat.usage.prompt_tokens,
        }
        expected_file = os.path.join(workdir.name, "expected.json")
        with open(expected_file, "w") as f:
            json.dump(expected, f)
        env = dict(os.environ, MF_OPENAI_BASE_URL=f"http://127.0.0.1:{server.http_port}/v1",
                   MF_METRICS_URL=f"http://127.0.0.1:{server.metrics_port}/metrics", MF_API_KEY=API_KEY,
                   MF_EXPECTED_FILE=expected_file)
        result = subprocess.run([node, "--test", "--test-reporter=spec", "openai_client.test.mjs"], cwd=CLIENT_DIR,
                                env=env, capture_output=True, text=True, timeout=300)
        print(result.stdout[-6000:], result.stderr[-3000:])
        self.assertEqual(result.returncode, 0, "openai client tests failed (output above)")
        self.assertRegex(result.stdout, r"pass 10\n.*fail 0")


if __name__ == "__main__":
    unittest.main()
