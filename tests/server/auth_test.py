"""Client authentication: API keys (`--api-key-file`) and client certificates
(`--tls-client-ca`)."""
import os
import pathlib
import subprocess
import tempfile
import time
import unittest

import grpc

import harness
from harness import pb, start_and_fail


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
