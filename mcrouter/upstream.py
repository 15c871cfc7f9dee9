"""Upstream memcached hosts and their pipelined connections.

A Host owns ``-C`` connections.  A connection is a socket plus a Ring (the
Cython queues); it connects without blocking, queues requests while it
connects, and when it fails answers everything in flight with the router's
error reply and reconnects with capped exponential backoff and jitter.

Health is one verdict for the whole router, kept in the shared HostTable
(``hosttable.py``): the data path marks a host down after ``tko`` consecutive
timeouts or errors (a refused connection at once); only the sidecar's
probes mark it up again.  While a host is down its connections do not
reconnect, so a dead host costs one probe per interval and no storm.

Socket I/O stays inside the connection: its life here (connect, close),
its bytes in ``ConnectionBase.recv_into``/``send_out`` (_upstream.pyx), the
one place a TLS session plugs in without touching rings or routes.

TLS (issue 14): the hosts of a pool with ``tls:`` get a client session
(``mcrouter.tls``) on each connected socket; the connection stays
CONNECTING, its requests queued, until the handshake is done, and the
connect timeout covers the handshake.  A failed handshake is a connect
failure that marks the host down at once, as a refused connection does
(the same certificate fails the same way on every retry); it is counted
by reason and logged once per interval per host with the setting to fix.
With TLS 1.3 the server judges the client certificate after the client's
side of the handshake is done, so its refusal arrives as an alert on the
first read: ``tls_error`` classifies that the same way.  The contexts
(certificates and keys) are the worker's, rebuilt from the files on every
reload; a host's new connections use the current one, established
connections keep the session they have.
"""
from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
from typing import Any

from mcrouter._metrics import E_CONNECT, E_PARSE, E_RESET, E_TIMEOUT, local as local_counters
from mcrouter._ring import Ring
from mcrouter._upstream import CONN_CONNECTING, CONN_DOWN, CONN_UP, ConnectionBase, HostBase
from mcrouter.config import ConfigError, HostAddr, RouterConfig, TlsSettings
from mcrouter.hosttable import DOWN as HOST_DOWN, HostTable, sockaddr
from mcrouter.loop import EV_IN, EV_OUT, Loop
from mcrouter.protocol import COMMAND_NAMES, UPSTREAM_ERROR, UPSTREAM_TIMEOUT

log = logging.getLogger("mcrouter.upstream")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
__all__ = ["CONN_CONNECTING", "CONN_DOWN", "CONN_UP", "Connection", "Host"]
# connect() errors that say "nobody is there": they mark the host down at once
HARD_ERRORS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL)
# at most one protocol-error line per host in this many seconds (per worker):
# a broken backend must not flood the log; the metric counts every one
PROTOCOL_LOG_INTERVAL = 10.0
# TLS alerts after the handshake that are about certificates: the host is
# unusable until an operator acts (tls.REASONS)
CERTIFICATE_REASONS = ("expired", "unknown_ca", "hostname_mismatch", "no_client_cert")


def tls_context(settings: TlsSettings) -> Any:
    """The client context of one ``tls:`` setting, its files read now;
    ConfigError, one line naming where the setting is, when one cannot be used."""
    from mcrouter import tls
    try:
        return tls.client_context(ca=settings.ca or None, cert=settings.cert or None,
                                  key=settings.key or None, verify=settings.verify)
    except tls.TlsConfigError as e:
        raise ConfigError(f"{settings.where}: {e}") from None


def tls_contexts(config: RouterConfig) -> dict[TlsSettings, Any]:
    """A client context for each distinct ``tls:`` setting of ``config``."""
    return {t: tls_context(t) for t in config.tls_settings()}


class Host(HostBase):
    """One memcached server: its connections, and its health as the shared
    table says.  ``send``, the per-request part, is HostBase's (_upstream.pyx)."""

    def __init__(self, addr: HostAddr, loop: Loop, table: HostTable, slot: int,
                 connections: int, timeout: float, connect_timeout: float,
                 max_item_size: int, tko: int) -> None:
        self.addr = addr
        self.loop = loop
        self.table = table
        self.slot = slot
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_item_size = max_item_size
        self.tko = tko
        self.failures = 0                 # consecutive timeouts/errors seen by the data path
        self.healthy = table.state(slot) != HOST_DOWN
        self.generation = table.generation(slot)
        self.last_error = ""
        self.protocol_logged_at = float("-inf")
        self.protocol_unlogged = 0        # protocol errors since the last line logged
        self.counters = local_counters()
        self.tls_context: Any = None       # an ssl.SSLContext for new connections: None is plain
        self.tls_name = ""                # the name the server's certificate must carry
        self.tls_fix = ""                 # the settings to look at when a handshake fails
        self.conns = [Connection(self) for _ in range(max(1, connections))]
        self.retiring: list[Connection] = []      # old address, finishing their requests

    def use_tls(self, settings: TlsSettings | None, context: Any) -> None:
        """Reach the host with ``context`` from its next connection on
        (None: plain TCP); connections already up keep their session."""
        self.tls_context = context if settings is not None else None
        self.tls_name = (settings.server_name or self.addr.host) if settings else ""
        self.tls_fix = f"the tls: settings at {settings.where}" if settings else ""

    def start(self) -> None:
        for c in self.conns:
            c.connect()

    def sockaddr(self) -> tuple[int, Any] | None:
        """Where to connect now, from the shared table (never a DNS lookup here)."""
        found = self.table.address(self.slot)
        if found is None:
            return None
        return found[0], sockaddr(found[0], found[1], self.addr.port)

    # -- health --------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with the shared table after its signature moved."""
        gen = self.table.generation(self.slot)
        if gen != self.generation and not gen & 1:
            self.generation = gen
            self.readdress()
        up = self.table.state(self.slot) != HOST_DOWN
        if up != self.healthy:
            self.healthy = up
            if up:
                self.failures = 0
                for c in self.conns:
                    c.backoff = BACKOFF_MIN
                    c.connect()

    def failed(self, reason: str, count: int = 1, hard: bool = False) -> None:
        """The data path saw ``count`` timeouts or errors in a row (TKO)."""
        self.last_error = reason
        self.failures = self.tko if hard else self.failures + count
        if self.failures >= self.tko and self.healthy:
            self.healthy = False
            why = reason if hard else f"{self.failures} failures in a row, last: {reason}"
            if self.table.set_state(self.slot, HOST_DOWN, why):
                log.warning("host %s: up -> down (%s)", self.addr, why)

    def protocol_error(self, ring: Ring) -> str:
        """A reply that cannot answer its request (``ring.feed`` returned -1):
        log it, one clear line, at most one per PROTOCOL_LOG_INTERVAL (the
        next line says how many were not logged); return the short reason."""
        cmd = ring.fault_cmd
        what = (f"a reply to {COMMAND_NAMES.get(cmd, cmd)} that cannot answer it" if cmd
                else "bytes while no reply was owed")
        now = self.loop.now
        if now - self.protocol_logged_at >= PROTOCOL_LOG_INTERVAL:
            more = (f" ({self.protocol_unlogged} more since the last such line)"
                    if self.protocol_unlogged else "")
            log.warning("host %s: protocol error, connection closed: %s: %r%s",
                        self.addr, what, ring.fault_bytes, more)
            self.protocol_logged_at = now
            self.protocol_unlogged = 0
        else:
            self.protocol_unlogged += 1
        return f"protocol error ({what})"

    def readdress(self) -> None:
        """The name now resolves elsewhere: new connections go to the new
        address; the old ones finish the requests they carry, then close."""
        old, self.conns = self.conns, [Connection(self) for _ in self.conns]
        for c in old:
            if c.retire():
                self.retiring.append(c)
        log.info("host %s: connecting to its new address", self.addr)
        if self.healthy:
            self.start()

    def close(self) -> None:
        for c in self.conns + self.retiring:
            c.close(UPSTREAM_ERROR)


class Connection(ConnectionBase):
    """One pipelined connection to a host.  Its reads and writes in a loop
    turn (``on_event``, ``flush``) are ConnectionBase's (_upstream.pyx); its
    socket's life is here."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.loop = host.loop
        self.ring = Ring(max_reply=2 * host.max_item_size + 64 * 1024, host=host.slot,
                         timeout=host.timeout)
        self.sock = None                  # a socket.socket while connecting or up
        self.fd = -1
        self.tls = None                   # the I/O seam (_upstream.pyx): None is plain
        self.state = CONN_DOWN
        self.dirty = False
        self.want_write = False
        self.backoff = BACKOFF_MIN
        self.connect_deadline = 0.0
        self.closed = False
        self.retiring = False

    def expire(self, now: float) -> None:
        """Answer requests past their deadline.  The host is failed for
        timeouts only when this connection made no progress (no reply byte)
        for the whole timeout while requests were written and owed: a large
        reply still flowing, or a queue behind one, is not a dead host.  A
        connection silent for twice the timeout is dropped."""
        ring = self.ring
        timeout = self.host.timeout
        expired = ring.expire(now, UPSTREAM_TIMEOUT)
        stalled = ring.awaiting and now - ring.progress_at >= timeout
        if expired:
            self.host.counters.upstream_error(self.host.slot, E_TIMEOUT, expired)
            if stalled:
                self.host.failed("timeout", expired)
        if stalled and now - ring.progress_at > 2 * timeout:
            self.fail("no reply within twice the timeout", kind=None)  # counted as timeouts
        elif self.state == CONN_CONNECTING and now > self.connect_deadline:
            if self.tls is not None:            # counted and logged as a TLS failure too
                self.tls.timed_out()
                self.fail("tls handshake timeout", kind=E_CONNECT)
            else:
                self.fail("connect timeout", kind=E_CONNECT)
        elif ring.inflight == 0 and self.state != CONN_CONNECTING:
            self.loop.busy.discard(self)
            if self.retiring and not ring.pending:
                self.close(UPSTREAM_ERROR)

    def retire(self) -> bool:
        """Stop reconnecting; close now if idle.  True while it still carries requests."""
        self.closed = True
        if self.state == CONN_UP and (self.ring.inflight or self.ring.pending):
            self.retiring = True
            self.loop.busy.add(self)
            return True
        self.close(UPSTREAM_ERROR)
        return False

    # -- socket life -------------------------------------------------------

    def connect(self) -> None:
        """Connect without blocking, unless closed, already connected, or the
        host is down (then only a probe verdict brings it back: Host.sync)."""
        if self.closed or self.state != CONN_DOWN or not self.host.healthy:
            return
        target = self.host.sockaddr()
        if target is None:
            self.fail("no address for the host name", kind=E_CONNECT)
            return
        family, sockaddr = target
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            # out of descriptors (EMFILE/ENFILE): the router's own shortage,
            # not the host's fault, so it does not count toward its tko
            self.fail(f"connect: {errno.errorcode.get(e.errno or 0, e)}", kind=E_CONNECT,
                      judged=False)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(sockaddr)
        self.sock, self.fd = sock, sock.fileno()
        self.state = CONN_CONNECTING
        self.connect_deadline = self.loop.now + self.host.connect_timeout
        self.loop.busy.add(self)
        if err == 0:
            self.loop.add(self.fd, EV_IN, self)
            self._connected()
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.loop.add(self.fd, EV_OUT, self)
        else:
            self.fail(f"connect: {errno.errorcode.get(err, err)}", err in HARD_ERRORS, E_CONNECT)

    def _connected(self) -> None:
        """The TCP connection is up: start TLS if the host wants it, else serve."""
        ctx = self.host.tls_context
        if ctx is None:
            self._up()
            return
        from mcrouter import tls
        self.tls = tls.TlsSession(ctx, self.sock, "upstream", str(self.host.addr),
                                  self.connect_deadline, self.host.tls_name)
        try:
            done = self.tls.start()
        except tls.TlsError as e:
            self._handshake_failed(e)
            return
        except OSError as e:
            self.fail(f"tls handshake: {e.strerror or e}", kind=E_CONNECT)
            return
        if done:
            self._up()
        else:
            self.loop.modify(self.fd, EV_IN | EV_OUT if self.tls.want_write else EV_IN)

    def _handshake(self) -> None:
        """A handshake step on an event while CONNECTING over TLS: the
        connection counts as up once the session says the handshake is done."""
        session = self.tls
        buf = self.loop.recv_buf
        try:
            if session.want_write:
                session.flush()
            n = session.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            n = -1
        except OSError as e:
            self.tls_error(e, handshaking=True)
            return
        if n == 0:
            self.fail("tls handshake: connection closed by server", kind=E_CONNECT)
            return
        if not session.handshake_done:
            self.loop.modify(self.fd, EV_IN | EV_OUT if session.want_write else EV_IN)
            return
        self._up()
        if n > 0 and self.ring.feed(buf, n) < 0:       # the server spoke first: no reply was owed
            self.fail(self.host.protocol_error(self.ring), kind=E_PARSE)

    def tls_error(self, e: OSError, handshaking: bool = False) -> None:
        """A read failed on a TLS connection (the compiled seam calls this;
        ``handshaking`` while CONNECTING).  An alert about certificates
        (TLS 1.3: memcached refusing ours after our side of the handshake,
        often in the same read that finished it) is a handshake failure;
        anything else breaks the connection as on plain TCP."""
        from mcrouter import tls
        if isinstance(e, tls.TlsError):
            self._handshake_failed(e)
            return
        reason, ours = tls.classify(e) if isinstance(e, ssl.SSLError) else ("other", False)
        if reason in CERTIFICATE_REASONS:
            detail = str(getattr(e, "reason", "") or e)
            tls.failures.failed("upstream", str(self.host.addr), reason, ours, detail)
            self._handshake_failed(tls.TlsError(reason, detail))
        elif handshaking:
            self.fail(f"tls handshake: {e.strerror or e}", kind=E_CONNECT)
        else:
            self.fail(f"recv: {e.strerror or e}")

    def _handshake_failed(self, e: Exception) -> None:
        """Counted and logged already (mcrouter.tls): the host is down at
        once, as for a refused connection; the same certificates would fail
        the same way on every retry, until an operator fixes them."""
        self.fail(str(e), hard=True, kind=E_CONNECT)

    def _up(self) -> None:
        self.host.counters.upstream_connections(self.host.slot, 1)
        self.state = CONN_UP
        self.backoff = BACKOFF_MIN
        self.want_write = False
        self.loop.modify(self.fd, EV_IN)
        if self.ring.pending and not self.dirty:
            self.dirty = True
            self.loop.dirty_upstreams.append(self)

    def connect_done(self) -> None:
        """The socket became writable or failed while connecting (or, over
        TLS, an event during the handshake)."""
        if self.tls is not None:
            self._handshake()
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(f"connect: {errno.errorcode.get(err, err)}", err in HARD_ERRORS, E_CONNECT)
        else:
            self._connected()

    def fail(self, reason: str, hard: bool = False, kind: int | None = E_RESET,
             judged: bool = True) -> None:
        """Drop the socket, answer everything in flight, schedule a reconnect;
        ``kind`` is the upstream error counted for it (E_*), None for none;
        ``judged`` False when the host is not to blame (it keeps its tko)."""
        if kind is not None:
            self.host.counters.upstream_error(self.host.slot, kind)
        if self.retiring:
            self.close(UPSTREAM_ERROR)
            return
        self._drop_socket()
        self.state = CONN_DOWN
        self.ring.fail_all(UPSTREAM_ERROR)
        if judged:
            self.host.failed(reason, hard=hard)
        self.loop.busy.discard(self)
        if not self.closed:
            delay = self.backoff * random.uniform(0.5, 1.0)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            self.loop.call_later(delay, self.connect)

    def abort(self) -> None:
        self.fail("internal error")

    def _drop_socket(self) -> None:
        if self.sock is not None:
            if self.state == CONN_UP:
                self.host.counters.upstream_connections(self.host.slot, -1)
            self.loop.remove(self.fd)
            if self.tls is not None and self.state == CONN_UP:
                self.tls.close_notify()
            self.sock.close()
            self.sock, self.fd, self.tls = None, -1, None

    def close(self, reply: bytes) -> None:
        if self.retiring:
            self.retiring = False
            self.host.retiring.remove(self)
        self.closed = True
        self._drop_socket()
        self.state = CONN_DOWN
        self.ring.fail_all(reply)
        self.loop.busy.discard(self)
