"""Every numeric field at its limits, end to end: through the router and
straight to memcached, the reply bytes are exactly memcached 1.6.18's.

The expected bytes are the ones ``tests/probe_numeric.py`` recorded
(``numeric_expected``), hard-coded on purpose: the direct run fails if the
installed memcached changes, the router run fails if the router accepts a
number memcached refuses (the data block would reach the backend as a
command and its reply would land on a later request) or refuses one it
accepts.  Each case runs on its own connection and ends with a miss on a
key no case uses, so a smuggled or missing reply shows in that case alone.

One set of processes serves every case of a module (started once, killed
by pid): DefaultRoute over one fresh memcached, a 2-server PoolRoute for a
representative subset, and one fresh memcached spoken to directly.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from support import HOST, MEMCACHED, REPO, children_of, first_difference, free_port, wait_port

from support.numeric_cases import CASES, TERMINATOR_REPLY, Case
from support.numeric_expected import EXPECTED

CASE_TIMEOUT = 1.5
RUN_BUDGET = 45.0        # per target: a router that desynchronises stalls every later case
NOT_RUN = b"<not run: the target used up RUN_BUDGET on earlier cases>"
DIVERGED_GRACE = 0.2     # what else arrives after a wrong byte, for the failure message
START_TIMEOUT = 10.0
# the PoolRoute run: every field, at the values where the three parse rules differ
POOL_LABELS = ("0", "2^32", "2^32+2", "2^63", "2^64-1", "2^64", "-1", "-2^63-1", "30digits",
               "5x", "empty")
POOL_CASES = [c for c in CASES
              if any(c.id.endswith("-" + lab) or f"-{lab}-" in c.id for lab in POOL_LABELS)]

pytestmark = pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")


def expected(case: Case) -> bytes:
    reply, check = EXPECTED[case.id]
    return case.setup_reply + reply + check + TERMINATOR_REPLY


def run_case(port: int, case: Case) -> bytes:
    """The whole reply to one case on its own connection.  Reading stops at
    the terminator's reply, or shortly after the bytes stop matching what
    memcached answered (so a broken router fails fast), or at CASE_TIMEOUT."""
    want = expected(case)
    buf = bytearray()
    with socket.create_connection((HOST, port), timeout=CASE_TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(case.stream())
        deadline = time.monotonic() + CASE_TIMEOUT
        while not buf.endswith(TERMINATOR_REPLY):
            if not want.startswith(buf):
                deadline = min(deadline, time.monotonic() + DIVERGED_GRACE)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not data:
                break
            buf += data
    return bytes(buf)


@contextlib.contextmanager
def memcached_process() -> Iterator[str]:
    """A fresh memcached with the suite's flags; yields its address; killed by pid."""
    port = free_port()
    proc = subprocess.Popen([MEMCACHED, "-u", "root", "-l", HOST, "-p", str(port), "-U", "0",
                             "-t", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)     # verbosity cases make it chatty
    try:
        if not wait_port(port, proc):
            raise RuntimeError("memcached did not start")
        yield f"{HOST}:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=START_TIMEOUT)


@contextlib.contextmanager
def router_process(config: str, tmp: Path) -> Iterator[int]:
    """The router (one worker) on ``config``; yields its port; stopped by pid."""
    cfg = tmp / "router.yaml"
    cfg.write_text(config)
    port = free_port()
    with open(tmp / "router.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                                 "-l", f"{HOST}:{port}", "-n", "1"], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, cwd=str(REPO))
    workers: list[int] = []
    try:
        if not wait_port(port, proc, START_TIMEOUT):
            raise RuntimeError((tmp / "router.stderr").read_text(errors="replace"))
        deadline = time.monotonic() + START_TIMEOUT
        while not workers and time.monotonic() < deadline:
            workers = children_of(proc.pid, "mcr-worker")
            time.sleep(0.02)
        yield port
    finally:
        workers = workers or children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=START_TIMEOUT)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def replies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Every case's reply from each target, in table order (flush_all last)."""
    out: dict[str, dict[str, bytes]] = {}
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(memcached_process())
        behind = stack.enter_context(memcached_process())
        pool = [stack.enter_context(memcached_process()) for _ in range(2)]
        default_port = stack.enter_context(router_process(
            yaml.safe_dump({"orderedPool": [behind], "route": {"type": "DefaultRoute"}}),
            tmp_path_factory.mktemp("default")))
        pool_port = stack.enter_context(router_process(
            f"pools:\n  main:\n    servers: [{', '.join(pool)}]\n"
            f"    hash: {{function: md5, distribution: ketama}}\nroute: PoolRoute|main\n",
            tmp_path_factory.mktemp("pool")))
        direct_port = int(direct.rsplit(":", 1)[1])
        out["direct"] = run_all(direct_port, CASES)
        out["default"] = run_all(default_port, CASES)
        out["pool"] = run_all(pool_port, POOL_CASES)
    return out


def run_all(port: int, cases: list[Case]) -> dict[str, bytes]:
    """Each case's reply, in order; cases past RUN_BUDGET are marked not run."""
    end = time.monotonic() + RUN_BUDGET
    return {c.id: run_case(port, c) if time.monotonic() < end else NOT_RUN for c in cases}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_memcached_still_answers_as_probed(replies, case: Case) -> None:
    want = expected(case)
    got = replies["direct"][case.id]
    assert got == want, f"{case.stream()!r}\n{first_difference(want, got)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_default_route(replies, case: Case) -> None:
    want = expected(case)
    got = replies["default"][case.id]
    assert got == want, f"{case.stream()!r}\n{first_difference(want, got)}"


@pytest.mark.parametrize("case", POOL_CASES, ids=[c.id for c in POOL_CASES])
def test_pool_route(replies, case: Case) -> None:
    want = expected(case)
    got = replies["pool"][case.id]
    assert got == want, f"{case.stream()!r}\n{first_difference(want, got)}"


def test_issue_example_reaches_no_backend(memcached, router) -> None:
    """Issue 10's exact line: memcached's memory limit is untouched, the
    client sees only the router's refusal of cache_memlimit and MN."""
    m = memcached()
    r = router({"orderedPool": [m.addr], "route": {"type": "DefaultRoute"}})
    with m.client() as c:
        before = c.call(b"stats settings\r\n", b"END\r\n")
    limit = [line for line in before.split(b"\r\n") if line.startswith(b"STAT maxbytes ")]
    with r.client() as c:
        c.send(b"set x 0 99999999999999999999 16 noreply\r\ncache_memlimit 8\r\nmn\r\n")
        assert c.recv_until_end(b"MN\r\n", timeout=5) == (
            b"SERVER_ERROR mcrouter: command not supported\r\nMN\r\n")
    with m.client() as c:
        after = c.call(b"stats settings\r\n", b"END\r\n")
    assert limit and [line for line in after.split(b"\r\n")
                      if line.startswith(b"STAT maxbytes ")] == limit
