"""Pipelining, framing, concurrency and process life of the router.

* 1,000 mixed requests in one write: the reply stream must equal memcached's
  byte for byte (fresh memcached directly vs the router over a fresh one).
* the same kind of stream written one byte per send.
* several clients pipelining at once only ever see their own replies.
* SIGTERM under load: every reply received is complete and correct, a
  stream may only stop at a request boundary, and the router exits 0.
* a worker killed with SIGKILL is replaced and the router keeps serving.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from support import (REPO, Client, children_of, first_difference, free_port, pool_config, show,
                     wait_port, wait_until)

SENTINEL = b"set __end__ 0 0 3\r\nend\r\nget __end__\r\n"
SENTINEL_REPLY = b"STORED\r\nVALUE __end__ 0 3\r\nend\r\nEND\r\n"


def rand_value(rng: random.Random, max_len: int) -> bytes:
    n = rng.choice([0, 1, 2, rng.randrange(max_len + 1)])
    alphabet = b"abc\r\n\x00 \xffEND"
    return bytes(rng.choice(alphabet) for _ in range(n))


def mixed_requests(count: int, seed: int, max_len: int = 200) -> list[bytes]:
    """``count`` requests mixing text and meta commands over a small keyspace,
    so that hits, misses, CAS conflicts and numeric errors all occur."""
    rng = random.Random(seed)
    keys = [f"key{i}" for i in range(20)]
    nums = [f"num{i}" for i in range(4)]
    reqs = [b"set %s 0 0 1\r\n%d\r\n" % (n.encode(), i) for i, n in enumerate(nums)]
    while len(reqs) < count:
        k = rng.choice(keys).encode()
        n = rng.choice(nums).encode()
        v = rand_value(rng, max_len)
        op = rng.randrange(24)
        if op == 0:
            r = b"get %s\r\n" % k
        elif op == 1:
            r = b"get " + b" ".join(rng.choice(keys).encode() for _ in range(rng.randint(2, 6))) + b"\r\n"
        elif op == 2:
            r = b"gets %s %s\r\n" % (k, n)
        elif op in (3, 4):
            r = b"set %s %d 0 %d\r\n%s\r\n" % (k, rng.randrange(1 << 32), len(v), v)
        elif op == 5:
            r = b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, len(v), v)
        elif op == 6:
            r = b"%s %s 0 0 %d\r\n%s\r\n" % (rng.choice([b"add", b"replace", b"append", b"prepend"]),
                                           k, len(v), v)
        elif op == 7:
            r = b"cas %s 0 0 %d %d\r\n%s\r\n" % (k, len(v), rng.randint(1, 60), v)
        elif op == 8:
            r = b"delete %s\r\n" % k
        elif op == 9:
            r = b"delete %s noreply\r\n" % k
        elif op == 10:
            # only growing numbers: a number that shrinks is stored padded or not
            # depending on memcached's thread timing (see test_differential)
            r = b"%s %s %d\r\n" % (rng.choice([b"incr", b"decr"]), n, 0) if rng.random() < 0.2 \
                else b"incr %s %d\r\n" % (n, rng.randrange(1000))
        elif op == 11:
            r = b"incr %s 1\r\n" % k                      # mostly non-numeric or missing
        elif op == 12:
            r = b"mg %s v f c k s t O%d\r\n" % (k, rng.randrange(100))
        elif op == 13:
            r = b"mg %s v q\r\nmg %s k q\r\nmn\r\n" % (k, rng.choice(keys).encode())
        elif op == 14:
            r = b"ms %s %d T0 F%d c\r\n%s\r\n" % (k, len(v), rng.randrange(100), v)
        elif op == 15:
            r = b"ms %s %d M%s q\r\n%s\r\n" % (k, len(v), rng.choice([b"E", b"A", b"P", b"R", b"S"]), v)
        elif op == 16:
            r = b"md %s %s\r\n" % (k, rng.choice([b"", b"q", b"k O1", b"C5"]))
        elif op == 17:
            r = b"ma %s %s\r\n" % (n, rng.choice([b"", b"v", b"MD D0 v", b"q", b"N0 J7 v t"]))
        elif op == 18:
            r = b"touch %s 0\r\n" % k
        elif op == 19:
            r = b"gat 0 %s %s\r\n" % (k, rng.choice(keys).encode())
        elif op == 20:
            r = b"mn\r\n"
        elif op == 21:
            r = b"bogus %s\r\n" % k
        elif op == 22:
            r = b"set %s 0 0 2\r\nabc\r\n" % k            # bad data chunk
        else:
            r = b"version\r\n"
        reqs.append(r)
    return reqs[:count]


def stream_reply(port: int, stream: bytes, **kw) -> bytes:
    with Client(port, timeout=30) as c:
        return c.pipeline(stream + SENTINEL, SENTINEL_REPLY, **kw)


def test_thousand_mixed_requests_in_one_write(memcached, router):
    stream = b"".join(mixed_requests(1000, seed=1))
    direct, backend = memcached(), memcached()
    r = router(pool_config([backend], "DefaultRoute"), workers=2)
    expected = stream_reply(direct.port, stream)
    assert expected.endswith(SENTINEL_REPLY)
    actual = stream_reply(r.port, stream)
    assert actual == expected, first_difference(expected, actual)


def test_byte_by_byte_input(memcached, router):
    reqs = mixed_requests(150, seed=2, max_len=12)
    reqs.append(b"set split 0 0 6\r\n\r\n\r\n\r\n\r\nget split\r\n")
    reqs.append(b"mg nokey v q\r\nms q1 2 q\r\nab\r\nmg q1 v q\r\nmn\r\n")
    stream = b"".join(reqs)
    assert len(stream) < 8000
    direct, backend = memcached(), memcached()
    r = router(pool_config([backend], "DefaultRoute"))
    expected = stream_reply(direct.port, stream)
    assert expected.endswith(SENTINEL_REPLY)
    actual = stream_reply(r.port, stream, chunk=1, delay=0.0002)
    assert actual == expected, first_difference(expected, actual)


def test_random_split_input(memcached, router):
    """Writes cut at random places (inside lines, inside data blocks)."""
    stream = b"".join(mixed_requests(400, seed=3))
    direct, backend = memcached(), memcached()
    r = router(pool_config([backend], "DefaultRoute"))
    expected = stream_reply(direct.port, stream)
    rng = random.Random(3)
    with Client(r.port, timeout=30) as c:
        data = stream + SENTINEL
        done = threading.Event()

        def writer():
            i = 0
            while i < len(data) and not done.is_set():
                n = rng.randint(1, 300)
                c.sock.sendall(data[i:i + n])
                i += n
                if rng.random() < 0.3:
                    time.sleep(0.001)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        actual = c.recv_until_end(SENTINEL_REPLY, timeout=30)
        done.set()
        t.join(5)
    assert actual == expected, first_difference(expected, actual)


# ---------------------------------------------------------------------------
# several clients at once

def client_script(cid: int, rounds: int, per_round: int) -> list[tuple[bytes, bytes]]:
    """(request, exact reply) pairs on keys unique to client ``cid``; known
    in advance, without a server, because no other client touches them."""
    pairs = []
    counter = 0
    pairs.append((b"set c%dn 0 0 1\r\n0\r\n" % cid, b"STORED\r\n"))
    for rnd in range(rounds):
        for j in range(per_round):
            k = b"c%d:r%d:k%d" % (cid, rnd, j)
            v = b"v%d-%d-%d\r\n%s" % (cid, rnd, j, b"x" * ((cid * 7 + j) % 50))
            counter += j
            pairs += [
                (b"set %s %d 0 %d\r\n%s\r\n" % (k, cid, len(v), v), b"STORED\r\n"),
                (b"get %s\r\n" % k, b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (k, cid, len(v), v)),
                (b"append %s 0 0 1\r\n!\r\n" % k, b"STORED\r\n"),
                (b"mg %s v f k O%d\r\n" % (k, j),
                 b"VA %d f%d k%s O%d\r\n%s!\r\n" % (len(v) + 1, cid, k, j, v)),
                (b"incr c%dn %d\r\n" % (cid, j), b"%d\r\n" % counter),
                (b"delete %s\r\n" % k, b"DELETED\r\n"),
                (b"mg %s v q\r\nmn\r\n" % k, b"MN\r\n"),
                (b"ms %s 2 T0 q\r\nok\r\nmg %s v\r\n" % (k, k), b"VA 2\r\nok\r\n"),
            ]
    return pairs


@pytest.mark.parametrize("workers,conns", [(2, None), (1, 3)])
def test_concurrent_clients_see_only_their_replies(memcached, router, workers, conns):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=workers, conns=conns)
    nclients = 4
    results: dict[int, tuple[bytes, bytes]] = {}

    def run(cid: int) -> None:
        pairs = client_script(cid, rounds=3, per_round=40)
        rng = random.Random(cid)
        got = bytearray()
        expected = b"".join(p[1] for p in pairs)
        with Client(r.port, timeout=30) as c:
            # write the whole script in random-sized pieces, reading as we go
            data = b"".join(p[0] for p in pairs)
            i = 0
            while i < len(data):
                n = rng.randint(1, 4000)
                c.send(data[i:i + n])
                i += n
                time.sleep(rng.random() * 0.002)
                got += c.recv_idle(0.0001, timeout=0.01)
            got += c.recv_exact(len(expected) - len(got), timeout=30)
            got += c.recv_idle(0.2)
        results[cid] = (expected, bytes(got))

    threads = [threading.Thread(target=run, args=(cid,), daemon=True) for cid in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == nclients, "a client thread did not finish"
    for cid, (expected, got) in sorted(results.items()):
        assert got == expected, f"client {cid}: " + first_difference(expected, got)


def test_ordering_preserved_with_multiple_upstream_connections(memcached, router):
    """One client's pipeline must reach memcached in order even when the
    router holds several connections per host (BUGS.md #1)."""
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=1, conns=4)
    req = b"".join(b"set a 0 0 %d\r\n%d\r\nget a\r\n" % (len(str(i)), i) for i in range(300))
    exp = b"".join(b"STORED\r\nVALUE a 0 %d\r\n%d\r\nEND\r\n" % (len(str(i)), i) for i in range(300))
    for _ in range(3):
        with r.client() as c:
            got = c.request(req, exp)
        assert got == exp, first_difference(exp, got)


# ---------------------------------------------------------------------------
# SIGTERM under load

def boundary_prefix(pairs: list[tuple[bytes, bytes]], got: bytes) -> int:
    """How many replies ``got`` holds, if it is exactly the first replies in
    order and ends at a reply boundary; raises AssertionError otherwise."""
    pos = 0
    for i, (req, rep) in enumerate(pairs):
        if pos == len(got):
            return i
        chunk = got[pos:pos + len(rep)]
        assert chunk == rep, (f"reply {i} to {show(req)} is wrong or truncated:\n"
                              f"expected {show(rep)}\ngot      {show(chunk)}")
        pos += len(rep)
    assert pos == len(got), f"extra bytes after the last reply: {show(got[pos:])}"
    return len(pairs)


def _lockstep_client(port: int, pairs, started, deadline_s: float = 30):
    """Write a batch, read all its replies, repeat: at most one batch in flight."""
    got = bytearray()
    sent = 0
    c = Client(port, timeout=10)
    try:
        started.wait()
        deadline = time.monotonic() + deadline_s
        batch = 40
        while sent < len(pairs) and time.monotonic() < deadline:
            chunk = pairs[sent:sent + batch]
            try:
                c.send(b"".join(p[0] for p in chunk))
            except OSError:
                break
            sent += len(chunk)
            want = sum(len(p[1]) for p in pairs[:sent])
            got += c.recv_exact(want - len(got), timeout=10)
            if c.eof or want != len(got):
                break
        got += c.recv_idle(0.2, timeout=2)
    finally:
        c.close()
    return pairs[:sent], bytes(got)


def _streaming_client(port: int, pairs, started, deadline_s: float = 30):
    """A writer thread streams requests without waiting; this thread reads
    everything until the router closes the connection."""
    c = Client(port, timeout=10)
    sent = [0]
    stop = threading.Event()

    def writer():
        batch = 25
        deadline = time.monotonic() + deadline_s
        while sent[0] < len(pairs) and not stop.is_set() and time.monotonic() < deadline:
            chunk = pairs[sent[0]:sent[0] + batch]
            try:
                c.sock.sendall(b"".join(p[0] for p in chunk))
            except OSError:
                return
            sent[0] += len(chunk)
            time.sleep(0.002)          # bounded rate: still sending when SIGTERM comes

    got = bytearray()
    try:
        started.wait()
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        deadline = time.monotonic() + deadline_s + 10
        while not c.eof and time.monotonic() < deadline:
            c._fill(deadline)
            got += c.buf
            c.buf.clear()
        stop.set()
        t.join(10)
    finally:
        c.close()
    return pairs[:sent[0]], bytes(got)


@pytest.mark.parametrize("mode", ["lockstep", "streaming"])
def test_sigterm_under_load_is_graceful(memcached, router, mode):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    nclients = 4
    started = threading.Barrier(nclients + 1, timeout=20)
    results: dict[int, tuple[list, bytes]] = {}
    body = _lockstep_client if mode == "lockstep" else _streaming_client

    def run(cid: int) -> None:
        pairs = client_script(cid, rounds=200, per_round=20)    # far more than will be sent
        results[cid] = body(r.port, pairs, started)

    threads = [threading.Thread(target=run, args=(cid,), daemon=True) for cid in range(nclients)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(1.0)                          # let the load run
    r.signal(signal.SIGTERM)
    code = r.wait(timeout=20)
    for t in threads:
        t.join(60)
    assert code == 0, f"router exited with {code}; stderr:\n{r.stderr()}"
    assert len(results) == nclients, "a client thread did not finish"
    answered = 0
    for cid, (pairs, got) in sorted(results.items()):
        n = boundary_prefix(pairs, got)
        answered += n

    assert answered > 0, "no request was answered before SIGTERM"
    # the listening socket is gone
    with pytest.raises(OSError):
        Client(r.port, timeout=2).close()


def test_sigterm_idle_router_exits_zero(memcached, router):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    workers = r.worker_pids()
    assert len(workers) == 2
    with r.client() as c:                    # an idle client does not hold the router up
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
        r.signal(signal.SIGTERM)
        assert r.wait(timeout=15) == 0, r.stderr()
        assert c.is_closed()
    assert wait_until(lambda: all(not _alive(p) for p in workers), 5)


def _run_and_stop(cfg, closed_fd: int | None) -> tuple[int, bytes]:
    """Start a router (one worker, SIGTTIN for a second, forked by the running
    master), SIGTERM it: (exit code, stderr).  ``closed_fd``: 1 or 2 is
    closed before the router starts, so that sys.stdout or sys.stderr is None."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                             "-l", f"127.0.0.1:{port}", "-n", "1"], cwd=str(REPO),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=(lambda: os.close(closed_fd)) if closed_fd else None)
    try:
        assert wait_port(port, proc)
        assert wait_until(lambda: len(children_of(proc.pid, "mcr-worker")) == 1, 10)
        proc.send_signal(signal.SIGTTIN)
        assert wait_until(lambda: len(children_of(proc.pid, "mcr-worker")) == 2, 10)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - t0 < 5.0, "the stop waited for a child to be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_a_stopped_router_exits_0_with_its_log_even_without_stdout_or_stderr(memcached, tmp_path):
    """The master and its children end with os._exit after flushing what they
    logged: the exit code and the last log line come out, and a closed stdout
    or stderr (None in Python) neither fails the stop nor keeps a child alive."""
    m = memcached()
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"pools:\n  a:\n    servers: [{m.addr}]\nroute: PoolRoute|a\n")
    code, err = _run_and_stop(cfg, None)
    assert code == 0
    lines = err.decode().splitlines()
    assert any(line.endswith("stopping: finishing requests in flight") for line in lines), lines
    assert "Traceback" not in err.decode()
    for closed in (1, 2):
        code, err = _run_and_stop(cfg, closed)
        assert code == 0, (closed, err)
        assert "Traceback" not in err.decode() and "failed" not in err.decode(), err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


# ---------------------------------------------------------------------------
# worker supervision

def test_killed_worker_is_replaced(memcached, router):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    before = r.worker_pids()
    assert len(before) == 2, f"expected 2 workers, found {before}"
    victim = before[0]
    import os
    os.kill(victim, signal.SIGKILL)
    # one look per poll: two separate looks could see a dying pid, then its absence
    assert wait_until(lambda: (lambda now: len(now) == 2 and victim not in now)(r.worker_pids()),
                      15), f"workers after SIGKILL of {victim}: {r.worker_pids()}"
    after = r.worker_pids()
    assert before[1] in after
    assert r.proc.poll() is None
    # the router keeps serving, on fresh connections (whichever worker takes them)
    for i in range(20):
        with r.client() as c:
            req = b"set k%d 0 0 1\r\n%d\r\nget k%d\r\n" % (i, i % 10, i)
            exp = b"STORED\r\nVALUE k%d 0 1\r\n%d\r\nEND\r\n" % (i, i % 10)
            assert c.request(req, exp) == exp
    r.signal(signal.SIGTERM)
    assert r.wait(timeout=15) == 0, r.stderr()


# ---------------------------------------------------------------------------
# depth and back-pressure

def test_deep_pipeline(memcached, router):
    """Far more requests in one write than the router keeps pending at once."""
    m = memcached()
    m.set("hit", b"H")
    r = router(pool_config([m], "DefaultRoute"))
    n = 12000
    req = b"get nokey\r\nget hit\r\nmn\r\n" * (n // 3)
    exp = b"END\r\nVALUE hit 0 1\r\nH\r\nEND\r\nMN\r\n" * (n // 3)
    with Client(r.port, timeout=60) as c:
        got = c.pipeline(req + SENTINEL, exp + SENTINEL_REPLY, timeout=60)
    assert got == exp + SENTINEL_REPLY, first_difference(exp + SENTINEL_REPLY, got)


def test_slow_reader_gets_every_byte(memcached, router):
    """A client that reads slowly gets large replies complete and in order."""
    m = memcached()
    big = bytes(range(256)) * 2000            # 512,000 bytes
    m.set("big", big)
    r = router(pool_config([m], "DefaultRoute"))
    count = 24                                # ~12 MB of replies
    req = b"".join(b"get big\r\nmg n%d v k\r\n" % i for i in range(count))
    one = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(big), big)
    exp = b"".join(one + b"EN kn%d\r\n" % i for i in range(count))
    with Client(r.port, timeout=60) as c:
        c.send(req)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        got = bytearray()
        deadline = time.monotonic() + 60
        while len(got) < len(exp) and time.monotonic() < deadline:
            c.sock.settimeout(5)
            data = c.sock.recv(65536)
            if not data:
                break
            got += data
            if len(got) < 4 << 20:
                time.sleep(0.002)             # slow for the first few MB
        assert bytes(got) == exp, first_difference(exp, bytes(got))
        assert c.recv_idle(0.2) == b""


def test_workers_exit_when_master_dies(memcached, router):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    workers = r.worker_pids()
    assert len(workers) == 2
    r.signal(signal.SIGKILL)
    r.wait(10)
    assert wait_until(lambda: not any(_alive(p) for p in workers), 10), \
        f"workers {workers} outlived their master"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_stop_with_zero(memcached, router, sig):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    workers = r.worker_pids()
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
        r.signal(sig)
        assert r.wait(15) == 0, r.stderr()
        assert c.is_closed(5)
    assert wait_until(lambda: not any(_alive(p) for p in workers), 10)


def test_half_close_still_gets_replies(memcached, router):
    """BUGS.md #5: requests then shutdown(SHUT_WR) (``printf ... | nc -N``):
    memcached answers all, then closes; so must the router."""
    direct, backend = memcached(), memcached()
    r = router(pool_config([backend], "DefaultRoute"))
    req = b"set hc 0 0 2\r\nhi\r\nget hc\r\n" + b"mg hc v\r\n" * 50 + b"get nokey\r\n"
    results = []
    for port in (direct.port, r.port):
        with Client(port) as c:
            c.send(req)
            c.sock.shutdown(socket.SHUT_WR)
            got = c.recv_until_end(b"\x00never\x00", timeout=10)      # to EOF
            results.append((got, c.eof))
    (exp, exp_eof), (act, act_eof) = results
    assert exp == b"STORED\r\nVALUE hc 0 2\r\nhi\r\nEND\r\n" + b"VA 2\r\nhi\r\n" * 50 + b"END\r\n"
    assert exp_eof
    assert act == exp, first_difference(exp, act)
    assert act_eof


def test_worker_killed_repeatedly_is_replaced_each_time(memcached, router):
    import os
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    for _ in range(3):
        before = r.worker_pids()
        assert len(before) == 2
        os.kill(before[-1], signal.SIGKILL)
        # one look per poll: two separate looks could see a dying pid, then its absence
        assert wait_until(lambda: (lambda now: len(now) == 2 and before[-1] not in now)(
            r.worker_pids()), 20), f"workers: {r.worker_pids()}"
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
    assert r.proc.poll() is None


def test_sighup_is_harmless(memcached, router):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=2)
    workers = r.worker_pids()
    with r.client() as c:
        assert c.request(b"set k 0 0 1\r\nv\r\n", b"STORED\r\n") == b"STORED\r\n"
        r.signal(signal.SIGHUP)
        time.sleep(0.5)
        exp = b"VALUE k 0 1\r\nv\r\nEND\r\n"
        assert c.request(b"get k\r\n", exp) == exp        # the same connection still works
    with r.client() as c:
        assert c.request(b"get k\r\n", exp) == exp
    assert r.worker_pids() == workers
    assert r.proc.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_reuseport(memcached, router, workers):
    m = memcached()
    r = router(pool_config([m], "DefaultRoute"), workers=workers, extra=["--reuseport"])
    for i in range(10):
        with r.client() as c:
            exp = b"STORED\r\nVALUE r%d 0 1\r\nx\r\nEND\r\n" % i
            assert c.request(b"set r%d 0 0 1\r\nx\r\nget r%d\r\n" % (i, i), exp) == exp
    r.signal(signal.SIGTERM)
    assert r.wait(15) == 0, r.stderr()


def _fd_count(pid: int) -> int:
    import os
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def test_many_connections_and_churn_leak_nothing(memcached, router):
    m = memcached()
    m.set("k", b"v")
    r = router(pool_config([m], "DefaultRoute"), workers=1)
    (worker,) = r.worker_pids()
    with r.client() as c:
        assert c.request(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n") == \
            b"VALUE k 0 1\r\nv\r\nEND\r\n"
    baseline = _fd_count(worker)
    exp = b"VALUE k 0 1\r\nv\r\nEND\r\n"
    # 200 connections open at once, each with a request in flight
    clients = [Client(r.port, timeout=20) for _ in range(200)]
    try:
        for c in clients:
            c.send(b"get k\r\n")
        for c in clients:
            assert c.recv_exact(len(exp)) == exp
    finally:
        for c in clients:
            c.close()
    # churn: connect, ask, hang up (sometimes before the reply)
    for i in range(300):
        c = Client(r.port)
        c.send(b"get k\r\n")
        if i % 2:
            assert c.recv_exact(len(exp)) == exp
        c.close()
    assert wait_until(lambda: _fd_count(worker) <= baseline + 2, 10), \
        f"worker fds: {baseline} before, {_fd_count(worker)} after"
    assert r.worker_pids() == [worker]
