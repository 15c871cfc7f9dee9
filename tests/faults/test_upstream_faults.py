"""Upstream faults: a fake memcached that hangs, answers late, answers
garbage or tears a reply, with the router in front of it.

Only generous upper bounds on time are asserted (the machine is noisy):
the point is that a reply comes, exactly the router's error text, in the
right slot, and that the router recovers.
"""
from __future__ import annotations

import time

import pytest


from support import Client, pool_config, show, wait_until

TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
LOCAL_VERSION = b"VERSION 1.6.18\r\n"


def timed_request(c: Client, req: bytes, expect: bytes, bound: float) -> tuple[bytes, float]:
    t0 = time.monotonic()
    got = c.request(req, expect, timeout=bound)
    return got, time.monotonic() - t0


def wait_serving(port: int, req: bytes, expect: bytes, transient: tuple[bytes, ...],
                 timeout: float = 15.0) -> None:
    """Poll on fresh connections until ``req`` gets ``expect`` (the router has
    reconnected); in between only ``transient`` replies are acceptable."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        with Client(port, timeout=5) as c:
            c.send(req)
            last = c.recv_one_of((expect, *transient))
            if last == expect:
                return
        assert last in transient, f"unexpected reply {show(last)}"
        time.sleep(0.1)
    pytest.fail(f"router did not recover: last reply {show(last)}")


# ---------------------------------------------------------------------------
# timeouts

@pytest.mark.parametrize("req,count", [
    (b"get a\r\n", 1),
    (b"get a\r\nset b 0 0 1\r\nx\r\nmg c v\r\nget a b c\r\nset d 0 0 1 noreply\r\nx\r\n", 5),
], ids=["single", "pipeline"])
def test_hanging_upstream_times_out(fake, router, req, count):
    f = fake()
    f.behave("hang")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=200)
    with r.client() as c:
        # one timeout per request, in order (a noreply request is owed an
        # error too: errors are always sent, as memcached sends its SERVER_ERRORs)
        got, took = timed_request(c, req, TIMEOUT * count, bound=10)
        assert got == TIMEOUT * count
        assert took < 5, f"timeout reply took {took:.1f}s with -r 200"
        assert c.recv_idle(0.3) == b""
    # a hung connection is eventually dropped by the router (it does not leak it)
    assert wait_until(lambda: f.closed_by_peer >= 1, 10), "router never closed the hung connection"
    # and the router keeps answering: the host is retried, so a timeout again
    # (or, while it reconnects, one of its connection errors)
    with r.client() as c:
        c.send(b"get a\r\n")
        got = c.recv_one_of((TIMEOUT, ERROR, NO_HEALTHY), timeout=10)
        assert got in (TIMEOUT, ERROR, NO_HEALTHY)


def test_timeouts_keep_slots_with_local_replies_in_between(fake, router):
    f = fake()
    f.behave("hang")
    cfg = pool_config([f], "OperationSelectorRoute", version="LocalRoute", mn="LocalRoute")
    r = router(cfg, timeout_ms=200)
    with r.client() as c:
        req = b"get a\r\nversion\r\nget b\r\nmn\r\nversion\r\n"
        exp = TIMEOUT + LOCAL_VERSION + TIMEOUT + b"MN\r\n" + LOCAL_VERSION
        assert c.request(req, exp, timeout=10) == exp


@pytest.mark.parametrize("second_sent", ["before-late-reply", "after-late-reply"])
def test_late_reply_is_discarded_without_shifting(fake, router, second_sent):
    """The first reply comes after the timeout; it must be dropped and the
    second request must still get its own reply."""
    f = fake()
    f.set(b"first", b"ONE")
    f.set(b"second", b"TWO")
    # -r 1000 and a 1.5 s delay: the late reply lands well after the timeout
    # (1 s) and well before the router would give up on the connection (2 s).
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=1000, conns=1)
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION fake\r\n") == b"VERSION fake\r\n"
        f.behave("delay", count=1, delay=1.5)
        got, took = timed_request(c, b"get first\r\n", TIMEOUT, bound=10)
        assert got == TIMEOUT
        assert took < 8
        if second_sent == "after-late-reply":
            time.sleep(1.0)              # the late reply (at ~1.5 s) has arrived by now
        two = b"VALUE second 0 3\r\nTWO\r\nEND\r\n"
        assert c.request(b"get second\r\n", two, timeout=10) == two
        one = b"VALUE first 0 3\r\nONE\r\nEND\r\n"
        assert c.request(b"get first\r\n", one, timeout=10) == one
        assert c.recv_idle(0.3) == b""
    assert f.closed_by_peer == 0, "the router dropped the connection instead of discarding the late reply"


def test_timeout_on_one_client_does_not_shift_another(fake, router):
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=1000, conns=1)
    with r.client() as a, r.client() as b:
        assert a.request(b"version\r\n", b"VERSION fake\r\n") == b"VERSION fake\r\n"
        assert b.request(b"version\r\n", b"VERSION fake\r\n") == b"VERSION fake\r\n"
        f.behave("delay", count=1, delay=1.5)
        a.send(b"get k\r\n")
        assert a.recv_exact(len(TIMEOUT), timeout=10) == TIMEOUT
        # b's requests go on the same upstream connection, behind the late reply to a
        b.send(b"get k\r\nmg k v\r\n")
        exp = b"VALUE k 0 1\r\nV\r\nEND\r\nVA 1\r\nV\r\n"
        assert b.recv_exact(len(exp), timeout=10) == exp
        assert a.recv_idle(0.3) == b"" and b.recv_idle(0.1) == b""


# ---------------------------------------------------------------------------
# broken replies

@pytest.mark.parametrize("garbage", [b"HTTP/1.1 200 OK\r\n", b"VALUE x 0 notanumber\r\n",
                                     b"bare newline\n", b"VALUE k 0 1\r\nXY\r\nEND\r\n"],
                         ids=["http", "bad-length", "bare-lf", "bad-block-end"])
def test_garbage_reply_fails_in_flight_and_recovers(fake, router, garbage):
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), conns=1)
    good = b"VALUE k 0 1\r\nV\r\nEND\r\n"
    with r.client() as c:
        assert c.request(b"get k\r\n", good) == good
        f.behave("garbage", count=1, garbage=garbage)
        # three requests in flight on the connection that gets the garbage
        got = c.request(b"get k\r\nget k\r\nget k\r\n", ERROR * 3, timeout=10)
        assert got == ERROR * 3
        assert c.recv_idle(0.3) == b""
    wait_serving(r.port, b"get k\r\n", good, (ERROR, NO_HEALTHY))
    assert f.accepted >= 2, "the router did not reconnect"


def test_an_endless_reply_line_is_garbage_at_64_kib_not_held_per_key(fake, router):
    """A reply line never longer than a few hundred bytes: 3 MB without a
    CRLF to a 100-key get was held (up to the reply bound times the keys
    asked, 100 MB here) until the request timed out; it is garbage once
    64 KiB came without an end, so the request fails at once as an error."""
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), conns=1, timeout_ms=20000)
    good = b"VALUE k 0 1\r\nV\r\nEND\r\n"
    keys = b" ".join(b"k%d" % i for i in range(100))
    with r.client() as c:
        assert c.request(b"get k\r\n", good) == good
        f.behave("garbage", count=1, garbage=b"VALUE k0 0 1\r\nV\r\nVALUE " + b"x" * (3 << 20))
        # the complete value already went out (streamed); the error ends the reply
        want = b"VALUE k0 0 1\r\nV\r\n" + ERROR
        start = time.monotonic()
        assert c.request(b"get " + keys + b"\r\n", want, timeout=10) == want
        assert time.monotonic() - start < 10        # not the 20 s upstream timeout
        assert c.recv_idle(0.3) == b""
    wait_serving(r.port, b"get k\r\n", good, (ERROR, NO_HEALTHY))


def test_torn_reply_fails_in_flight_and_recovers(fake, router):
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), conns=1)
    good = b"VALUE k 0 1\r\nV\r\nEND\r\n"
    with r.client() as c:
        assert c.request(b"get k\r\n", good) == good
        f.behave("torn", count=1)
        got = c.request(b"get k\r\nmg k v\r\nget k\r\n", ERROR * 3, timeout=10)
        assert got == ERROR * 3
        # none of the torn bytes leaked to the client
        assert c.recv_idle(0.3) == b""
    wait_serving(r.port, b"get k\r\n", good, (ERROR, NO_HEALTHY))


def test_unsolicited_bytes_drop_the_connection_not_the_router(fake, router):
    """Bytes from upstream that no request asked for: the router reconnects."""
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), conns=1)
    good = b"VALUE k 0 1\r\nV\r\nEND\r\n"
    with r.client() as c:
        assert c.request(b"get k\r\n", good) == good
    assert wait_until(lambda: len(f.conns) >= 1, 5)
    with f.lock:
        conns = list(f.conns)
    for conn in conns:
        conn.sendall(b"END\r\n")
    wait_serving(r.port, b"get k\r\n", good, (ERROR, NO_HEALTHY))


def test_miss_failover_moves_on_after_timeout_and_error(fake, memcached, router):
    """MissFailoverRoute treats an upstream timeout as an error and tries the next host."""
    f = fake()
    f.behave("hang")
    m = memcached()
    m.set("k", b"real")
    r = router(pool_config([f, m], "MissFailoverRoute"), timeout_ms=200)
    exp = b"VALUE k 0 4\r\nreal\r\nEND\r\n"
    with r.client() as c:
        assert c.request(b"get k\r\n", exp, timeout=10) == exp
        assert c.request(b"get k nokey\r\n", exp, timeout=10) == exp


def test_all_fastest_answers_despite_hanging_host(fake, memcached, router):
    f = fake()
    f.behave("hang")
    m = memcached()
    r = router(pool_config([f, m], "AllFastestRoute"), timeout_ms=500)
    with r.client() as c:
        assert c.request(b"set k 0 0 1\r\nx\r\n", b"STORED\r\n", timeout=10) == b"STORED\r\n"
        assert c.request(b"get k\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n", timeout=10) \
            == b"VALUE k 0 1\r\nx\r\nEND\r\n"
        # with every host failing: the last failure reply, else the router's error
        assert c.request(b"delete nokey\r\n", b"NOT_FOUND\r\n", timeout=10) == b"NOT_FOUND\r\n"


# ---------------------------------------------------------------------------
# graceful stop with requests in flight upstream

def test_sigterm_finishes_requests_in_flight(fake, router):
    """SIGTERM while a reply is still on its way from a slow upstream: the
    client gets the real reply, then the connection closes; exit status 0."""
    import signal
    f = fake()
    f.set(b"k", b"slow")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=5000, conns=1)
    exp = b"VALUE k 0 4\r\nslow\r\nEND\r\nVALUE k 0 4\r\nslow\r\nEND\r\n"
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION fake\r\n") == b"VERSION fake\r\n"
        f.behave("delay", count=1, delay=1.0)
        c.send(b"get k\r\nget k\r\n")
        assert f.wait_requests(3)                 # both are upstream now
        r.signal(signal.SIGTERM)
        got = c.recv_exact(len(exp), timeout=15)
        assert got == exp
        assert c.is_closed(10)
        assert c.buf == b""
    assert r.wait(15) == 0, r.stderr()


def test_sigterm_with_a_partial_request_buffered(fake, router):
    """A request cut in half when SIGTERM comes is not answered; everything
    before it is, then the connection closes at that boundary."""
    import signal
    f = fake()
    f.set(b"k", b"v")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=5000, conns=1)
    with r.client() as c:
        exp = b"VALUE k 0 1\r\nv\r\nEND\r\n"
        assert c.request(b"get k\r\nset half 0 0 10\r\nabc", exp) == exp
        r.signal(signal.SIGTERM)
        assert c.is_closed(15)
        assert c.buf == b""
    assert r.wait(15) == 0, r.stderr()
    with f.lock:
        assert not any(line.startswith(b"set half") for line in f.requests)


def test_sigterm_grace_is_bounded(fake, router):
    """A request stuck on a hung upstream cannot hold the router past
    --graceful-timeout: it stops, exit status 0, and the client sees at most
    a complete router error for that request (never a partial reply)."""
    import signal
    f = fake()
    f.behave("hang")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=60000,
               extra=["--graceful-timeout", "1"])
    with r.client() as c:
        c.send(b"get k\r\n")
        assert f.wait_requests(1)
        t0 = time.monotonic()
        r.signal(signal.SIGTERM)
        code = r.wait(20)
        took = time.monotonic() - t0
        assert code == 0, r.stderr()
        assert took < 15, f"stop took {took:.1f}s with --graceful-timeout 1"
        assert c.is_closed(5)
        assert bytes(c.buf) in (b"", ERROR, TIMEOUT, b"SERVER_ERROR mcrouter: shutting down\r\n")


def test_trickled_replies_are_reassembled(fake, router):
    """Replies arriving one byte at a time (split inside lines, inside data,
    between \\r and \\n) are framed exactly."""
    f = fake()
    f.set(b"k", b"a\r\nEND\r\nb", flags=7)
    f.set(b"j", b"")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=10000, conns=1)
    exp = (b"VALUE k 7 9\r\na\r\nEND\r\nb\r\nVALUE j 0 0\r\n\r\nEND\r\n" + b"END\r\n"
           + b"VA 9\r\na\r\nEND\r\nb\r\n" + b"STORED\r\n" + b"MN\r\n" + b"VERSION fake\r\n")
    with r.client() as c:
        f.behave("trickle", count=7, delay=0.001)
        got = c.request(b"get k j\r\nget nokey\r\nmg k v\r\nset s 0 0 1\r\nx\r\nmn\r\nversion\r\n",
                        exp, timeout=20)
        assert got == exp
        assert c.recv_idle(0.2) == b""


def test_late_reply_to_a_quiet_request_is_discarded(fake, router):
    """A noreply set answered late: its (empty) reply and the router's own mn
    marker are consumed for it, and the next reply stays aligned."""
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=1000, conns=1)
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION fake\r\n") == b"VERSION fake\r\n"
        f.behave("delay", count=1, delay=1.5)
        # a quiet request is owed no reply, but a router error is sent for it
        got, took = timed_request(c, b"set q 0 0 1 noreply\r\nx\r\n", TIMEOUT, bound=10)
        assert got == TIMEOUT
        exp = b"VALUE k 0 1\r\nV\r\nEND\r\n"
        assert c.request(b"get k\r\n", exp, timeout=10) == exp
        exp = b"VALUE q 0 1\r\nx\r\nEND\r\n"            # the late write did happen
        assert c.request(b"get q\r\n", exp, timeout=10) == exp
        assert c.recv_idle(0.3) == b""
    assert f.closed_by_peer == 0


def test_clients_vanishing_with_requests_in_flight(fake, router):
    """Clients that close while their replies are on the way do not disturb
    the worker or other clients."""
    f = fake()
    f.set(b"k", b"V")
    r = router(pool_config([f], "DefaultRoute"), timeout_ms=5000, workers=1)
    workers = r.worker_pids()
    f.behave("delay", count=None, delay=0.02)
    for _ in range(6):
        c = Client(r.port)
        c.send(b"get k\r\n" * 8 + b"set z 0 0 1\r\nz\r\n")
        c.close()
    f.behave("normal")
    exp = b"VALUE k 0 1\r\nV\r\nEND\r\n"
    with Client(r.port, timeout=30) as c:
        assert c.request(b"get k\r\n", exp, timeout=30) == exp
    assert r.worker_pids() == workers, "a worker died"


@pytest.fixture
def blackhole():
    """An address whose connect() never completes: a listener with a full
    accept queue that never accepts (SYNs are dropped)."""
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(lsock.getsockname())
        fillers.append(s)
    time.sleep(0.1)
    yield "127.0.0.1:%d" % lsock.getsockname()[1]
    for s in fillers:
        s.close()
    lsock.close()


def test_connect_that_never_completes(blackhole, memcached, router):
    m = memcached()
    m.set("k", b"real")
    r = router({"orderedPool": [blackhole], "route": {"type": "DefaultRoute"}}, timeout_ms=300)
    with r.client() as c:
        t0 = time.monotonic()
        c.send(b"get k\r\n")
        got = c.recv_one_of((TIMEOUT, ERROR, NO_HEALTHY), timeout=10)
        took = time.monotonic() - t0
        assert got in (TIMEOUT, ERROR, NO_HEALTHY)
        assert took < 5
    # with a real host behind it, DefaultRoute moves on once the connect has failed
    r2 = router({"orderedPool": [blackhole, m.addr], "route": {"type": "DefaultRoute"}},
                timeout_ms=300)
    wait_serving(r2.port, b"get k\r\n", b"VALUE k 0 4\r\nreal\r\nEND\r\n",
                 (TIMEOUT, ERROR, NO_HEALTHY))


def test_oversize_reply_fails_only_its_request(memcached, router):
    """BUGS.md #8: an item larger than the router's --max-item-size (stored
    by memcached -I 2m) must not take the connection and the host down: the
    request behind it gets its own reply and writes stay on host 1."""
    m1 = memcached("-I", "2m")
    m2 = memcached()
    big = b"b" * 1500000
    m1.set("big", big)
    m1.set("small", b"s")
    r = router(pool_config([m1, m2], "DefaultRoute"), conns=1)
    full = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(big), big)
    small = b"VALUE small 0 1\r\ns\r\nEND\r\n"
    with Client(r.port, timeout=20) as c:
        c.send(b"get big\r\nget small\r\nset after 0 0 1\r\nx\r\n")
        too_large = b"SERVER_ERROR mcrouter: reply too large\r\n"
        first = c.recv_one_of((full, too_large))
        assert first in (full, too_large), show(first)
        rest = small + b"STORED\r\n"
        assert c.recv_exact(len(rest), timeout=10) == rest
    assert m1.get_raw("after") == b"VALUE after 0 1\r\nx\r\nEND\r\n"
    assert m2.get_raw("after") == b"END\r\n"


@pytest.mark.parametrize("order", ["hung-first", "hung-last"])
def test_miss_failover_real_failure_beats_router_error(fake, memcached, router, order):
    """When every host fails, the client gets the last real failure reply
    (a miss), not the router's timeout, whichever host timed out."""
    f = fake()
    f.behave("hang")
    m = memcached()
    hosts = [f, m] if order == "hung-first" else [m, f]
    r = router(pool_config(hosts, "MissFailoverRoute"), timeout_ms=200)
    with r.client() as c:
        for req, exp in [(b"get nokey\r\n", b"END\r\n"), (b"mg nokey v k\r\n", b"EN knokey\r\n"),
                         (b"get a b\r\n", b"END\r\n"), (b"delete nokey\r\n", b"NOT_FOUND\r\n")]:
            c.send(req)
            got = c.recv_one_of((exp, TIMEOUT, ERROR, NO_HEALTHY), timeout=10)
            assert got == exp, req
