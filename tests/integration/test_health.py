"""Health checks, TKO, timeouts and failover with real processes and real signals.

Probe intervals are short here (-H 300ms) so that recoveries happen within a
test; every wait has a deadline.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

from support import Client, wait_until
from support.polling import stop_process

NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
INTERVAL = 0.3


def value(key: str, data: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key.encode(), len(data), data)


def config(hosts, route: dict | None = None, **health: int) -> dict:
    cfg: dict = {"orderedPool": [h if isinstance(h, str) else h.addr for h in hosts],
                 "route": route or {"type": "DefaultRoute"}}
    if health:
        cfg["health"] = health
    return cfg


def host_states(r) -> dict[str, str]:
    """``stats servers`` from the router: host → up/down."""
    with r.client() as c:
        reply = c.call(b"stats servers\r\n", b"END\r\n")
    return {m.group(1): m.group(2) for m in
            re.finditer(rb"STAT (\S+) (up|down) ", reply)} if reply else {}


def states(r) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in host_states(r).items()}


def split_replies(data: bytes) -> list[bytes]:
    """Cut a stream of get replies (VALUE..END, END or one error line) apart."""
    out = []
    pos = 0
    while pos < len(data):
        if data.startswith(b"VALUE ", pos):
            header_end = data.index(b"\r\n", pos)
            n = int(data[pos:header_end].split()[3])
            end = header_end + 2 + n + 2 + len(b"END\r\n")
        else:
            end = data.index(b"\r\n", pos) + 2
        out.append(data[pos:end])
        pos = end
    return out


# ---------------------------------------------------------------------------

def test_kill_one_backend_under_pipelined_load(memcached, router):
    """kill -9 of one of two backends under continuous pipelined load: every
    get is still answered with the client's own value (MissFailoverRoute
    fails over), every set with STORED or the router's error (DefaultRoute),
    nothing reaches the wrong client; the restarted backend is back within
    two probe intervals."""
    m1, m2 = memcached(), memcached()
    clients, keys = 4, 20
    for j in range(clients):
        for i in range(keys):
            m1.set(f"c{j}k{i}", f"c{j}k{i}@m1".encode())
            m2.set(f"c{j}k{i}", f"c{j}k{i}@m2".encode())
    cfg = config([m1, m2], {"type": "OperationSelectorRoute",
                            "operationPolicies": {"get": "MissFailoverRoute"}})
    r = router(cfg, workers=2, extra=["-H", f"{int(INTERVAL * 1000)}ms"])
    stop = threading.Event()
    problems: list[str] = []
    served = {"m1": 0, "m2": 0, "set_ok": 0, "set_err": 0}
    lock = threading.Lock()

    def load(j: int) -> None:
        batch = b"".join(b"get c%dk%d\r\nset s%d 0 0 1\r\nx\r\n" % (j, i, j) for i in range(keys))
        with Client(r.port, timeout=15) as c:
            rounds = 0
            while not stop.is_set() and rounds < 2000:
                rounds += 1
                c.send(batch)
                got = b""
                replies: list[bytes] = []
                deadline = time.monotonic() + 15
                while len(replies) < 2 * keys and time.monotonic() < deadline:
                    got += c.recv_until(b"\r\n", timeout=15)
                    try:
                        replies = split_replies(got)
                    except (ValueError, IndexError):
                        continue           # a value not yet complete
                    if replies and not replies[-1].endswith(b"\r\n"):
                        continue
                if len(replies) != 2 * keys:
                    problems.append(f"client {j}: {len(replies)} replies of {2 * keys}")
                    return
                for i in range(keys):
                    g, s = replies[2 * i], replies[2 * i + 1]
                    k = f"c{j}k{i}"
                    if g == value(k, f"{k}@m1".encode()):
                        with lock:
                            served["m1"] += 1
                    elif g == value(k, f"{k}@m2".encode()):
                        with lock:
                            served["m2"] += 1
                    else:
                        problems.append(f"client {j} get {k}: {g!r}")
                        return
                    if s == b"STORED\r\n":
                        served["set_ok"] += 1
                    elif s in (ERROR, TIMEOUT, NO_HEALTHY):
                        served["set_err"] += 1
                    else:
                        problems.append(f"client {j} set: {s!r}")
                        return

    threads = [threading.Thread(target=load, args=(j,), daemon=True) for j in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = dict(served)
    m1.kill()
    assert wait_until(lambda: states(r).get(m1.addr) == "down", 5), states(r)
    time.sleep(1.0)
    m1.restart()
    t0 = time.monotonic()
    assert wait_until(lambda: states(r).get(m1.addr) == "up", 10), states(r)
    back_after = time.monotonic() - t0
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not problems, problems[:5]
    assert before["m1"] > 0 and served["m2"] > before["m2"], served   # failover happened
    assert served["set_ok"] > 0
    # rise 2: two good probes, each at most one interval apart (+ scheduling slack)
    assert back_after < 2 * INTERVAL + 3.0, f"host back after {back_after:.2f}s"
    assert r.stderr().count(f"host {m1.addr}: up -> down") == 1, r.stderr()


def test_sigstop_times_out_marks_down_and_fails_over(memcached, router):
    """A backend that accepts but never answers (SIGSTOP): requests time out
    within -r plus the timer's precision, the host is marked down, reads go
    to the next host; SIGCONT brings it back."""
    m1, m2 = memcached(), memcached()
    m1.set("k", b"one")
    m2.set("k", b"two")
    cfg = config([m1, m2], {"type": "OperationSelectorRoute",
                            "operationPolicies": {"get": "MissFailoverRoute"}}, tko=3, fail=2, rise=2,
                 probe_timeout_ms=200)
    # a long probe interval first: the data path alone must mark the host down
    r = router(cfg, timeout_ms=1000, extra=["-H", f"{int(INTERVAL * 1000)}ms"])
    with r.client() as c:
        assert c.request(b"get k\r\n", value("k", b"one")) == value("k", b"one")
        assert c.request(b"set k 0 0 1\r\nx\r\n", b"STORED\r\n") == b"STORED\r\n"
    stop_process(m1.proc.pid)
    try:
        with r.client() as c:
            t0 = time.monotonic()
            c.send(b"set a 0 0 1\r\nx\r\n")
            assert c.recv_exact(len(TIMEOUT)) == TIMEOUT
            took = time.monotonic() - t0
            # the loop's timer has ~10 ms precision; the bound allows for a busy machine
            assert 0.99 < took < 1.0 + 0.9, f"timeout reply after {took:.3f}s with -r 1000"
        assert wait_until(lambda: states(r).get(m1.addr) == "down", 5), states(r)
        with r.client() as c:
            # reads fail over at once, writes get the router's answer at once
            t0 = time.monotonic()
            assert c.request(b"get k\r\n", value("k", b"two")) == value("k", b"two")
            assert time.monotonic() - t0 < 0.9          # before -r (1 s)
            assert c.request(b"set z 0 0 1\r\ny\r\n", b"STORED\r\n") == b"STORED\r\n"  # on m2
    finally:
        m1.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: states(r).get(m1.addr) == "up", 10), states(r)
    with r.client() as c:
        assert c.request(b"get k\r\n", value("k", b"x")) == value("k", b"x")


def test_no_healthy_host_answers_at_once(memcached, router):
    m1, m2 = memcached(), memcached()
    r = router(config([m1, m2]), timeout_ms=2000)
    m1.kill()
    m2.kill()
    with r.client() as c:
        c.send(b"get a\r\n")
        assert c.recv_one_of((ERROR, NO_HEALTHY)) in (ERROR, NO_HEALTHY)
    assert wait_until(lambda: set(states(r).values()) == {"down"}, 5), states(r)
    with r.client() as c:
        t0 = time.monotonic()
        assert c.request(b"get a\r\nset b 0 0 1\r\nx\r\n", NO_HEALTHY * 2) == NO_HEALTHY * 2
        assert time.monotonic() - t0 < 1.5            # no waiting for -r (2 s)


def test_workers_share_one_verdict(memcached, router):
    """A host one worker's data path marked down is skipped by every worker
    at once, with no probe involved (interval 60 s)."""
    m1, m2 = memcached(), memcached()
    m1.set("k", b"one")
    m2.set("k", b"two")
    r = router(config([m1, m2]), workers=2, extra=["--reuseport", "-H", "60s"])
    m1.kill()
    # connection errors in whichever worker serves this client mark m1 down
    assert wait_until(lambda: states(r).get(m1.addr) == "down", 10), states(r)
    # 20 fresh connections, spread over both workers by SO_REUSEPORT: every
    # one is served by m2 at once, none pays for m1's failure again
    for _ in range(20):
        with r.client() as c:
            assert c.request(b"get k\r\n", value("k", b"two")) == value("k", b"two")
    assert r.stderr().count(f"host {m1.addr}: up -> down") == 1, r.stderr()


def test_probe_marks_a_hung_host_down_in_every_worker(memcached, router):
    """Without any traffic, the sidecar's probe notices a host that stopped
    answering and both workers skip it within about one probe interval."""
    m1, m2 = memcached(), memcached()
    m1.set("k", b"one")
    m2.set("k", b"two")
    r = router(config([m1, m2], fail=1, rise=1, probe_timeout_ms=100), workers=2,
               extra=["--reuseport", "-H", f"{int(INTERVAL * 1000)}ms", "-r", "5000"])
    stop_process(m1.proc.pid)
    try:
        t0 = time.monotonic()
        assert wait_until(lambda: states(r).get(m1.addr) == "down", 5), states(r)
        assert time.monotonic() - t0 < INTERVAL + 0.1 + 3.0
        for _ in range(20):
            with r.client() as c:
                assert c.request(b"get k\r\n", value("k", b"two")) == value("k", b"two")
    finally:
        m1.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: states(r).get(m1.addr) == "up", 5), states(r)
    assert "probe: no reply within 100 ms" in r.stderr()


def test_ipv6_backend(memcached, router):
    m = memcached("-l", "::1")
    addr = f"[::1]:{m.port}"
    r = router(config([addr]))
    with r.client() as c:
        assert c.request(b"set k 0 0 2\r\nv6\r\n", b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"get k\r\n", value("k", b"v6")) == value("k", b"v6")
    assert states(r) == {addr: "up"}


def test_hosts_command_shows_state_and_reason(memcached, router):
    import subprocess
    import sys
    m1, m2 = memcached(), memcached()
    r = router(config([m1, m2]), extra=["-H", "60s"])
    m1.kill()
    with r.client() as c:
        c.send(b"get k\r\n")
        c.recv_until(b"\r\n")
    assert wait_until(lambda: states(r).get(m1.addr) == "down", 5)
    out = subprocess.run([sys.executable, "-m", "mcrouter", "hosts", "-l", f"127.0.0.1:{r.port}"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0].split() == ["HOST", "STATE", "ADDRESS", "CHANGES", "SINCE", "LAST", "CHANGE",
                                "/", "ERROR"]
    row1 = lines[1].split()
    assert row1[:4] == [m1.addr, "down", "127.0.0.1", "1"]
    assert "connect: ECONNREFUSED" in lines[1]
    assert lines[2].split()[:4] == [m2.addr, "up", "127.0.0.1", "0"]
    # not a router: one line, exit 2
    bad = subprocess.run([sys.executable, "-m", "mcrouter", "hosts", "-l", f"127.0.0.1:{m2.port}"],
                         capture_output=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1, bad.stderr


def test_a_killed_sidecar_is_restarted_and_probes_again(memcached, router):
    m1, m2 = memcached(), memcached()
    m2.set("k", b"two")
    r = router(config([m1, m2], fail=1, rise=1, probe_timeout_ms=100),
               extra=["-H", f"{int(INTERVAL * 1000)}ms"])
    (sidecar,) = r.sidecar_pids()
    os.kill(sidecar, signal.SIGKILL)
    assert wait_until(lambda: len(r.sidecar_pids()) == 1 and r.sidecar_pids() != [sidecar], 5), \
        r.stderr()
    # the new sidecar's probes notice a hung host on their own (no traffic)
    stop_process(m1.proc.pid)
    try:
        assert wait_until(lambda: states(r).get(m1.addr) == "down", 5), states(r)
    finally:
        m1.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: states(r).get(m1.addr) == "up", 5), states(r)
    assert "sidecar (pid %d) exited" % sidecar in r.stderr()


def test_connect_timeout_is_its_own_setting(router):
    """A connect that never completes fails after --connect-timeout-ms, not -r."""
    import socket
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        for s in fillers:
            s.setblocking(False)
            s.connect_ex(lsock.getsockname())
        time.sleep(0.1)
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        r = router(config([addr]), timeout_ms=5000, conns=1,
                   extra=["--connect-timeout-ms", "200", "-H", "60s"])
        with r.client() as c:
            t0 = time.monotonic()
            c.send(b"get k\r\n")
            assert c.recv_exact(len(ERROR), timeout=10) == ERROR
            took = time.monotonic() - t0
        for s in fillers:
            s.close()
    assert took < 1.5, f"connect failure took {took:.2f}s with a 200 ms connect timeout"


def test_health_settings_per_pool(memcached, router):
    """Two pools with their own probe settings: a hung host in the pool with
    fail: 1 is marked down within about one interval, one in the pool with
    fail: 50 stays up meanwhile."""
    m1, m2 = memcached(), memcached()
    cfg = f"""
pools:
  quick: {{servers: [{m1.addr}], health: {{fail: 1, rise: 1, probe_timeout_ms: 100}}}}
  patient: {{servers: [{m2.addr}], health: {{fail: 50, probe_timeout_ms: 100}}}}
route: {{type: AllSyncRoute, children: [PoolRoute|quick, PoolRoute|patient]}}
"""
    r = router(cfg, extra=["-H", f"{int(INTERVAL * 1000)}ms"])
    for m in (m1, m2):
        stop_process(m.proc.pid)
    try:
        assert wait_until(lambda: states(r).get(m1.addr) == "down", 5), states(r)
        time.sleep(4 * INTERVAL)
        assert states(r).get(m2.addr) == "up", states(r)
    finally:
        for m in (m1, m2):
            m.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: states(r).get(m1.addr) == "up", 5), states(r)
