"""The master's supervision contract, seen from outside with real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from support import pool_config
from support.polling import stop_process


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


def test_sigterm_with_no_clients_does_not_wait_out_the_idle_poll(memcached, router):
    """A worker with nothing to drain exits on SIGTERM at once.  It used to
    notice only at its next tick, after an idle wait of a whole second (the
    loop's longest), so every stop took over 1 s.  Best of three, against a
    0.9 s bound that the old code could never meet."""
    m = memcached()
    best = 10.0
    for _ in range(3):
        r = router(pool_config([m]), workers=2)
        with r.client() as c:
            assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        time.sleep(0.05)                    # the close reached the worker
        start = time.monotonic()
        r.signal(signal.SIGTERM)
        assert r.wait(10) == 0
        best = min(best, time.monotonic() - start)
    assert best < 0.9, f"an idle router took {best:.2f} s to stop"


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


def test_a_worker_late_to_confirm_a_reload_leaves_the_master_serving(memcached, router):
    """Issue 10, defect 9: SIGSTOP one worker, SIGHUP the master, wait past the
    confirmation deadline (shortened to 1 s): the master used to die on an
    UnboundLocalError and take every worker with it."""
    m = memcached()
    m.set("k", b"v")
    r = router(pool_config([m]), workers=2, extra=["--confirm-timeout", "1"])
    assert r.wait_log("start: all 2 worker(s) run config generation 1")
    stopped = r.worker_pids()[0]
    stop_process(stopped)
    try:
        r.signal(signal.SIGHUP)
        assert r.wait_log("did not confirm generation 2 within 1s; 1 of 2 worker(s) confirmed",
                          timeout=10), r.stderr()[-2000:]
        time.sleep(0.5)                       # a few more turns of the master's loop
        assert r.proc.poll() is None and alive(r.pid)
        for _ in range(5):                    # the worker still running answers every client
            with r.client(timeout=5) as c:
                assert c.request(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n") \
                    == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert stopped in r.worker_pids()         # late, not killed: it catches up
    with r.client(timeout=5) as c:
        assert c.request(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    assert r.stop() == 0
    log = r.stderr()
    assert "Traceback" not in log and "UnboundLocalError" not in log, log[-2000:]
