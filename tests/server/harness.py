"""Starts a real moduleformer-server on a free port and talks to it with grpcio.

The client code is generated from the project's proto at test time with Debian's
protoc and grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc), which
match the installed Python runtime (python3-protobuf 3.21); Debian's
python3-grpc-tools bundles protoc 3.5, which predates proto3 `optional`.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = os.environ.get("MF_SERVER_BIN", os.path.join(ROOT, "build", "moduleformer-server"))
CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
FIXTURES = os.environ.get("MF_FIXTURES_DIR", os.path.join(ROOT, "tests", "fixtures"))


def _generate_stubs():
    out = tempfile.mkdtemp(prefix="mf-pb-")
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), f"--python_out={out}", f"--grpc_out={out}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    os.path.join(ROOT, "proto", "moduleformer", "v1", "moduleformer.proto")], check=True)
    sys.path.insert(0, out)


_generate_stubs()
from moduleformer.v1 import moduleformer_pb2 as pb  # noqa: E402
from moduleformer.v1 import moduleformer_pb2_grpc as pb_grpc  # noqa: E402


def _read(path):
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read().strip()


TEXT_MODEL = os.path.join(ROOT, "tests", "server", "data", "tiny-gpt2-vocab.json")
GPT2_TOKENIZER = os.path.join(FIXTURES, "tokenizer", "gpt2")


DEMO_MODEL = os.path.join(ROOT, "models", "demo")


def reference_dir(name):
    return os.path.join(FIXTURES, "reference", name)


def reference_names():
    root = os.path.join(FIXTURES, "reference")
    return sorted(n for n in os.listdir(root) if os.path.exists(os.path.join(root, n, "cases.json")))


def load_cases(name):
    with open(os.path.join(reference_dir(name), "cases.json")) as f:
        return json.load(f)["cases"]


def health_status(channel, timeout=5):
    """grpc.health.v1 Check with hand-encoded messages: 1 = SERVING, 2 = NOT_SERVING."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    reply = check(b"", timeout=timeout)
    return reply[1] if len(reply) >= 2 else 0


class Server:
    """A moduleformer-server process on a free loopback port."""

    def __init__(self, model, *flags, tls=None, open_files=None):
        """`model`: a checkpoint directory, a config .json for random weights, or None for the default model.
        `open_files`: a hard limit on the server's descriptors (RLIMIT_NOFILE)."""
        self.workdir = tempfile.mkdtemp(prefix="mf-server-")
        port_file = os.path.join(self.workdir, "port")
        metrics_port_file = os.path.join(self.workdir, "metrics_port")
        http_port_file = os.path.join(self.workdir, "http_port")
        self.log_path = os.path.join(self.workdir, "server.log")
        if model is None:
            source = []
        else:
            source = ["--random-weights", model] if model.endswith(".json") else ["--model", model]
        args = [SERVER, *source, "--host", "127.0.0.1", "--port", "0", "--port-file", port_file,
                "--metrics-port", "0", "--metrics-port-file", metrics_port_file, "--http-port", "0",
                "--http-port-file", http_port_file, "--kv-cache-mb", "64", *flags]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.log = open(self.log_path, "w")
        limit = None
        if open_files is not None:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit)
        deadline = time.time() + 60
        while not _read(port_file):
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {_read(self.log_path)}")
            time.sleep(0.05)
        self.port = int(_read(port_file))
        self.metrics_port = int(_read(metrics_port_file) or 0)
        self.http_port = int(_read(http_port_file) or 0)
        self.address = f"127.0.0.1:{self.port}"
        if tls:
            with open(tls[0], "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(f"localhost:{self.port}", credentials)
        else:
            self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.ModuleFormerStub(self.channel)

    def scrape(self):
        """The /metrics exposition text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def load(self):
        return self.stub.GetLoad(pb.LoadRequest(), timeout=10)

    def wait_idle(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            load = self.load()
            if load.running_requests == 0 and load.waiting_requests == 0:
                return load
            time.sleep(0.05)
        raise AssertionError(f"server not idle after {timeout}s: {self.load()}")

    def terminate(self):
        self.process.send_signal(signal.SIGTERM)

    def close(self):
        self.channel.close()
        stop_process(self.process, signal.SIGTERM, timeout=30)
        self.log.close()


def self_signed_certificate():
    """(cert.pem, key.pem) of a fresh self-signed certificate for localhost."""
    workdir = tempfile.mkdtemp(prefix="mf-tls-")
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def stop_process(process, stop_signal, timeout):
    """Asks a child process to stop with `stop_signal`; kills it if it has not within `timeout` s."""
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def greedy_request(prompt, max_new_tokens, **extra):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=max_new_tokens, temperature=0.0,
                              ignore_eos=True, **extra)


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} from a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in series:
            name, rest = series.split("{", 1)
            for part in rest.rstrip("}").split(","):
                if part:
                    key, quoted = part.split("=", 1)
                    labels[key] = quoted.strip('"')
        else:
            name = series
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_and_fail(*args):
    """Runs the server with `args`, expecting it to refuse to start; returns its stderr."""
    command = [SERVER, "--port", "0", "--metrics-port", "-1", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 1:
        raise AssertionError(f"exit {result.returncode} (1 expected): {result.stderr}")
    return result.stderr


def request_counts(server):
    """{(rpc, code): count} of moduleformer_requests_total."""
    counts = {}
    for (name, labels), value in parse_metrics(server.scrape()).items():
        if name == "moduleformer_requests_total":
            labels = dict(labels)
            counts[(labels["rpc"], labels["code"])] = int(float(value))
    return counts


def log_codes(path, rpc):
    with open(path) as f:
        return [json.loads(line)["code"] for line in f if json.loads(line)["rpc"] == rpc]

