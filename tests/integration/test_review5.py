"""Hostile review 5 of issue 11 (key-counted window, held_in, streaming of
large get replies): each test is one finding, asserting the exact bytes a
client receives beside real memcached 1.6.18 (a fake upstream only for
faults memcached cannot produce), or a bound on worker RSS (from /proc,
generous margins)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time

from support import pool_config
from mcrouter._parser import Owner, Request, RequestParser
from mcrouter._ring import Ring
from support.hostile import PeakRss, read_replies, rss_kib, send_without_reading

from support.fake_upstream import FakeUpstream

MIB = 1024
TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
TOO_LARGE = b"SERVER_ERROR mcrouter: reply too large\r\n"


def block(key: bytes, value: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n" % (key, len(value)) + value + b"\r\n"


@contextlib.contextmanager
def held_get(router, line: bytes, extra: list[str]):
    """A router over a fake upstream (one connection) that reads ``line``
    and does not answer: yields the client and the upstream's socket, to
    write the reply by hand; ``k9`` is there for the next request."""
    fake = FakeUpstream()
    try:
        fake.set(b"k9", b"nine")
        r = router(pool_config([fake]), conns=1, extra=extra)
        with r.client() as c:
            fake.behave("hang", count=1)
            c.send(line)
            assert fake.wait_requests(1)
            yield c, fake.conns[0]
            # the next request on that upstream connection gets its own reply
            c.send(b"get k9\r\n")
            nine = block(b"k9", b"nine") + b"END\r\n"
            assert c.recv_exact(len(nine)) == nine
    finally:
        fake.close()


def test_a_timeout_after_streamed_values_then_the_late_rest_is_dropped(router):
    """Held (not a finding): a host sends part of a multiget (80 KB streamed),
    stops for longer than -r, then sends the rest.  The client gets the
    values, the timeout line, and its next request's own reply: the late
    rest is walked from the streamed request's key cursor and dropped."""
    big = b"g" * 80_000
    with held_get(router, b"get k1 k2 k3\r\n", ["-r", "1000"]) as (c, conn):
        conn.sendall(block(b"k1", big) + block(b"k2", b"abc") + b"VALUE k3 0 10\r\nxx")
        head = block(b"k1", big) + block(b"k2", b"abc")
        assert c.recv_exact(len(head) + len(TIMEOUT), timeout=10) == head + TIMEOUT
        conn.sendall(b"xxxxxxxx\r\nEND\r\n")
        time.sleep(0.2)


def test_a_reply_too_large_after_streamed_values(router):
    """Held (not a finding): a host that streams one value, then sends one
    far past 2 x --max-item-size: the client gets the streamed value, the
    router's error, and then its next reply on the same connection."""
    big = b"g" * 80_000
    with held_get(router, b"get k1 k2\r\n", ["--max-item-size", "65536"]) as (c, conn):
        conn.sendall(block(b"k1", big))
        time.sleep(0.3)
        conn.sendall(block(b"k2", b"h" * 3_000_000) + b"END\r\n")
        head = block(b"k1", big)
        assert c.recv_exact(len(head) + len(TOO_LARGE), timeout=10) == head + TOO_LARGE


def test_a_client_closing_mid_stream_leaves_the_connection_in_step(router):
    """Held (not a finding): the client of a streamed reply closes halfway;
    the rest is consumed and another client's request on the same upstream
    connection gets its own reply."""
    fake = FakeUpstream()
    try:
        fake.set(b"k9", b"nine")
        big = b"g" * 80_000
        r = router(pool_config([fake]), conns=1)
        c = r.client()
        fake.behave("hang", count=1)
        c.send(b"get k1 k2\r\n")
        assert fake.wait_requests(1)
        conn = fake.conns[0]
        conn.sendall(block(b"k1", big))
        assert c.recv_exact(len(block(b"k1", big)), timeout=10) == block(b"k1", big)
        c.close()
        time.sleep(0.2)
        conn.sendall(block(b"k2", big) + b"END\r\n")
        with r.client() as d:
            d.send(b"get k9\r\n")
            nine = block(b"k9", b"nine") + b"END\r\n"
            assert d.recv_exact(len(nine)) == nine
    finally:
        fake.close()


def test_a_repeated_gat_to_a_client_that_never_reads_stays_within_the_bound(memcached, router):
    """``gat 0 big big ...`` (200 times a 500 KB value: a 100 MB reply) from
    a client that never reads.  A gat is sent as asked (each touch counts),
    so memcached sends the value 200 times; the router's per-reply bound is
    2 x --max-item-size + 64 KiB per *distinct* key, and before streaming
    the reply was cut there.  Streamed values were queued for the client
    whatever its unwritten output: the worker grew by the whole 100 MB
    (2,000 repeats: 1 GB, from one request line).  Now, once the output is
    above -b, values stream only while the reply passed on fits the bound;
    the rest is held under it and cut: the client gets whole values, then
    the router's error, and its next request is answered normally (the
    upstream ring is not desynced)."""
    m = memcached("-m", "128")
    value = b"g" * 500_000
    m.set("big", value)
    m.set("small", b"s")
    r = router(pool_config([m]))                    # -b 1 MiB, --max-item-size 1 MiB
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    count = 200
    line = b"gat 0" + b" big" * count + b"\r\n"
    with PeakRss(worker) as peak:
        s, sent = send_without_reading(r.port, line, 3.0)
        time.sleep(3.0)
    held = peak.peak - before
    one = block(b"big", value)
    s.sendall(b"get small\r\n")
    tail = TOO_LARGE + block(b"small", b"s") + b"END\r\n"
    got = read_replies(s, count * len(one) + len(tail), timeout=10, until=tail)
    s.close()
    assert sent == len(line)
    # whole values, then the router's error (memcached: all 200, then END)
    values = (len(got) - len(tail)) // len(one)
    assert values < count
    assert got == one * values + tail
    assert held < 24 * MIB, f"worker grew by {held} KiB for a client that does not read"


class _Refusing(Owner):
    """A ring owner that does not take parts now (its earlier reply is not
    out, or its output is above -b); counts the bytes it was offered."""

    def __init__(self) -> None:
        self.offered = 0
        self.replies: list[bytes] = []

    def takes_parts(self, req: Request) -> bool:
        return False

    def on_partial(self, req: Request, part: bytes) -> bool:
        self.offered += len(part)
        return False

    def on_reply(self, req: Request) -> None:
        self.replies.append(req.reply)


def test_a_held_reply_is_not_copied_for_its_client_on_every_read():
    """A large get reply its client does not take now is held by the ring;
    on every read the ring copied all its complete values into a new bytes
    object to offer them (on_partial), then threw the copy away: quadratic
    in the reply (a 73 MB multiget for a client that never reads cost the
    worker 2 s of CPU, and a second copy of the reply at each read; a 1 GB
    one, minutes in which the worker serves no one).  The reply, held, must
    be offered at most once, and arrive exact when it ends."""
    owner = _Refusing()
    keys = [b"k%d" % i for i in range(40)]
    (req,) = RequestParser().feed(b"get " + b" ".join(keys) + b"\r\n")
    req.owner = owner
    req.stream = True               # as ClientConnection.take sets it
    ring = Ring(max_reply=64 << 20)
    assert ring.push(req, time.monotonic() + 60)
    reply = b"".join(block(k, b"v" * 100_000) for k in keys) + b"END\r\n"
    for i in range(0, len(reply), 16384):
        assert ring.feed(reply[i:i + 16384]) == 0
    assert owner.replies == [reply]
    assert owner.offered <= len(reply), f"{owner.offered} bytes copied for {len(reply)}"


def test_sigterm_while_a_reply_streams_to_a_slow_client(memcached, router):
    """Held (not a finding): SIGTERM while a 10 MB multiget streams to a
    client that reads slowly: the worker drains, so the client gets the
    whole reply, then the reply to the request it sent after it, then EOF."""
    m = memcached("-m", "128")
    value = b"w" * 256_000
    keys = [b"w%d" % i for i in range(40)]
    for k in keys:
        m.set(k.decode(), value)
    r = router(pool_config([m]))
    expected = b"".join(block(k, value) for k in keys) + b"END\r\n"
    s = socket.create_connection(("127.0.0.1", r.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.sendall(b"get " + b" ".join(keys) + b"\r\nversion\r\n")
    got = bytearray(s.recv(10000))
    os.kill(r.pid, signal.SIGTERM)
    s.settimeout(10)
    while True:
        time.sleep(0.001)                   # a slow reader
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    assert bytes(got[:len(expected)]) == expected
    assert re.fullmatch(rb"VERSION [^\r\n]+\r\n", bytes(got[len(expected):]))
