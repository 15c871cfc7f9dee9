"""Operations under load: a worker killed, a rolling restart of SO_REUSEPORT
instances, systemd's readiness protocol, and the unit file."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from support import REPO, Client, free_port, owner, pool_config, wait_until
from support.loadgen import CounterLoader, Loader, value_reply

KEYS = [f"key{i}" for i in range(32)]


def load_keys(m) -> dict[str, dict[str, bytes]]:
    sources: dict[str, bytes] = {}
    for i, k in enumerate(KEYS):
        value = f"value-{i}".encode()
        m.set(k, value)
        sources[k] = value_reply(k, value)
    return {"m": sources}


def spread(port: int, groups: list[list[int]], make: Callable[[int], Any],
           want: int = 2) -> list[tuple[int, Any]]:
    """Loaders ``make(n)`` until each group of pids serves at least ``want``
    of them (the kernel picks the worker; at most 60 tries): [(group, loader)]."""
    out: list[tuple[int, Any]] = []
    everyone = [p for g in groups for p in g]
    for n in range(60):
        ld = make(n)
        local = ld.sock.getsockname()[1]
        wait_until(lambda: owner(port, local, everyone) is not None, 2)
        pid = owner(port, local, everyone)
        group = next((i for i, g in enumerate(groups) if pid in g), None)
        if group is not None and sum(1 for g, _ in out if g == group) < want:
            out.append((group, ld))
        else:
            ld.sock.close()
        if all(sum(1 for g, _ in out if g == i) >= want for i in range(len(groups))):
            return out
    pytest.fail(f"the kernel never spread {want} connections to each of {groups}")


def test_kill_9_a_worker_under_load(memcached, router):
    """Only the killed worker's clients notice; the worker count comes back."""
    m = memcached()
    sources = load_keys(m)
    r = router(pool_config([m]), workers=2, extra=["--reuseport"])
    victim, survivor = r.worker_pids()
    loaders = spread(r.port, [[victim], [survivor]],
                     lambda n: Loader(r.port, KEYS, sources, batch=16, seed=n), want=3)
    for _, ld in loaders:
        ld.start()
    time.sleep(0.5)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_until(lambda: len(r.worker_pids()) == 2 and victim not in r.worker_pids(), 10)
    time.sleep(0.5)
    for _, ld in loaders:
        ld.stop()
    for group, ld in loaders:
        assert ld.errors == [], ld.errors[:3]     # no wrong reply, ever
        if group == 0:
            assert ld.eofs == 1                   # its connection went with the worker
        else:
            assert ld.eofs == 0
            assert sum(1 for b in ld.batches if b.sent > killed_at + 0.1) > 10
    assert "restarting in" in r.stderr()
    with r.client() as c:                         # the new worker serves
        for _ in range(4):
            want = sources["m"]["key1"]
            assert c.request(b"get key1\r\n", want) == want


def test_two_reuseport_instances_and_a_rolling_restart(memcached, router):
    """Both instances get connections; SIGTERM one under load: every request
    is answered correctly (clients reconnect after the hang-up, as memcached
    clients do), no request is executed without its reply reaching the
    client (the incr counters count exactly), and the stopped instance exits 0."""
    m = memcached()
    sources = load_keys(m)
    port = free_port()
    first = router(pool_config([m]), workers=1, extra=["--reuseport"], port=port)
    second = router(pool_config([m]), workers=1, extra=["--reuseport"], port=port)
    assert second.wait_log("start: all 1 worker(s)")
    groups = [first.worker_pids(), second.worker_pids()]
    for n in range(60):
        m.set(f"ctr{n}", b"0")
    loaders = spread(port, groups, lambda n: Loader(port, KEYS, sources, batch=16, seed=n,
                                                    reconnect=True), want=3)
    loaders += spread(port, groups, lambda n: CounterLoader(port, f"ctr{n}"), want=3)
    for _, ld in loaders:
        ld.start()
    time.sleep(0.5)
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    stopped_at = time.monotonic()
    time.sleep(0.5)
    for _, ld in loaders:
        ld.stop()
    for group, ld in loaders:
        assert ld.errors == [], ld.errors[:3]
        if group == 0:
            assert ld.eofs >= 1                   # hung up on, moved to the other instance
        if isinstance(ld, Loader):
            assert sum(1 for b in ld.batches if b.sent > stopped_at) > 5   # carried on
        else:
            assert ld.acked > 100
            with m.client() as c:                 # executed exactly as often as answered
                assert c.call(f"get {ld.key}\r\n".encode(), b"END\r\n") == \
                    value_reply(ld.key, str(ld.acked).encode())
    assert "Traceback" not in first.stderr() + second.stderr()


# ---------------------------------------------------------------------------
# systemd


class NotifyListener:
    """The socket systemd would listen on (NOTIFY_SOCKET)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_sd_notify_ready_reloading_stopping(memcached, router, tmp_path, monkeypatch, where):
    m = memcached()
    if where == "path":
        address = env = str(tmp_path / "notify.sock")
    else:
        env = f"@mcrouter-test-{os.getpid()}-{time.monotonic_ns()}"
        address = "\0" + env[1:]
    listener = NotifyListener(address)
    monkeypatch.setenv("NOTIFY_SOCKET", env)
    r = router(pool_config([m]), workers=2)
    msg = listener.next()
    assert msg == {"READY": "1", "STATUS": "2 worker(s), config generation 1"}
    assert len(r.worker_pids()) == 2

    r.signal(signal.SIGHUP)
    msg = listener.next()
    assert msg["RELOADING"] == "1" and set(msg) == {"RELOADING", "MONOTONIC_USEC", "STATUS"}
    assert 0 < int(msg["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert listener.next() == {"READY": "1", "STATUS": "2 worker(s), config generation 2"}

    r.config_path.write_text("route: {type: Nope}\n")
    r.signal(signal.SIGHUP)
    assert listener.next()["RELOADING"] == "1"
    msg = listener.next()
    assert msg["READY"] == "1" and msg["STATUS"].startswith("reload refused: ")

    r.signal(signal.SIGTERM)
    assert listener.next() == {"STOPPING": "1"}
    assert r.wait() == 0


UNIT = REPO / "deploy" / "mcrouter.service"


def unit_keys(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → values, continuation lines joined (enough of systemd's syntax)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, v = line.split("=", 1)
        keys.setdefault(f"{section}.{k}", []).append(v)
    return keys


def test_the_unit_file_says_what_the_docs_promise():
    keys = unit_keys(UNIT.read_text())
    for key, value in [("Service.Type", "notify"), ("Service.ExecReload", "/bin/kill -HUP $MAINPID"),
                       ("Service.KillMode", "mixed"), ("Service.DynamicUser", "yes"),
                       ("Service.NoNewPrivileges", "yes"), ("Service.ProtectSystem", "strict"),
                       ("Service.ProtectHome", "yes"), ("Service.PrivateTmp", "yes"),
                       ("Service.CapabilityBoundingSet", ""), ("Install.WantedBy", "multi-user.target")]:
        assert keys.get(key) == [value], (key, keys.get(key))
    # every flag of ExecStart is one the router knows, and the config it names is checked first
    (start,) = keys["Service.ExecStart"]
    help_text = subprocess.run([sys.executable, "-m", "mcrouter", "run", "--help"],
                               capture_output=True, text=True, timeout=30, cwd=REPO).stdout
    for flag in re.findall(r"\s(--?[a-z][a-z-]*)", start):
        assert flag in help_text, flag
    assert keys["Service.ExecStartPre"] == [
        "/usr/local/bin/mcrouter check-config -f /etc/mcrouter/router.yaml"]
    # the router's own drain ends before systemd's SIGKILL
    grace = float(re.search(r"--graceful-timeout (\d+)", start).group(1))
    assert float(keys["Service.TimeoutStopSec"][0]) > grace + 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    """The service and its socket as shipped, except that the command points
    at an executable that exists here (verify checks that ExecStart= can run)."""
    stub = tmp_path / "mcrouter"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "mcrouter.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/mcrouter", str(stub)))
    shutil.copy(UNIT.with_suffix(".socket"), tmp_path / "mcrouter.socket")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit),
                           str(tmp_path / "mcrouter.socket")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_dockerfile_runs_the_router_as_a_user():
    text = (REPO / "Dockerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1)
    assert entry.startswith('["mcrouter", "run", "-f", "/etc/mcrouter/router.yaml"')
    assert re.search(r"^USER 10001", text, re.M)
    assert "/etc/mcrouter/router.yaml" in (REPO / "README.md").read_text()
    assert Path(REPO / ".dockerignore").exists()


def test_sigterm_drain_delivers_every_reply_to_a_slow_reader(memcached, router):
    """SIGTERM while megabytes of replies wait for a client that reads slowly
    and has sent more since: it gets every reply to what the router had read,
    whole, then end-of-file.  (Closing with its later requests unread would
    reset the connection and throw away the replies still in the kernel's
    send buffer.)"""
    m = memcached()
    big = b"x" * 100_000
    m.set("big", big)
    r = router(pool_config([m]), workers=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", r.port))
    try:
        sock.sendall(b"get big\r\n" * 40)
        time.sleep(0.5)                        # read, routed, answered into buffers
        sock.sendall(b"get big\r\n" * 10)      # not read: the router's output is full
        time.sleep(0.2)
        r.signal(signal.SIGTERM)
        got = bytearray()
        sock.settimeout(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
            time.sleep(0.002)
        one = value_reply("big", big)
        assert len(got) % len(one) == 0 and got == one * (len(got) // len(one)), \
            f"{len(got)} bytes, {len(got) / len(one):.2f} replies"
        assert len(got) // len(one) >= 40
    finally:
        sock.close()
    assert r.wait(15) == 0


def test_socket_activation_keeps_connections_waiting_across_a_restart(memcached, tmp_path):
    """A listening socket passed as systemd does (fd 3, LISTEN_FDS, LISTEN_PID)
    is used instead of -l; a client that connects while no router runs waits
    in its backlog and is served by the next router."""
    m = memcached()
    m.set("k", b"v")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"orderedPool: [{m.addr}]\nroute: {{type: DefaultRoute}}\n")
    held = socket.socket()                     # what systemd would hold
    held.bind(("127.0.0.1", 0))
    held.listen(64)
    port, fd = held.getsockname()[1], held.fileno()
    want = value_reply("k", b"v")
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"router{len(procs)}.log", "wb")
        # as systemd does it: the socket at fd 3, then exec with LISTEN_PID = own pid
        shim = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")
        p = subprocess.Popen([sys.executable, "-c", shim, str(fd), "-m", "mcrouter", "run",
                              "-f", str(cfg), "-l", "127.0.0.1:1"], pass_fds=(fd,),
                             stdout=log, stderr=log, cwd=REPO)
        procs.append(p)
        return p

    try:
        first = start()
        with Client(port) as c:
            assert c.request(b"get k\r\n", want) == want
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0
        waiting = Client(port)                 # nobody accepts: it waits in the backlog
        waiting.send(b"get k\r\n")
        start()
        assert waiting.recv_exact(len(want)) == want
        waiting.close()
        assert f"listening on the socket(s) systemd passed: ('127.0.0.1', {port})" in \
            (tmp_path / "router0.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        held.close()
