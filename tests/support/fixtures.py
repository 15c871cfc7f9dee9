"""The fixtures tests/conftest.py registers: ``memcached`` and ``router``
(factories of real processes, killed by pid at teardown) and the watchdog.

* ``memcached``: a factory that starts real memcached processes on free
  loopback ports and kills them (by pid) at teardown.
* ``pki``: test certificates (``support.pki.Pki``) under ``tmp_path``;
  ``memcached(*pki.memcached_tls_args())`` is a memcached speaking TLS that
  requires a client certificate of the test CA.
* ``tls_memcached``: a factory like ``memcached`` for a memcached speaking
  TLS (``-Z``) with the ``pki`` certificates, plus a plain side port.
* ``router``: a factory that writes a config into ``tmp_path``, starts the
  router as a real process (``sys.executable -m mcrouter run ...``), waits
  until its port accepts connections and stops it at teardown (SIGTERM,
  then SIGKILL after a timeout).
* ``loop_factory`` and ``run``: ``run(coro)`` runs a coroutine on a fresh
  event loop, once on asyncio's own and once on uvloop's (a test taking
  ``run`` runs twice); AsyncClient promises both.
* ``_watchdog`` (autouse): every integration test fails (SIGALRM) rather
  than hang the whole run when it runs far longer than it should.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, Optional

import pytest
import yaml

from .client import HOST
from .pki import Pki
from .processes import (MEMCACHED, REPO, START_TIMEOUT, Memcached, Router, TlsMemcached,
                        free_ipv6_port, free_port, wait_port, wait_until)

TEST_WATCHDOG = 120         # seconds one test may run at most
RUN_TIMEOUT = 60            # seconds one ``run(coro)`` may take at most


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


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new event loop of each kind: asyncio's selector loop, then uvloop's
    (whose transports, SSL and timers are its own code, not asyncio's)."""
    if request.param == "asyncio":
        return asyncio.SelectorEventLoop    # named: not whatever a policy would give
    try:
        import uvloop
    except ImportError:
        pytest.fail("uvloop is not installed; it is in the test extra: pip install -e '.[test]'")
    return uvloop.new_event_loop


@pytest.fixture
def run(loop_factory: Callable[[], asyncio.AbstractEventLoop]
        ) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """``run(coro)``: ``coro`` to its end on a fresh loop from ``loop_factory``
    (at most RUN_TIMEOUT seconds); checks the loop is the kind asked for."""
    sample = loop_factory()
    kind = type(sample)
    sample.close()

    def run_(coro: Coroutine[Any, Any, Any]) -> Any:
        async def main() -> Any:
            assert type(asyncio.get_running_loop()) is kind
            return await asyncio.wait_for(coro, RUN_TIMEOUT)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    return run_


def _start_memcached(started: list[Memcached], listen: Callable[[int], list[str]],
                     extra: Iterable[str], wrap: Callable[[Memcached], Memcached] = lambda m: m
                     ) -> Memcached:
    """Start memcached with ``listen(port)`` (its -l/-p options for a free
    port) and ``extra``; retried when the free port was taken in between."""
    last_err = b""
    for _attempt in range(5):
        port = free_port()
        args = [MEMCACHED, "-u", "root", *listen(port), "-U", "0", "-t", "1", *extra]
        # a file, not a pipe: "verbosity 2" makes memcached log every
        # command, and a pipe nobody reads would stall it once full
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        m = wrap(Memcached(port, proc, args))
        started.append(m)
        if wait_port(port, proc):
            err.close()         # the process keeps its own descriptor
            return m
        m.kill()
        err.seek(0)
        last_err = err.read()
        err.close()
    raise RuntimeError(f"memcached did not start: {last_err.decode(errors='replace')}")


def _stop_memcached(started: list[Memcached]) -> None:
    for m in started:
        m.kill()
        if m.proc.stderr:
            m.proc.stderr.close()


@pytest.fixture
def memcached() -> Iterable[Callable[..., Memcached]]:
    """``memcached(*extra_args)`` → a running, empty memcached on a free port."""
    if MEMCACHED is None:
        pytest.skip("memcached is not installed")
    started: list[Memcached] = []

    def start(*extra: str) -> Memcached:
        if "::1" in extra:
            free_ipv6_port()                # skips the test where there is no IPv6 loopback
        return _start_memcached(started, lambda port: ["-l", HOST, "-p", str(port)], extra)

    yield start
    _stop_memcached(started)


@pytest.fixture
def tls_memcached(pki: Pki) -> Iterable[Callable[..., TlsMemcached]]:
    """``tls_memcached(*extra, cert=..., key=..., verify=2)`` → a memcached
    speaking TLS on ``.port`` (``.addr``), requiring a client certificate of
    the test CA, and plain TCP on ``.plain_port`` (``-l notls:``), where
    ``.client()``, ``.set`` and ``.get_raw`` look behind the router."""
    if MEMCACHED is None:
        pytest.skip("memcached is not installed")
    started: list[Memcached] = []

    def start(*extra: str, cert: str = "", key: str = "", verify: int = 2) -> TlsMemcached:
        plain = free_port()

        def listen(port: int) -> list[str]:
            return ["-l", f"{HOST},notls:{HOST}:{plain}", "-p", str(port)]

        m = _start_memcached(started, listen, [*pki.memcached_tls_args(cert, key, verify), *extra],
                             lambda m: TlsMemcached(m.port, m.proc, m.args, plain))
        assert wait_port(plain, m.proc), "memcached's plain side port did not open"
        return m      # type: ignore[return-value]

    yield start
    _stop_memcached(started)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Certificates for one test (see support/pki.py); skipped without trustme."""
    pytest.importorskip("trustme")
    return Pki(tmp_path / "pki")


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
                wait_until(lambda: len(r.worker_pids()) >= workers, ready_timeout, interval=0.01)
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
