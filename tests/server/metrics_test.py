"""The Prometheus exporter and the ExpertStats RPC after known traffic: exact
counter values, expert counts equal to the reference routing, promtool, and a real
Prometheus server scraping the service."""
import collections
import json
import os
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import grpc

import harness
from harness import pb


def routing_counts(cases):
    """{(layer, mixture, expert): token slots} of the prompts' reference routing."""
    counts = collections.Counter()
    for case in cases:
        for entry in case["routing"]:
            for experts in entry["experts"]:
                for expert in experts:
                    counts[(entry["layer"], entry["kind"], expert)] += 1
    return counts


def expert_stats_counts(reply):
    counts = {}
    for layer in reply.layers:
        for kind, mixture in (("attention", layer.attention), ("mlp", layer.mlp)):
            for expert, count in enumerate(mixture.counts):
                counts[(layer.layer, kind, expert)] = count
    return counts


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cases = harness.load_cases("molm-tiny")
        cls.server = harness.Server(harness.reference_dir("molm-tiny"))
        stub = cls.server.stub
        # Known traffic: every prompt once (so nothing comes from the prefix cache), one new
        # token each, so the model routes exactly the prompt tokens the fixture records.
        for index, case in enumerate(cls.cases):
            request = harness.greedy_request(case["prompt"], 1)
            if index % 2 == 0:
                stub.Generate(request, timeout=30)
            else:
                list(stub.Stream(request, timeout=30))
        for bad in (pb.GenerateRequest(), pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), top_p=2.0)):
            with _expect_rpc_error():
                stub.Generate(bad, timeout=10)
        cls.text = cls.server.scrape()
        cls.samples = harness.parse_metrics(cls.text)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def value(self, name, **labels):
        return self.samples.get((name, frozenset(labels.items())))

    def test_request_and_token_counters_are_exact(self):
        generate, stream = (len(self.cases) + 1) // 2, len(self.cases) // 2
        self.assertEqual(self.value("moduleformer_requests_total", rpc="Generate", code="OK"), generate)
        self.assertEqual(self.value("moduleformer_requests_total", rpc="Stream", code="OK"), stream)
        self.assertEqual(self.value("moduleformer_requests_total", rpc="Generate", code="INVALID_ARGUMENT"), 2)
        self.assertEqual(self.value("moduleformer_prompt_tokens_total"), sum(len(c["prompt"]) for c in self.cases))
        self.assertEqual(self.value("moduleformer_generated_tokens_total"), len(self.cases))
        self.assertEqual(self.value("moduleformer_request_duration_seconds_count"), len(self.cases))
        self.assertEqual(self.value("moduleformer_kv_cache_blocks_used"), 0)
        self.assertEqual(self.value("moduleformer_requests_running"), 0)
        self.assertGreater(self.value("moduleformer_device_memory_bytes", kind="weights"), 0)

    def test_step_time_is_split_into_its_parts(self):
        busy = self.value("moduleformer_engine_busy_seconds_total")
        parts = [self.value(f"moduleformer_{part}_seconds_total") for part in ("forward", "sampling")]
        parts.append(self.value("moduleformer_metrics_recording_seconds_total"))
        self.assertTrue(all(part is not None and part >= 0 for part in parts), parts)
        self.assertGreater(parts[0], 0)  # the forward passes of the traffic above
        self.assertLessEqual(sum(parts), busy)
        # Updates are handed to their calls on the delivery thread, beside the steps.
        self.assertGreater(self.value("moduleformer_update_delivery_seconds_total"), 0)

    def test_expert_counters_match_the_reference_routing(self):
        expected = routing_counts(self.cases)
        info = self.server.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        for layer, experts in enumerate(info.layers):
            for kind, count in (("attention", experts.attention_experts), ("mlp", experts.mlp_experts)):
                for expert in range(count):
                    self.assertEqual(self.value("moduleformer_expert_tokens_total", layer=str(layer), mixture=kind,
                                                expert=str(expert)), expected[(layer, kind, expert)],
                                     (layer, kind, expert))
        stats = self.server.stub.ExpertStats(pb.ExpertStatsRequest(), timeout=10)
        self.assertEqual(expert_stats_counts(stats), {key: expected[key] for key in expert_stats_counts(stats)})
        self.assertEqual(stats.tokens, sum(len(c["prompt"]) for c in self.cases))
        for layer in stats.layers:
            self.assertEqual(max(layer.mlp.frequency), 1.0)
            peak = max(layer.mlp.counts)
            for count, frequency in zip(layer.mlp.counts, layer.mlp.frequency):
                self.assertAlmostEqual(frequency, count / peak)

    def test_promtool_accepts_the_exposition(self):
        result = subprocess.run(["promtool", "check", "metrics"], input=self.text, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_a_real_prometheus_scrapes_expert_load(self):
        workdir = tempfile.mkdtemp(prefix="mf-prometheus-")
        port = harness.free_port()
        with open(os.path.join(workdir, "prometheus.yml"), "w") as config:
            config.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: moduleformer\n"
                         f"    static_configs:\n      - targets: ['127.0.0.1:{self.server.metrics_port}']\n")
        log = open(os.path.join(workdir, "prometheus.log"), "w")
        prometheus = subprocess.Popen(["prometheus", f"--config.file={workdir}/prometheus.yml",
                                       f"--storage.tsdb.path={workdir}/data", f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            query = urllib.parse.urlencode({"query": 'moduleformer_expert_tokens_total{layer="0",mixture="mlp"}'})
            series = []
            deadline = time.time() + 60
            while time.time() < deadline and not series:
                time.sleep(0.5)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{query}", timeout=5) as reply:
                        series = json.load(reply)["data"]["result"]
                except OSError:
                    continue
            self.assertEqual(len(series), 8, harness._read(os.path.join(workdir, "prometheus.log"))[-2000:])
            expected = routing_counts(self.cases)
            for entry in series:
                expert = int(entry["metric"]["expert"])
                self.assertEqual(float(entry["value"][1]), expected[(0, "mlp", expert)])
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
            log.close()


class _expect_rpc_error:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, grpc.RpcError)


class ExpertStatsTest(unittest.TestCase):
    def test_reset_and_tag_filtering(self):
        cases = harness.load_cases("molm-tiny")
        server = harness.Server(harness.reference_dir("molm-tiny"))
        try:
            stub = server.stub
            stub.Generate(harness.greedy_request(cases[2]["prompt"], 1), timeout=30)
            before = stub.ExpertStats(pb.ExpertStatsRequest(reset=True), timeout=10)
            self.assertEqual(before.tokens, len(cases[2]["prompt"]))
            after = stub.ExpertStats(pb.ExpertStatsRequest(), timeout=10)
            self.assertEqual(after.tokens, 0)
            self.assertTrue(all(c == 0 for c in expert_stats_counts(after).values()))
            # Tagged and untagged traffic together; the tag sees only its own tokens.
            stub.Generate(harness.greedy_request(cases[1]["prompt"], 1, stats_tag="task-a"), timeout=30)
            stub.Generate(harness.greedy_request(cases[0]["prompt"], 1), timeout=30)
            tagged = stub.ExpertStats(pb.ExpertStatsRequest(stats_tag="task-a"), timeout=10)
            self.assertEqual(tagged.tokens, len(cases[1]["prompt"]))
            expected = routing_counts([cases[1]])
            self.assertEqual(expert_stats_counts(tagged), {k: expected[k] for k in expert_stats_counts(tagged)})
            everything = stub.ExpertStats(pb.ExpertStatsRequest(), timeout=10)
            self.assertEqual(everything.tokens, len(cases[1]["prompt"]) + len(cases[0]["prompt"]))
            # The Prometheus counters never reset.
            samples = harness.parse_metrics(server.scrape())
            total = sum(v for (name, _), v in samples.items() if name == "moduleformer_expert_tokens_total")
            self.assertEqual(total, 2 * 2 * 2 * (len(cases[2]["prompt"]) + len(cases[1]["prompt"]) + len(cases[0]["prompt"])))
            # The CLI prints the same numbers.
            output = subprocess.run([harness.CLI, "expert-stats", "--server", server.address, "--json"],
                                    check=True, capture_output=True, text=True, timeout=30).stdout
            self.assertEqual(json.loads(output)["tokens"], everything.tokens)
        finally:
            server.close()


if __name__ == "__main__":
    unittest.main()
