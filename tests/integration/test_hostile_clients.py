"""Bounded memory and fair queues under hostile and heavy clients (issue 11).

Each test plays one client memcached serves with flat memory, against a
router on one worker, and asserts the replies and a bound on the worker's
growth (RSS from /proc, generous margins: bounds, not timings).  The loads
are a fraction of the issue's measurements, enough that the old code would
pass every bound several times over.
"""
from __future__ import annotations

import resource
import socket
import threading
import time

from support import connect, pool_config, wait_until
from support.hostile import PeakRss, read_replies, rss_kib, send_without_reading

MIB = 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0      # utime + stime, in ticks


def test_a_client_that_never_reads_holds_about_b_not_its_replies(memcached, router):
    m = memcached("-m", "64")
    value = b"v" * 256_000
    m.set("big", value)
    r = router(pool_config([m]))                    # -b 1 MiB
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    count = 300                                     # 75 MB of replies asked for
    with PeakRss(worker) as peak:
        s, sent = send_without_reading(r.port, b"get big\r\n" * count, 3.0)
        time.sleep(1.5)
    held = peak.peak - before
    one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
    got = read_replies(s, len(one) * count)
    s.close()
    assert sent == 9 * count
    assert got == one * count
    # -b (1 MiB) plus the replies in flight when it filled, not 75 MB
    assert held < 24 * MIB, f"worker grew by {held} KiB for a client that does not read"
    wait_until(lambda: rss_kib(worker) - before < 16 * MIB, 5.0)
    assert rss_kib(worker) - before < 16 * MIB, "the burst's buffers were not given back"


def test_a_get_naming_one_large_key_many_times_is_not_amplified(memcached, router):
    m = memcached("-m", "64")
    value = b"w" * 256_000
    m.set("big", value)
    m.set("small", b"s")
    r = router(pool_config([m]))
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    block = b"VALUE big 0 256000\r\n" + value + b"\r\n"
    with PeakRss(worker) as peak, r.client() as c:
        # 200 x 256 KB = 50 MB of reply for one key: memcached streams it; the
        # router asks for the key once and repeats the value from one copy
        c.send(b"get" + b" big small nothere" * 200 + b"\r\n")
        expect = (block + b"VALUE small 0 1\r\ns\r\n") * 200 + b"END\r\n"
        assert c.recv_exact(len(expect), timeout=60) == expect
        c.send(b"gets big big\r\n")
        assert c.recv_until(b"END\r\n").count(b"VALUE big 0 256000 ") == 2
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
    assert peak.peak - before < 24 * MIB, f"peak {peak.peak - before} KiB over baseline"
    with m.client() as direct:          # memcached's own reply to the same line, byte for byte
        direct.send(b"get big big small big\r\n")
        want = direct.recv_until(b"END\r\n")
    with r.client() as c:
        c.send(b"get big big small big\r\n")
        assert c.recv_until(b"END\r\n") == want


def test_slow_bodies_are_held_within_the_budget_then_timed_out(memcached, router):
    m = memcached()
    r = router(pool_config([m]), extra=["--body-budget", "8m", "--body-timeout", "3s"])
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    size = 1_000_000
    clients = []
    for i in range(48):                             # 48 MB of bodies announced
        c = connect(r.port)
        c.send(b"set slow%d 0 0 %d\r\n" % (i, size) + b"s" * 600_000)
        clients.append(c)
    time.sleep(0.3)
    grown = rss_kib(worker) - before
    # a refused client's data block is swallowed: the rest of it is not a command
    c = clients[-1]
    assert c.recv_until(b"\r\n") == b"SERVER_ERROR out of memory storing object\r\n"
    c.send(b"s" * (size - 600_000) + b"\r\nget slow47\r\n")
    assert c.recv_until(b"END\r\n") == b"END\r\n"
    refused = 1
    for c in clients[:-1]:
        # a refused body is answered at once; a held one ends at --body-timeout
        got = c.recv_until(b"\r\n", timeout=10)
        if got:
            assert got == b"SERVER_ERROR out of memory storing object\r\n"
            refused += 1
    assert 36 <= refused <= 44, f"{refused} of 48 bodies refused with an 8 MB budget"
    assert grown < 8 * MIB + 16 * MIB, f"worker grew by {grown} KiB"
    clients.pop().close()
    # the held ones stop mid-body: closed after --body-timeout, budget given back
    assert all(c.is_closed(5.0) for c in clients[:-1])
    with r.client() as c:
        c.send(b"set late 0 0 %d\r\n" % size + b"l" * 10)
        time.sleep(0.1)
        assert c.request(b"l" * (size - 10) + b"\r\n", b"STORED\r\n") == b"STORED\r\n"
    for c in clients:
        c.close()


def test_the_idle_timeout_is_off_unless_asked(memcached, router):
    m = memcached()
    off = router(pool_config([m]))
    on = router(pool_config([m]), extra=["--idle-timeout", "1s"])
    with off.client() as a, on.client() as b:
        assert a.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
        assert b.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
        assert b.is_closed(5.0)
        assert not a.is_closed(2.0)


def test_past_max_conns_a_client_is_told_and_closed(memcached, router):
    m = memcached()
    r = router(pool_config([m]), extra=["-c", "3"])
    held, early = [], [0]

    def admitted() -> bool:
        """The fixture's readiness probe counts until the worker sees it close."""
        c = connect(r.port)
        c.send(b"version\r\n")
        if c.recv_until(b"\r\n") == b"VERSION 1.6.18\r\n":
            held.append(c)
            return True
        c.close()
        early[0] += 1
        return False

    for _ in range(3):
        assert wait_until(admitted, 5.0)
    extra = connect(r.port)
    assert extra.recv_until(b"\r\n") == b"ERROR Too many open connections\r\n"
    assert extra.is_closed(5.0)
    held.pop().close()
    refused, stats = [1 + early[0]], [b""]

    def served() -> bool:
        """A new client is served once the router has seen the close."""
        with r.client() as c:
            c.send(b"version\r\n")
            if c.recv_until(b"\r\n") == b"VERSION 1.6.18\r\n":
                c.send(b"stats mcrouter\r\n")
                stats[0] = c.recv_until(b"END\r\n")
                return True
        refused[0] += 1
        return False

    assert wait_until(served, 5.0)
    assert b"STAT rejected_connections %d\r\n" % refused[0] in stats[0]
    assert r.wait_log("refused 1 client connection(s) (past -c/--max-conns")
    for c in held + [extra]:
        c.close()


def test_out_of_file_descriptors_the_listener_rests_and_refuses(memcached, router):
    m = memcached()
    r = router(pool_config([m]), extra=["-c", "100000"])
    (worker,) = r.worker_pids()
    assert r.wait_log("open file limit")
    limit = len(__import__("os").listdir(f"/proc/{worker}/fd")) + 8
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (limit, limit))
    clients = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(30)]
    time.sleep(1.0)
    cpu = cpu_seconds(worker)
    time.sleep(2.0)
    spent = cpu_seconds(worker) - cpu
    refused = 0
    for s in clients:
        s.settimeout(0.2)       # a refused client was told within the 3 s above
        try:
            got = s.recv(100)
        except socket.timeout:
            continue
        if got:
            assert got == b"ERROR Too many open connections\r\n"
            refused += 1
    for s in clients:
        s.close()
    assert refused >= 20, f"only {refused} of 30 clients were told"
    assert spent < 0.5, f"the worker spent {spent:.2f} s of CPU in 2 s at the fd limit"
    text = r.stderr()
    assert 1 <= text.count("out of file descriptors") <= 2, text[-2000:]
    assert "accept failed" not in text


def test_clients_that_read_late_do_not_fail_a_healthy_host(memcached, router):
    m = memcached("-m", "128")
    value = b"h" * 256_000
    m.set("big", value)
    r = router(pool_config([m]), timeout_ms=500)
    count = 200                                     # 3 x 50 MB asked, none read for 2 s
    sockets = [send_without_reading(r.port, b"get big\r\n" * count, 3.0)[0] for _ in range(3)]
    time.sleep(2.0)
    one = b"VALUE big 0 256000\r\n" + value + b"\r\nEND\r\n"
    results: list[bytes] = [b""] * 3

    def read(i: int) -> None:
        results[i] = read_replies(sockets[i], len(one) * count, timeout=10)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(40)
    for s in sockets:
        s.close()
    for got in results:
        assert got == one * count, got[:200] if got[:1] != b"V" else got[-200:]
    assert "up -> down" not in r.stderr()
