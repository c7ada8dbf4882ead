"""Deployment files checked for real: the kustomize overlays render and validate offline
against the Kubernetes / Prometheus Operator / Gateway API schemas; promtool checks and
unit-tests the alert rules; the dashboard, rules and autoscaler use only metrics a running
server exports; yamllint and a Dockerfile linter pass."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))
import harness  # noqa: E402
from harness import pb  # noqa: E402

ROOT = harness.ROOT
DEPLOY = os.path.join(ROOT, "deploy")
VALIDATOR = os.path.join(DEPLOY, "validate")
# Series Prometheus itself makes; everything else must come from the server.
PROMETHEUS_SERIES = {"up"}


def render(overlay):
    result = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "k8s", "overlays", overlay)],
                            capture_output=True, text=True, check=True)
    return result.stdout


def by_kind(documents, kind):
    return [d for d in documents if d["kind"] == kind]


def flag_value(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def prometheus_rule_groups():
    with open(os.path.join(DEPLOY, "k8s", "monitoring", "prometheusrule.yaml")) as handle:
        return yaml.safe_load(handle)["spec"]["groups"]


def metric_names(expression):
    """Metric names in a PromQL expression: identifiers that are not functions, labels or keywords."""
    without_strings = re.sub(r'"[^"]*"|\'[^\']*\'', "", expression)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)  # matchers, ranges
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    names = set()
    for match in re.finditer(r"(?<![0-9.])[a-zA-Z_:][a-zA-Z0-9_:]*", without_grouping):  # not 1e-9
        token, rest = match.group(0), without_grouping[match.end():]
        if rest.lstrip().startswith("(") or token in {"by", "and", "or", "unless", "bool", "offset"}:
            continue
        names.add(token)
    return names


class ManifestsTest(unittest.TestCase):
    def test_overlays_render_and_validate_against_the_api_schemas(self):
        for overlay in ("gpu", "cpu"):
            text = render(overlay)
            validation = subprocess.run(["node", os.path.join(VALIDATOR, "validate.mjs")], input=text,
                                        capture_output=True, text=True)
            self.assertEqual(validation.returncode, 0, f"{overlay}: {validation.stdout}{validation.stderr}")
            documents = [d for d in yaml.safe_load_all(text) if d]
            kinds = {d["kind"] for d in documents}
            for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor",
                         "PrometheusRule", "GRPCRoute", "HTTPRoute", "ConfigMap", "Namespace"):
                self.assertIn(kind, kinds, overlay)
            self.assertIn(f"{len(documents)} documents, 0 invalid", validation.stdout)
            self.check_deployment(overlay, by_kind(documents, "Deployment")[0])
            services = by_kind(documents, "Service")
            self.assertEqual(sorted(s["spec"].get("clusterIP", "") for s in services), ["", "None"])

    def check_deployment(self, overlay, deployment):
        pod = deployment["spec"]["template"]["spec"]
        server = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(server[probe]["grpc"]["port"], 50051, f"{overlay} {probe}")
        startup = server["startupProbe"]
        self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"], 300, "model loading time")
        pre_stop = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace = int(flag_value(server["args"], "drain-grace-seconds"))
        delay = int(flag_value(server["args"], "drain-delay-seconds"))
        self.assertGreater(pod["terminationGracePeriodSeconds"], pre_stop + delay + grace)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        # API keys come from a Secret mounted where --api-key-file points.
        key_file = flag_value(server["args"], "api-key-file")
        mount = next(m for m in server["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        self.assertEqual(volume["secret"]["secretName"], "moduleformer-api-keys")
        self.assertTrue(mount["readOnly"])
        self.assertEqual(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        if overlay == "gpu":
            self.assertEqual(server["resources"]["limits"]["nvidia.com/gpu"], "1")
            self.assertEqual(flag_value(server["args"], "device"), "cuda")
            self.assertTrue(server["image"].endswith(":cuda"))
        else:
            self.assertEqual(flag_value(server["args"], "device"), "cpu")
            self.assertNotIn("nvidia.com/gpu", server["resources"].get("limits", {}))

    def test_alert_rules_pass_promtool_check_and_unit_tests(self):
        work = tempfile.mkdtemp(prefix="mf-rules-")
        with open(os.path.join(work, "rules.yaml"), "w") as handle:
            yaml.safe_dump({"groups": prometheus_rule_groups()}, handle)
        shutil.copy(os.path.join(ROOT, "tests", "deploy", "alerts_test.yaml"), work)
        check = subprocess.run(["promtool", "check", "rules", "rules.yaml"], cwd=work, capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("SUCCESS: 7 rules found", check.stdout)
        test = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=work, capture_output=True, text=True)
        self.assertEqual(test.returncode, 0, test.stdout + test.stderr)
        alerts = {r["alert"] for g in prometheus_rule_groups() for r in g["rules"] if "alert" in r}
        with open(os.path.join(work, "alerts_test.yaml")) as handle:
            tested = {t["alertname"] for case in yaml.safe_load(handle)["tests"] for t in case["alert_rule_test"]}
        self.assertEqual(alerts, tested, "every alert has a unit test")

    def test_dashboard_rules_and_autoscaler_use_only_exported_metrics(self):
        server = harness.Server(None)
        try:
            server.stub.Generate(pb.GenerateRequest(text="In the beginning", max_new_tokens=4), timeout=30)
            list(server.stub.Stream(pb.GenerateRequest(text="Love is", max_new_tokens=4), timeout=30))
            exported = {name for name, _ in harness.parse_metrics(server.scrape())}
        finally:
            server.close()
        with open(os.path.join(DEPLOY, "grafana", "moduleformer-dashboard.json")) as handle:
            dashboard = json.load(handle)
        used = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for name in metric_names(target["expr"]):
                    used.setdefault(name, f"dashboard panel '{panel['title']}'")
        recorded = set()
        for group in prometheus_rule_groups():
            for rule in group["rules"]:
                recorded.add(rule.get("record"))
                for name in metric_names(rule["expr"]):
                    used.setdefault(name, f"rule {rule.get('alert') or rule.get('record')}")
        text = render("cpu")
        for document in yaml.safe_load_all(text):
            if document and document["kind"] == "HorizontalPodAutoscaler":
                for metric in document["spec"]["metrics"]:
                    used.setdefault(metric["pods"]["metric"]["name"], "HorizontalPodAutoscaler")
            if document and document["metadata"]["name"] == "moduleformer-prometheus-adapter-rules":
                for rule in yaml.safe_load(document["data"]["config.yaml"])["rules"]:
                    used.setdefault(rule["seriesQuery"].split("{")[0], "prometheus-adapter rule")
        self.assertGreater(len(used), 15)
        unknown = {name: where for name, where in used.items()
                   if name not in exported and name not in recorded and name not in PROMETHEUS_SERIES}
        self.assertEqual(unknown, {})
        panel_titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
        for topic in ("status", "first token", "inter-token", "end-to-end", "throughput", "batch", "kv cache",
                      "heatmap", "imbalance"):
            self.assertIn(topic, panel_titles)
        self.assertEqual(len({p["id"] for p in dashboard["panels"]}), len(dashboard["panels"]))

    def test_yaml_lints_clean(self):
        result = subprocess.run(["yamllint", "-c", os.path.join(DEPLOY, ".yamllint"), DEPLOY,
                                 os.path.join(ROOT, "tests", "deploy")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_dockerfile_lints_clean(self):
        result = subprocess.run([os.path.join(VALIDATOR, "node_modules", ".bin", "dockerfilelint"),
                                 os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("Issues: None found", result.stdout)


if __name__ == "__main__":
    unittest.main()
