"""A careless or hostile client never takes the server down or deaf: after each
attack the server still answers a Generate."""
import http.client
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

import harness
from harness import pb


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


def start_and_fail(*args):
    """Runs the server with `args`, expecting it to refuse to start; returns its stderr."""
    command = [harness.SERVER, "--port", "0", "--metrics-port", "-1", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 1:
        raise AssertionError(f"exit {result.returncode} (1 expected): {result.stderr}")
    return result.stderr


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


def request_counts(server):
    """{(rpc, code): count} of moduleformer_requests_total."""
    counts = {}
    for (name, labels), value in harness.parse_metrics(server.scrape()).items():
        if name == "moduleformer_requests_total":
            labels = dict(labels)
            counts[(labels["rpc"], labels["code"])] = int(float(value))
    return counts


def log_codes(path, rpc):
    with open(path) as f:
        return [json.loads(line)["code"] for line in f if json.loads(line)["rpc"] == rpc]


class OutcomeAccountingTest(unittest.TestCase):
    """7. Every call is counted and logged with the code its client saw."""

    def test_deadlines_and_cancellations_are_counted_as_such(self):
        log = os.path.join(tempfile.mkdtemp(prefix="mf-log-"), "requests.jsonl")
        server = harness.Server(harness.reference_dir("molm-tiny"), "--request-log", log)
        try:
            seen = []
            for _ in range(5):
                for call in (server.stub.Generate, lambda r, timeout: list(server.stub.Stream(r, timeout=timeout))):
                    with self.assertRaises(grpc.RpcError) as raised:
                        call(harness.greedy_request([1, 2, 3], 4000), timeout=0.15)
                    seen.append(raised.exception.code())
            self.assertEqual(set(seen), {grpc.StatusCode.DEADLINE_EXCEEDED})
            streams = [server.stub.Stream(harness.greedy_request([4, 5, 6], 4000), timeout=60) for _ in range(4)]
            for stream in streams:
                next(stream)
                stream.cancel()
            server.wait_idle()
            deadline = time.time() + 10
            while time.time() < deadline:  # the last calls finish just after the engine lets them go
                counts = request_counts(server)
                if counts.get(("Stream", "CANCELLED"), 0) == 4:
                    break
                time.sleep(0.05)
            self.assertEqual(counts.get(("Generate", "DEADLINE_EXCEEDED")), 5, counts)
            self.assertEqual(counts.get(("Stream", "DEADLINE_EXCEEDED")), 5, counts)
            self.assertEqual(counts.get(("Stream", "CANCELLED")), 4, counts)
            self.assertNotIn(("Generate", "OK"), counts)
            self.assertNotIn(("Stream", "OK"), counts)
            server.close()
            self.assertEqual(sorted(log_codes(log, "Generate")), ["DEADLINE_EXCEEDED"] * 5)
            self.assertEqual(sorted(log_codes(log, "Stream")), ["CANCELLED"] * 4 + ["DEADLINE_EXCEEDED"] * 5)
        finally:
            server.close()


def length_delimited(field, payload):
    """One protobuf field of wire type 2 (a string, bytes or message), hand-encoded."""
    assert field < 16 and len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


class RawRequestTest(unittest.TestCase):
    """6. Requests gRPC's generated parser refuses are answered INVALID_ARGUMENT naming the
    field, and counted and logged like every other call."""

    @classmethod
    def setUpClass(cls):
        cls.log = os.path.join(tempfile.mkdtemp(prefix="mf-log-"), "requests.jsonl")
        cls.server = harness.Server(harness.TEXT_MODEL, "--tokenizer", harness.GPT2_TOKENIZER, "--request-log", cls.log)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def call(self, method, payload, streaming=False):
        kind = self.server.channel.unary_stream if streaming else self.server.channel.unary_unary
        rpc = kind(f"/moduleformer.v1.ModuleFormer/{method}", request_serializer=lambda b: b,
                   response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as raised:
            reply = rpc(payload, timeout=10)
            if streaming:
                list(reply)
        return raised.exception

    def test_invalid_utf8_is_named(self):
        ids = length_delimited(2, bytes([8, 1]))  # token_ids { ids: 1 } (packed varint)
        cases = [
            ("Generate", length_delimited(1, b"caf\xc3"), "text"),
            ("Generate", ids + length_delimited(12, b"ok") + length_delimited(12, b"\xff\xfe"), "stop"),
            ("Tokenize", length_delimited(1, b"\xed\xa0\x80"), "text"),  # an encoded surrogate
        ]
        for method, payload, field in cases:
            for streaming in ((False, True) if method == "Generate" else (False,)):
                with self.subTest(method=method, field=field, streaming=streaming):
                    error = self.call("Stream" if streaming else method, payload, streaming)
                    self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
                    self.assertEqual(error.details(), f"{field}: is not valid UTF-8")

    def test_malformed_messages_are_invalid_argument(self):
        error = self.call("Generate", b"\x0a\x50only-a-few-bytes")  # length past the end
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not a valid moduleformer.v1.GenerateRequest message", error.details())
        error = self.call("GetLoad", b"\xff\xff\xff")
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_refused_requests_are_counted_and_logged(self):
        before = request_counts(self.server).get(("Generate", "INVALID_ARGUMENT"), 0)
        for _ in range(3):
            self.call("Generate", length_delimited(1, b"\xc0\xaf"))
        self.assertEqual(request_counts(self.server)[("Generate", "INVALID_ARGUMENT")], before + 3)
        deadline = time.time() + 5
        while time.time() < deadline and log_codes(self.log, "Generate").count("INVALID_ARGUMENT") < before + 3:
            time.sleep(0.05)
        self.assertGreaterEqual(log_codes(self.log, "Generate").count("INVALID_ARGUMENT"), before + 3)
        # And valid text still works, through the same parser.
        reply = self.server.stub.Generate(pb.GenerateRequest(text="caf\u00e9 ok", max_new_tokens=2), timeout=30)
        self.assertEqual(reply.usage.completion_tokens, 2)


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


class LongPromptFairnessTest(unittest.TestCase):
    """9. A short request next to a long prompt starts within a few steps."""

    def test_short_request_finishes_before_a_long_prompts_first_token(self):
        server = harness.Server(harness.reference_dir("molm-tiny"), "--max-context", "8192", "--max-batch-tokens", "64")
        try:
            long_prompt = [(7 * i) % 500 + 1 for i in range(4000)]  # 63 prefill chunks
            stream = server.stub.Stream(harness.greedy_request(long_prompt, 4), timeout=120)
            first_long_token = []
            reader = threading.Thread(target=lambda: first_long_token.append((next(stream), time.monotonic())))
            reader.start()
            while server.load().running_requests == 0:  # the long prompt is being prefilled
                time.sleep(0.001)
            reply = server.stub.Generate(harness.greedy_request([1, 2, 3, 4], 4), timeout=60)
            short_done = time.monotonic()
            reader.join(timeout=120)
            self.assertEqual(len(reply.token_ids), 4)
            self.assertTrue(first_long_token)
            self.assertLess(short_done, first_long_token[0][1], "the short request waited for the whole long prompt")
            list(stream)
        finally:
            server.close()


class SlowStreamClientTest(unittest.TestCase):
    """5. A stream whose client stops reading is paused with a bounded buffer, then cancelled."""

    def setUp(self):
        self.server = harness.Server(harness.reference_dir("molm-tiny"), "--max-context", "4096",
                                     "--stream-stall-timeout-seconds", "3")
        # Without BDP probing the transport's window stays 64 KB, so an unread stream
        # backs up into the server quickly.
        self.channel = grpc.insecure_channel(self.server.address, options=[("grpc.http2.bdp_probe", 0)])
        self.stub = harness.pb_grpc.ModuleFormerStub(self.channel)

    def tearDown(self):
        self.channel.close()
        self.server.close()

    def heavy_request(self, tokens):
        return pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), max_new_tokens=tokens, temperature=0.0,
                                  ignore_eos=True, logprobs=20, return_routing=True)

    def wait_for(self, predicate, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        self.fail("condition not reached")

    def buffered_bytes(self):
        samples = harness.parse_metrics(self.server.scrape())
        return samples[("moduleformer_stream_buffered_bytes", frozenset())]

    def test_unread_stream_pauses_then_is_cancelled_and_frees_its_blocks(self):
        stream = self.stub.Stream(self.heavy_request(4000), timeout=120)
        next(stream)  # started; from here on nothing is read
        load = self.wait_for(lambda: (lambda l: l if l.paused_requests == 1 else None)(self.server.load()))
        self.assertEqual(load.running_requests, 1)  # still holds its place and its KV blocks
        self.assertGreater(load.kv_blocks_used, 0)
        buffered = self.buffered_bytes()
        self.assertGreater(buffered, 0)
        self.assertLess(buffered, 64 * 1024)  # a bounded queue, not the 4,000-token generation
        steps = self.server.load().steps
        time.sleep(0.5)
        self.assertEqual(self.server.load().steps, steps)  # the engine does nothing for it
        # After the stall timeout (3 s) the request is cancelled and everything freed.
        load = self.wait_for(lambda: (lambda l: l if l.running_requests == 0 else None)(self.server.load()))
        self.assertEqual(load.kv_blocks_used, 0)
        self.assertEqual(load.paused_requests, 0)
        stream.cancel()
        self.wait_for(lambda: self.buffered_bytes() == 0)
        self.assertStillServes()

    def test_a_slow_reader_resumes_and_gets_every_token(self):
        stream = self.stub.Stream(self.heavy_request(1500), timeout=120)
        first = next(stream)
        self.wait_for(lambda: self.server.load().paused_requests == 1)
        tokens = list(first.token_ids)
        for message in stream:  # reads now: the stream resumes and completes
            tokens.extend(message.token_ids)
        self.assertEqual(len(tokens), 1500)
        expected = self.server.stub.Generate(harness.greedy_request([1, 2, 3], 1500), timeout=120).token_ids
        self.assertEqual(tokens, list(expected))
        self.assertEqual(self.server.load().paused_requests, 0)

    def assertStillServes(self):
        reply = self.server.stub.Generate(harness.greedy_request([1, 2, 3], 2), timeout=30)
        self.assertEqual(len(reply.token_ids), 2)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class AuthenticationTest(unittest.TestCase):
    """10. Only clients holding a key (or a client certificate) may use the API."""

    KEYS = ["k-alpha-6f1e2d", "k-beta-99c0a1"]

    @classmethod
    def setUpClass(cls):
        workdir = tempfile.mkdtemp(prefix="mf-auth-")
        cls.key_file = os.path.join(workdir, "api-keys")
        with open(cls.key_file, "w") as f:
            f.write("# keys of the test clients\n" + "\n".join(cls.KEYS) + "\n\n")
        cls.log = os.path.join(workdir, "requests.jsonl")
        cls.server = harness.Server(harness.reference_dir("molm-tiny"), "--api-key-file", cls.key_file,
                                    "--request-log", cls.log)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def generate(self, metadata):
        return self.server.stub.Generate(harness.greedy_request([1, 2, 3], 2), timeout=30, metadata=metadata)

    def test_calls_without_a_valid_key_are_unauthenticated(self):
        stub = self.server.stub
        calls = {
            "Generate": lambda md: stub.Generate(harness.greedy_request([1, 2], 1), timeout=10, metadata=md),
            "Stream": lambda md: list(stub.Stream(harness.greedy_request([1, 2], 1), timeout=10, metadata=md)),
            "Tokenize": lambda md: stub.Tokenize(pb.TokenizeRequest(text="a"), timeout=10, metadata=md),
            "ModelInfo": lambda md: stub.ModelInfo(pb.ModelInfoRequest(), timeout=10, metadata=md),
            "GetLoad": lambda md: stub.GetLoad(pb.LoadRequest(), timeout=10, metadata=md),
            "ExpertStats": lambda md: stub.ExpertStats(pb.ExpertStatsRequest(), timeout=10, metadata=md),
        }
        bad = [(), (("authorization", "Bearer wrong"),), (("authorization", self.KEYS[0]),),
               (("authorization", "Bearer " + self.KEYS[0] + "x"),), (("authorization", "Bearer "),),
               (("authorization", "Basic " + self.KEYS[0]),)]
        for name, call in calls.items():
            for metadata in bad:
                with self.subTest(rpc=name, metadata=metadata):
                    with self.assertRaises(grpc.RpcError) as raised:
                        call(metadata)
                    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                    self.assertTrue(raised.exception.details().startswith("authorization:"))

    def test_each_key_is_accepted(self):
        for key in self.KEYS:
            for scheme in ("Bearer", "bearer"):
                self.assertEqual(len(self.generate([("authorization", f"{scheme} {key}")]).token_ids), 2)

    def test_health_checks_stay_open(self):
        self.assertEqual(harness.health_status(self.server.channel), 1)

    def test_keys_never_reach_the_logs(self):
        with self.assertRaises(grpc.RpcError):
            self.generate([("authorization", "Bearer not-a-key-7731")])
        self.generate([("authorization", f"Bearer {self.KEYS[1]}")])
        time.sleep(0.3)  # the request log is written by its own thread
        for path in (self.log, self.server.log_path):
            text = harness._read(path)
            for secret in (*self.KEYS, "not-a-key-7731"):
                self.assertNotIn(secret, text, path)
        self.assertIn('"code":"UNAUTHENTICATED"', harness._read(self.log).replace(" ", ""))

    def test_an_empty_key_file_refuses_to_start(self):
        empty = os.path.join(tempfile.mkdtemp(prefix="mf-auth-"), "keys")
        with open(empty, "w") as f:
            f.write("# nothing\n\n")
        self.assertIn("holds no key", start_and_fail("--model", harness.reference_dir("molm-tiny"),
                                                     "--api-key-file", empty))
        self.assertIn("cannot read", start_and_fail("--model", harness.reference_dir("molm-tiny"),
                                                    "--api-key-file", empty + ".missing"))


class MutualTlsTest(unittest.TestCase):
    """10. --tls-client-ca: only clients with a certificate the CA signed get through."""

    def test_client_certificates_are_required(self):
        d = tempfile.mkdtemp(prefix="mf-mtls-")
        p = lambda name: os.path.join(d, name)  # noqa: E731
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                "-keyout", p("ca.key"), "-out", p("ca.pem"))
        for name, subject, extension in (("server", "/CN=localhost", "subjectAltName=DNS:localhost"),
                                         ("client", "/CN=client", "extendedKeyUsage=clientAuth")):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", p(f"{name}.key"),
                    "-out", p(f"{name}.csr"))
            with open(p(f"{name}.ext"), "w") as f:
                f.write(extension + "\n")
            openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                    "-CAcreateserial", "-days", "1", "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.pem"))
        # A client certificate from another CA must not pass either.
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stranger",
                "-keyout", p("stranger.key"), "-out", p("stranger.pem"))
        server = harness.Server(harness.reference_dir("molm-tiny"), "--tls-client-ca", p("ca.pem"),
                                tls=(p("server.pem"), p("server.key")))
        read = lambda name: pathlib.Path(p(name)).read_bytes()  # noqa: E731
        try:
            def call(key=None, chain=None):
                credentials = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"), private_key=key,
                                                           certificate_chain=chain)
                with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
                    stub = harness.pb_grpc.ModuleFormerStub(channel)
                    return stub.Generate(harness.greedy_request([1, 2, 3], 2), timeout=10)
            self.assertEqual(len(call(read("client.key"), read("client.pem")).token_ids), 2)
            for key, chain in ((None, None), (read("stranger.key"), read("stranger.pem"))):
                with self.assertRaises(grpc.RpcError) as raised:
                    call(key, chain)
                self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            server.close()


if __name__ == "__main__":
    unittest.main()
