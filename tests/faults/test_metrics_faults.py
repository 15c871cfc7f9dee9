"""Metrics for what goes wrong upstream: timeouts, unparseable replies,
broken connections and refused connects, counted exactly, by host and reason."""
from __future__ import annotations

import time


from support import Client, free_port, wait_until
from support.scrape import Scrape

TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"


def test_upstream_failures_are_counted_by_host_and_reason(fake, router):
    f = fake()
    dead = f"127.0.0.1:{free_port()}"               # nobody listens: connects are refused
    config = (f"orderedPool: [{f.addr}, {dead}]\nroute: {{type: DefaultRoute}}\n"
              "health: {tko: 1000}\n")              # no TKO: every request reaches the fake
    r = router(config, workers=2, timeout_ms=1000, metrics=True)

    # 6 requests that time out (3 pipelined on each of two clients)
    f.behave("hang")
    clients = [Client(r.port), Client(r.port)]
    for c in clients:
        c.send(b"get a\r\nget b\r\nget c\r\n")
    for c in clients:
        assert c.recv_exact(3 * len(TIMEOUT)) == 3 * TIMEOUT
    time.sleep(2.5)                                 # the hung connections are dropped (2 x -r)

    f.behave("garbage", count=1)                    # one unparseable reply
    assert clients[0].call(b"get d\r\n") == ERROR
    f.behave("torn", count=1)                       # one connection closed mid-reply
    assert clients[1].call(b"get e\r\n") == ERROR
    for c in clients:
        c.close()

    def final() -> Scrape:
        return Scrape(r.scrape())
    assert wait_until(lambda: final()["mcrouter_host_up", {"host": dead}] == 0, 10)
    s = final()
    for reason, n in (("timeout", 6), ("parse", 1), ("reset", 1), ("connect", 0)):
        assert s["mcrouter_upstream_errors_total", {"host": f.addr, "reason": reason}] == n, reason
    assert s["mcrouter_upstream_errors_total", {"host": dead, "reason": "connect"}] >= 1
    for reason in ("timeout", "parse", "reset"):
        assert s["mcrouter_upstream_errors_total", {"host": dead, "reason": reason}] == 0
    assert s["mcrouter_requests_total", {"cmd": "get"}] == 8
    assert s["mcrouter_request_duration_seconds_count", {"cmd": "get"}] == 8
    # the 6 timeouts took at least -r (1 s); the two errors came at once
    assert s["mcrouter_request_duration_seconds_bucket", {"cmd": "get", "le": "0.5"}] == 2
    assert s["mcrouter_upstream_requests_total", {"cmd": "get", "host": f.addr}] == 8
    assert s["mcrouter_upstream_request_duration_seconds_count",
             {"cmd": "get", "host": f.addr}] == 0, "no reply came in time"
    assert s["mcrouter_router_replies_total", {"reason": "upstream_timeout"}] == 6
    assert s["mcrouter_router_replies_total", {"reason": "upstream_error"}] == 2
    assert s["mcrouter_healthy_hosts"] == 1
    assert s["mcrouter_upstream_connections", {"host": dead}] == 0
