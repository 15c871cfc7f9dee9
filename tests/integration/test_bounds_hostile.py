"""Hostile review of issue 11 (bounded memory, windows, timeouts): each test
is one finding; those marked xfail are still open.

Each test runs one router worker beside real memcached 1.6.18 and asserts
either memcached's exact bytes or a bound on the worker's RSS growth (from
/proc, generous margins).
"""
from __future__ import annotations

import socket
import time

from support import connect, pool_config
from support.hostile import PeakRss, read_replies, rss_kib, send_without_reading
from support.polling import stop_process

MIB = 1024          # KiB


def test_a_client_switching_from_small_to_large_replies_stays_bounded(memcached, router):
    """The window's unit (reply_guess) decays to the size of small replies;
    a pipeline of large gets sent next is then forwarded whole (up to
    MAX_PENDING) before the first large reply raises it.  memcached: +0."""
    m = memcached("-m", "128")
    value = b"b" * 256_000
    m.set("big", value)
    m.set("small", b"s")
    r = router(pool_config([m]))                    # -b 1 MiB
    (worker,) = r.worker_pids()
    with r.client() as warm:                        # the same client: small replies first
        warm.send(b"get small\r\n" * 200)
        small = b"VALUE small 0 1\r\ns\r\nEND\r\n"
        assert warm.recv_exact(len(small) * 200) == small * 200
        before = rss_kib(worker)
        count = 200                                 # 50 MB of replies asked for
        with PeakRss(worker) as peak:
            warm.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            warm.send(b"get big\r\n" * count)
            time.sleep(2.0)
        one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
        assert warm.recv_exact(len(one) * count, timeout=30) == one * count
    held = peak.peak - before
    assert held < 24 * MIB, f"worker grew by {held} KiB for a client that does not read"


def test_a_new_client_pipelining_multi_key_gets_stays_bounded(memcached, router):
    """The first window is 16 requests whatever their size: 16 gets of 40
    distinct 256 KB keys each are 160 MB held for a client that never reads,
    not -b plus one 10 MB reply in progress.  memcached: +0."""
    m = memcached("-m", "128")
    value = b"k" * 256_000
    keys = [b"k%d" % i for i in range(40)]
    for k in keys:
        m.set(k.decode(), value)
    r = router(pool_config([m]))
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    line = b"get " + b" ".join(keys) + b"\r\n"
    count = 16
    with PeakRss(worker) as peak:
        s, sent = send_without_reading(r.port, line * count, 3.0)
        time.sleep(2.0)
    held = peak.peak - before
    one = b"".join(b"VALUE %s 0 256000\r\n" % k + value + b"\r\n" for k in keys) + b"END\r\n"
    got = read_replies(s, len(one) * count)
    s.close()
    assert sent == len(line) * count
    assert got == one * count
    # -b plus one reply in progress (10 MB), plus copies: far below 160 MB
    assert held < 48 * MIB, f"worker grew by {held} KiB for a client that does not read"


def test_time_the_router_stopped_reading_is_not_a_stalled_body(memcached, router):
    """A client whose output passed -b is not read; when its output drains,
    reading resumes but ``last_read`` still dates from before the pause, so
    a partial line read earlier looks stalled for --body-timeout and the
    sweep closes the connection with replies still owed.  memcached waits
    for the rest of the line."""
    m = memcached("-m", "64")
    value = b"p" * 256_000
    m.set("big", value)
    m.set("sm", b"x")
    r = router(pool_config([m]), extra=["--body-timeout", "1s"])
    count = 24                                      # 6 MB: reading pauses at -b
    c = connect(r.port, timeout=20)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send(b"get big\r\n" * count + b"get s")       # a line cut where a send may cut it
    time.sleep(2.5)                                 # the client reads nothing for a while
    one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
    got = bytearray()
    deadline = time.monotonic() + 30
    while len(got) < len(one) * count and time.monotonic() < deadline:
        chunk = c.recv_exact(min(64 * 1024, len(one) * count - len(got)), timeout=5)
        if not chunk:
            break
        got += chunk
        time.sleep(0.01)                            # a slow but steady reader
    assert bytes(got) == one * count, f"{len(got)} of {len(one) * count} bytes, then closed"
    c.send(b"m\r\n")
    assert c.recv_until(b"END\r\n") == b"VALUE sm 0 1\r\nx\r\nEND\r\n"
    c.close()


def test_clients_that_never_read_do_not_pin_the_body_budget(memcached, router):
    """A partial body read while the client's output was within -b reserves
    its announced size; once the output passes -b the router stops reading
    the client, and the body timeout is suspended while it does not read
    (stale), so the reservation lasts as long as the client keeps the socket
    open without reading.  A few such clients pin the whole budget and every
    other client's large set gets "out of memory" for good.  memcached never
    parses a set behind replies it cannot write, so it holds nothing for it
    and the other client's set is stored."""
    m = memcached("-m", "128")
    value = b"q" * 256_000
    m.set("big", value)
    r = router(pool_config([m]), extra=["--body-budget", "4m", "--body-timeout", "1s"])
    hogs = []
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", r.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"get big\r\n" * 24 + b"set hold%d 0 0 1000000\r\nh" % i)
        hogs.append(s)                              # never read, never closed (until the end)
    time.sleep(3.0)                                 # three body timeouts
    try:
        with r.client() as c:
            c.send(b"set fresh 0 0 1000000\r\n" + b"f" * 1000)
            time.sleep(0.2)                         # the body arrives in two parts
            c.send(b"f" * 999_000 + b"\r\n")
            assert c.recv_until(b"\r\n") == b"STORED\r\n"
    finally:
        for s in hogs:
            s.close()


def test_a_get_repeating_a_small_key_is_not_copied_per_repeat(memcached, router):
    """Repeated keys are asked once, but a value under COALESCE (8 KiB) is
    copied into the output once per repeat: one 20 KB line naming an 8000
    byte value 10,000 times makes the worker hold 80 MB.  memcached sends
    the one item 10,000 times, growing by 12 MB (measured: its response
    objects)."""
    m = memcached("-m", "64")
    value = b"c" * 8000
    m.set("c", value)
    r = router(pool_config([m]))
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    repeats = 10_000
    block = b"VALUE c 0 8000\r\n" + value + b"\r\n"
    with PeakRss(worker) as peak:
        s, sent = send_without_reading(r.port, b"get" + b" c" * repeats + b"\r\n", 3.0)
        time.sleep(1.5)
    got = read_replies(s, len(block) * repeats + 5)
    s.close()
    assert got == block * repeats + b"END\r\n"
    held = peak.peak - before
    assert held < 24 * MIB, f"worker grew by {held} KiB for one 20 KB get line"


def test_requests_waiting_on_a_stalled_host_hold_at_most_b(memcached, router):
    """A client pipelining large sets to a host that stopped answering (a
    stopped memcached) is read only while the requests it has waiting hold
    under -b (plus the window in flight): it does not fill MAX_PENDING
    requests of 256 KB each in the router.  Once the host answers, every
    set is stored and answered in order.  memcached: +0 while stopped."""
    import os
    import signal
    m = memcached("-m", "128")
    r = router(pool_config([m]), extra=["-r", "30000"])
    (worker,) = r.worker_pids()
    value = b"v" * 256_000
    count = 200                                     # 50 MB of sets
    data = b"".join(b"set s%d 0 0 256000\r\n" % i + value + b"\r\n" for i in range(count))
    before = rss_kib(worker)
    stop_process(m.pid)
    try:
        with PeakRss(worker) as peak:
            s, sent = send_without_reading(r.port, data, 3.0)
            time.sleep(1.0)
    finally:
        os.kill(m.pid, signal.SIGCONT)
    held = peak.peak - before
    s.setblocking(True)
    s.sendall(data[sent:])
    got = read_replies(s, len(b"STORED\r\n") * count)
    s.close()
    assert sent < len(data), "the router read every set while its host was stopped"
    assert got == b"STORED\r\n" * count
    assert held < 24 * MIB, f"worker grew by {held} KiB while its host was stopped"
