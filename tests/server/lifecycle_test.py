"""Health, reflection, TLS, and draining on SIGTERM."""
import json
import os
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

import harness
from harness import pb


class LifecycleTest(unittest.TestCase):
    def test_health_and_reflection(self):
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            self.assertEqual(harness.health_status(server.channel), 1)  # SERVING
            # ServerReflectionRequest{list_services: ""} is field 7, an empty string.
            reflection = server.channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=lambda b: b, response_deserializer=lambda b: b)
            replies = list(reflection(iter([b"\x3a\x00"]), timeout=10))
            self.assertIn(b"moduleformer.v1.ModuleFormer", replies[0])
            self.assertIn(b"grpc.health.v1.Health", replies[0])
        finally:
            server.close()

    def test_startup_line_states_backend_precision_sampling_and_cache(self):
        # The harness passes --kv-cache-mb 64; the CPU backend is always fp32 ("exact").
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            info = server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
            self.assertEqual(info.max_batch_tokens, 2048)  # the CPU default (8192 on CUDA)
            with open(server.log_path) as log:
                text = log.read()
            self.assertRegex(text, r"cpu backend, exact precision, sampling on the host; KV cache 0\.06 GiB "
                                   r"\(--kv-cache-mb\): \d+ blocks of 16 tokens, \d+ tokens")
        finally:
            server.close()

    def test_sigterm_drains_in_flight_requests_and_exits_cleanly(self):
        server = harness.Server(harness.reference_dir("molm-tiny"), "--drain-delay-seconds", "2",
                                "--drain-grace-seconds", "20")
        try:
            case = harness.load_cases("molm-tiny")[3]
            # A long generation that is in flight when SIGTERM arrives.
            request = harness.greedy_request(case["prompt"], 2000)
            stream = server.stub.Stream(request, timeout=60)
            first = next(stream)
            server.terminate()
            deadline = time.time() + 10
            while harness.health_status(server.channel) != 2 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(harness.health_status(server.channel), 2)  # NOT_SERVING
            self.assertTrue(server.load().draining)
            # After the delay the listener closes: new requests fail UNAVAILABLE (a proxy retries elsewhere).
            # A call that reaches the server in the instant its shutdown starts is cancelled by gRPC
            # itself (CANCELLED); the next one must be refused.
            deadline = time.time() + 10
            codes = []
            while time.time() < deadline:
                try:
                    server.stub.Generate(harness.greedy_request([1, 2], 4), timeout=10)
                    time.sleep(0.05)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    if error.code() != grpc.StatusCode.CANCELLED:
                        break
            self.assertTrue(codes, "new requests were still served 10 s after the drain delay")
            self.assertEqual(codes[-1], grpc.StatusCode.UNAVAILABLE, codes)
            self.assertLessEqual(codes.count(grpc.StatusCode.CANCELLED), 1, codes)
            rest = list(stream)
            tokens = list(first.token_ids) + [t for m in rest for t in m.token_ids]
            self.assertEqual(len(tokens), 2000)
            self.assertEqual(tokens[:len(case["greedy"])], case["greedy"])
            self.assertEqual(rest[-1].finish_reason, pb.FINISH_REASON_LENGTH)
            self.assertEqual(server.process.wait(timeout=30), 0)
        finally:
            server.close()

    def test_tls(self):
        server = harness.Server(harness.reference_dir("molm-tiny"), tls=harness.self_signed_certificate())
        try:
            case = harness.load_cases("molm-tiny")[0]
            reply = server.stub.Generate(harness.greedy_request(case["prompt"], len(case["greedy"])), timeout=30)
            self.assertEqual(list(reply.token_ids), case["greedy"])
            plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
            with self.assertRaises(grpc.RpcError):
                harness.pb_grpc.ModuleFormerStub(plain).ModelInfo(pb.ModelInfoRequest(), timeout=5)
            plain.close()
        finally:
            server.close()

    def test_bad_checkpoint_fails_at_startup_naming_the_problem(self):
        result = subprocess.run([harness.SERVER, "--model", "/nonexistent/model", "--port", "0"],
                                capture_output=True, text=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("/nonexistent/model", result.stderr)

    def test_unavailable_devices_fail_at_startup_naming_the_flag(self):
        for device in ("tpu", "cuda:99"):  # no machine has CUDA device 99; CPU-only builds lack the plugin
            result = subprocess.run([harness.SERVER, "--model", harness.reference_dir("molm-tiny"), "--device", device,
                                     "--port", "0", "--metrics-port", "-1"], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0, device)
            self.assertIn("--device", result.stderr, device)

    def test_request_log_has_a_json_line_per_generation_call(self):
        log_path = os.path.join(tempfile.mkdtemp(prefix="mf-request-log-"), "requests.jsonl")
        server = harness.Server(harness.reference_dir("molm-tiny"), "--request-log", log_path)
        try:
            server.stub.Generate(harness.greedy_request([1, 2, 3], 4), timeout=30)
            streamed = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5, 6]), max_new_tokens=3, temperature=0.0,
                                          ignore_eos=True, stats_tag="nightly")
            tokens = [t for message in server.stub.Stream(streamed, timeout=30) for t in message.token_ids]
            self.assertEqual(len(tokens), 3)
            with self.assertRaises(grpc.RpcError):
                server.stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), top_p=2.0), timeout=10)
        finally:
            server.close()  # the log is complete once the server has exited
        with open(log_path) as handle:
            lines = [json.loads(line) for line in handle]
        self.assertEqual([(line["rpc"], line["code"]) for line in lines],
                         [("Generate", "OK"), ("Stream", "OK"), ("Generate", "INVALID_ARGUMENT")])
        generated, streamed_line, refused = lines
        self.assertEqual((generated["prompt_tokens"], generated["completion_tokens"], generated["finish_reason"]),
                         (3, 4, "length"))
        self.assertEqual((streamed_line["prompt_tokens"], streamed_line["completion_tokens"]), (2, 3))
        self.assertEqual(streamed_line["stats_tag"], "nightly")
        self.assertGreater(generated["total_seconds"], 0)
        self.assertGreaterEqual(generated["total_seconds"], generated["time_to_first_token_seconds"])
        self.assertTrue(generated["peer"].startswith("ipv4:127.0.0.1:"), generated["peer"])
        self.assertIn("top_p", refused["error"])
        self.assertRegex(generated["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_an_unwritable_request_log_fails_at_startup_naming_the_flag(self):
        result = subprocess.run([harness.SERVER, "--model", harness.reference_dir("molm-tiny"), "--port", "0",
                                 "--metrics-port", "-1", "--request-log", "/nonexistent/dir/requests.jsonl"],
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--request-log", result.stderr)


if __name__ == "__main__":
    unittest.main()
