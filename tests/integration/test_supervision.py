"""The master's supervision contract, seen from outside with real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import pool_config


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_and_sidecar_exit_when_the_master_is_killed(memcached, router):
    m = memcached()
    r = router(pool_config([m]), workers=2)
    children = r.children()
    assert len(r.worker_pids()) == 2 and len(r.sidecar_pids()) == 1 and len(children) == 3
    r.signal(signal.SIGKILL)
    r.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in children), "orphaned children kept running"


def test_sigterm_stops_workers_and_sidecar_cleanly(memcached, router):
    m = memcached()
    r = router(pool_config([m]), workers=2)
    children = r.children()
    assert len(children) == 3
    r.signal(signal.SIGTERM)
    assert r.wait(10) == 0
    assert not any(alive(p) for p in children)
    log = r.stderr()
    assert "crashed" not in log and "Traceback" not in log, log
    assert "restarting" not in log          # nothing was respawned on the way out


def test_a_listen_address_in_use_is_one_line_and_nonzero(tmp_path, memcached):
    """A port held by someone else (without SO_REUSEPORT): exit non-zero with
    one line saying so, before any worker starts."""
    import socket
    m = memcached()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"orderedPool: [{m.addr}]\nroute: {{type: DefaultRoute}}\n")
    proc = subprocess.run([sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                           "-l", f"127.0.0.1:{port}", "--reuseport"],
                          capture_output=True, text=True, timeout=30)
    holder.close()
    assert proc.returncode != 0
    assert "cannot listen" in proc.stderr or "cannot bind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigquit_stops_at_once(memcached, router):
    m = memcached()
    r = router(pool_config([m]), workers=2)
    r.signal(signal.SIGQUIT)
    assert r.wait(10) == 0
