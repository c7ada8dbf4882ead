"""A careless or hostile client never takes the server down or deaf: after each
attack the server still answers a Generate."""
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import grpc

import harness
from harness import pb, start_and_fail


def http_status(port, method, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        return connection.getresponse().status
    finally:
        connection.close()


def idle_connections(port, count):
    """`count` TCP connections that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def poisoned_checkpoint(reference, tensor, element, bf16_bits):
    """A copy of a reference checkpoint whose bf16 `tensor` holds `bf16_bits` at `element`."""
    out = tempfile.mkdtemp(prefix="mf-poisoned-")
    source = harness.reference_dir(reference)
    shutil.copy(os.path.join(source, "config.json"), out)
    with open(os.path.join(source, "model.safetensors"), "rb") as f:
        data = bytearray(f.read())
    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_size])
    offset = 8 + header_size + header[tensor]["data_offsets"][0] + 2 * element
    data[offset:offset + 2] = struct.pack("<H", bf16_bits)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(data)
    return out


class HardeningTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(harness.reference_dir("molm-tiny"))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def assertStillServes(self):
        self.assertIsNone(self.server.process.poll(), harness._read(self.server.log_path))
        reply = self.server.stub.Generate(harness.greedy_request([1, 2, 3], 2), timeout=30)
        self.assertEqual(len(reply.token_ids), 2)

    # 1. A browser (or any HTTP client) on the metrics port.
    def test_metrics_port_answers_other_paths_and_methods_without_crashing(self):
        port = self.server.metrics_port
        self.assertEqual(http_status(port, "GET", "/"), 404)
        self.assertEqual(http_status(port, "GET", "/favicon.ico"), 404)
        self.assertEqual(http_status(port, "HEAD", "/metrics"), 200)
        self.assertIn(http_status(port, "POST", "/metrics"), (400, 404, 405))
        self.assertEqual(http_status(port, "GET", "/health"), 200)
        self.assertEqual(http_status(port, "GET", "/metrics"), 200)
        self.assertStillServes()

    # 2. Idle connections must not keep a scrape waiting.
    def test_idle_connections_do_not_block_a_scrape(self):
        sockets = idle_connections(self.server.metrics_port, 16)
        try:
            start = time.monotonic()
            text = self.server.scrape()
            self.assertLess(time.monotonic() - start, 1.0)
            self.assertTrue("moduleformer_engine_steps_total" in text)
        finally:
            for s in sockets:
                s.close()

    def test_a_burst_of_connections_waits_in_the_listen_backlog(self):
        # 64 idle connections take the metrics server's 32 threads and its 32 queue places, so
        # the accept thread stops; the next connections must wait in the kernel's backlog. A
        # small backlog (the HTTP library's default is 5) drops their SYNs instead, and
        # clients retry only after a second.
        port = self.server.metrics_port
        held = idle_connections(port, 64)
        burst = []
        try:
            # A queued connection completes in the kernel at once; a dropped SYN is retried after 1 s.
            for i in range(100):
                try:
                    burst.append(socket.create_connection(("127.0.0.1", port), timeout=0.9))
                except TimeoutError:
                    self.fail(f"connection {i} of the burst was dropped, not queued (listen backlog too small)")
        finally:
            for s in held + burst:
                s.close()
        self.assertStillServes()

    def test_more_idle_connections_than_threads_delay_a_scrape_only_until_they_time_out(self):
        sockets = idle_connections(self.server.metrics_port, 100)
        try:
            start = time.monotonic()
            self.server.scrape()
            # Idle connections are closed after 2 s; the backlog then drains in one round.
            self.assertLess(time.monotonic() - start, 8.0)
        finally:
            for s in sockets:
                s.close()
        self.assertStillServes()


    # 4. Parameters whose arithmetic overflows once drew from an empty candidate list.
    def test_extreme_sampling_parameters_sample_the_top_token(self):
        prompt = [5, 17, 300, 2]
        greedy = self.server.stub.Generate(harness.greedy_request(prompt, 6), timeout=30).token_ids
        extreme = [
            dict(temperature=1e-40, top_k=5),
            dict(temperature=1e-40, min_p=0.2),
            dict(temperature=1e-40),
        ]
        for params in extreme:
            with self.subTest(**params):
                request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=6, ignore_eos=True,
                                             seed=7, **params)
                self.assertEqual(list(self.server.stub.Generate(request, timeout=30).token_ids), list(greedy))
        for params in (dict(repetition_penalty=1e-45, top_k=3), dict(repetition_penalty=1e-45, min_p=0.5),
                       dict(repetition_penalty=3e38, top_p=0.5)):
            with self.subTest(**params):
                request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=6, ignore_eos=True,
                                             seed=7, temperature=1.0, **params)
                reply = self.server.stub.Generate(request, timeout=30)
                self.assertEqual(len(reply.token_ids), 6)
        self.assertStillServes()


class BrokenWeightsTest(unittest.TestCase):
    """4. A model with NaN or infinite weights."""

    def test_non_finite_weights_are_refused_at_startup_naming_the_tensor(self):
        model = poisoned_checkpoint("molm-tiny", "lm_head.weight", 7, 0x7fc0)
        args = [harness.SERVER, "--model", model, "--port", "0", "--metrics-port", "-1"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("tensor 'lm_head.weight': element 7 of 32768 is nan", result.stderr)

    def test_unchecked_non_finite_weights_fail_requests_not_the_server(self):
        model = poisoned_checkpoint("molm-tiny", "transformer.ln_f.weight", 0, 0x7f80)  # +inf
        server = harness.Server(model, "--check-weights=false")
        try:
            for params in (dict(temperature=0.8, top_p=0.9), dict(temperature=1.0, top_k=5, min_p=0.1),
                           dict(temperature=0.0, repetition_penalty=1.2), dict(temperature=0.0, logprobs=2)):
                with self.subTest(**params):
                    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), max_new_tokens=4, **params)
                    with self.assertRaises(grpc.RpcError) as raised:
                        server.stub.Generate(request, timeout=30)
                    self.assertEqual(raised.exception.code(), grpc.StatusCode.INTERNAL)
                    self.assertIn("non-finite logit", raised.exception.details())
            self.assertIsNone(server.process.poll())
            self.assertEqual(server.wait_idle().kv_blocks_used, 0)
        finally:
            server.close()




class StartupLimitsTest(unittest.TestCase):
    """8. Shapes and sizes are checked before anything is allocated."""

    def absurd_config(self, **fields):
        with open(os.path.join(harness.ROOT, "configs", "moduleformer-cpu-bench.json")) as f:
            config = json.load(f)
        config.update(fields)
        path = os.path.join(tempfile.mkdtemp(prefix="mf-config-"), "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    def test_absurd_random_shapes_are_refused_before_allocating(self):
        for fields in (dict(n_layer=1_000_000), dict(n_embd=1_000_000), dict(vocab_size=2**31 - 1)):
            with self.subTest(**fields):
                start = time.monotonic()
                stderr = start_and_fail("--random-weights", self.absurd_config(**fields))
                self.assertRegex(stderr, r"parameters need [0-9.]+ GiB of host memory as bf16; [0-9.]+ GiB are available")
                self.assertLess(time.monotonic() - start, 10)
        stderr = start_and_fail("--random-weights", self.absurd_config(vocab_size=2**31))
        self.assertIn("field 'vocab_size' 2147483648 exceeds 2^31 - 1", stderr)

    def test_a_kv_cache_larger_than_memory_is_refused(self):
        stderr = start_and_fail("--model", harness.reference_dir("molm-tiny"), "--kv-cache-mb", "100000000")
        self.assertRegex(stderr, r"KV cache: \d+ blocks need \d+ bytes; the cpu backend has \d+ free")

    def test_a_tokenizer_with_ids_beyond_the_models_vocabulary_is_refused(self):
        stderr = start_and_fail("--model", harness.reference_dir("molm-tiny"), "--tokenizer", harness.GPT2_TOKENIZER)
        self.assertIn("the tokenizer's largest id is 50256 but the model's vocab_size is 512", stderr)








class DescriptorExhaustionTest(unittest.TestCase):
    """3. More connections than the process may open."""

    def flood(self, port, count):
        sockets = []
        for _ in range(count):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        return sockets

    def test_plaintext_listener_sheds_and_keeps_accepting(self):
        server = harness.Server(harness.reference_dir("molm-tiny"), open_files=128)
        try:
            self.assertIn("128 open files", harness._read(server.log_path))
            sockets = self.flood(server.port, 300)
            time.sleep(0.5)
            self.assertIsNone(server.process.poll())
            for s in sockets:
                s.close()
            time.sleep(0.5)
            for _ in range(3):  # new connections, each served
                channel = grpc.insecure_channel(server.address)
                reply = harness.pb_grpc.ModuleFormerStub(channel).Generate(harness.greedy_request([1, 2, 3], 2),
                                                                          timeout=10)
                self.assertEqual(len(reply.token_ids), 2)
                channel.close()
            self.assertNotIn("Failed accept4", harness._read(server.log_path))
        finally:
            server.close()

    def test_a_deaf_tls_listener_exits_non_zero(self):
        # gRPC's own listener (TLS) cannot be re-armed after EMFILE: the server must not
        # stay up deaf, but say so and exit for its supervisor to restart it.
        server = harness.Server(harness.reference_dir("molm-tiny"), "--drain-grace-seconds", "1",
                                tls=harness.self_signed_certificate(), open_files=128)
        try:
            sockets = self.flood(server.port, 300)
            try:
                server.process.wait(timeout=20)
            finally:
                for s in sockets:
                    s.close()
            self.assertEqual(server.process.returncode, 3)
            self.assertIn("the gRPC listener stopped accepting connections", harness._read(server.log_path))
        finally:
            server.close()








if __name__ == "__main__":
    unittest.main()
