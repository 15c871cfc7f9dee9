"""The master process: bind, fork workers, supervise, own the signals.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and
wake the loop; the loop takes signals off the queue and dispatches to
``handle_<name>``.  The master never touches a request.

  TERM, INT  graceful stop: workers stop accepting, answer what they read,
             hang up; stragglers are killed after --graceful-timeout
  QUIT       stop now
  HUP        reload the config (also on a change of the file with
             --watch-config): validate it here; if invalid, log one line
             and keep serving; if valid, send it to every worker, which
             swaps its route tree without closing a connection
  TTIN/TTOU  one worker more / one fewer (never fewer than one)
  CHLD       reap; a worker that died is respawned with backoff; a worker
             that could not boot stops the master with a non-zero status

Besides the workers the master forks one sidecar (health probes, DNS,
``/metrics``) and respawns it when it dies.  Before forking anything it makes
the shared HostTable and writes every host's first address into it; a reload
that brings new hosts adds them to the table before any worker hears of
them, and restarts the sidecar so that it probes the new set.  A host that
left frees its slot once no child can still refer to it (``free_slots``):
every child says which is the oldest generation whose hosts it may still
use (a worker: ``holds``, see worker.py; the sidecar: the generation it was
forked on, or the latest one that kept its hosts), and a slot is freed once
no generation from the oldest held to the current one names its host.  A
child that exits holds nothing.  A DNS change refused for want of free
slots is applied as soon as enough are freed.  It also makes
the shared MetricsBlock (counting restarts and reloads in its own slot) and
binds the metrics socket, which it keeps: a restarted sidecar serves on it
at once.

Each worker has a control channel to the master (``control.py``) over which
it reports the config generation it runs (``ready`` at boot, ``applied``
after a reload).  The master tells systemd READY=1 once every worker runs
the current generation, after start-up and after each reload; a worker that
misses the confirmation deadline is named in one warning, and READY=1 still
goes out so that systemd does not hang in "reloading".

The loop is the one thing that must not die: every duty of a turn (reading
the channels, each signal's handler, reaping, respawning, the file watch,
the confirmation check) runs under ``guard``, which logs an unexpected
exception with its traceback at error level and carries on supervising,
after a short pause so that a duty failing on every turn cannot spin.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Iterable, NoReturn, Sequence

from mcrouter import discovery, reload, sdnotify
from mcrouter._metrics import (G_GENERATION, G_MASTER_PID, G_RELOAD_LAST_OK, G_SIDECAR_RESTARTS,
                               G_START_TIME, G_WORKER_RESTARTS, G_WORKERS, G_WORKERS_CURRENT,
                               install)
from mcrouter.config import ConfigError, HostAddr, Member, RouterConfig, parse_config
from mcrouter.control import Channel, ChannelClosed
from mcrouter.discovery import Address
from mcrouter.dns import DnsCache
from mcrouter.hosttable import DOWN, HostTable, TableFull
from mcrouter.limits import raise_fd_limit
from mcrouter.listen import ListenAddr, ListenError, activated_sockets, bind, port_of
from mcrouter.metrics import MetricsBlock, note_reload
from mcrouter.settings import Settings
from mcrouter.sidecar import run_sidecar
from mcrouter.tls import TlsConfigError
from mcrouter.worker import EXIT_BOOT_FAILED, run_worker

log = logging.getLogger("mcrouter.master")

RESPAWN_MAX_DELAY = 10.0
STABLE_AFTER = 5.0       # a worker alive this long resets its backoff
CONFIRM_TIMEOUT = 10.0   # workers must confirm a generation within this (Settings.confirm_timeout)
ERROR_PAUSE = 0.1        # after a duty raised, the next turn sleeps at least this long
SIDECAR = -1             # the sidecar's slot in the child tables
PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Name a child in ps/top (/proc/PID/comm): mcr-worker, mcr-sidecar.  The
    master keeps the name it was started under (``mcrouter``), as pgrep expects."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def child_name(slot: int) -> str:
    return "sidecar" if slot == SIDECAR else f"worker {slot}"


def exit_now(code: int) -> NoReturn:
    """End this process at once, after writing out what it logged: a child
    must never return into the master's code, and a stopped master skips the
    interpreter's teardown (freeing typer, pydantic and dnspython one object
    at a time took 120 ms of every stop).  Everything it opened is closed or
    an anonymous map by then.  A closed or broken stdout/stderr (None when
    the process started with that descriptor closed) cannot stop the exit."""
    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
    finally:
        os._exit(code)


class Master:
    SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
               signal.SIGTTIN, signal.SIGTTOU]
    SIG_NAMES = {s: s.name[3:].lower() for s in SIGNALS}

    def __init__(self, settings: Settings, config: RouterConfig,
                 addr: ListenAddr | Sequence[ListenAddr],
                 metrics_addr: ListenAddr | None = None, config_text: str | None = None) -> None:
        self.settings = settings
        # the config as the file says it (DNS pools empty), its text, and the
        # members the discovery found for its DNS pools; self.config is both
        self.file_config = config
        self.config_text = config_text
        self.members, self.dns_addresses = discovery.resolve_all(config.dns_pools())
        config = config.with_members(self.members)
        self.config = config
        self.generation = 1                          # bumped by every applied reload
        # every -l; the first is ``addr`` (what the log and errors name when one is enough)
        self.addrs = [addr] if isinstance(addr, ListenAddr) else list(addr)
        self.addr = self.addrs[0]
        self.metrics_addr = metrics_addr
        self.tls_fds: set[int] = set()               # of self.listeners: the tls:// ones
        # the tls:// listeners' context: made here (the workers forked later inherit
        # it), and anew on each reload, which a bad certificate refuses
        self.tls_context: Any = settings.listener_context() if settings.tls_cert else None
        self.metrics_sock: socket.socket | None = None
        self.num_workers = settings.workers
        self.listeners: list[socket.socket] = []
        self.children: dict[int, int] = {}           # pid → slot: every worker, and SIDECAR
        self.channels: dict[int, Channel] = {}       # pid → control channel (workers only)
        self.sidecar_channels: dict[int, Channel] = {}   # pid → the sidecar's (DNS membership)
        self.running_gen: dict[int, int] = {}        # pid → generation it confirmed
        self.started: dict[int, float] = {}          # slot → spawn time
        self.failures: dict[int, int] = {}           # slot → quick deaths in a row
        self.respawn_at: dict[int, float] = {}       # slot → when to respawn
        self.retiring: set[int] = set()              # pids told to exit by TTOU
        self.confirm_by = 0.0                        # waiting for workers until then
        self.confirm_what = ""                       # "start" or "reload N"
        self.sig_queue: list[int] = []
        self.exit_code: int | None = None
        self.clock: Callable[[], float] = time.monotonic    # a fake in the unit tests
        self.pause_until = 0.0                       # set by guard after a duty raised
        self.pid = os.getpid()
        self.watch: reload.FileWatch | None = None
        self.tls_watches: list[reload.FileWatch] = []    # --watch-config: the TLS files too
        self.activated = False                       # listening sockets came from systemd
        self.table = HostTable(settings.host_slots)
        hosts = config.hosts()
        if len(hosts) > self.table.max_hosts:
            raise TableFull(f"{settings.config_path}: {len(hosts)} distinct hosts, more than "
                            f"{self.table.max_hosts} (the most one config may name); "
                            "split the fleet over several routers")
        self.slots = {addr: self.table.assign(str(addr)) for addr in hosts}
        self.holds: dict[int, int] = {}              # pid → oldest generation it may still use
        self.gen_hosts = {self.generation: frozenset(hosts)}    # generations anyone may hold
        self.slots_dirty = False                     # a hold moved: free_slots has work
        # the membership the sidecar reported last (self.members: the one applied),
        # and the addresses its reports gave that no applied change has used yet
        self.dns_wanted = dict(self.members)
        self.dns_wanted_addresses: dict[str, Address] = {}
        self.metrics = MetricsBlock(max(2 * settings.workers, 16), self.table.capacity)
        self.counters = self.metrics.counters(self.metrics.master_slot)
        install(self.counters)
        for word in (G_START_TIME, G_RELOAD_LAST_OK):
            self.counters.set(word, int(time.time()))
        self.counters.set(G_MASTER_PID, self.pid)
        self.counters.set(G_WORKERS, self.num_workers)
        self.counters.set(G_GENERATION, self.generation)

    # -- lifecycle ---------------------------------------------------------

    @property
    def bind_per_worker(self) -> bool:
        """With --reuseport each worker binds its own TCP socket (not a unix
        path, not a socket systemd passed)."""
        return any(self.per_worker(a) for a in self.addrs)

    def per_worker(self, addr: ListenAddr) -> bool:
        return self.settings.reuseport and addr.family != socket.AF_UNIX and not self.activated

    def open_listeners(self) -> str:
        """Take systemd's sockets, or bind every -l (with --reuseport only check
        that a TCP one can be bound: each worker binds its own); say where we
        listen.  A socket systemd passed is a TLS one when its port is that
        of a -l tls:// address."""
        self.listeners = activated_sockets()
        self.activated = bool(self.listeners)
        if self.activated:
            tls_ports = {a.address[1] for a in self.addrs if a.tls}
            self.tls_fds = {s.fileno() for s in self.listeners if port_of(s) in tls_ports}
            log.info("socket activation: -l%s not used%s",
                     " and --reuseport" if self.settings.reuseport else "",
                     " (but for which ports speak TLS)" if tls_ports else "")
            return "the socket(s) systemd passed: " + ", ".join(
                str(s.getsockname()) + (" (tls)" if s.fileno() in self.tls_fds else "")
                for s in self.listeners)
        for a in self.addrs:
            try:
                if not self.per_worker(a):
                    sock = bind(a)
                    self.listeners.append(sock)
                    if a.tls:
                        self.tls_fds.add(sock.fileno())
                else:
                    bind(a, reuseport=True).close()   # fail fast on a bad address
            except OSError as e:
                e.listen_addr = str(a)      # type: ignore[attr-defined]  # cli names it
                raise
        return ", ".join(map(str, self.addrs))

    def open_metrics(self) -> None:
        """Bind -L for the sidecar; a port in use stops the router with one line."""
        if self.metrics_addr is None:
            return
        try:
            self.metrics_sock = bind(self.metrics_addr)
        except OSError as e:
            raise ListenError(f"cannot listen on {self.metrics_addr} for metrics: "
                              f"{e.strerror or e}; choose another address with -L, "
                              "or -L off") from None

    def run(self) -> int:
        self.start()
        while self.exit_code is None:
            self.turn()
        return self.exit_code

    def start(self) -> None:
        """Bind, fork the sidecar and the workers.  A failure here stops the
        router (nothing is serving yet), unlike a failure in a turn."""
        fds = raise_fd_limit()
        where = self.open_listeners()
        self.open_metrics()
        log.info("open file limit %d per process; at most %d client connections (-c)",
                 fds, self.settings.max_conns)
        self.init_signals()
        self.resolve_hosts(self.slots)
        self.spawn_sidecar()
        if self.settings.watch_config:
            self.watch = reload.FileWatch(self.settings.config_path, self.clock())
            s = self.settings
            self.tls_watches = [reload.FileWatch(p, self.clock())
                                for p in (s.tls_cert, s.tls_key, s.tls_client_ca)
                                if p and self.tls_context is not None]
        self.await_workers("start")
        for slot in range(self.num_workers):
            self.spawn_worker(slot)
        log.info("listening on %s with %d worker(s)", where, self.num_workers)

    def turn(self) -> None:
        """One pass of the loop: wait, then every duty, each under ``guard``."""
        self.guard("sleep", self.sleep)
        while self.sig_queue and self.exit_code is None:
            name = "handle_" + self.SIG_NAMES[signal.Signals(self.sig_queue.pop(0))]
            self.guard(name, getattr(self, name))
        if self.exit_code is not None:
            return
        self.guard("reap_workers", self.reap_workers)
        self.guard("manage_workers", self.manage_workers)
        self.guard("check_watch", self.check_watch)
        self.guard("check_confirmed", self.check_confirmed)
        self.guard("count_current", self.count_current)
        self.guard("free_slots", self.free_slots)

    def count_current(self) -> None:
        """Publish how many workers run the current generation (``/healthz``:
        ready only when every one does)."""
        current = sum(1 for pid, slot in self.children.items()
                      if slot != SIDECAR and pid not in self.retiring
                      and self.running_gen.get(pid) == self.generation)
        self.counters.set(G_WORKERS_CURRENT, current)

    def free_slots(self) -> None:
        """Free the slots of hosts no child can still refer to: named by no
        generation from the oldest one a child holds to the current one.
        Then retry a DNS change that was refused for want of slots."""
        if not self.slots_dirty:
            return
        self.slots_dirty = False
        floor = min(self.holds.values(), default=self.generation)
        for gen in [g for g in self.gen_hosts if g < min(floor, self.generation)]:
            del self.gen_hosts[gen]
        in_use: set[HostAddr] = set().union(*self.gen_hosts.values())
        gone = [a for a in self.slots if a not in in_use]
        if not gone:
            return
        for addr in gone:
            slot = self.slots.pop(addr)
            self.table.free(slot)
            self.metrics.forget_host(slot)
        log.info("freed the host slots of %d host(s) that no running generation names "
                 "(%d of %d slots in use)", len(gone), len(self.slots), self.table.capacity)
        if self.dns_pending():
            self.apply_dns(retry=True)

    def hold(self, pid: int, generation: int) -> None:
        """Child ``pid`` may still use the hosts of ``generation`` and later."""
        if pid in self.children and self.holds.get(pid) != generation:
            self.holds[pid] = generation
            self.slots_dirty = True

    def guard(self, what: str, duty: Callable[[], None]) -> None:
        """Run one duty of the loop; if it raises, log it and keep supervising
        (as gunicorn's arbiter keeps its loop): the workers still serve, and a
        master that exits takes every one of them down with it."""
        try:
            duty()
        except Exception:       # noqa: BLE001 - anything but SystemExit/KeyboardInterrupt
            self.pause_until = self.clock() + ERROR_PAUSE
            log.error("master: %s failed; still supervising", what, exc_info=True)
            if duty == self.sleep:      # the pause itself failed: never spin
                time.sleep(ERROR_PAUSE)

    def check_watch(self) -> None:
        if self.watch and self.watch.due(self.clock()):
            log.info("%s changed; reloading", self.settings.config_path)
            self.reload()
        changed = [w.path for w in self.tls_watches if w.due(self.clock())]
        if changed:
            log.info("%s changed; reloading", ", ".join(changed))
            self.reload()

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

    def next_timeout(self) -> float:
        """How long the loop may sleep: until the next timer, at most 1 s, and
        at least the pause after a duty raised (a signal still wakes it)."""
        now = self.clock()
        timeout = 1.0
        if self.respawn_at:
            timeout = min(timeout, min(self.respawn_at.values()) - now)
        if self.watch:
            timeout = min(timeout, self.watch.timeout(now))
        for w in self.tls_watches:
            timeout = min(timeout, w.timeout(now))
        if self.confirm_by:
            timeout = min(timeout, self.confirm_by - now)
        return max(timeout, self.pause_until - now, 0.0)

    def sleep(self) -> None:
        """Wait for a signal, a worker's message, or the next timer; read messages."""
        timeout = self.next_timeout()
        by_fd = {ch.fileno(): pid for pid, ch in self.channels.items()}
        sidecars = {ch.fileno(): pid for pid, ch in self.sidecar_channels.items()}
        writing = [ch.fileno() for ch in self.channels.values() if ch.outbox]
        try:
            ready, writable, _ = select.select([self.wake_r, *by_fd, *sidecars], writing, [],
                                               timeout)
        except InterruptedError:
            return
        for fd in ready:
            if fd == self.wake_r:
                try:
                    while os.read(self.wake_r, 64):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            elif fd in sidecars:
                self.read_sidecar(sidecars[fd])
            else:
                self.read_channel(by_fd[fd])
        for fd in writable:
            pid = by_fd.get(fd)
            if pid in self.channels:
                try:
                    self.channels[pid].flush()
                except ChannelClosed:
                    self.drop_channel(pid)

    # -- children ----------------------------------------------------------

    def resolve_hosts(self, addrs: Iterable[HostAddr]) -> None:
        """The first address of each host (blocking is fine in the master: it
        serves no request); a name that does not resolve leaves its host down."""
        slots = []
        for a in addrs:
            found = self.dns_addresses.get(str(a))
            if found is not None:           # a DNS pool member: the discovery's answer
                self.table.set_address(self.slots[a], *found)
            else:
                slots.append((self.slots[a], a))
        DnsCache(self.table, slots).refresh()
        slots = [(self.slots[a], a) for a in addrs]
        for slot, _ in slots:
            if self.table.address(slot) is None:
                self.table.set_state(slot, DOWN, "dns: the name does not resolve")

    def spawn_worker(self, slot: int) -> None:
        mine, theirs = Channel.pair()
        if slot >= self.metrics.workers:
            log.warning("worker %d counts no metrics: the metrics block has %d worker slots",
                        slot, self.metrics.workers)
        self.metrics.use_slot(slot)

        def body() -> int:
            mine.close()
            if self.metrics_sock is not None:
                self.metrics_sock.close()           # the sidecar's, not a worker's
            listeners = list(self.listeners)
            tls_fds = set(self.tls_fds)
            for a in self.addrs:
                if self.per_worker(a):
                    try:
                        sock = bind(a, reuseport=True)
                    except OSError as e:
                        log.error("worker cannot bind %s: %s", a, e.strerror)
                        return EXIT_BOOT_FAILED
                    listeners.append(sock)
                    if a.tls:
                        tls_fds.add(sock.fileno())
            return run_worker(self.settings, self.config, self.generation, listeners,
                              self.pid, theirs, self.table, self.metrics, slot,
                              frozenset(tls_fds), self.tls_context)
        pid = self._fork(slot, "mcr-worker", body)
        theirs.close()
        self.channels[pid] = mine

    def spawn_sidecar(self) -> None:
        hosts = [(self.slots[addr], addr, policy) for addr, policy in self.config.policies().items()]
        s = self.settings
        mine, theirs = Channel.pair()
        sources = self.config.dns_pools()
        members = {name: self.members.get(name, ()) for name in sources}
        discovered = {HostAddr(h, p) for ms in members.values() for h, p, _ in ms}
        tls = {addr: t for addr in self.config.hosts() if (t := self.config.tls_of(addr))}

        def body() -> int:
            mine.close()
            return run_sidecar(self.table, hosts, s.healthcheck_interval, s.dns_cache_ttl,
                               self.pid, self.metrics, self.metrics_sock, theirs, sources,
                               members, discovered, tls)
        pid = self._fork(SIDECAR, "mcr-sidecar", body)
        theirs.close()
        self.sidecar_channels[pid] = mine

    def _fork(self, slot: int, name: str, body: Callable[[], int]) -> int:
        """Fork a child that runs ``body`` and never returns into this code."""
        pid = os.fork()
        if pid:
            self.children[pid] = slot
            self.holds[pid] = self.generation      # it starts on the current config
            self.started[slot] = self.clock()
            return pid
        code = 1
        try:
            set_process_name(name)
            for sig in self.SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            for ch in (*self.channels.values(), *self.sidecar_channels.values()):
                ch.close()                          # the other children's, not its own
            code = body()
        except SystemExit as e:     # a child's way of leaving at once (the sidecar on TERM)
            code = e.code if isinstance(e.code, int) else 0
        except BaseException:       # noqa: BLE001 - a child must never return into the master's code
            log.exception("%s crashed", name)
        finally:
            exit_now(code)

    def kill_worker(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            slot = self.children.pop(pid, None)
            self.drop_channel(pid)
            if self.holds.pop(pid, None) is not None:
                self.slots_dirty = True         # what it held may be freed now
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
            if pid in self.retiring:
                self.retiring.discard(pid)
                log.info("%s (pid %d) retired; %d worker(s)", child_name(slot), pid,
                         self.num_workers)
                continue
            lived = self.clock() - self.started.get(slot, 0.0)
            fails = 0 if lived > STABLE_AFTER else self.failures.get(slot, 0) + 1
            self.failures[slot] = fails
            delay = min(0.1 * (2 ** fails), RESPAWN_MAX_DELAY) if fails else 0.0
            self.counters.count(G_SIDECAR_RESTARTS if slot == SIDECAR else G_WORKER_RESTARTS)
            log.warning("%s (pid %d) exited with %s; restarting in %.1fs",
                        child_name(slot), pid, code, delay)
            self.respawn_at[slot] = self.clock() + delay

    def manage_workers(self) -> None:
        """Respawn the workers that are due."""
        now = self.clock()
        for slot, when in list(self.respawn_at.items()):
            if when <= now:
                # stays due until the spawn succeeds (a failed fork is retried)
                self.respawn_at[slot] = now + RESPAWN_MAX_DELAY
                if slot == SIDECAR:
                    self.spawn_sidecar()
                else:
                    self.spawn_worker(slot)
                del self.respawn_at[slot]

    def stop(self, sig: int) -> None:
        """Stop accepting, signal every child (workers, sidecar) and wait for
        them, killing stragglers after the grace."""
        for sock in self.listeners:
            sock.close()        # new connections are refused now, not reset later
        self.listeners = []
        if self.metrics_sock is not None:
            self.metrics_sock.close()
            self.metrics_sock = None
        for pid in list(self.children):
            self.kill_worker(pid, sig)
        deadline = time.monotonic() + self.settings.graceful_timeout + 1.0
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.02)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.children.clear()
        for pid in list(self.channels):
            self.drop_channel(pid)
        for a in self.addrs:
            if a.family == socket.AF_UNIX and not self.activated:
                try:
                    os.unlink(str(a.address))
                except OSError:
                    pass

    # -- control channel ---------------------------------------------------

    def read_channel(self, pid: int) -> None:
        try:
            messages = self.channels[pid].receive()
        except ChannelClosed:
            self.drop_channel(pid)      # the worker is exiting; SIGCHLD follows
            return
        for msg in messages:
            if "ready" in msg or "applied" in msg:
                self.running_gen[pid] = int(msg.get("ready", msg.get("applied", 0)))
                if "holds" in msg:
                    self.hold(pid, int(msg["holds"]))
            elif "holds" in msg:
                self.hold(pid, int(msg["holds"]))
            elif "rejected" in msg:
                log.error("worker %d refused generation %s: %s; restarting it",
                          self.children.get(pid, -1), msg["rejected"], msg.get("error"))
                self.kill_worker(pid, signal.SIGTERM)   # its respawn boots on the current config

    def read_sidecar(self, pid: int) -> None:
        """The sidecar's discovery found a new membership for DNS pools."""
        try:
            messages = self.sidecar_channels[pid].receive()
        except ChannelClosed:
            self.drop_channel(pid)
            return
        if pid in self.retiring:
            return                      # an old sidecar: its successor resolves afresh
        for msg in messages:
            if "members" in msg:
                members = {name: tuple(tuple(m) for m in ms) for name, ms in msg["members"].items()}
                addresses = {k: (int(v[0]), str(v[1])) for k, v in msg.get("addresses", {}).items()}
                self.apply_members(members, addresses)

    def apply_members(self, members: dict[str, tuple[Member, ...]],
                      addresses: dict[str, Address]) -> None:
        """A DNS pool changed: the same config text, new members, a new
        generation, applied exactly as a reload of the file is.  The
        membership is kept as the one wanted until it is applied, so that one
        refused for want of host slots is tried again when slots are freed."""
        pools = self.file_config.dns_pools()
        self.dns_wanted.update((name, ms) for name, ms in members.items() if name in pools)
        keys = {str(HostAddr(h, p)) for ms in self.dns_wanted.values() for h, p, _ in ms}
        self.dns_wanted_addresses = {k: v for k, v in {**self.dns_wanted_addresses,
                                                       **addresses}.items() if k in keys}
        self.apply_dns()

    def dns_pending(self) -> bool:
        """A membership the sidecar reported is not the one applied."""
        return any(ms != self.members.get(name, ()) for name, ms in self.dns_wanted.items())

    def apply_dns(self, retry: bool = False) -> None:
        """Apply the membership wanted, with the addresses the reports gave;
        on a ``retry`` the table's are newer for members that stay (the
        sidecar moves those in the table alone)."""
        changes = []
        for name, found in self.dns_wanted.items():
            known = self.members.get(name, ())
            if found == known:
                continue
            old = {(h, p) for h, p, _ in known}
            new = {(h, p) for h, p, _ in found}
            changes.append(f"pool {name}: {len(found)} server(s)"
                           f" (+{' +'.join(sorted(str(HostAddr(*a)) for a in new - old)) or '0'}"
                           f" -{' -'.join(sorted(str(HostAddr(*a)) for a in old - new)) or '0'})")
        if not changes:
            return
        addresses = ({**self.dns_wanted_addresses, **self.table_addresses()} if retry else
                     {**self.table_addresses(), **self.dns_wanted_addresses})
        self.publish(self.file_config, self.config_text, {**self.members, **self.dns_wanted},
                     addresses, "DNS: " + "; ".join(changes), "DNS change")

    def drop_channel(self, pid: int) -> None:
        ch = self.sidecar_channels.pop(pid, None)
        if ch is not None:
            ch.close()
        ch = self.channels.pop(pid, None)
        if ch is not None:
            ch.close()
        self.running_gen.pop(pid, None)

    def await_workers(self, what: str) -> None:
        """From now on, report to the log and systemd once every worker runs
        the current generation."""
        self.confirm_what = what
        self.confirm_by = self.clock() + self.settings.confirm_timeout

    def check_confirmed(self) -> None:
        """Once every worker runs the current generation, or the deadline has
        passed: one log line, and READY=1 for systemd either way (a late
        worker is named; it catches up or is restarted by the usual means)."""
        if not self.confirm_by:
            return
        count = sum(1 for slot in self.children.values() if slot != SIDECAR)
        behind = sorted(slot for pid, slot in self.children.items()
                        if slot != SIDECAR and self.running_gen.get(pid) != self.generation)
        if behind and self.clock() < self.confirm_by:
            return
        self.confirm_by = 0.0
        if behind:
            log.warning("%s: worker(s) %s did not confirm generation %d within %gs; "
                        "%d of %d worker(s) confirmed", self.confirm_what, behind,
                        self.generation, self.settings.confirm_timeout,
                        count - len(behind), count)
            sdnotify.ready(f"{count - len(behind)} of {count} worker(s) on config generation "
                           f"{self.generation}; late: {', '.join(map(str, behind))}")
            return
        log.info("%s: all %d worker(s) run config generation %d",
                 self.confirm_what, count, self.generation)
        sdnotify.ready(f"{count} worker(s), config generation {self.generation}")

    # -- reload ------------------------------------------------------------

    def reload(self) -> None:
        """Validate the config file; if valid, make it current and send it to every
        worker.  Workers forked from now on start on it too."""
        path = self.settings.config_path
        sdnotify.reloading(f"reloading {path}")
        try:
            file_config, text = reload.load(path)
        except ConfigError as e:
            self.refuse(e)
            return
        if self.tls_context is not None:
            # the certificate and key too: a bad one refuses the whole reload
            try:
                self.tls_context = self.settings.listener_context()
            except TlsConfigError as e:
                self.refuse(e)
                return
        # DNS pools whose source stays keep their members (the latest the
        # sidecar reported, applied or not); a new source is asked now
        old_sources = self.file_config.dns_pools()
        members = {name: self.dns_wanted.get(name, self.members.get(name, ()))
                   for name, src in file_config.dns_pools().items()
                   if old_sources.get(name) == src}
        fresh, addresses = discovery.resolve_all(
            {n: src for n, src in file_config.dns_pools().items() if n not in members})
        self.publish(file_config, text, {**members, **fresh},
                     {**self.dns_wanted_addresses, **self.table_addresses(), **addresses},
                     f"reloading {path}", "reload")

    def table_addresses(self) -> dict[str, Address]:
        """The addresses the DNS pools' members have now: the sidecar moves a
        member that stays (its pod's new IP) in the table alone, so what the
        master learnt at the last membership change may be old."""
        found = {}
        for key in self.dns_addresses:
            slot = self.table.slot_of(key)
            address = self.table.address(slot) if slot >= 0 else None
            if address is not None:
                found[key] = address
        return found

    def refuse(self, e: Exception) -> None:
        note_reload(False)
        log.error("reload refused, still serving generation %d: %s", self.generation, e)
        sdnotify.ready(f"reload refused: {e}")

    def publish(self, file_config: RouterConfig, text: str | None,
                members: dict[str, tuple[Member, ...]], addresses: dict[str, Address],
                what: str, kind: str) -> None:
        """Make ``file_config`` with ``members`` the current generation: slots and
        addresses for new hosts, the text and members to every worker, a new
        sidecar if the hosts changed."""
        path = self.settings.config_path
        config = file_config.with_members(members)
        if text is None:            # started without the text: the file as it was loaded
            text = reload.load(path)[1]
            if parse_config(text, path) != file_config:
                self.refuse(ConfigError(f"{path} changed since start; reload it first"))
                return
        hosts = config.hosts()
        added = [a for a in hosts if a not in self.slots]
        if len(hosts) > self.table.max_hosts:       # refused whole: no slot taken
            self.refuse(TableFull(f"more than {self.table.max_hosts} distinct hosts ({len(hosts)} "
                                  f"named); a config may name at most {self.table.max_hosts}"))
            if kind == "DNS change":    # never applicable: keep the last membership, as for
                self.dns_wanted = {name: self.members.get(name, ())   # a failed answer
                                   for name in self.dns_wanted}
            return
        if len(added) > self.table.available:
            floor = min(self.holds.values(), default=self.generation)
            self.refuse(TableFull(
                f"more than {self.table.capacity} distinct hosts ({len(added)} new, {len(self.slots)} in "
                f"use by generations {floor}..{self.generation}, older ones still draining); "
                + ("it is applied once they have drained" if kind == "DNS change" else
                   "send SIGHUP again once they have drained (within -r and --graceful-timeout)")))
            return
        for a in added:
            self.slots[a] = self.table.assign(str(a))
        keys = {str(HostAddr(h, p)) for ms in members.values() for h, p, _ in ms}
        self.dns_addresses = {k: addresses[k] for k in keys if k in addresses}
        self.resolve_hosts(added)
        for key, found in self.dns_addresses.items():   # members that stay, maybe moved
            slot = self.table.slot_of(key)
            if slot >= 0 and self.table.address(slot) != found:
                self.table.set_address(slot, *found)
        old = set(self.config.hosts())
        new = set(hosts)
        # a TLS host's probes read the certificates again: a new sidecar
        restart_sidecar = (new != old or config.policies() != self.config.policies()
                           or config.dns_pools() != self.config.dns_pools()
                           or bool(config.tls_settings() or self.config.tls_settings()))
        self.config, self.file_config, self.config_text = config, file_config, text
        self.members = members
        self.dns_wanted = {name: members.get(name, ()) for name in file_config.dns_pools()}
        self.dns_wanted_addresses = {}
        self.generation += 1
        self.gen_hosts[self.generation] = frozenset(hosts)
        if not restart_sidecar:         # the sidecar's hosts are this generation's too
            for pid, slot in self.children.items():
                if slot == SIDECAR and pid not in self.retiring:
                    self.hold(pid, self.generation)
        self.count_current()            # first: never "every worker" on a generation just made
        self.counters.set(G_GENERATION, self.generation)
        note_reload(True)
        log.info("%s: generation %d: %s, %d host(s) (%d added, %d removed); "
                 "the listen address and other flags are restart-level and keep their values%s",
                 what, self.generation, config.route.type, len(new), len(new - old),
                 len(old - new),
                 "; new TLS handshakes use the certificate files as re-read now"
                 if kind == "reload" and self.tls_context is not None else "")
        msg = {"config": text, "path": path, "generation": self.generation,
               "members": {name: list(ms) for name, ms in members.items()}}
        if kind == "reload" and self.tls_context is not None:
            msg["tls"] = True               # the workers re-read the certificate files
        for pid, ch in list(self.channels.items()):
            try:
                sent = ch.send(msg)
            except ChannelClosed:
                sent = False
            if not sent:
                log.warning("worker %d does not read its control channel; killing it",
                            self.children.get(pid, -1))
                self.kill_worker(pid, signal.SIGKILL)
        if restart_sidecar:
            self.restart_sidecar()
        self.await_workers(f"{kind} {self.generation}")

    def restart_sidecar(self) -> None:
        """A sidecar for the current hosts and health policy, then the old one goes."""
        old = [pid for pid, slot in self.children.items() if slot == SIDECAR and pid not in self.retiring]
        self.respawn_at.pop(SIDECAR, None)
        self.spawn_sidecar()
        for pid in old:
            self.retiring.add(pid)
            self.kill_worker(pid, signal.SIGTERM)

    # -- signal handlers (run in the loop) ---------------------------------

    def handle_term(self) -> None:
        log.info("stopping: finishing requests in flight")
        sdnotify.stopping()
        self.stop(signal.SIGTERM)
        self.exit_code = 0

    handle_int = handle_term

    def handle_quit(self) -> None:
        log.info("stopping now")
        sdnotify.stopping()
        self.stop(signal.SIGQUIT)
        self.exit_code = 0

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading %s", self.settings.config_path)
        self.reload()

    def handle_ttin(self) -> None:
        self.num_workers += 1
        self.counters.set(G_WORKERS, self.num_workers)
        log.info("SIGTTIN: %d worker(s)", self.num_workers)
        self.spawn_worker(self.num_workers - 1)

    def handle_ttou(self) -> None:
        """Retire the worker of the highest slot: it drains like on SIGTERM."""
        if self.num_workers <= 1:
            log.info("SIGTTOU: keeping the last worker")
            return
        self.num_workers -= 1
        self.counters.set(G_WORKERS, self.num_workers)
        log.info("SIGTTOU: %d worker(s)", self.num_workers)
        slot = self.num_workers
        if self.respawn_at.pop(slot, None) is not None:
            return                                      # it was dead already
        for pid, s in self.children.items():
            if s == slot and pid not in self.retiring:
                self.retiring.add(pid)
                self.kill_worker(pid, signal.SIGTERM)

    def handle_chld(self) -> None:
        pass        # reap_workers runs every turn
