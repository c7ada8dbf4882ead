"""Mixed load against a real server for a set time: greedy and sampled Generate and Stream
calls, streams cancelled midway and left unread, short deadlines, invalid requests, and
metrics scrapes. Fails on any status a call of its kind should not get, on a crash, on
resident memory above a ceiling, or on KV blocks still held once the load stops.

    python3 soak.py [SECONDS] [RSS_CEILING_MB]      (scripts/soak.sh runs it)
"""
import collections
import random
import sys
import threading
import time

import grpc

import harness
from harness import pb

CODE = grpc.StatusCode


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, seconds, rss_ceiling_mb):
        self.seconds = seconds
        self.rss_ceiling_mb = rss_ceiling_mb
        self.server = harness.Server(harness.reference_dir("molm-tiny"), "--max-queued", "64",
                                     "--stream-stall-timeout-seconds", "5", "--max-context", "2048")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()
        self.failures = []
        self.peak_rss = 0.0

    def record(self, kind, code, allowed, details=""):
        with self.lock:
            self.outcomes[(kind, code.name)] += 1
            if code not in allowed:
                self.failures.append(f"{kind}: {code.name} {details}")

    def call(self, kind, allowed, function):
        try:
            function()
            self.record(kind, CODE.OK, allowed)
        except grpc.RpcError as error:
            self.record(kind, error.code(), allowed, error.details())

    def request(self, rng, **extra):
        prompt = [rng.randrange(1, 500) for _ in range(rng.randrange(1, 200))]
        sampled = rng.random() < 0.5
        fields = dict(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=rng.randrange(1, 64), ignore_eos=True,
                      temperature=rng.choice([0.7, 1.0, 1.3]) if sampled else 0.0, seed=rng.randrange(1 << 30))
        if sampled:
            fields.update(top_p=rng.choice([0.5, 0.9, 1.0]), top_k=rng.choice([0, 5, 50]))
        fields.update(extra)
        return pb.GenerateRequest(**fields)

    def client(self, seed):
        rng = random.Random(seed)
        stub = self.server.stub
        busy = (CODE.OK, CODE.RESOURCE_EXHAUSTED)
        while not self.stop.is_set():
            choice = rng.random()
            if choice < 0.3:
                self.call("generate", busy, lambda: stub.Generate(self.request(rng), timeout=60))
            elif choice < 0.5:
                self.call("stream", busy, lambda: list(stub.Stream(self.request(rng, logprobs=3), timeout=60)))
            elif choice < 0.65:
                stream = stub.Stream(self.request(rng, max_new_tokens=500), timeout=60)

                def cancel_midway():
                    for index, _ in enumerate(stream):
                        if index == 3:
                            stream.cancel()
                self.call("cancelled-stream", busy + (CODE.CANCELLED,), cancel_midway)
            elif choice < 0.75:
                self.call("short-deadline", busy + (CODE.DEADLINE_EXCEEDED,),
                          lambda: stub.Generate(self.request(rng, max_new_tokens=1000), timeout=0.05))
            elif choice < 0.85:
                bad = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 99999]), max_new_tokens=4)
                self.call("invalid", (CODE.INVALID_ARGUMENT,), lambda: stub.Generate(bad, timeout=10))
            elif choice < 0.9:
                # Read one message and walk away: paused, then cancelled by the stall timeout.
                stream = stub.Stream(self.request(rng, max_new_tokens=1500), timeout=30)
                self.call("abandoned-stream", busy + (CODE.CANCELLED, CODE.DEADLINE_EXCEEDED), lambda: next(stream))
            else:
                self.call("scrape", (CODE.OK,), self.server.scrape)

    def watch(self):
        while not self.stop.is_set():
            if self.server.process.poll() is not None:
                self.failures.append(f"server exited with {self.server.process.returncode}")
                self.stop.set()
                return
            self.peak_rss = max(self.peak_rss, rss_mb(self.server.process.pid))
            if self.peak_rss > self.rss_ceiling_mb:
                self.failures.append(f"resident memory {self.peak_rss:.0f} MB above {self.rss_ceiling_mb} MB")
                self.stop.set()
                return
            time.sleep(0.5)

    def run(self):
        threads = [threading.Thread(target=self.client, args=(seed,)) for seed in range(12)]
        threads.append(threading.Thread(target=self.watch))
        for thread in threads:
            thread.start()
        self.stop.wait(self.seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        try:
            if self.server.process.poll() is None:
                load = self.server.wait_idle(timeout=30)
                if load.kv_blocks_used != 0:
                    self.failures.append(f"{load.kv_blocks_used} KV blocks held after the load stopped")
        finally:
            self.server.close()
        for (kind, code), count in sorted(self.outcomes.items()):
            print(f"{kind:18} {code:20} {count}")
        print(f"peak resident memory {self.peak_rss:.0f} MB (ceiling {self.rss_ceiling_mb} MB)")
        for failure in self.failures[:20]:
            print("FAIL:", failure)
        return not self.failures


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    ceiling = float(sys.argv[2]) if len(sys.argv) > 2 else 1024
    sys.exit(0 if Soak(seconds, ceiling).run() else 1)
