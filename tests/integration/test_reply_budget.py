"""The worker's reply budget (issue 11): value replies that arrive for a
client already holding more than -b are charged to one budget per worker;
once it is spent they become memcached's own out-of-memory reply, so many
clients that never read cannot make the worker hold their windows' worth
of large values each.

A client's window is sized from the replies it has seen: after small ones,
up to 32 keys go out at once, and if those turn out to be large the client
could otherwise hold 32 of them beyond -b.
"""
from __future__ import annotations

import socket
import time

from support import pool_config
from support.hostile import PeakRss, read_replies, rss_kib

MIB = 1024          # KiB
OOM = b"SERVER_ERROR out of memory writing get response\r\n"


def _window_opened_by_small_replies(port: int) -> socket.socket:
    """A client whose window was widened by 200 one-byte replies."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"get small\r\n" * 200)
    small = b"VALUE small 0 1\r\ns\r\nEND\r\n"
    assert read_replies(s, len(small) * 200, timeout=10) == small * 200
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return s


def _replies(data: bytes, one: bytes) -> list[bytes]:
    """Split a stream of ``one`` and OOM replies; fail on anything else."""
    out, pos = [], 0
    while pos < len(data):
        for reply in (one, OOM):
            if data.startswith(reply, pos):
                out.append(reply)
                pos += len(reply)
                break
        else:
            raise AssertionError(f"unexpected bytes at {pos}: {data[pos:pos + 80]!r}")
    return out


def test_clients_that_never_read_share_one_reply_budget(memcached, router):
    """Eight clients, each asking for 40 values of 256 KB after small ones,
    none reading: a budget of 2 MiB means the worker holds about -b (256 KiB)
    and one reply per client plus 2 MiB, not 8 x 40 x 256 KB = 80 MB.  Every
    request is answered in order, with the value or the out-of-memory
    line; once the clients read, the budget is back and values flow."""
    m = memcached("-m", "128")
    value = b"v" * 256_000
    m.set("big", value)
    m.set("small", b"s")
    r = router(pool_config([m]), extra=["-b", "262144", "--reply-budget", "2m"])
    (worker,) = r.worker_pids()
    clients = [_window_opened_by_small_replies(r.port) for _ in range(8)]
    before = rss_kib(worker)
    with PeakRss(worker) as peak:
        for s in clients:
            s.sendall(b"get big\r\n" * 40)
        time.sleep(2.0)
    one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
    refused = 0
    for s in clients:
        s.settimeout(30)
        data = bytearray()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if data.count(b"END\r\n") + data.count(OOM) >= 40:
                break
        replies = _replies(bytes(data), one)
        assert len(replies) == 40
        refused += replies.count(OOM)
    held = peak.peak - before
    # -b and a reply per client (8 x 0.5 MiB), the 2 MiB budget, the
    # upstream ring's reply as it arrives, allocator slack: far below 80 MB
    assert held < 24 * MIB, f"worker grew by {held} KiB"
    assert refused > 0, "the budget was never reached: the test did not test it"
    # the budget was given back: a client now gets every value
    for s in clients:
        s.sendall(b"get big\r\n" * 3)
        assert read_replies(s, len(one) * 3, timeout=10) == one * 3
        s.close()


def test_a_single_slow_client_is_within_the_default_budget(memcached, router):
    """With the default budget (64 MiB), one client switching from small to
    large replies and reading late gets every value: its window's
    overshoot (32 x 256 KB) fits the budget."""
    m = memcached("-m", "128")
    value = b"w" * 256_000
    m.set("big", value)
    m.set("small", b"s")
    r = router(pool_config([m]))
    s = _window_opened_by_small_replies(r.port)
    s.sendall(b"get big\r\n" * 60)
    time.sleep(1.5)
    one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
    assert read_replies(s, len(one) * 60, timeout=30) == one * 60
    s.close()

