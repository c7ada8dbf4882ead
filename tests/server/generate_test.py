"""Generate and Stream over real gRPC reproduce the reference implementation."""
import random
import subprocess
import threading
import time
import unittest

import harness
from harness import pb


class GenerateTest(unittest.TestCase):
    def test_generate_and_stream_reproduce_every_fixture(self):
        for name in harness.reference_names():
            server = harness.Server(harness.reference_dir(name))
            try:
                for case in harness.load_cases(name):
                    request = harness.greedy_request(case["prompt"], len(case["greedy"]))
                    reply = server.stub.Generate(request, timeout=60)
                    self.assertEqual(list(reply.token_ids), case["greedy"], name)
                    self.assertEqual(reply.finish_reason, pb.FINISH_REASON_LENGTH)
                    self.assertEqual(reply.usage.prompt_tokens, len(case["prompt"]))
                    self.assertEqual(reply.usage.completion_tokens, len(case["greedy"]))
                    streamed = []
                    messages = list(server.stub.Stream(request, timeout=60))
                    for message in messages:
                        streamed.extend(message.token_ids)
                    self.assertEqual(streamed, case["greedy"], name)
                    self.assertEqual(messages[-1].finish_reason, pb.FINISH_REASON_LENGTH)
                    self.assertTrue(all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1]))
                    self.assertGreater(messages[-1].timings.total_seconds, 0)
            finally:
                server.close()

    def test_64_concurrent_streams_each_reproduce_their_continuation(self):
        name = "molm-tiny"
        cases = harness.load_cases(name)
        # A small token budget forces chunked prefill next to decodes; a small cache forces preemption.
        server = harness.Server(harness.reference_dir(name), "--max-batch-tokens", "96", "--kv-cache-blocks", "40",
                                "--block-size", "8")
        results, errors = {}, []
        rng = random.Random(5)
        delays = [rng.uniform(0, 0.3) for _ in range(64)]

        def run(index):
            try:
                time.sleep(delays[index])
                case = cases[index % len(cases)]
                tokens = []
                for message in server.stub.Stream(harness.greedy_request(case["prompt"], len(case["greedy"])),
                                                  timeout=120):
                    tokens.extend(message.token_ids)
                results[index] = tokens
            except Exception as error:  # reported below with the failing index
                errors.append((index, error))

        try:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.assertEqual(errors, [])
            for index in range(64):
                self.assertEqual(results[index], cases[index % len(cases)]["greedy"], f"stream {index}")
            load = server.wait_idle()
            self.assertEqual(load.kv_blocks_used, 0)
        finally:
            server.close()

    def test_preemption_leaves_outputs_unchanged(self):
        # Two 200-token prompts generating 200 tokens each need 50 blocks of 8 apiece;
        # the cache holds 60, so once both run one must be preempted and recomputed.
        prompt = harness.load_cases("molm-tiny")[3]["prompt"]
        other = list(reversed(prompt))
        server = harness.Server(harness.reference_dir("molm-tiny"), "--kv-cache-blocks", "60", "--block-size", "8")
        try:
            alone = [list(server.stub.Generate(harness.greedy_request(p, 200), timeout=60).token_ids)
                     for p in (prompt, other)]
            first = server.stub.Stream(harness.greedy_request(prompt, 200), timeout=60)
            tokens = list(next(first).token_ids)  # generating: its blocks are taken
            second = server.stub.Generate(harness.greedy_request(other, 200), timeout=60)
            tokens += [t for message in first for t in message.token_ids]
            self.assertEqual(tokens, alone[0])
            self.assertEqual(list(second.token_ids), alone[1])
            load = server.wait_idle()
            self.assertGreater(load.preemptions, 0)
            self.assertEqual(load.kv_blocks_used, 0)
        finally:
            server.close()

    def test_prefix_cache_reuse_leaves_outputs_unchanged(self):
        case = harness.load_cases("molm-tiny")[3]  # 200-token prompt
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            request = harness.greedy_request(case["prompt"], len(case["greedy"]))
            first = server.stub.Generate(request, timeout=60)
            second = server.stub.Generate(request, timeout=60)
            self.assertEqual(first.usage.cached_prompt_tokens, 0)
            self.assertEqual(second.usage.cached_prompt_tokens, 192)  # 12 full blocks of 16
            self.assertEqual(list(first.token_ids), case["greedy"])
            self.assertEqual(list(second.token_ids), case["greedy"])
            self.assertGreaterEqual(server.load().prefix_cache_hit_tokens, 192)
        finally:
            server.close()

    def test_seeded_sampling_is_reproducible(self):
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            def sample(seed):
                request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[3, 1, 4, 1, 5]), max_new_tokens=24,
                                             temperature=1.3, top_k=50, top_p=0.95, seed=seed, ignore_eos=True)
                return list(server.stub.Generate(request, timeout=30).token_ids)
            self.assertEqual(sample(1234), sample(1234))
            self.assertNotEqual(sample(1234), sample(99))
        finally:
            server.close()

    def test_routing_and_logprobs_are_returned_per_token(self):
        name = "pruned"
        case = harness.load_cases(name)[1]
        server = harness.Server(harness.reference_dir(name))
        try:
            info = server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
            reply = server.stub.Generate(harness.greedy_request(case["prompt"], 4, return_routing=True, logprobs=3),
                                         timeout=30)
            self.assertEqual(len(reply.routing), 4)
            self.assertEqual(len(reply.logprobs), 4)
            for token_id, token_logprob, routing in zip(reply.token_ids, reply.logprobs, reply.routing):
                self.assertEqual(token_logprob.token_id, token_id)
                self.assertEqual(token_logprob.top[0].token_id, token_id)  # greedy picks the top token
                self.assertLessEqual(token_logprob.logprob, 0)
                self.assertEqual(len(routing.layers), info.n_layer)
                for layer, experts in zip(routing.layers, info.layers):
                    self.assertEqual(len(layer.attention_experts), info.k_att)
                    self.assertEqual(len(layer.mlp_experts), info.k_mlp)
                    self.assertTrue(all(e < experts.attention_experts for e in layer.attention_experts))
                    self.assertTrue(all(e < experts.mlp_experts for e in layer.mlp_experts))
                    self.assertEqual(list(layer.mlp_gates), sorted(layer.mlp_gates, reverse=True))
            # The first generated token was predicted at the last prompt position: the fixture's routing there.
            expected = {(r["layer"], r["kind"]): r for r in case["routing"]}
            for layer_index, layer in enumerate(reply.routing[0].layers):
                reference = expected[(layer_index, "mlp")]
                self.assertEqual(sorted(layer.mlp_experts), sorted(reference["experts"][-1]))
        finally:
            server.close()

    def test_cli_streams_from_the_server(self):
        case = harness.load_cases("projected-kv")[1]
        server = harness.Server(harness.reference_dir("projected-kv"))
        try:
            output = subprocess.run([harness.CLI, "generate", "--server", server.address, "--prompt-ids",
                                     ",".join(map(str, case["prompt"])), "--max-new-tokens", str(len(case["greedy"])),
                                     "--ignore-eos"], check=True, capture_output=True, text=True, timeout=60).stdout
            self.assertEqual([int(t) for t in output.strip().split(",")], case["greedy"])
        finally:
            server.close()


if __name__ == "__main__":
    unittest.main()
