"""The OpenAI-compatible HTTP API (`--http-port`) against the real server on the demo
model, with a plain HTTP client: completions and chat whole and streamed equal to gRPC
Generate, logprobs equal to gRPC's, echo, n, errors in OpenAI's schema, models, health,
the request log, and disconnects (streamed or not) freeing the request.
(tests/openai_client/ drives the same API with the official `openai` client.)"""
import http.client
import json
import os
import signal
import socket
import ssl
import tempfile
import time
import unittest

import harness
from harness import pb

PROMPT = "The best thing about computers is"


class OpenAiHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.log_dir = tempfile.TemporaryDirectory()
        cls.request_log = os.path.join(cls.log_dir.name, "requests.jsonl")
        cls.server = harness.Server(None, "--request-log", cls.request_log)  # the built-in demo model

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.log_dir.cleanup()

    def log_lines(self, rpc):
        with open(self.request_log) as f:
            return [line for line in map(json.loads, f) if line["rpc"] == rpc]

    def post(self, path, body, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=60)
        try:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
            reply = connection.getresponse()
            return reply.status, reply.read().decode()
        finally:
            connection.close()

    def get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=10)
        try:
            connection.request("GET", path)
            reply = connection.getresponse()
            return reply.status, reply.read().decode()
        finally:
            connection.close()

    def grpc_text(self, max_tokens, **extra):
        request = pb.GenerateRequest(text=PROMPT, max_new_tokens=max_tokens, **extra)
        return self.server.stub.Generate(request, timeout=60).text

    def test_greedy_completion_equals_grpc_generate(self):
        status, body = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "temperature": 0})
        self.assertEqual(status, 200, body)
        reply = json.loads(body)
        self.assertEqual(reply["object"], "text_completion")
        self.assertEqual(reply["model"], "demo")
        self.assertEqual(reply["choices"][0]["text"], self.grpc_text(24, temperature=0.0))
        self.assertEqual(reply["choices"][0]["finish_reason"], "length")
        self.assertEqual(reply["usage"]["completion_tokens"], 24)
        self.assertEqual(reply["usage"]["total_tokens"], reply["usage"]["prompt_tokens"] + 24)

    def test_streamed_deltas_concatenate_to_the_same_text_and_end_with_done(self):
        status, body = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "temperature": 0,
                                                     "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200, body)
        events = [line[len("data: "):] for line in body.split("\n") if line.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(event) for event in events[:-1]]
        text = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
        self.assertEqual(text, self.grpc_text(24, temperature=0.0))
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 24)
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1], "length")

    def test_seeded_sampling_is_reproducible_and_stop_strings_apply(self):
        body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 42}
        first, second = (json.loads(self.post("/v1/completions", body)[1]) for _ in range(2))
        self.assertEqual(first["choices"][0]["text"], second["choices"][0]["text"])
        self.assertEqual(first["choices"][0]["text"], self.grpc_text(20, temperature=0.9, top_p=0.9, seed=42))
        greedy = self.grpc_text(24, temperature=0.0)
        stop = greedy.split()[2]
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "temperature": 0,
                                                      "stop": [stop]})
        self.assertEqual(status, 200, reply)
        choice = json.loads(reply)["choices"][0]
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(choice["text"], greedy[:greedy.index(stop)])

    def test_bad_fields_get_openai_errors_naming_them(self):
        cases = [({"prompt": PROMPT, "max_tokens": -1}, 400, "max_tokens"),
                 ({"prompt": PROMPT, "max_tokens": "ten"}, 400, "max_tokens"),
                 ({"prompt": PROMPT, "temperature": -1}, 400, "temperature"),
                 ({"prompt": PROMPT, "top_p": 2}, 400, "top_p"),
                 ({"prompt": PROMPT, "n": 17}, 400, "n"),
                 ({"prompt": PROMPT, "logprobs": 21}, 400, "logprobs"),
                 ({"prompt": PROMPT, "suffix": "x"}, 400, "suffix"),
                 ({"prompt": PROMPT, "logit_bias": {"50256": -100}}, 400, "logit_bias"),
                 ({"prompt": PROMPT, "stop": 5}, 400, "stop"),
                 ({"max_tokens": 4}, 400, "prompt"),
                 ({"prompt": PROMPT, "max_tokens": 100000}, 400, "max_tokens"),
                 ({"prompt": PROMPT, "model": "gpt-4"}, 404, "model")]
        for body, status, param in cases:
            with self.subTest(body=body):
                got, reply = self.post("/v1/completions", body)
                self.assertEqual(got, status, reply)
                error = json.loads(reply)["error"]
                self.assertEqual(error["param"], param)
                self.assertTrue(error["message"].startswith(param), error["message"])
                self.assertEqual(error["type"], "invalid_request_error")
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "model": "demo", "max_tokens": 2})
        self.assertEqual(status, 200, reply)

    def test_chat_errors_name_the_field(self):
        user = [{"role": "user", "content": "Hi"}]
        cases = [({}, "messages"), ({"messages": []}, "messages"), ({"messages": [{"content": "no role"}]}, "messages[0]"),
                 ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                  "messages[0].content[0]"),
                 ({"messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
                 ({"messages": user, "response_format": {"type": "json_object"}}, "response_format"),
                 ({"messages": user, "top_logprobs": 2}, "top_logprobs"),
                 ({"messages": user, "max_completion_tokens": 0}, "max_completion_tokens"),
                 ({"messages": user, "stream_options": {"include_usage": True}}, "stream_options")]
        for body, param in cases:
            with self.subTest(body=body):
                status, reply = self.post("/v1/chat/completions", body)
                self.assertEqual(status, 400, reply)
                self.assertEqual(json.loads(reply)["error"]["param"], param)

    def test_chat_renders_the_plain_template_and_equals_grpc_generate(self):
        messages = [{"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "colour."}]}]
        status, reply = self.post("/v1/chat/completions", {"messages": messages, "max_tokens": 12, "temperature": 0})
        self.assertEqual(status, 200, reply)
        reply = json.loads(reply)
        self.assertEqual(reply["object"], "chat.completion")
        rendered = "System: You answer briefly.\n\nUser: Name a\ncolour.\n\nAssistant:"
        expected = self.server.stub.Generate(pb.GenerateRequest(text=rendered, max_new_tokens=12, temperature=0.0),
                                             timeout=60)
        self.assertEqual(reply["choices"][0]["message"], {"role": "assistant", "content": expected.text})
        self.assertEqual(reply["usage"]["prompt_tokens"], expected.usage.prompt_tokens)

    def test_logprobs_equal_grpc_and_follow_each_api_format(self):
        expected = self.server.stub.Generate(pb.GenerateRequest(text=PROMPT, max_new_tokens=6, temperature=0.0,
                                                                logprobs=3), timeout=60)
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 3})
        self.assertEqual(status, 200, reply)
        logprobs = json.loads(reply)["choices"][0]["logprobs"]
        self.assertEqual(len(logprobs["tokens"]), 6)
        for got, want in zip(logprobs["token_logprobs"], expected.logprobs):
            self.assertAlmostEqual(got, want.logprob, places=5)
        self.assertTrue(all(len(top) <= 3 for top in logprobs["top_logprobs"]))
        self.assertEqual("".join(logprobs["tokens"]), json.loads(reply)["choices"][0]["text"])
        offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(6)]
        self.assertEqual(logprobs["text_offset"], offsets)
        status, reply = self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}],
                                                           "max_tokens": 4, "logprobs": True, "top_logprobs": 2})
        content = json.loads(reply)["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), 4)
        for entry in content:
            self.assertEqual(len(entry["top_logprobs"]), 2)
            self.assertEqual(bytes(entry["bytes"]).decode("utf-8", "replace"), entry["token"])
            self.assertGreaterEqual(entry["top_logprobs"][0]["logprob"], entry["top_logprobs"][1]["logprob"])

    def test_echo_with_logprobs_scores_the_prompt_as_grpc_does(self):
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                      "echo": True, "logprobs": 2})
        self.assertEqual(status, 200, reply)
        reply = json.loads(reply)
        logprobs = reply["choices"][0]["logprobs"]
        prompt_tokens = reply["usage"]["prompt_tokens"]
        self.assertEqual(len(logprobs["tokens"]), prompt_tokens + 4)
        self.assertEqual("".join(logprobs["tokens"]), reply["choices"][0]["text"])
        self.assertIsNone(logprobs["token_logprobs"][0])
        self.assertIsNone(logprobs["top_logprobs"][0])
        scored = self.server.stub.Generate(pb.GenerateRequest(text=PROMPT, max_new_tokens=1, prompt_logprobs=2),
                                           timeout=60).prompt_logprobs
        self.assertEqual(len(scored), prompt_tokens - 1)
        for got, want in zip(logprobs["token_logprobs"][1:prompt_tokens], scored):
            self.assertAlmostEqual(got, want.logprob, places=5)
        self.assertEqual(logprobs["text_offset"][:2], [0, len(logprobs["tokens"][0])])

    def test_echo_and_several_choices(self):
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "echo": True, "temperature": 0})
        self.assertEqual(json.loads(reply)["choices"][0]["text"], PROMPT + self.grpc_text(5, temperature=0.0))
        status, reply = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "n": 3, "seed": 7,
                                                      "temperature": 1.0, "ignore_eos": True})
        reply = json.loads(reply)
        self.assertEqual([c["index"] for c in reply["choices"]], [0, 1, 2])
        for i, choice in enumerate(reply["choices"]):  # choice i is seeded with seed + i
            self.assertEqual(choice["text"], self.grpc_text(8, temperature=1.0, seed=7 + i, ignore_eos=True))
        self.assertEqual(reply["usage"]["completion_tokens"], 24)

    def test_a_client_leaving_a_whole_response_cancels_it(self):
        idle = self.server.wait_idle().kv_blocks_used
        before = len(self.log_lines("http.completions"))
        with socket.create_connection(("127.0.0.1", self.server.http_port)) as client:
            body = json.dumps({"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True}).encode()
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.time() + 10
            while self.server.load().running_requests != 1 and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(self.server.load().running_requests, 1)
        load = self.server.wait_idle()
        self.assertEqual(load.kv_blocks_used, idle)
        deadline = time.time() + 5
        while len(self.log_lines("http.completions")) == before and time.time() < deadline:
            time.sleep(0.05)
        line = self.log_lines("http.completions")[-1]
        self.assertEqual(line["code"], "CANCELLED")
        self.assertLess(line["completion_tokens"], 3000)

    def test_deeply_nested_json_is_refused_not_a_crash(self):
        deep = "[" * 200000 + "]" * 200000
        for path, body in (("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi", "x": %s}]}' % deep),
                           ("/v1/completions", '{"prompt": %s}' % deep)):
            connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            self.assertEqual(reply.status, 400)
            self.assertIn("nested deeper than 64 levels", json.loads(reply.read())["error"]["message"])
            connection.close()
        self.assertEqual(self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 2})[0], 200)

    def test_models_and_health(self):
        status, body = self.get("/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual([m["id"] for m in json.loads(body)["data"]], ["demo"])
        self.assertEqual(self.get("/health")[0], 200)
        self.assertEqual(self.get("/nowhere")[0], 404)

    def test_a_disconnect_mid_stream_frees_the_request(self):
        idle = self.server.wait_idle().kv_blocks_used
        with socket.create_connection(("127.0.0.1", self.server.http_port)) as client:
            body = json.dumps({"prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "ignore_eos": True,
                               "stream": True}).encode()
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            received = b""
            while b"data: " not in received:  # streaming has begun
                received += client.recv(4096)
            deadline = time.time() + 10  # GetLoad's counts are published after each engine step
            while self.server.load().running_requests != 1 and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(self.server.load().running_requests, 1)
        load = self.server.wait_idle()
        self.assertEqual(load.kv_blocks_used, idle)


class OpenAiHttpAuthTest(unittest.TestCase):
    def test_api_keys_apply_to_http_too(self):
        key_file = os.path.join(tempfile.mkdtemp(prefix="mf-http-auth-"), "keys")
        with open(key_file, "w") as f:
            f.write("http-key-123\n")
        server = harness.Server(None, "--api-key-file", key_file)
        try:
            def post(headers):
                connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
                connection.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 2}),
                                   {"Content-Type": "application/json", **headers})
                reply = connection.getresponse()
                return reply.status, reply.read()
            self.assertEqual(post({})[0], 401)
            self.assertEqual(post({"Authorization": "Bearer wrong"})[0], 401)
            self.assertEqual(post({"Authorization": "Bearer http-key-123"})[0], 200)
        finally:
            server.close()

    def test_a_full_queue_is_429_in_openais_schema(self):
        server = harness.Server(None, "--max-running", "1", "--max-queued", "1")
        held = []

        def send():
            body = json.dumps({"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}).encode()
            client = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            held.append(client)
            return client.makefile("rb")

        def wait_for_load(running, waiting):
            deadline = time.time() + 10  # GetLoad's counts are published after each engine step
            while (server.load().running_requests, server.load().waiting_requests) != (running, waiting):
                self.assertLess(time.time(), deadline, str(server.load()))
                time.sleep(0.02)

        try:
            # One runs; once it does, the next waits in the queue; once it waits, a third is refused
            # (each waits for the engine: a request counts against the queue until it is scheduled).
            self.assertIn(b" 200 ", send().readline())
            wait_for_load(1, 0)
            self.assertIn(b" 200 ", send().readline())
            wait_for_load(1, 1)
            reply = send()
            self.assertIn(b" 429 ", reply.readline())
            while reply.readline() not in (b"\r\n", b""):
                pass
            self.assertEqual(json.loads(reply.read1(65536))["error"]["type"], "rate_limit_error")
            wait_for_load(1, 1)
        finally:
            for client in held:
                client.close()
            server.close()

    def test_tls_flags_serve_the_http_port_over_https(self):
        cert, key = harness.self_signed_certificate()
        server = harness.Server(None, tls=(cert, key))
        try:
            context = ssl.create_default_context(cafile=cert)
            connection = http.client.HTTPSConnection("localhost", server.http_port, timeout=30, context=context)
            connection.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 3,
                                                                      "ignore_eos": True}),
                               {"Content-Type": "application/json"})
            reply = connection.getresponse()
            self.assertEqual(reply.status, 200)
            self.assertEqual(json.loads(reply.read())["usage"]["completion_tokens"], 3)
            connection.close()
            plain = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
            with self.assertRaises((ConnectionError, http.client.HTTPException)):
                plain.request("GET", "/health")
                plain.getresponse()
            plain.close()
        finally:
            server.close()


class OpenAiHttpDrainTest(unittest.TestCase):
    def test_sigterm_finishes_streams_in_flight_and_refuses_new_calls_after_the_delay(self):
        server = harness.Server(None, "--drain-delay-seconds", "1", "--drain-grace-seconds", "60")
        try:
            # A stream the client does not read: its request pauses (back-pressure) and stays in
            # flight through the drain until it is read.
            connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
            connection.request("POST", "/v1/completions", json.dumps(
                {"prompt": PROMPT, "max_tokens": 1200, "ignore_eos": True, "stream": True}),
                {"Content-Type": "application/json"})
            reply = connection.getresponse()
            self.assertTrue(reply.readline().startswith(b"data: "))
            server.terminate()

            def post_status():
                other = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
                other.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 2}),
                              {"Content-Type": "application/json"})
                answer = other.getresponse()
                body = answer.read()
                other.close()
                return answer.status, body

            # During the drain delay calls are still served (load balancers take time to
            # notice /health's 503); after it, new calls get 503 while the stream goes on.
            deadline = time.time() + 15
            while True:
                status, body = post_status()
                if status == 503:
                    break
                self.assertEqual(status, 200, body)
                self.assertLess(time.time(), deadline, "new calls were still served after the drain delay")
                time.sleep(0.1)
            self.assertEqual(json.loads(body)["error"]["type"], "service_unavailable")
            self.assertIsNone(server.process.poll())
            events = [line for line in reply.read().decode().split("\n") if line.startswith("data: ")]
            self.assertEqual(events[-1], "data: [DONE]")
            text = "".join(c["text"] for e in events[:-1] for c in json.loads(e[6:])["choices"])
            self.assertGreater(len(text), 0)
            self.assertEqual(server.process.wait(timeout=60), 0)
        finally:
            server.close()

if __name__ == "__main__":
    unittest.main()
