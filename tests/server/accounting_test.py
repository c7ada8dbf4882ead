"""7 and 6 of the hardening work: every call is counted and logged with the code its
client saw, also calls gRPC's generated parser would refuse (invalid UTF-8, malformed
messages), which the service answers INVALID_ARGUMENT naming the field."""
import os
import tempfile
import time
import unittest

import grpc

import harness
from harness import pb
from harness import log_codes, request_counts


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


if __name__ == "__main__":
    unittest.main()
