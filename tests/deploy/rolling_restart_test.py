"""Two replicas behind nginx (deploy/nginx, Debian's nginx) on loopback: streaming load is
spread over both, for gRPC and for the OpenAI HTTP API (server-sent events unbuffered). A rolling restart as the Deployment does it: a new replica starts
(surge), an old one gets SIGTERM mid-load, reports NOT_SERVING and keeps serving for its
drain delay, nginx is reloaded without it (the load balancer reacting to readiness), then
the old replica closes its listener and drains. No request fails."""
import http.client
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))
import grpc  # noqa: E402

import harness  # noqa: E402
from harness import pb, pb_grpc  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TOTAL_REQUESTS = 240
CONCURRENCY = 16
NEW_TOKENS = 24
PROMPTS = ["And it came to pass", "The best thing about computers is", "A wise man once said that",
           "Never trust a programmer who", "Love is"]


class Nginx:
    """nginx in front of `servers` (harness.Server): gRPC on `port`, the OpenAI API on `http_port`."""
    def __init__(self, servers):
        self.workdir = tempfile.mkdtemp(prefix="mf-nginx-")
        self.port = harness.free_port()
        self.http_port = harness.free_port()
        self.access_log = os.path.join(self.workdir, "access.log")
        self.render(servers)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read this private temp dir
        with open(os.path.join(harness.ROOT, "deploy", "nginx", "nginx.conf")) as handle:
            main_conf = handle.read().replace("pid /tmp/nginx-moduleformer.pid;", f"pid {self.workdir}/nginx.pid;")
        with open(os.path.join(self.workdir, "nginx.conf"), "w") as handle:
            handle.write(user + main_conf.replace("worker_processes auto;", "worker_processes 2;"))
        self.log = open(os.path.join(self.workdir, "error.log"), "w")
        self.process = subprocess.Popen([NGINX, "-p", self.workdir, "-c", "nginx.conf", "-g", "daemon off;"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not self.answers() and time.time() < deadline:
            time.sleep(0.05)

    def render(self, servers):
        with open(os.path.join(harness.ROOT, "deploy", "nginx", "moduleformer.conf.template")) as handle:
            template = string.Template(handle.read())

        def upstreams(ports):
            return "\n    ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in ports)
        rendered = template.safe_substitute(NGINX_LISTEN=f"127.0.0.1:{self.port}", NGINX_ACCESS_LOG=self.access_log,
                                            NGINX_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
                                            MODULEFORMER_UPSTREAMS=upstreams(s.port for s in servers),
                                            MODULEFORMER_HTTP_UPSTREAMS=upstreams(s.http_port for s in servers))
        with open(os.path.join(self.workdir, "moduleformer.conf"), "w") as handle:
            handle.write(rendered)

    def answers(self):
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return harness.health_status(channel, timeout=1) == 1
            except grpc.RpcError:
                return False

    def reload(self, servers):
        self.render(servers)
        self.process.send_signal(signal.SIGHUP)  # old workers finish their calls, new ones use the new list

    def upstream_counts(self):
        counts = {}
        with open(self.access_log) as handle:
            for line in handle:
                if "/moduleformer.v1.ModuleFormer/Stream" in line:
                    # A retried call lists every upstream it tried; the last one served it.
                    served_by = re.search(r"upstream=(.*?) upstream_status=", line).group(1).split(",")[-1].strip()
                    counts[served_by] = counts.get(served_by, 0) + 1
        return counts

    def retried(self):
        with open(self.access_log) as handle:
            return sum(1 for line in handle if re.search(r"upstream=\S+, \S+ upstream_status=", line))

    def close(self):
        harness.stop_process(self.process, signal.SIGQUIT, timeout=20)  # SIGQUIT: nginx's graceful stop
        self.log.close()


class RollingRestartTest(unittest.TestCase):
    def test_sigterm_of_a_replica_under_load_fails_no_request(self):
        # The delay covers the load balancer's reaction: a connection that reaches the
        # listener as it closes is reset after nginx has sent the request, which nginx
        # cannot retry (gRPC request bodies are streamed, not buffered).
        replica_flags = ("--drain-delay-seconds", "2", "--drain-grace-seconds", "30", "--max-batch-tokens", "512")
        first, second = harness.Server(None, *replica_flags), harness.Server(None, *replica_flags)
        replacement = None
        nginx = Nginx([first, second])
        channel = grpc.insecure_channel(f"127.0.0.1:{nginx.port}")
        stub = pb_grpc.ModuleFormerStub(channel)
        failures, completed, lock = [], [], threading.Lock()
        next_index = iter(range(TOTAL_REQUESTS))

        def worker():
            for index in next_index:
                request = pb.GenerateRequest(text=PROMPTS[index % len(PROMPTS)], max_new_tokens=NEW_TOKENS,
                                             temperature=0.0, ignore_eos=True)
                try:
                    tokens = [t for message in stub.Stream(request, timeout=60) for t in message.token_ids]
                    if len(tokens) != NEW_TOKENS:
                        raise AssertionError(f"request {index}: {len(tokens)} tokens")
                    with lock:
                        completed.append(index)
                except (grpc.RpcError, AssertionError) as error:
                    with lock:
                        failures.append(f"request {index}: {error}")

        try:
            threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
            for thread in threads:
                thread.start()
            while len(completed) + len(failures) < TOTAL_REQUESTS // 4:
                time.sleep(0.01)
            replacement = harness.Server(None, *replica_flags)  # surge: the new replica is ready first
            first.terminate()  # mid-load: streams are in flight on both replicas
            deadline = time.time() + 10
            while harness.health_status(first.channel, timeout=1) != 2:  # NOT_SERVING
                self.assertLess(time.time(), deadline, "the terminated replica never reported NOT_SERVING")
                time.sleep(0.02)
            first.channel.close()  # an idle connection would hold the replica's shutdown for seconds
            nginx.reload([second, replacement])
            self.assertEqual(first.process.wait(timeout=60), 0, "the terminated replica did not drain cleanly")
            for thread in threads:
                thread.join(timeout=300)
            self.assertEqual(failures, [])
            self.assertEqual(len(completed), TOTAL_REQUESTS)
            counts = nginx.upstream_counts()
            for server in (first, second, replacement):
                self.assertGreater(counts.get(server.address, 0), 0, f"{server.address} served nothing: {counts}")
            self.assertEqual(sum(counts.values()), TOTAL_REQUESTS, counts)
            print(f"served by replica: {counts}; retried after a refusal: {nginx.retried()}", file=sys.stderr)
        finally:
            channel.close()
            nginx.close()
            for server in (first, second, replacement):
                if server is not None:
                    server.close()

    def test_openai_http_api_through_nginx(self):
        servers = [harness.Server(None), harness.Server(None)]
        nginx = Nginx(servers)
        try:
            def post(body):
                connection = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=60)
                connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
                return connection, connection.getresponse()

            texts = set()
            for index in range(8):
                connection, reply = post({"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0})
                self.assertEqual(reply.status, 200)
                texts.add(json.loads(reply.read())["choices"][0]["text"])
                connection.close()
            self.assertEqual(len(texts), 1)  # every replica serves the same model
            # A stream's first events reach the client while the replica is still generating.
            connection, reply = post({"prompt": PROMPTS[1], "max_tokens": 400, "ignore_eos": True, "stream": True})
            self.assertEqual(reply.getheader("Content-Type"), "text/event-stream")
            self.assertTrue(reply.readline().startswith(b"data: "))
            running = sum(server.load().running_requests for server in servers)
            self.assertEqual(running, 1, "nginx buffered the event stream")
            rest = reply.read().decode()
            self.assertTrue(rest.rstrip().endswith("data: [DONE]"), rest[-200:])
            connection.close()
        finally:
            nginx.close()
            for server in servers:
                server.close()


if __name__ == "__main__":
    unittest.main()
