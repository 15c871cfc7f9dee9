"""Bounded memory: a client that never reads cannot grow the router."""
from __future__ import annotations

import socket
import time

from support import pool_config


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_a_client_that_never_reads_is_paused_not_buffered(memcached, router):
    m = memcached()
    value = b"v" * 100_000
    with m.client() as c:
        assert c.request(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n") \
            == b"STORED\r\n"
    r = router(pool_config([m]), extra=["-b", "65536"])
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    s = socket.create_connection(("127.0.0.1", r.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.setblocking(False)
    request = b"get big\r\n" * 1000
    sent, deadline = 0, time.monotonic() + 10
    # ask for up to 50,000 x 100 KB = 5 GB of replies, never reading one
    while sent < 50_000 * 9 and time.monotonic() < deadline:
        try:
            sent += s.send(request)
        except BlockingIOError:
            time.sleep(0.05)
    time.sleep(1.0)
    grown = rss_kib(worker) - before
    s.close()
    assert sent >= 20_000 * 9, "the test did not manage to queue the requests"
    # at most MAX_PENDING (1024) replies of 100 KB are held for a client
    print(f"worker grew by {grown} KiB while {sent // 9} requests waited")
    assert grown < 150_000, f"worker grew by {grown} KiB"
    # and it still serves others
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"


def test_a_pipeline_deeper_than_the_bound_is_answered_in_full(memcached, router):
    m = memcached()
    r = router(pool_config([m]))
    n = 5000
    data = b"".join(b"set k%d 0 0 %d\r\n%d\r\nget k%d\r\n" % (i, len(str(i)), i, i)
                    for i in range(n))
    expect = b"".join(b"STORED\r\nVALUE k%d 0 %d\r\n%d\r\nEND\r\n" % (i, len(str(i)), i)
                      for i in range(n))
    with r.client() as c:
        assert c.pipeline(data, b"VALUE k%d 0 4\r\n%d\r\nEND\r\n" % (n - 1, n - 1)) == expect
