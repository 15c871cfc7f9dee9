"""A worker process: one loop, its listeners, its clients, its upstream hosts.

Signals (handlers only note them; the loop acts):
  TERM, INT  stop accepting, finish what was read, exit 0 (bounded grace)
  QUIT       exit now
A worker also exits when its master is gone.

A ``tls://`` listener's clients get a TLS session (tls.py) in their
connection's ``tls``; the handshake runs in the connection's reads, and the
sweep closes a client whose handshake is not done within
``--tls-handshake-timeout``.  A reload (not a DNS change) re-reads the
certificate files: new handshakes use them, established sessions keep
theirs.

Config reloads arrive from the master over the control channel
(``control.py``) as the text the master has already validated, with the
members of its DNS pools (a DNS change arrives the same way).  The worker
builds the new route tree over the hosts ``HostSet`` hands out and swaps it
in between two loop turns: a request is routed when it is parsed, so every
request runs on the tree that was current when it was read, and requests in
flight hold their route objects by reference.  No client connection is
touched.  The worker tells the master the oldest generation whose hosts it
still holds open (``holds``, with ``applied`` and again whenever a
retirement completes): the master frees a host's shared slot only once no
process holds it.
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
from time import monotonic

from typing import Any, Mapping, Sequence

from mcrouter.config import ConfigError, HostAddr, Member, RouterConfig, parse_config
from mcrouter.control import Channel, ChannelClosed
from mcrouter._downstream import ClientConnection, set_reply_budget
from mcrouter._parser import set_body_budget
from mcrouter._metrics import G_CLIENTS_REJECTED, Counters, install, local
from mcrouter.hosttable import STATUS_AT, USED_AT, HostTable
from mcrouter.hostset import HostSet
from mcrouter.limits import return_memory_promptly
from mcrouter.loop import EV_IN, Handler, Loop, SignatureWatch
from mcrouter.metrics import MetricsBlock
from mcrouter.routes import Route, build_route
from mcrouter.stats import router_stats
from mcrouter.routes.simple import BackendVersion, use_backend_version
from mcrouter.settings import Settings
from mcrouter.tls import TlsConfigError, TlsSession, peer_name
from mcrouter.upstream import Host, tls_contexts

log = logging.getLogger("mcrouter.worker")

ACCEPT_BATCH = 64
EXIT_OK = 0
EXIT_BOOT_FAILED = 3     # the master stops rather than respawn a worker that cannot start
LINGER = 2.0             # draining: how long hung-up clients get to close their side
TOO_MANY_CONNS = b"ERROR Too many open connections\r\n"    # memcached's words
FD_BACKOFF = 0.1         # out of file descriptors: the listener rests this long
REFUSAL_LOG_INTERVAL = 10.0      # at most one line per this many seconds
SWEEP_INTERVAL = 0.5     # how often clients are checked for body and idle timeouts


class _Listener(Handler):
    """Accepts clients up to this worker's share of -c; past it, or out of
    file descriptors, refuses them as memcached does (one error line, then
    close) instead of leaving them in the backlog."""

    def __init__(self, worker: "Worker", sock: socket.socket, tls: bool = False) -> None:
        self.worker = worker
        self.sock = sock
        self.tls = tls                    # its clients speak TLS
        self.resting = False

    def on_event(self, mask: int) -> None:
        worker = self.worker
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    worker.out_of_fds(self)
                else:
                    log.warning("accept failed: %s", e)
                return
            if len(worker.clients) >= worker.max_clients:
                worker.refuse(conn, "past -c/--max-conns")
            else:
                worker.adopt(conn, self.tls)

    def rest(self, seconds: float) -> None:
        """Leave the loop for a while: no spinning on an accept that fails."""
        if self.resting:
            return
        self.resting = True
        self.worker.loop.remove(self.sock.fileno())
        self.worker.loop.call_later(seconds, self.wake)

    def wake(self) -> None:
        self.resting = False
        if self.sock in self.worker.listeners:
            self.worker.loop.add(self.sock.fileno(), EV_IN, self)


class _SignalPipe(Handler):
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


class _Control(Handler):
    """The worker's end of the control channel: config reloads come in here."""

    def __init__(self, worker: "Worker", channel: Channel) -> None:
        self.worker = worker
        self.channel = channel

    def on_event(self, mask: int) -> None:
        try:
            messages = self.channel.receive()
        except ChannelClosed:
            self.worker.master_gone()
            return
        for msg in messages:
            if "config" in msg:
                if msg.get("tls"):
                    self.worker.reload_tls()
                self.worker.reload(msg["config"], msg["path"], msg["generation"],
                                   msg.get("members", {}))

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.channel.send(msg)
        except ChannelClosed:
            self.worker.master_gone()


class Worker:
    def __init__(self, settings: Settings, config: RouterConfig, generation: int,
                 listeners: list[socket.socket], master_pid: int, channel: Channel,
                 table: HostTable, metrics: MetricsBlock, index: int,
                 tls_fds: frozenset[int] = frozenset(), tls_context: Any = None) -> None:
        self.settings = settings
        self.tls_fds = tls_fds            # of listeners: the tls:// ones
        self.tls_context = tls_context    # what new TLS clients shake hands with
        self.config = config
        self.generation = generation
        self.listeners = listeners
        self.master_pid = master_pid
        self.control = _Control(self, channel)
        self.table = table
        self.metrics = metrics
        self.index = index                # worker slot: the same after a restart
        self.health: SignatureWatch | None = None
        self.loop = Loop()
        self.clients: set[ClientConnection] = set()
        self.hosts = HostSet(self.make_host)
        self.route: Route
        self.upstream_tls: dict[Any, Any] = {}    # TlsSettings (or None) → client context
        self.held = generation           # the oldest generation whose hosts are open here
        self.stopping_at = 0.0
        self.idle_since = 0.0
        self.running = True
        self._channels = 0
        # this worker's share of -c (rounded up)
        self.max_clients = max(1, -(-settings.max_conns // max(1, settings.workers)))
        self.spare_fd = -1                # kept open to refuse a client when out of fds
        self.refused_unlogged = 0
        self.refusal_logged_at = float("-inf")
        self.next_sweep = 0.0

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
        has_slot = s.count_metrics and self.index < self.metrics.workers
        counters = self.metrics.counters(self.index) if has_slot else Counters()
        counters.take_over(self.table.used)
        install(counters)               # before any client or upstream ring is made
        set_body_budget(s.body_budget)
        set_reply_budget(s.reply_budget)
        return_memory_promptly()
        self.spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        pipe = _SignalPipe(self)
        self.loop.add(pipe.r.fileno(), EV_IN, pipe)
        self.route = self.build(self.config)
        # the shared table's status bytes (HostTable.signature), compared in C each turn
        self.health = SignatureWatch(self.table.mm, USED_AT, STATUS_AT, 2, 2 * self.table.capacity,
                                     self.sync_hosts)
        if self.tls_fds and self.tls_context is None:
            self.tls_context = s.listener_context()
        for sock in self.listeners:
            self.loop.add(sock.fileno(), EV_IN, _Listener(self, sock, sock.fileno() in self.tls_fds))
        self.loop.add(self.control.channel.fileno(), EV_IN, self.control)
        self.control.send({"ready": self.generation, "holds": self.held})
        gc.freeze()     # what boot built lives as long as the worker: the collector skips it

    def make_host(self, addr: HostAddr) -> Host:
        """A host in the master's shared table (which has a slot for every
        address of every config the master has accepted)."""
        s = self.settings
        host = Host(addr, self.loop, self.table, self.table.slot_of(str(addr)),
                    s.upstream_connections, s.timeout_ms / 1000.0,
                    s.connect_timeout_ms / 1000.0, s.max_item_size, self.config.policy(addr).tko)
        settings = self.config.tls_of(addr)
        host.use_tls(settings, self.upstream_tls.get(settings) if settings else None)
        return host

    def build(self, config: RouterConfig, contexts: dict[Any, Any] | None = None) -> Route:
        """The route tree of ``config`` over hosts kept, revived or new
        (HostSet); ``contexts``: its TLS client contexts (read from the
        files now when not given)."""
        self.upstream_tls = tls_contexts(config) if contexts is None else contexts
        addrs = config.hosts()
        hosts = dict(zip(addrs, self.hosts.use(addrs, self.clients, self.generation)))
        for h in self.hosts.live.values():
            h.tko = config.policy(h.addr).tko
            settings = config.tls_of(h.addr)
            h.use_tls(settings, self.upstream_tls.get(settings) if settings else None)
        slots = [self.table.slot_of(str(a)) for a in addrs]
        use_backend_version(BackendVersion(self.table, slots))
        return build_route(config, hosts, router_stats(self.table, self.metrics, frozenset(slots)))

    # -- reload ------------------------------------------------------------

    def reload(self, text: str, path: str, generation: int,
               members: Mapping[str, Sequence[Member]] | None = None) -> None:
        """Swap in the route tree of a config the master validated, with the
        servers its DNS pools have now (``members``).  Should it not parse
        here (it cannot, short of a bug), the old tree stays."""
        try:
            config = parse_config(text, path).with_members(members or {})
            unknown = [str(a) for a in config.hosts() if self.table.slot_of(str(a)) < 0]
            if unknown:
                raise ConfigError(f"{path}: no shared health slot for {', '.join(unknown)}")
            contexts = tls_contexts(config)     # certificates re-read: new handshakes use them
        except ConfigError as e:
            log.error("reload %d refused, keeping generation %d: %s",
                      generation, self.generation, e)
            self.control.send({"rejected": generation, "error": str(e)})
            return
        self.config = config
        self.route = self.build(config, contexts)
        self.generation = generation
        self.held = self.hosts.oldest(generation)
        self.control.send({"applied": generation, "holds": self.held})

    def reload_tls(self) -> None:
        """Re-read the listener's certificate files (the master has just
        checked them): new handshakes use them.  Should they have changed
        into something unusable since, the previous ones stay."""
        if not self.tls_fds:
            return
        try:
            self.tls_context = self.settings.listener_context()
        except TlsConfigError as e:
            log.error("tls: keeping the previous certificate: %s", e)

    def refuse(self, sock: socket.socket, why: str) -> None:
        """memcached's refusal: one error line, then close; counted, and
        logged at most once per REFUSAL_LOG_INTERVAL with how many."""
        try:
            sock.setblocking(False)
            sock.send(TOO_MANY_CONNS)
        except OSError:
            pass
        sock.close()
        local().count(G_CLIENTS_REJECTED)
        self.refused_unlogged += 1
        now = self.loop.now
        if now - self.refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning("refused %d client connection(s) (%s; %d clients here)",
                        self.refused_unlogged, why, len(self.clients))
            self.refusal_logged_at = now
            self.refused_unlogged = 0

    def out_of_fds(self, listener: _Listener) -> None:
        """accept() failed for want of a descriptor: give the spare one up to
        take the waiting clients off the backlog one by one and refuse them,
        then rest the listener, so the loop does not spin on a full table."""
        if self.spare_fd >= 0:
            os.close(self.spare_fd)
            self.spare_fd = -1
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = listener.sock.accept()
                except OSError:
                    break
                self.refuse(conn, "out of file descriptors")
            try:
                self.spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        listener.rest(FD_BACKOFF)

    def sweep(self, now: float) -> None:
        """Close clients stopped mid-request past --body-timeout, or idle
        past --idle-timeout."""
        s = self.settings
        for c in [c for c in self.clients if c.stale(now, s.body_timeout, s.idle_timeout)]:
            if c.tls is not None and not c.tls.handshake_done:
                c.tls.timed_out()       # past --tls-handshake-timeout: counted, logged
            c.close()

    def adopt(self, sock: socket.socket, tls: bool = False) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ClientConnection(self, sock)
        if tls:
            conn.tls = TlsSession(self.tls_context, sock, "client", peer_name(sock),
                                  self.loop.now + self.settings.tls_handshake_timeout)
        self.clients.add(conn)

    # -- loop --------------------------------------------------------------

    def run(self) -> int:
        loop = self.loop
        next_tick = 0.0
        if self.health is not None:
            loop.on_turn = self.health
        while self.running:
            loop.run_once()
            if loop.now >= next_tick:
                next_tick = loop.now + 0.01
                self.tick()
            elif self.stopping_at:
                self.check_drained(loop.now)    # a client's last close ends the wait at once
        return EXIT_OK

    def sync_hosts(self) -> None:
        """A host's state or address changed in the shared table (the loop's
        per-turn compare, ``self.health``, saw it): every Host catches up."""
        for h in self.hosts.all():
            h.sync()

    def tick(self) -> None:
        now = self.loop.now
        for conn in list(self.loop.busy):
            conn.expire(now)
        self.loop.flush()
        if self.hosts.retiring:
            self.hosts.close_retired()
            self.report_held()
        if os.getppid() != self.master_pid:
            self.master_gone()
        if self.stopping_at:
            self.check_drained(now)
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_INTERVAL
            self.sweep(now)

    def report_held(self) -> None:
        """Tell the master once the oldest generation held moves on (its
        hosts' slots may be freed)."""
        held = self.hosts.oldest(self.generation)
        if held != self.held:
            self.held = held
            self.control.send({"holds": held})

    def master_gone(self) -> None:
        if self.running:
            log.warning("master %d is gone; worker exiting", self.master_pid)
        self.running = False

    def check_drained(self, now: float) -> None:
        """Stop once every client is answered and has closed (or had LINGER
        seconds to), or at the grace deadline."""
        if not all(c.idle for c in self.clients):
            self.idle_since = 0.0
        elif not self.idle_since:
            self.idle_since = now
        if not self.clients or now >= self.stopping_at or \
                (self.idle_since and now >= self.idle_since + LINGER):
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
            c.drain()
        self.check_drained(monotonic())     # now, not at the next tick: the loop's next
                                            # wait may be a whole idle timeout away

    def close(self) -> None:
        for c in list(self.clients):
            c.close()
        self.hosts.close()


def run_worker(settings: Settings, config: RouterConfig, generation: int,
               listeners: list[socket.socket], master_pid: int, channel: Channel,
               table: HostTable, metrics: MetricsBlock, index: int,
               tls_fds: frozenset[int] = frozenset(), tls_context: Any = None) -> int:
    """Entry point in the forked child; returns the process exit code."""
    worker = Worker(settings, config, generation, listeners, master_pid, channel, table,
                    metrics, index, tls_fds, tls_context)
    try:
        worker.boot()
    except Exception as e:      # noqa: BLE001 - reported in one line, then the master stops
        log.error("worker failed to start: %s", e)
        return EXIT_BOOT_FAILED
    try:
        return worker.run()
    finally:
        worker.close()
