"""The master process: bind, fork workers, supervise, own the signals.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and
wake the loop; the loop takes signals off the queue and dispatches to
``handle_<name>``.  The master never touches a request.

  TERM, INT  graceful stop: workers stop accepting and finish what they read
  QUIT       stop now
  HUP        (config reload arrives with its own change; logged and ignored)
  CHLD       reap; a worker that died is respawned with backoff; a worker
             that could not boot stops the master with a non-zero status

Besides the workers the master forks one sidecar (health probes, DNS) and
respawns it when it dies.  Before forking anything it makes the shared
HostTable and writes every host's first address into it.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Callable

from mcrouter.config import RouterConfig
from mcrouter.dns import DnsCache
from mcrouter.health import DOWN, HostTable
from mcrouter.listen import ListenAddr, bind
from mcrouter.settings import Settings
from mcrouter.sidecar import run_sidecar
from mcrouter.worker import EXIT_BOOT_FAILED, run_worker

log = logging.getLogger("mcrouter.master")

RESPAWN_MAX_DELAY = 10.0
STABLE_AFTER = 5.0       # a worker alive this long resets its backoff
SIDECAR = -1             # the sidecar's slot in the child tables
PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Name a child in ps/top (/proc/PID/comm): mcr-master, mcr-worker, mcr-sidecar."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Master:
    SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD]
    SIG_NAMES = {s: s.name[3:].lower() for s in SIGNALS}

    def __init__(self, settings: Settings, config: RouterConfig, addr: ListenAddr) -> None:
        self.settings = settings
        self.config = config
        self.addr = addr
        self.listeners: list[socket.socket] = []
        self.workers: dict[int, int] = {}            # pid → slot (SIDECAR for the sidecar)
        self.started: dict[int, float] = {}          # slot → spawn time
        self.failures: dict[int, int] = {}           # slot → quick deaths in a row
        self.respawn_at: dict[int, float] = {}       # slot → when to respawn
        self.sig_queue: list[int] = []
        self.exit_code: int | None = None
        self.pid = os.getpid()
        self.table = HostTable()
        self.slots = {addr: self.table.assign(str(addr)) for addr in config.hosts()}

    # -- lifecycle ---------------------------------------------------------

    @property
    def bind_per_worker(self) -> bool:
        """With --reuseport each worker binds its own TCP socket (not a unix path)."""
        return self.settings.reuseport and self.addr.family != socket.AF_UNIX

    def run(self) -> int:
        if not self.bind_per_worker:
            self.listeners = [bind(self.addr)]
        else:
            bind(self.addr, reuseport=True).close()   # fail fast on a bad address
        self.init_signals()
        self.resolve_hosts()
        self.spawn_sidecar()
        for slot in range(self.settings.workers):
            self.spawn_worker(slot)
        log.info("listening on %s with %d worker(s)", self.addr, self.settings.workers)
        while self.exit_code is None:
            self.sleep()
            while self.sig_queue:
                sig = self.sig_queue.pop(0)
                getattr(self, "handle_" + self.SIG_NAMES[signal.Signals(sig)])()
            self.reap_workers()
            self.manage_workers()
        return self.exit_code

    def init_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        for sig in self.SIGNALS:
            signal.signal(sig, self.queue_signal)

    def queue_signal(self, sig: int, _frame: object) -> None:
        # no logging here: just queue the signal and wake the loop
        if len(self.sig_queue) < 16:
            self.sig_queue.append(sig)
        try:
            os.write(self.wake_w, b".")
        except OSError:
            pass

    def sleep(self) -> None:
        timeout = 1.0
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        try:
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
            if ready:
                while os.read(self.wake_r, 64):
                    pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    # -- workers -----------------------------------------------------------

    def resolve_hosts(self) -> None:
        """Every host's first address, before any child exists (blocking is
        fine here); a name that does not resolve leaves its host down."""
        DnsCache(self.table, [(slot, addr) for addr, slot in self.slots.items()]).refresh()
        for addr, slot in self.slots.items():
            if self.table.address(slot) is None:
                self.table.set_state(slot, DOWN, "dns: the name does not resolve")

    def spawn_worker(self, slot: int) -> None:
        def body() -> int:
            listeners = self.listeners
            if self.bind_per_worker:
                try:
                    listeners = [bind(self.addr, reuseport=True)]
                except OSError as e:
                    log.error("worker cannot bind %s: %s", self.addr, e.strerror)
                    return EXIT_BOOT_FAILED
            return run_worker(self.settings, self.config, listeners, self.pid,
                              self.table, self.slots)
        self._fork(slot, "mcr-worker", body)

    def spawn_sidecar(self) -> None:
        hosts = [(slot, addr, self.config.health) for addr, slot in self.slots.items()]
        s = self.settings
        self._fork(SIDECAR, "mcr-sidecar", lambda: run_sidecar(
            self.table, hosts, s.healthcheck_interval, s.dns_cache_ttl, self.pid))

    def _fork(self, slot: int, name: str, body: Callable[[], int]) -> None:
        """Fork a child that runs ``body`` and never returns into this code."""
        pid = os.fork()
        if pid:
            self.workers[pid] = slot
            self.started[slot] = time.monotonic()
            return
        code = 1
        try:
            set_process_name(name)
            for sig in self.SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            code = body()
        except BaseException:       # noqa: BLE001 - a child must never return into the master's code
            log.exception("%s crashed", name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == EXIT_BOOT_FAILED and slot != SIDECAR:
                log.error("worker %d could not start; stopping (see the error above)", slot)
                self.stop(signal.SIGTERM)
                self.exit_code = 1
                return
            if self.exit_code is not None:
                continue
            lived = time.monotonic() - self.started.get(slot, 0.0)
            fails = 0 if lived > STABLE_AFTER else self.failures.get(slot, 0) + 1
            self.failures[slot] = fails
            delay = min(0.1 * (2 ** fails), RESPAWN_MAX_DELAY) if fails else 0.0
            log.warning("%s (pid %d) exited with %s; restarting in %.1fs",
                        "sidecar" if slot == SIDECAR else f"worker {slot}", pid, code, delay)
            self.respawn_at[slot] = time.monotonic() + delay

    def manage_workers(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.respawn_at.items()):
            if when <= now:
                del self.respawn_at[slot]
                if slot == SIDECAR:
                    self.spawn_sidecar()
                else:
                    self.spawn_worker(slot)

    def stop(self, sig: int) -> None:
        """Signal every worker and wait for them, killing stragglers after the grace."""
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.settings.graceful_timeout + 1.0
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.02)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.workers.clear()
        for sock in self.listeners:
            sock.close()
        if self.addr.family == socket.AF_UNIX:
            try:
                os.unlink(str(self.addr.address))
            except OSError:
                pass

    # -- signal handlers (run in the loop) ---------------------------------

    def handle_term(self) -> None:
        log.info("stopping: finishing requests in flight")
        self.stop(signal.SIGTERM)
        self.exit_code = 0

    handle_int = handle_term

    def handle_quit(self) -> None:
        log.info("stopping now")
        self.stop(signal.SIGQUIT)
        self.exit_code = 0

    def handle_hup(self) -> None:
        log.info("SIGHUP: configuration reload is not supported yet; restart to apply changes")

    def handle_chld(self) -> None:
        pass        # reap_workers runs every turn
