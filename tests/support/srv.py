"""A memcached pool published as SRV records in the test's own DNS zone, and
a pipelined load over its keys (the discovery and fleet tests share these)."""
from __future__ import annotations

import random
import threading
import time

from .client import Client
from .dnszone import DnsZone

SRV = "_memcache._tcp.mc.test"
KEYS = [f"key:{i}" for i in range(300)]


def target(i: int) -> str:
    return f"mc-{i}.mc.test"


def publish(zone: DnsZone, servers: dict[int, "object"], v6: frozenset[int] = frozenset()) -> None:
    """SRV records for ``servers`` (index → memcached), each target at
    127.0.0.1, or at ::1 alone for those in ``v6``."""
    zone.set_srv(SRV, [(target(i), m.port, 1) for i, m in servers.items()],
                 {target(i): "127.0.0.1" for i in servers if i not in v6})
    for i in v6:
        zone.set(target(i), "A", [])
        zone.set(target(i), "AAAA", ["::1"])


class Load:
    """Pipelined gets over every key from a few clients until stopped; every
    reply checked: a hit or a miss, never an error, never a closed connection."""

    def __init__(self, port: int, clients: int = 3, depth: int = 32) -> None:
        self.port = port
        self.depth = depth
        self.stop = threading.Event()
        self.errors: list[bytes] = []
        self.closed = 0
        self.batches = 0
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True)
                        for n in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, n: int) -> None:
        rnd = random.Random(n)
        with Client(self.port) as c:
            while not self.stop.is_set():
                keys = [rnd.choice(KEYS) for _ in range(self.depth)]
                c.send(b"".join(b"get %s\r\n" % k.encode() for k in keys))
                got = b""
                deadline = time.monotonic() + 10
                while got.count(b"END\r\n") + got.count(b"SERVER_ERROR") < len(keys):
                    more = c.recv_until(b"\r\n", timeout=max(0.1, deadline - time.monotonic()))
                    if not more:
                        if c.eof:
                            self.closed += 1
                        else:
                            self.errors.append(b"no reply within 10s")
                        return
                    got += more
                if b"SERVER_ERROR" in got or b"ERROR" in got.replace(b"SERVER_ERROR", b""):
                    self.errors.append(got[:200])
                self.batches += 1

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
