"""A multi-key get split over several hosts is passed on while it arrives (issue 11).

A PoolRoute asks each server for its keys at once; the router merges the
replies in the order of the client's keys.  Values go to the client as soon
as their place is settled (every earlier key's server has passed it), so
only the values that ordering requires are held.  Each test asserts the
exact bytes the client receives, beside real memcached 1.6.18.
"""
from __future__ import annotations

import os
import signal

from support import connect
from support.hostile import growth_while_read
from test_pool_route import placement, pool_yaml

from support.fake_upstream import FakeUpstream
from support.polling import stop_process

MIB = 1024          # KiB
TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
VALUE = b"s" * 256_000


def block(key: bytes, value: bytes = VALUE) -> bytes:
    return b"VALUE %s 0 %d\r\n" % (key, len(value)) + value + b"\r\n"


def spread(servers, count: int, prefix: bytes = b"m") -> list[list[bytes]]:
    """``count`` keys for each server, by where the pool's hash puts them."""
    found: list[list[bytes]] = [[] for _ in servers]
    i = 0
    while min(len(f) for f in found) < count:
        key = b"%s%d" % (prefix, i)
        where = found[placement(servers, [key])[0]]
        if len(where) < count:
            where.append(key)
        i += 1
    return found


def interleave(a: list[bytes], b: list[bytes]) -> list[bytes]:
    return [k for pair in zip(a, b) for k in pair]


def test_a_merged_multiget_reaches_its_client_while_it_arrives(memcached, router):
    """40 distinct 256 KB values (10 MB) over two servers in one get: the
    client receives exactly memcached's merged reply, and the worker never
    holds it whole (without streaming the worker grew by about 21 MB: both
    replies, then the merge)."""
    ms = [memcached("-m", "128"), memcached("-m", "128")]
    a, b = spread(ms, 20)
    keys = interleave(a, b)
    for i, k in enumerate(keys):
        ms[i % 2].set(k.decode(), VALUE)
    r = router(pool_yaml(ms))
    line = b"get " + b" ".join(keys) + b"\r\n"
    expected = b"".join(block(k) for k in keys) + b"END\r\n"
    held = growth_while_read(r, line, expected)
    assert held < 8 * MIB, f"worker grew by {held} KiB for a 10 MB merged reply read at once"
    merged = b"".join(ms[i % 2].get_raw(k.decode())[:-5] for i, k in enumerate(keys))
    assert merged + b"END\r\n" == expected


def test_nothing_after_a_stopped_servers_first_key_goes_on(memcached, router):
    """One server is stopped (SIGSTOP) while the other answers: the client
    receives exactly the values before the stopped server's first key, and
    nothing after it, until that server answers; then the whole reply."""
    ms = [memcached("-m", "128"), memcached("-m", "128")]
    run, stop = spread(ms, 12)
    keys = run[:3] + interleave(stop, run[3:])      # 3 of the running one, then by turns
    for k in run:
        ms[0].set(k.decode(), VALUE)
    for k in stop:
        ms[1].set(k.decode(), VALUE)
    r = router(pool_yaml(ms), extra=["-r", "20000"])
    expected = b"".join(block(k) for k in keys) + b"END\r\n"
    prefix = b"".join(block(k) for k in run[:3])
    c = connect(r.port, timeout=20)
    stop_process(ms[1].pid)
    try:
        c.send(b"get " + b" ".join(keys) + b"\r\n")
        assert c.recv_exact(len(prefix), timeout=20) == prefix
        assert c.recv_idle(idle=0.5) == b""         # the rest waits for the stopped server
    finally:
        os.kill(ms[1].pid, signal.SIGCONT)
    assert c.recv_exact(len(expected) - len(prefix), timeout=20) == expected[len(prefix):]
    with r.client() as c2:
        assert c2.request(b"get " + b" ".join(keys[:2]) + b"\r\n",
                          expected[:2 * len(block(keys[0]))] + b"END\r\n")
    c.close()


def test_a_server_failing_mid_reply_after_values_went_on(memcached, router):
    """A fake server sends its first value and stops mid-reply: the values
    settled before its next key went on, then the router's timeout line
    ends the reply (memcached's shape when it fails in the middle of a get),
    and the client's next request is answered."""
    m = memcached("-m", "128")
    fake = FakeUpstream()
    try:
        servers = [m, fake]
        good, bad = spread(servers, 4)
        keys = [bad[0], good[0], good[1], bad[1], good[2], bad[2], good[3], bad[3]]
        for k in good:
            m.set(k.decode(), VALUE)
        for k in bad:
            fake.set(k, VALUE)
        fake.behave("garbage", count=1, garbage=block(bad[0]))     # then silence
        r = router(pool_yaml(servers), extra=["-r", "1000"])
        settled = block(bad[0]) + block(good[0]) + block(good[1])
        with r.client(timeout=10) as c:
            c.send(b"get " + b" ".join(keys) + b"\r\n")
            got = c.recv_exact(len(settled) + len(TIMEOUT), timeout=10)
            assert got == settled + TIMEOUT
            # the client's connection is sound: its next request is answered
            full = b"".join(block(k) for k in good) + b"END\r\n"
            assert c.request(b"get " + b" ".join(good) + b"\r\n", full) == full
    finally:
        fake.close()
