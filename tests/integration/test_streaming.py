"""Large get replies are passed on while they arrive (issue 11).

A get reply of STREAM_MIN (64 KiB) or more is not held whole: once every
earlier reply of its client is out, its complete VALUE blocks go to the
client as they come, and the rest follows.  Each test asserts the exact
bytes the client receives, beside real memcached 1.6.18.
"""
from __future__ import annotations

import os
import signal
import time

from support import connect, pool_config
from support.hostile import growth_while_read

from support.fake_upstream import FakeUpstream
from support.polling import stop_process

MIB = 1024          # KiB
TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"


def block(key: bytes, value: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n" % (key, len(value)) + value + b"\r\n"


def test_a_large_multiget_reaches_its_client_while_it_arrives(memcached, router):
    """40 distinct 256 KB values (10 MB) in one get: the client receives
    memcached's exact reply, and the worker never holds the reply whole
    (without streaming it grew by the reply's 10 MB)."""
    m = memcached("-m", "128")
    value = b"w" * 256_000
    keys = [b"w%d" % i for i in range(40)]
    for k in keys:
        m.set(k.decode(), value)
    r = router(pool_config([m]))
    line = b"get " + b" ".join(keys) + b"\r\n"
    expected = b"".join(block(k, value) for k in keys) + b"END\r\n"
    held = growth_while_read(r, line, expected)
    assert held < 8 * MIB, f"worker grew by {held} KiB for a 10 MB reply read at once"
    assert m.get_raw(*(k.decode() for k in keys)) == expected


def test_a_streamed_reply_waits_for_the_clients_earlier_replies(memcached, router):
    """A client's earlier get goes to a host that is stopped; its later
    large get goes to another host that answers at once.  The large reply
    is held (not streamed) until the earlier reply is out: the client sees
    both in the order it asked."""
    slow, fast = memcached(), memcached("-m", "128")
    slow.set("a:x", b"first")
    value = b"f" * 200_000
    keys = [b"b%d" % i for i in range(20)]
    for k in keys:
        fast.set(k.decode(), value)
    config = (f"pools:\n  a:\n    servers: [{slow.addr}]\n  b:\n    servers: [{fast.addr}]\n"
              "route:\n  type: PrefixSelectorRoute\n  policies:\n    'a:': PoolRoute|a\n"
              "  wildcard: PoolRoute|b\n")
    r = router(config, extra=["-r", "20000"])
    first = block(b"a:x", b"first") + b"END\r\n"
    second = b"".join(block(k, value) for k in keys) + b"END\r\n"
    c = connect(r.port, timeout=20)
    stop_process(slow.pid)
    try:
        c.send(b"get a:x\r\n" + b"get " + b" ".join(keys) + b"\r\n")
        time.sleep(1.0)                     # the large reply has arrived by now
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    assert c.recv_exact(len(first) + len(second), timeout=20) == first + second
    c.close()


def test_a_stalled_host_after_streamed_values(router):
    """A host that sends 80 KB of a multiget's values and stops mid-reply
    (a fake upstream: memcached cannot): the values already passed on are
    followed by the router's timeout line, as memcached follows values it
    sent with SERVER_ERROR when it fails in the middle of a get."""
    fake = FakeUpstream()
    try:
        big = b"g" * 80_000
        fake.behave("garbage", count=1,
                    garbage=block(b"k1", big) + block(b"k2", b"abc") + b"VALUE k3 0 10\r\nxx")
        r = router(pool_config([fake]), extra=["-r", "300"])
        with r.client() as c:
            c.send(b"get k1 k2 k3\r\n")
            head = block(b"k1", big) + block(b"k2", b"abc")
            got = c.recv_exact(len(head) + len(TIMEOUT), timeout=10)
            assert got == head + TIMEOUT
    finally:
        fake.close()
