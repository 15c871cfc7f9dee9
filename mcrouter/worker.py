"""A worker process: one loop, its listeners, its clients, its upstream hosts.

Signals (handlers only note them; the loop acts):
  TERM, INT  stop accepting, finish what was read, exit 0 (bounded grace)
  QUIT       exit now
A worker also exits when its master is gone.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from time import monotonic

from mcrouter.config import HostAddr, RouterConfig
from mcrouter._downstream import ClientConnection
from mcrouter.health import HostTable
from mcrouter.loop import EV_IN, Loop
from mcrouter.routes import Route, build_route
from mcrouter.routes.admin import with_router_commands
from mcrouter.settings import Settings
from mcrouter.upstream import Host

log = logging.getLogger("mcrouter.worker")

ACCEPT_BATCH = 64
EXIT_OK = 0
EXIT_BOOT_FAILED = 3     # the master stops rather than respawn a worker that cannot start


class _Listener:
    def __init__(self, worker: "Worker", sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock

    def on_event(self, mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            self.worker.adopt(conn)


class _SignalPipe:
    """Wakes the loop when a signal arrives (signal.set_wakeup_fd)."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)
        signal.set_wakeup_fd(self.w.fileno(), warn_on_full_buffer=False)

    def on_event(self, mask: int) -> None:
        try:
            data = self.r.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            self.worker.handle_signal(signum)


class Worker:
    def __init__(self, settings: Settings, config: RouterConfig,
                 listeners: list[socket.socket], master_pid: int,
                 table: HostTable, slots: dict[HostAddr, int]) -> None:
        self.settings = settings
        self.config = config
        self.listeners = listeners
        self.master_pid = master_pid
        self.table = table
        self.slots = slots
        self.health_seen = b""
        self.loop = Loop()
        self.clients: set[ClientConnection] = set()
        self.hosts: list[Host] = []
        self.route: Route
        self.stopping_at = 0.0
        self.running = True
        self._channels = 0

    def next_channel(self) -> int:
        """Spread clients over the -C connections of each host, one each."""
        self._channels = (self._channels + 1) & 0x3FFFFFFF
        return self._channels

    # -- boot --------------------------------------------------------------

    def boot(self) -> None:
        s = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, lambda *_: None)       # noted by the wakeup fd
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        pipe = _SignalPipe(self)
        self.loop.add(pipe.r.fileno(), EV_IN, pipe)
        by_addr = {addr: self.make_host(addr) for addr in self.config.hosts()}
        self.hosts = list(by_addr.values())
        self.route = with_router_commands(build_route(self.config, by_addr), self.table)
        self.health_seen = self.table.signature()
        for sock in self.listeners:
            self.loop.add(sock.fileno(), EV_IN, _Listener(self, sock))
        for h in self.hosts:
            h.start()
        gc.freeze()     # what boot built lives as long as the worker: the collector skips it

    def make_host(self, addr: HostAddr) -> Host:
        s = self.settings
        return Host(addr, self.loop, self.table, self.slots[addr], s.upstream_connections,
                    s.timeout_ms / 1000.0, s.connect_timeout_ms / 1000.0, s.max_item_size,
                    self.config.health.tko)

    def adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.add(ClientConnection(self, sock))

    # -- loop --------------------------------------------------------------

    def run(self) -> int:
        loop = self.loop
        next_tick = 0.0
        loop.on_turn = self.check_health
        while self.running:
            loop.run_once()
            if loop.now >= next_tick:
                next_tick = loop.now + 0.01
                self.tick()
        return EXIT_OK

    def check_health(self) -> None:
        """Once per loop turn: if any host's state or address changed in the
        shared table (one short compare), every Host catches up."""
        seen = self.table.signature()
        if seen != self.health_seen:
            self.health_seen = seen
            for h in self.hosts:
                h.sync()

    def tick(self) -> None:
        now = self.loop.now
        for conn in list(self.loop.busy):
            conn.expire(now)
        self.loop.flush()
        if os.getppid() != self.master_pid:
            log.warning("master %d is gone; worker exiting", self.master_pid)
            self.running = False
        if self.stopping_at:
            if all(c.idle for c in self.clients) or now >= self.stopping_at:
                self.running = False

    def handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.begin_shutdown()
        elif signum == signal.SIGQUIT:
            self.running = False

    def begin_shutdown(self) -> None:
        if self.stopping_at:
            return
        self.stopping_at = monotonic() + self.settings.graceful_timeout
        for sock in self.listeners:
            self.loop.remove(sock.fileno())
            sock.close()
        self.listeners = []
        for c in list(self.clients):
            c.stop_reading()

    def close(self) -> None:
        for c in list(self.clients):
            c.close()
        for h in self.hosts:
            h.close()


def run_worker(settings: Settings, config: RouterConfig, listeners: list[socket.socket],
               master_pid: int, table: HostTable, slots: dict[HostAddr, int]) -> int:
    """Entry point in the forked child; returns the process exit code."""
    worker = Worker(settings, config, listeners, master_pid, table, slots)
    try:
        worker.boot()
    except Exception as e:      # noqa: BLE001 - reported in one line, then the master stops
        log.error("worker failed to start: %s", e)
        return EXIT_BOOT_FAILED
    try:
        return worker.run()
    finally:
        worker.close()
