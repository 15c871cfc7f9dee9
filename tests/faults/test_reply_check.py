"""A backend whose reply cannot answer the request it is matched to (a
desynchronised or broken memcached): no byte of it reaches a client, the
requests in flight on that connection get the router's error, the router
reconnects and goes on serving, and the fault is counted and logged."""
from __future__ import annotations

import time


from support import Client, wait_until
from support.scrape import Scrape

ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
GOOD = b"VALUE k 0 1\r\nV\r\nEND\r\n"


def test_wrong_and_extra_replies_never_reach_a_client(fake, router):
    f = fake()
    f.set(b"k", b"V")
    r = router(f"orderedPool: [{f.addr}]\nroute: {{type: DefaultRoute}}\n"
               "health: {tko: 1000}\n", conns=1, metrics=True)
    victim, bystander = Client(r.port), Client(r.port)
    t0 = time.monotonic()

    def reconnected_after(accepted: int) -> None:
        """The router dropped the bad connection and made a new one; the
        bystander, connected all along, is served exactly."""
        assert wait_until(lambda: f.accepted > accepted and len(f.conns) >= 1, 10)
        assert bystander.request(b"get k\r\n", GOOD) == GOOD
        assert bystander.recv_idle(0.2) == b""

    assert bystander.request(b"get k\r\n", GOOD) == GOOD

    # a set answered with a get's reply
    accepted = f.accepted
    f.behave("garbage", count=1, garbage=b"VALUE x 0 3\r\nabc\r\nEND\r\n")
    assert victim.request(b"set k 0 0 1\r\nW\r\n", ERROR) == ERROR
    assert victim.recv_idle(0.3) == b""             # not one byte of the bad reply
    reconnected_after(accepted)
    assert r.wait_log(f"host {f.addr}: protocol error, connection closed: "
                      "a reply to set that cannot answer it: "
                      "b'VALUE x 0 3\\r\\nabc\\r\\nEND\\r\\n'", timeout=5), r.stderr()[-2000:]

    # a get answered with a storage reply
    accepted = f.accepted
    f.behave("garbage", count=1, garbage=b"STORED\r\n")
    assert victim.request(b"get k\r\n", ERROR) == ERROR
    assert victim.recv_idle(0.3) == b""
    reconnected_after(accepted)

    # an extra reply: taken as the next request's, which it cannot answer
    accepted = f.accepted
    f.behave("extra", count=1, garbage=b"STORED\r\n")
    assert victim.request(b"get k\r\nget k\r\n", GOOD + ERROR) == GOOD + ERROR
    assert victim.recv_idle(0.3) == b""
    reconnected_after(accepted)

    # an extra reply when nothing is owed
    accepted = f.accepted
    f.behave("extra", count=1, garbage=b"END\r\n")
    assert victim.request(b"get k\r\n", GOOD) == GOOD
    assert victim.recv_idle(0.3) == b""
    reconnected_after(accepted)
    elapsed = time.monotonic() - t0

    def parse_errors() -> float:
        return Scrape(r.scrape())["mcrouter_upstream_errors_total",
                                  {"host": f.addr, "reason": "parse"}]
    assert wait_until(lambda: parse_errors() == 4, 10), parse_errors()
    time.sleep(0.5)
    assert parse_errors() == 4
    if elapsed < 9:         # the four came within one log interval (10 s): one line
        assert r.stderr().count(f"host {f.addr}: protocol error") == 1, r.stderr()[-2000:]
    victim.close()
    bystander.close()
