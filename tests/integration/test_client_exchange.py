"""A bulk call's wait on plain sockets (_fast.exchange), as a hostile user
sees it: replies reach the call that asked, whatever the sockets do
(partial writes, resets, timeouts, signals, many servers)."""
from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
from typing import Iterator

import pytest

from mcrouter.client import (Client, MemcacheConnectionError, MemcachePartialError,
                             MemcacheTimeoutError)

MD5 = {"function": "md5"}


def keys_on(c: Client, slot: int, n: int) -> list[str]:
    return [k for k in (f"k{i}" for i in range(2000)) if c.slot(k.encode()) == slot][:n]


def seeded(c: Client, f, n: int) -> tuple[list[str], list[str]]:
    """``n`` keys on the fake (slot 0) and on memcached (slot 1), each its own value."""
    on_f, on_m = keys_on(c, 0, n), keys_on(c, 1, n)
    for k in on_f:
        f.set(k.encode(), k.encode())
    assert c.set_many({k: k for k in on_m}) == []
    return on_f, on_m


@contextlib.contextmanager
def resetting_server() -> Iterator[str]:
    """A server that reads a request and answers it with a TCP reset."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                s, _ = ls.accept()
            except (socket.timeout, OSError):
                continue
            s.settimeout(2.0)
            with contextlib.suppress(OSError):
                s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield "127.0.0.1:%d" % ls.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        ls.close()


def test_a_reset_reads_the_same_in_a_bulk_call_as_in_one_call(memcached):
    """Bug: _exchange said "read failed: Connection reset by peer" where
    Connection.read (a one-key call, a TLS bulk call) says "read failed:
    [Errno 104] Connection reset by peer": one reason, two texts."""
    m = memcached()
    with resetting_server() as bad:
        with Client([bad, m.addr], hash=MD5, timeout=2.0, tko=100) as c:
            on_bad, on_m = keys_on(c, 0, 3), keys_on(c, 1, 3)
            with pytest.raises(MemcacheConnectionError) as one:
                c.get(on_bad[0])
            with pytest.raises(MemcachePartialError) as bulk:
                c.get_many(on_bad + on_m)
    texts = {str(e) for e in bulk.value.errors.values()}
    assert texts == {str(one.value)}
    assert "[Errno 104] Connection reset by peer" in str(one.value)


def test_more_servers_than_the_poll_stack_holds(fake):
    """17+ connections: exchange's allocated poll set; every key its own value."""
    fs = [fake() for _ in range(20)]
    with Client([f.addr for f in fs], hash=MD5, timeout=2.0) as c:
        keys = [f"key{i}" for i in range(400)]
        assert len({c.slot(k.encode()) for k in keys}) == 20
        for _ in range(3):
            assert c.set_many({k: k * 3 for k in keys}) == []
            assert c.get_many(keys) == {k: (k * 3).encode() for k in keys}


def test_large_values_written_and_read_in_parts(memcached):
    """Values larger than a socket takes at once: partial writes on both
    servers, replies read over many wakes; each value to its own key."""
    m1, m2 = memcached("-m", "64"), memcached("-m", "64")
    with Client([m1.addr, m2.addr], hash=MD5, timeout=10.0) as c:
        vals = {f"big{i}": bytes([65 + i % 26]) * (400_000 + i) for i in range(24)}
        assert {c.slot(k.encode()) for k in vals} == {0, 1}
        assert c.set_many(vals) == []
        assert c.get_many(list(vals)) == vals


def test_a_timed_out_bulk_call_leaves_its_late_replies_behind(fake, memcached):
    """A server too slow for the call: its keys time out; its late replies
    are dropped by the next call on that connection, not taken as its own."""
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=0.3, max_pool_size=1, tko=100) as c:
        on_f, on_m = seeded(c, f, 4)
        f.behave("delay", count=1, delay=0.6)
        with pytest.raises(MemcachePartialError) as e:
            c.get_many(on_f + on_m)
        assert e.value.result == {k: k.encode() for k in on_m}
        assert {type(x) for x in e.value.errors.values()} == {MemcacheTimeoutError}
        f.set(on_f[0].encode(), b"new")
        time.sleep(0.5)                     # the late reply is in the socket now
        want = {k: k.encode() for k in on_f + on_m}
        want[on_f[0]] = b"new"
        assert c.get_many(on_f + on_m) == want
        assert f.accepted == 1


def test_ctrl_c_during_a_bulk_call_drops_its_connections(fake, memcached):
    """A signal handler raising while exchange waits: the exception reaches
    the caller at once, and the next call gets its own replies."""
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=5.0, max_pool_size=1, tko=100) as c:
        on_f, on_m = seeded(c, f, 3)
        f.behave("delay", count=1, delay=1.0)

        def boom(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, boom)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                c.get_many(on_f + on_m)
            assert time.monotonic() - t0 < 1.0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        time.sleep(1.2)
        assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}


def test_threads_sharing_a_client_get_their_own_replies(memcached):
    """Each call reads into its first connection's buffer: calls on other
    threads, on other connections, never see each other's bytes."""
    m1, m2 = memcached(), memcached()
    with Client([m1.addr, m2.addr], hash=MD5, timeout=5.0, max_pool_size=3) as c:
        keys = [f"t{i}" for i in range(200)]
        assert c.set_many({k: k * 50 for k in keys}) == []
        bad: list[object] = []

        def work(n: int) -> None:
            for j in range(40):
                ks = keys[(n * 7 + j) % 150:(n * 7 + j) % 150 + 50]
                got = c.get_many(ks)
                if got != {k: (k * 50).encode() for k in ks}:
                    bad.append((n, j))
                    return

        ts = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert bad == []


def test_signals_that_do_not_raise_only_interrupt_the_poll(fake, memcached):
    """EINTR every 5 ms (a profiler's timer): exchange runs the handler and
    polls again; the slow server's values still arrive, each to its key."""
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=5.0) as c:
        on_f, on_m = seeded(c, f, 3)
        ticks = []
        old = signal.signal(signal.SIGALRM, lambda s, fr: ticks.append(s))
        try:
            f.behave("delay", count=1, delay=0.3)
            signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
            assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert len(ticks) > 10


def test_descriptors_past_1024(memcached):
    """poll, not select: connections whose descriptors are past FD_SETSIZE."""
    m1, m2 = memcached(), memcached()
    filler = [socket.socket() for _ in range(1100)]
    try:
        with Client([m1.addr, m2.addr], hash=MD5, timeout=2.0) as c:
            keys = [f"fd{i}" for i in range(50)]
            assert c.set_many({k: k for k in keys}) == []
            assert c.get_many(keys) == {k: k.encode() for k in keys}
            assert min(conn.fd for p in c.pools for conn in p.idle) > 1024
    finally:
        for s in filler:
            s.close()


def test_a_timeout_of_months_waits_rather_than_overflows(memcached):
    """Bug: a timeout past 2**31 ms (about 25 days) made a one-key call raise
    OverflowError from poll, and exchange cast the wait past INT_MAX in C
    (undefined); each poll now waits at most 2**30 ms and looks again."""
    m1, m2 = memcached(), memcached()
    with Client([m1.addr, m2.addr], hash=MD5, timeout=1e7) as c:
        keys = [f"far{i}" for i in range(20)]
        assert c.set_many({k: k for k in keys}) == []
        assert c.get_many(keys) == {k: k.encode() for k in keys}
        assert c.get(keys[0]) == keys[0].encode()


class _RaisesOnce:
    """A str whose first formatting raises KeyboardInterrupt: Ctrl-C landing
    in _exchange between exchange's return and the closing of what it found."""

    def __init__(self, text: str) -> None:
        self.text, self.fired = text, False

    def __format__(self, spec: str) -> str:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self.text


def test_ctrl_c_after_exchange_still_drops_the_broken_connection(fake, memcached, monkeypatch):
    """Bug: a KeyboardInterrupt raised after exchange returned, while _exchange
    closed the connections it reported (a signal arriving during exchange's C
    loop is raised at the first bytecode after it), left a connection whose
    Ring had refused garbage open in the pool, its request still at the head:
    the next call's first reply went to that request, every later one shifted."""
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=1.0, max_pool_size=1, tko=100) as c:
        on_f, on_m = seeded(c, f, 4)
        assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}
        from mcrouter.client import blocking
        monkeypatch.setattr(blocking, "PROTOCOL_ERROR",
                            _RaisesOnce(blocking.PROTOCOL_ERROR))
        f.behave("garbage", count=1, garbage=b"NOT_FOUND\r\n")
        with pytest.raises(KeyboardInterrupt):
            c.get_many(on_f + on_m)
        monkeypatch.undo()
        for k in on_f:
            f.set(k.encode(), b"v-" + k.encode())
        assert c.get_many(on_f + on_m) == {**{k: b"v-" + k.encode() for k in on_f},
                                           **{k: k.encode() for k in on_m}}


def test_ctrl_c_after_a_refused_reply_drops_a_one_key_calls_connection(fake, monkeypatch):
    """The same window in Connection.read (one-key calls, TLS bulk calls):
    between the Ring refusing garbage and the connection being closed."""
    f = fake()
    f.set(b"a", b"A")
    f.set(b"b", b"B")
    with Client([f.addr], timeout=1.0, max_pool_size=1, tko=100) as c:
        assert c.get("a") == b"A"
        from mcrouter.client import blocking
        monkeypatch.setattr(blocking, "PROTOCOL_ERROR",
                            _RaisesOnce(blocking.PROTOCOL_ERROR))
        f.behave("garbage", count=1, garbage=b"NOT_FOUND\r\n")
        with pytest.raises(KeyboardInterrupt):
            c.get("a")
        monkeypatch.undo()
        assert c.get("b") == b"B"
        assert c.get("a") == b"A"

