"""Shared fixtures for the integration and fault tests.

* ``memcached``: a factory that starts real memcached processes on free
  loopback ports and kills them (by pid) at teardown.
* ``router``: a factory that writes a config into ``tmp_path``, starts the
  router as a real process (``sys.executable -m mcrouter run ...``), waits
  until its port accepts connections and stops it at teardown (SIGTERM,
  then SIGKILL after a timeout).
* ``Client``: a tiny blocking client that sends bytes and reads either an
  exact number of bytes or until the data ends with a terminator, always
  with a deadline so that nothing can hang.

Everything is bounded: every wait has a deadline, every test has a
watchdog (SIGALRM) so that a wedged socket fails the test instead of the
whole run.  Network traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest
import yaml

HOST = "127.0.0.1"
MEMCACHED = shutil.which("memcached")
REPO = Path(__file__).resolve().parent.parent

# Generous bounds: the test machine is small and noisy.
START_TIMEOUT = 10.0        # a process must accept connections within this
STOP_TIMEOUT = 10.0         # SIGTERM → exit, before SIGKILL
READ_TIMEOUT = 10.0         # default deadline of one client read
TEST_WATCHDOG = 120         # seconds one test may run at most


# ---------------------------------------------------------------------------
# markers and skipping

def pytest_configure(config: pytest.Config) -> None:
    # Every router a test starts serves no /metrics unless the test asks
    # (``metrics=True``): the default :9090 would collide between routers.
    os.environ["MCROUTER_METRICS_LISTEN_ADDR"] = "off"
    config.addinivalue_line(
        "markers", "integration: runs real router processes (tests that need a memcached "
                   "binary are skipped when it is absent)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason="memcached is not installed (apt-get install memcached); "
                                   "integration tests need a real memcached binary")
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if here / "integration" in path.parents or here / "faults" in path.parents:
            item.add_marker(pytest.mark.integration)
        if MEMCACHED is None and "memcached" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest):
    """Fail (rather than hang) a test that runs far longer than it should."""
    if "integration" not in request.keywords or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"test watchdog: {request.node.nodeid} ran over {TEST_WATCHDOG}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_WATCHDOG)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------
# helpers

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
            time.sleep(0.05)
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
# client

class Client:
    """A blocking loopback client with deadlines on every read."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT, nodelay: bool = True) -> None:
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more; False on EOF or when the deadline has passed."""
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return time.monotonic() < deadline
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        """Exactly ``n`` bytes, or whatever arrived before EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n and self._fill(deadline):
            pass
        return self._take(min(n, len(self.buf)))

    def recv_until(self, terminator: bytes, timeout: Optional[float] = None) -> bytes:
        """Everything up to and including the first ``terminator`` that ends
        the data read so far (checked after each read and at each occurrence),
        or whatever arrived before EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        start = 0
        while True:
            i = self.buf.find(terminator, start)
            if i >= 0:
                return self._take(i + len(terminator))
            start = max(0, len(self.buf) - len(terminator) + 1)
            if not self._fill(deadline):
                return self._take(len(self.buf))

    def recv_until_end(self, terminator: bytes, timeout: Optional[float] = None) -> bytes:
        """Read until the *whole data received* ends with ``terminator`` (so a
        terminator-like sequence inside a value does not stop the read early
        as long as more data follows), or EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.buf.endswith(terminator):
            if not self._fill(deadline):
                break
        return self._take(len(self.buf))

    def recv_one_of(self, options: Iterable[bytes], timeout: Optional[float] = None) -> bytes:
        """The first of ``options`` that the data received so far starts with
        (read as needed), or everything received before EOF/deadline.  For
        replies that may legitimately be one of a few exact texts."""
        options = sorted(set(options), key=len)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for o in options:
                if self.buf.startswith(o):
                    return self._take(len(o))
            if not any(o.startswith(bytes(self.buf)) for o in options):
                return self._take(len(self.buf))      # can be none of them
            if not self._fill(deadline):
                return self._take(len(self.buf))

    def recv_idle(self, idle: float = 0.3, timeout: Optional[float] = None) -> bytes:
        """Everything that arrives until nothing more comes for ``idle`` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline and not self.eof:
            self.sock.settimeout(idle)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.buf += data
        return self._take(len(self.buf))

    def request(self, data: bytes, expect: bytes, timeout: Optional[float] = None) -> bytes:
        """Send ``data`` and read exactly ``len(expect)`` bytes (the reply
        that ``expect`` is the exact text of)."""
        self.send(data)
        return self.recv_exact(len(expect), timeout)

    def call(self, data: bytes, terminator: bytes = b"\r\n",
             timeout: Optional[float] = None) -> bytes:
        """Send ``data`` and read until ``terminator`` (first occurrence)."""
        self.send(data)
        return self.recv_until(terminator, timeout)

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the peer closes the connection within ``timeout`` (no data expected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.eof:
                return True
            self._fill(deadline)
        return self.eof

    def pipeline(self, data: bytes, terminator: bytes, timeout: float = 30.0,
                 chunk: int = 0, delay: float = 0.0) -> bytes:
        """Write ``data`` (from a thread, so that large writes cannot deadlock
        against unread replies) and read until all data received ends with
        ``terminator``.  ``chunk``>0 writes that many bytes per send with
        ``delay`` seconds between sends."""
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                if chunk <= 0:
                    self.sock.sendall(data)
                else:
                    for i in range(0, len(data), chunk):
                        self.sock.sendall(data[i:i + chunk])
                        if delay:
                            time.sleep(delay)
            except OSError as e:        # the reader reports what is missing
                errors.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        out = self.recv_until_end(terminator, timeout)
        t.join(timeout=5)
        return out


def connect(port: int, timeout: float = READ_TIMEOUT) -> Client:
    return Client(port, timeout)


# ---------------------------------------------------------------------------
# memcached factory

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


@pytest.fixture
def memcached() -> Iterable[Callable[..., Memcached]]:
    """``memcached(*extra_args)`` → a running, empty memcached on a free port."""
    if MEMCACHED is None:
        pytest.skip("memcached is not installed")
    started: list[Memcached] = []

    def start(*extra: str) -> Memcached:
        last_err = b""
        for _attempt in range(5):          # the free port may be taken in between
            port = free_port()
            args = [MEMCACHED, "-u", "root", "-l", HOST, "-p", str(port), "-U", "0", "-t", "1",
                    *extra]
            # a file, not a pipe: "verbosity 2" makes memcached log every
            # command, and a pipe nobody reads would stall it once full
            err = tempfile.TemporaryFile()
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
            m = Memcached(port, proc, args)
            started.append(m)
            if wait_port(port, proc):
                err.close()         # the process keeps its own descriptor
                return m
            m.kill()
            err.seek(0)
            last_err = err.read()
            err.close()
        raise RuntimeError(f"memcached did not start: {last_err.decode(errors='replace')}")

    yield start
    for m in started:
        m.kill()
        if m.proc.stderr:
            m.proc.stderr.close()


# ---------------------------------------------------------------------------
# router factory

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


@pytest.fixture
def router(tmp_path: Path) -> Iterable[Callable[..., Router]]:
    """``router(config, workers=1, timeout_ms=None, conns=None, extra=(), port=None,
    metrics=False)`` → a running router; ``config`` is a dict (dumped as YAML) or
    YAML text; ``port`` is a free one unless given (e.g. to share it with
    --reuseport); with ``metrics`` it serves /metrics on a free port
    (``Router.scrape``)."""
    started: list[Router] = []
    counter = [0]

    def start(config: dict | str, workers: int = 1, timeout_ms: Optional[int] = None,
              conns: Optional[int] = None, extra: Iterable[str] = (),
              ready_timeout: float = START_TIMEOUT, port: Optional[int] = None,
              metrics: bool = False) -> Router:
        counter[0] += 1
        n = counter[0]
        cfg = tmp_path / f"router{n}.yaml"
        cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        errlog = tmp_path / f"router{n}.stderr"
        last = ""
        fixed_port = port
        for _attempt in range(1 if fixed_port else 3):
            port = fixed_port or free_port()
            args = [sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                    "-l", f"{HOST}:{port}", "-n", str(workers)]
            if timeout_ms is not None:
                args += ["-r", str(timeout_ms)]
            if conns is not None:
                args += ["-C", str(conns)]
            metrics_port = free_port() if metrics else None
            if metrics_port is not None:
                args += ["-L", f"{HOST}:{metrics_port}"]
            args += list(extra)
            with open(errlog, "wb") as err:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                        cwd=str(REPO))
            r = Router(port, proc, cfg, errlog, workers, metrics_port)
            started.append(r)
            if wait_port(port, proc, ready_timeout) and \
                    (metrics_port is None or wait_port(metrics_port, proc, ready_timeout)):
                # the port is bound by the master before workers fork: wait for them too
                wait_until(lambda: len(r.worker_pids()) >= workers, ready_timeout)
                return r
            r.stop()
            last = r.stderr()
            if "cannot listen" not in last:
                break
        pytest.fail(f"router did not become ready (exit {proc.returncode}); stderr:\n{last}")

    yield start
    for r in started:
        workers = r.children()
        r.stop()
        for pid in workers:                   # never leave a worker behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# bytes helpers

def show(data: bytes, limit: int = 400) -> str:
    """A short readable rendering of (possibly large) wire bytes for failure messages."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit // 2]!r} ... ({len(data)} bytes) ... {data[-limit // 2:]!r}"


def first_difference(a: bytes, b: bytes, context: int = 120) -> str:
    """Where two byte streams first differ, with context, for assertion messages."""
    if a == b:
        return "identical"
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    lo = max(0, i - context)
    return (f"first difference at byte {i} (lengths {len(a)} vs {len(b)}):\n"
            f"  expected: {a[lo:i + context]!r}\n  actual:   {b[lo:i + context]!r}")
