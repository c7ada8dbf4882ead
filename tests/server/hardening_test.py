"""A careless or hostile client never takes the server down or deaf: after each
attack the server still answers a Generate."""
import http.client
import socket
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


if __name__ == "__main__":
    unittest.main()
