"""Real processes for the tests: memcached and the router, started on free
loopback ports and stopped by pid; the port and /proc helpers they need.

Everything is bounded: every wait has a deadline.  Generous bounds: the
test machine is small and noisy.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest

from .client import HOST, READ_TIMEOUT, Client

MEMCACHED = shutil.which("memcached")
REPO = Path(__file__).resolve().parents[2]

START_TIMEOUT = 10.0        # a process must accept connections within this
STOP_TIMEOUT = 10.0         # SIGTERM → exit, before SIGKILL


def python_apart(code: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``code`` in a fresh interpreter: (exit status, its stdout).  For a
    check whose failure may be a crash (a negative status: the signal), which
    must not take the test run with it."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout + (proc.stderr.strip().splitlines() or [""])[-1]


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ipv6_port() -> int:
    """A free port on [::1], or skip the test where there is no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback")


def wait_port(port: int, proc: subprocess.Popen | None = None,
              timeout: float = START_TIMEOUT) -> bool:
    """True once ``port`` accepts a connection; False on timeout or if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.01)
    return False


def port_closed(port: int, timeout: float = STOP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                pass
        except OSError:
            return True
        time.sleep(0.05)
    return False


def children_of(pid: int, name: Optional[str] = None) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc), zombies excluded; with
    ``name``, only those whose process name (comm) is ``name``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces/parens: split after the last ')'
        rest = stat[stat.rfind(b")") + 2:].split()
        comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace")
        if len(rest) >= 2 and int(rest[1]) == pid and rest[0] != b"Z" \
                and (name is None or comm == name):
            out.append(int(entry))
    return sorted(out)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def _kill_pid(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


# ---------------------------------------------------------------------------
# memcached

@dataclass
class Memcached:
    port: int
    proc: subprocess.Popen
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, timeout: float = READ_TIMEOUT) -> Client:
        return Client(self.port, timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap; the port refuses connections afterwards."""
        _kill_pid(self.proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Start a fresh memcached on the same port (after ``kill``)."""
        self.kill()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if wait_port(self.port, self.proc, timeout=START_TIMEOUT / 2):
                return
            self.kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"memcached could not restart on port {self.port}")
            time.sleep(0.2)

    # direct helpers, used to set up and inspect state behind the router
    def set(self, key: str, value: bytes, flags: int = 0) -> None:
        with self.client() as c:
            cmd = f"set {key} {flags} 0 {len(value)}\r\n".encode() + value + b"\r\n"
            assert c.request(cmd, b"STORED\r\n") == b"STORED\r\n"

    def get_raw(self, *keys: str, cmd: str = "get") -> bytes:
        with self.client() as c:
            return c.call(f"{cmd} {' '.join(keys)}\r\n".encode(), b"END\r\n")


@dataclass
class TlsMemcached(Memcached):
    """A memcached speaking TLS on ``port`` (what the router is given, ``addr``)
    and plain TCP on ``plain_port`` (``-l notls:``), which the direct helpers
    use to set up and inspect what the router did over TLS."""
    plain_port: int = 0

    def client(self, timeout: float = READ_TIMEOUT) -> Client:
        return Client(self.plain_port, timeout)


# ---------------------------------------------------------------------------
# router

@dataclass
class Router:
    port: int
    proc: subprocess.Popen
    config_path: Path
    stderr_path: Path
    workers: int
    metrics_port: Optional[int] = None

    def scrape(self, timeout: float = READ_TIMEOUT) -> str:
        """The text of ``/metrics`` (the router must run with ``metrics=True``)."""
        import urllib.request
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics",
                                    timeout=timeout) as resp:
            return resp.read().decode()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout: float = READ_TIMEOUT) -> Client:
        return Client(self.port, timeout)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        return children_of(self.proc.pid, "mcr-worker")

    def sidecar_pids(self) -> list[int]:
        return children_of(self.proc.pid, "mcr-sidecar")

    def children(self) -> list[int]:
        return children_of(self.proc.pid)

    def wait_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> bool:
        """True once ``text`` appears ``count`` times in the router's log."""
        return wait_until(lambda: self.stderr().count(text) >= count, timeout, interval=0.01)

    def signal(self, sig: int) -> None:
        _kill_pid(self.proc, sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, then SIGKILL (master and any workers left) after ``timeout``."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        workers = self.children()
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.signal(signal.SIGKILL)
            code = self.wait(timeout)
        return code


def pool_config(hosts: Iterable, route: str | dict = "DefaultRoute", **policies: str) -> dict:
    """Build a gomcrouter config dict: ``pool_config([m1, m2], "DefaultRoute")``
    or ``pool_config(hosts, "OperationSelectorRoute", get="MissFailoverRoute")``."""
    pool = [h.addr if hasattr(h, "addr") else str(h) for h in hosts]
    if isinstance(route, dict):
        r = route
    else:
        r = {"type": route}
        if policies:
            r["operationPolicies"] = dict(policies)
    return {"orderedPool": pool, "route": r}


def owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` that holds the server side of a loopback TCP
    connection (found through /proc/net/tcp and /proc/<pid>/fd)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == server_port and \
                        int(fields[2].rsplit(":", 1)[1], 16) == client_port:
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                pass
    return None
