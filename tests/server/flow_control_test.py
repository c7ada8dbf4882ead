"""Scheduling and flow control: a short request next to a long prompt starts within a
few steps, and a stream whose client stops reading is paused with a bounded buffer, then
cancelled."""
import threading
import time
import unittest

import grpc

import harness
from harness import pb


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
                                     "--stream-stall-timeout-seconds", "5")
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
        def settled():
            # Until the client's transport window is full, gRPC may still take queued messages
            # and the request resume; once it is, the request stays paused and the engine
            # runs no step for it.
            load = self.server.load()
            if load.paused_requests != 1 or self.buffered_bytes() <= 0:
                return None
            time.sleep(0.3)
            later = self.server.load()
            return later if later.paused_requests == 1 and later.steps == load.steps else None
        load = self.wait_for(settled)
        self.assertEqual(load.running_requests, 1)  # still holds its place and its KV blocks
        self.assertGreater(load.kv_blocks_used, 0)
        buffered = self.buffered_bytes()
        self.assertGreater(buffered, 0)
        self.assertLess(buffered, 64 * 1024)  # a bounded queue, not the 4,000-token generation
        # After the stall timeout (5 s) the request is cancelled and everything freed.
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


if __name__ == "__main__":
    unittest.main()
