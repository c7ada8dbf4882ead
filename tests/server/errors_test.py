"""Bad requests get INVALID_ARGUMENT naming the field; overload, deadlines and
cancellation behave as specified and free every KV block."""
import threading
import time
import unittest

import grpc

import harness
from harness import pb


def ids(*values):
    return pb.TokenIds(ids=list(values))


class ValidationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(harness.reference_dir("molm-tiny"), "--max-context", "256")

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def assertRejected(self, request, field, code=grpc.StatusCode.INVALID_ARGUMENT):
        for call in (self.server.stub.Generate, lambda r, timeout: list(self.server.stub.Stream(r, timeout=timeout))):
            with self.assertRaises(grpc.RpcError) as raised:
                call(request, timeout=10)
            self.assertEqual(raised.exception.code(), code, raised.exception.details())
            self.assertTrue(raised.exception.details().startswith(field + ":"), raised.exception.details())

    def test_each_bad_field_is_named(self):
        cases = [
            (pb.GenerateRequest(), "prompt"),
            (pb.GenerateRequest(token_ids=ids()), "token_ids"),
            (pb.GenerateRequest(token_ids=ids(1, 512)), "token_ids"),
            (pb.GenerateRequest(text="hello"), "text"),  # this model has no tokenizer
            (pb.GenerateRequest(text=""), "text"),
            (pb.GenerateRequest(token_ids=ids(1), temperature=-0.5), "temperature"),
            (pb.GenerateRequest(token_ids=ids(1), temperature=float("nan")), "temperature"),
            (pb.GenerateRequest(token_ids=ids(1), top_p=0.0), "top_p"),
            (pb.GenerateRequest(token_ids=ids(1), top_p=1.5), "top_p"),
            (pb.GenerateRequest(token_ids=ids(1), min_p=1.5), "min_p"),
            (pb.GenerateRequest(token_ids=ids(1), repetition_penalty=0.0), "repetition_penalty"),
            (pb.GenerateRequest(token_ids=ids(1), presence_penalty=2.5), "presence_penalty"),
            (pb.GenerateRequest(token_ids=ids(1), frequency_penalty=-3.0), "frequency_penalty"),
            (pb.GenerateRequest(token_ids=ids(1), logprobs=21), "logprobs"),
            (pb.GenerateRequest(token_ids=ids(1), stop=["x"]), "stop"),  # no tokenizer
            (pb.GenerateRequest(token_ids=ids(1), stop_token_ids=[600]), "stop_token_ids"),
            (pb.GenerateRequest(token_ids=ids(1, 2, 3), max_new_tokens=254), "max_new_tokens"),  # context 256
        ]
        for request, field in cases:
            with self.subTest(field=field, request=str(request)):
                self.assertRejected(request, field)

    def test_limits_are_reported(self):
        info = self.server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        self.assertEqual(info.max_context_tokens, 256)
        self.assertEqual(info.vocab_size, 512)
        self.assertFalse(info.has_tokenizer)
        reply = self.server.stub.Generate(pb.GenerateRequest(token_ids=ids(1, 2, 3), max_new_tokens=253,
                                                             temperature=0, ignore_eos=True), timeout=30)
        self.assertEqual(len(reply.token_ids), 253)


class OverloadTest(unittest.TestCase):
    def test_queue_full_gives_resource_exhausted(self):
        server = harness.Server(harness.reference_dir("molm-tiny"), "--max-running", "1", "--max-queued", "1")
        try:
            long_request = harness.greedy_request([1, 2, 3], 4000)
            running = server.stub.Stream(long_request, timeout=60)
            next(running)  # admitted and generating
            queued = server.stub.Stream(long_request, timeout=60)
            deadline = time.time() + 10
            while server.load().waiting_requests < 1 and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(server.load().waiting_requests, 1)
            with self.assertRaises(grpc.RpcError) as raised:
                server.stub.Generate(long_request, timeout=10)
            self.assertEqual(raised.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            running.cancel()
            queued.cancel()
            self.assertEqual(server.wait_idle().kv_blocks_used, 0)
        finally:
            server.close()

    def test_deadline_exceeded_frees_everything(self):
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            for call in (server.stub.Generate, lambda r, timeout: list(server.stub.Stream(r, timeout=timeout))):
                with self.assertRaises(grpc.RpcError) as raised:
                    call(harness.greedy_request([1, 2, 3], 4000), timeout=0.2)
                self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
            self.assertEqual(server.wait_idle().kv_blocks_used, 0)
        finally:
            server.close()

    def test_cancelling_50_streams_returns_kv_blocks_to_idle(self):
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            idle_blocks = server.load().kv_blocks_used
            streams = [server.stub.Stream(harness.greedy_request([i % 500 + 1, 7, 9], 4000), timeout=120)
                       for i in range(50)]
            for stream in streams:
                next(stream)  # every stream is generating
            self.assertGreater(server.load().kv_blocks_used, idle_blocks)
            for stream in streams:
                stream.cancel()
            load = server.wait_idle()
            self.assertEqual(load.kv_blocks_used, idle_blocks)
            self.assertEqual(load.running_requests, 0)
        finally:
            server.close()


class TextTest(unittest.TestCase):
    """A random-weight model with GPT-2's vocabulary, so text goes in and comes out."""

    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(harness.TEXT_MODEL, "--tokenizer", harness.GPT2_TOKENIZER)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_streamed_text_is_the_decoded_tokens(self):
        request = pb.GenerateRequest(text="Hello world, this is", max_new_tokens=40, temperature=1.0, seed=3,
                                     ignore_eos=True)
        messages = list(self.server.stub.Stream(request, timeout=60))
        text = "".join(m.text for m in messages)
        tokens = [t for m in messages for t in m.token_ids]
        unary = self.server.stub.Generate(request, timeout=60)
        self.assertEqual(list(unary.token_ids), tokens)
        self.assertEqual(unary.text, text)
        tokenized = self.server.stub.Tokenize(pb.TokenizeRequest(text="Hello world"), timeout=10)
        self.assertEqual(list(tokenized.token_ids), [15496, 995])
        self.assertEqual(messages[-1].usage.prompt_tokens, 5)

    def test_stop_string_ends_generation_and_is_removed(self):
        request = pb.GenerateRequest(text="Once upon a time", max_new_tokens=60, temperature=1.0, seed=11,
                                     ignore_eos=True)
        full = self.server.stub.Generate(request, timeout=60).text
        self.assertGreater(len(full), 8)
        stop = full[5:8]
        request.stop.append(stop)
        stopped = self.server.stub.Generate(request, timeout=60)
        self.assertEqual(stopped.finish_reason, pb.FINISH_REASON_STOP)
        self.assertEqual(stopped.text, full[:full.index(stop)])


if __name__ == "__main__":
    unittest.main()
