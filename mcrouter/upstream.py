"""Upstream memcached hosts and their pipelined connections.

A Host owns ``-C`` connections.  A connection is a socket plus a Ring (the
Cython queues); it connects without blocking, queues requests while it
connects, and when it fails answers everything in flight with the router's
error reply and reconnects with capped exponential backoff.  Until active
health checks exist, a host whose connection failed is down until one of its
connections reconnects.

Socket I/O stays inside ``Connection`` (connect, ``sock.send``, ``sock.recv``)
so that a TLS wrapper can later replace it without touching rings or routes.
"""
from __future__ import annotations

import errno
import logging
import random
import socket
from typing import Any

from mcrouter._parser import Request
from mcrouter._ring import Ring
from mcrouter.config import HostAddr
from mcrouter.loop import EV_ERR, EV_IN, EV_OUT, Loop
from mcrouter.protocol import (NO_HEALTHY_UPSTREAM, ST_ERROR, UPSTREAM_ERROR,
                               UPSTREAM_QUEUE_FULL, UPSTREAM_TIMEOUT)

log = logging.getLogger("mcrouter.upstream")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
DOWN, CONNECTING, UP = 0, 1, 2


class Host:
    """One memcached server: its address, its connections, its health."""

    def __init__(self, addr: HostAddr, loop: Loop, connections: int, timeout: float,
                 max_item_size: int) -> None:
        self.addr = addr
        self.loop = loop
        self.timeout = timeout
        self.healthy = True           # optimistic until a connection fails
        self.last_error = ""
        self._sockaddr: tuple[int, Any] | None = None
        self.conns = [Connection(self, max_item_size) for _ in range(max(1, connections))]

    def start(self) -> None:
        for c in self.conns:
            c.connect()

    def send(self, req: Request) -> None:
        """Queue ``req`` on its client's connection (so that one client's
        requests reach memcached in the order it sent them, as on a direct
        connection), or on the next usable one if that is down."""
        conns = self.conns
        n = len(conns)
        i = req.chan % n
        for _ in range(n):
            c = conns[i]
            if c.state != DOWN:
                break
            i = (i + 1) % n
        else:
            req.finish(NO_HEALTHY_UPSTREAM, ST_ERROR)
            return
        loop = self.loop
        if not c.ring.push(req, loop.now + self.timeout):
            req.finish(UPSTREAM_QUEUE_FULL, ST_ERROR)
            return
        loop.busy.add(c)
        if not c.dirty and c.state == UP:      # written at the end of this loop turn
            c.dirty = True
            loop.dirty_upstreams.append(c)

    def resolve(self) -> tuple[int, Any]:
        """The host's address, looked up once and kept, so that reconnects never
        wait on DNS.  (IP literals resolve without a lookup; refreshing names
        is the DNS cache's job, not the reconnect path's.)"""
        if self._sockaddr is None:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self.addr.host, self.addr.port, type=socket.SOCK_STREAM)[0]
            self._sockaddr = (family, sockaddr)
        return self._sockaddr

    def connection_up(self) -> None:
        if not self.healthy:
            log.info("host %s: down -> up (reconnected)", self.addr)
        self.healthy = True

    def connection_failed(self, reason: str) -> None:
        if self.healthy:
            log.warning("host %s: up -> down (%s)", self.addr, reason)
        self.healthy = False
        self.last_error = reason

    def close(self) -> None:
        for c in self.conns:
            c.close(UPSTREAM_ERROR)


class Connection:
    """One pipelined connection to a host."""

    def __init__(self, host: Host, max_item_size: int) -> None:
        self.host = host
        self.loop = host.loop
        self.ring = Ring(max_reply=2 * max_item_size + 64 * 1024)
        self.sock: Any = None             # a socket.socket while connecting or up
        self.fd = -1
        self.state = DOWN
        self.dirty = False
        self.want_write = False
        self.backoff = BACKOFF_MIN
        self.connect_deadline = 0.0
        self.closed = False

    # -- requests (queued by Host.send) ------------------------------------

    def flush(self) -> None:
        """Called once per loop turn: one send of everything queued."""
        if self.state != UP:
            return
        try:
            left = self.ring.write_to(self.sock)
        except OSError as e:
            self.fail(f"send: {e.strerror or e}")
            return
        self._want_write(left > 0)

    def expire(self, now: float) -> None:
        """Answer requests past their deadline; drop a connection that hangs."""
        ring = self.ring
        ring.expire(now, UPSTREAM_TIMEOUT)
        oldest = ring.oldest_deadline
        if oldest and now > oldest + self.host.timeout:
            self.fail("no reply within twice the timeout")
        elif self.state == CONNECTING and now > self.connect_deadline:
            self.fail("connect timeout")
        elif ring.inflight == 0 and self.state != CONNECTING:
            self.loop.busy.discard(self)

    # -- socket life -------------------------------------------------------

    def connect(self) -> None:
        if self.closed:
            return
        try:
            family, sockaddr = self.host.resolve()
        except socket.gaierror as e:
            self.fail(f"resolve {self.host.addr.host}: {e.strerror}")
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(sockaddr)
        self.sock, self.fd = sock, sock.fileno()
        self.state = CONNECTING
        self.connect_deadline = self.loop.now + self.host.timeout
        self.loop.busy.add(self)
        if err == 0:
            self.loop.add(self.fd, EV_IN, self)
            self._connected()
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.loop.add(self.fd, EV_OUT, self)
        else:
            self.fail(f"connect: {errno.errorcode.get(err, err)}")

    def _connected(self) -> None:
        self.state = UP
        self.backoff = BACKOFF_MIN
        self.want_write = False
        self.loop.modify(self.fd, EV_IN)
        self.host.connection_up()
        if self.ring.pending and not self.dirty:
            self.dirty = True
            self.loop.dirty_upstreams.append(self)

    def on_event(self, mask: int) -> None:
        if self.state == CONNECTING:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(f"connect: {errno.errorcode.get(err, err)}")
            else:
                self._connected()
            return
        if mask & EV_IN or mask & EV_ERR:
            buf = self.loop.recv_buf
            try:
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as e:
                self.fail(f"recv: {e.strerror or e}")
                return
            if n == 0:
                self.fail("connection closed by server")
                return
            if n > 0 and self.ring.feed(buf, n) < 0:
                self.fail("unparseable reply")
                return
        if mask & EV_OUT and self.state == UP:
            self.flush()

    def _want_write(self, want: bool) -> None:
        if want != self.want_write and self.state == UP:
            self.want_write = want
            self.loop.modify(self.fd, EV_IN | EV_OUT if want else EV_IN)

    def fail(self, reason: str) -> None:
        """Drop the socket, answer everything in flight, schedule a reconnect."""
        self._drop_socket()
        self.state = DOWN
        self.host.connection_failed(reason)
        self.ring.fail_all(UPSTREAM_ERROR)
        self.loop.busy.discard(self)
        if not self.closed:
            delay = self.backoff * random.uniform(0.5, 1.0)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            self.loop.call_later(delay, self.connect)

    def abort(self) -> None:
        self.fail("internal error")

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.loop.remove(self.fd)
            self.sock.close()
            self.sock, self.fd = None, -1

    def close(self, reply: bytes) -> None:
        self.closed = True
        self._drop_socket()
        self.state = DOWN
        self.ring.fail_all(reply)
        self.loop.busy.discard(self)
