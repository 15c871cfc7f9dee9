"""``Client``: the blocking face (threads welcome).

Each server has a small pool of connections (``max_pool_size``, opened on
first use).  A call takes one connection per server it needs, queues its
requests on each connection's ``Ring`` (the router's upstream queue),
writes to every server before waiting for any reply, then reads until
every request is answered or the call's deadline passes.  A request that
times out keeps its place in its connection's ring: the connection goes
back to the pool and its late reply is read and dropped by whoever uses
the connection next, so no later reply is ever matched to the wrong request.

``get_many``/``gets_many`` run their common case (plain sockets, every
server up, an idle connection per server) in one compiled call,
``_fast.get_many``, which hands anything else to ``_run_many`` (before it
sends) or ``_after_send`` (after), so both paths end in the same code.
"""
from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from mcrouter._parser import Request
from mcrouter._ring import Ring
from mcrouter.client._core import Commands, Errors, Key, Plan, Reconnect
from mcrouter.client._fast import (EXCHANGE_MAX, EX_EOF, EX_PROTOCOL, EX_READ, EX_WRITE, Waited, exchange,
                                   poll_fds)
from mcrouter.client._fast import get_many as fast_get_many
from mcrouter.client.codec import LOST_PREFIX, PROTOCOL_ERROR, check_int
from mcrouter.client.errors import MemcacheError, MemcacheTimeoutError
from mcrouter.client.meta import MetaDebug, MetaRequest, MetaResult
from mcrouter.client.placement import Placement, Server
from mcrouter.config import HostAddr
from mcrouter.protocol import CMD_DECR, CMD_INCR

T = TypeVar("T")
RECV_SIZE = 256 * 1024
MAX_INFLIGHT = 1 << 20          # requests queued on one connection
MAX_OUT = 256 << 20             # bytes queued on one connection and not yet written
MAX_REPLY = 64 << 20            # a reply larger than this (per key) is dropped with an error
POLL_MAX_MS = 1 << 30           # one poll's wait at most (poll takes a C int of ms)
READS_PER_WAKE = 16             # reads before polling again: a server sending faster than we
                                # read cannot hold a call past its deadline
# why a connection is dropped when an exception (KeyboardInterrupt, a signal
# handler's) cuts through its Ring: where its byte stream stands is unknown
INTERRUPTED = "interrupted mid-read or mid-write: the connection is out of step"
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_POLL_OUT = select.POLLOUT | select.POLLERR | select.POLLHUP


def lost(text: str) -> bytes:
    """What a request lost with its connection is answered (codec.error_of reads it)."""
    return LOST_PREFIX + text.encode(errors="replace")


class _Sender:
    """Ring.write_to's socket: TLS's "want read/write" is "not now"."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError from None


class Connection(Waited):
    """One socket and its Ring; the owner of its requests (whose replies
    the Ring sets on them: nothing else to do on each, so the owner's
    on_reply is _fast.Waited's, in C)."""

    def __init__(self, server: str, sock: socket.socket, timeout: float) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.sender = _Sender(sock)
        self.ring = Ring(MAX_INFLIGHT, MAX_OUT, MAX_REPLY, -1, timeout)
        self.buf = bytearray(RECV_SIZE)
        self.closed = False
        self.why = ""
        self.gen = 0
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.poller = select.poll()     # this socket alone: a one-server call's wait
        self.mask = _POLL_IN
        self.poller.register(self.fd, self.mask)

    def wait_for(self, req: Request, deadline: float) -> None:
        """Write and read until ``req`` is answered, the connection closes
        or the deadline passes: one connection, so no poll set to build."""
        pending = self.flush()
        while req.reply is None and not self.closed:
            mask = _POLL_IN | _POLL_OUT if pending else _POLL_IN
            if mask != self.mask:
                self.poller.modify(self.fd, mask)
                self.mask = mask
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                events = self.poller.poll(min(left * 1000.0, POLL_MAX_MS))
            except InterruptedError:
                continue
            for _, ev in events:
                if ev & select.POLLOUT:
                    pending = self.flush()
                if ev & ~select.POLLOUT:
                    self.read()

    def push(self, req: Request) -> bool:
        """Queue ``req``; False if the Ring refused it (answered at once: lost)."""
        req.owner = self
        if self.ring.push(req, 0.0):
            return True
        req.finish(lost(f"more than {MAX_INFLIGHT} requests or {MAX_OUT} bytes queued on "
                        "one connection"), 2)
        return False

    def flush(self) -> int:
        """Write what the socket takes now; the bytes still to write."""
        try:
            return self.ring.write_to(self.sender)
        except OSError as e:
            self.close(f"write failed: {e}")
            return 0
        except BaseException:           # KeyboardInterrupt, a signal handler's error: bytes
            self.close(INTERRUPTED)     # may have gone that the Ring would send again
            raise

    def in_step(self) -> bool:
        """Before reuse: a connection owed no reply has nothing to read.  Bytes
        there answer nothing (a stale extra reply: a protocol error, not the
        next call's reply) and EOF means the server closed it while idle."""
        if self.ring.inflight == 0:
            for _, ev in self.poller.poll(0):
                if ev & ~select.POLLOUT:
                    self.read()
        return not self.closed

    def read(self) -> None:
        """Read what has arrived (READS_PER_WAKE reads at most) and match it;
        closes on EOF or garbage."""
        reads = 0
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                return
            except OSError as e:
                self.close(f"read failed: {e}")
                return
            if n == 0:
                self.close("connection closed by the server")
                return
            try:
                if self.ring.feed(self.buf, n) < 0:
                    self.close(f"{PROTOCOL_ERROR}reply {self.ring.fault_bytes!r} answers "
                               "no request")
                    return
            except BaseException:       # raised in a reply's callback, or Ctrl-C before the
                self.close(INTERRUPTED)   # close: the next reply would go to the wrong request
                raise
            reads += 1
            if self.tls and self.sock.pending():  # type: ignore[attr-defined]
                continue        # decrypted bytes poll cannot see (the rest of one record)
            if n < RECV_SIZE or reads >= READS_PER_WAKE:
                return

    def close(self, why: str = "closed by the client") -> None:
        if not self.closed:
            self.closed = True
            self.why = why
            try:
                self.sock.close()
            finally:
                self.ring.fail_all(lost(why))


class ServerPool:
    """The connections of one server: idle ones, and how many exist (at most ``size``)."""

    def __init__(self, client: "Client", addr: HostAddr, size: int, slot: int) -> None:
        self.client = client
        self.addr = addr
        self.slot = slot
        self.name = str(addr)
        self.size = size
        self.idle: list[Connection] = []
        self.count = 0
        self.lock = threading.Lock()    # taken directly on the fast path: a C context manager
        self.cond = threading.Condition(self.lock)
        self.reconnect = Reconnect(self.name, client.backoff_initial, client.retry_interval)
        self.gen = 0                # close() moves it on: older connections close on release
        self.waiting = 0            # threads in cond.wait: only then is a release notified

    def acquire(self, deadline: float, check: bool = True) -> Connection:
        """An idle connection still in step with its server, else a new one;
        MemcacheTimeoutError if all ``size`` stay busy until ``deadline`` (the
        client's own congestion: not a failure of the server).  ``check``
        False leaves Connection.in_step to the caller (a bulk call checks all
        its connections with one poll)."""
        while True:
            with self.lock:
                while not self.idle and self.count >= self.size:
                    self.waiting += 1
                    try:
                        woke = self.cond.wait(max(0.0, deadline - time.monotonic()))
                    finally:
                        self.waiting -= 1
                    if not woke:
                        raise MemcacheTimeoutError(f"all {self.size} connections busy",
                                                   server=self.name)
                if not self.idle:
                    self.count += 1
                    break
                conn = self.idle.pop()
            if not check or conn.in_step():
                return conn
            self.release(conn)          # closed: its place is free
        try:
            return self.connect(deadline)
        except BaseException:
            with self.lock:
                self.count -= 1
                if self.waiting:
                    self.cond.notify()
            raise

    def release(self, conn: Connection) -> None:
        with self.lock:
            if conn.gen != self.gen:
                conn.close()
            if conn.closed:
                self.count -= 1
            else:
                self.idle.append(conn)
            if self.waiting:
                self.cond.notify()

    def connect(self, deadline: float) -> Connection:
        """A new connection (TLS if the client has a context), with backoff
        between failed attempts (Reconnect); a failure counts against the server."""
        c = self.client
        try:
            self.reconnect.check()
        except MemcacheError:
            c._failed(self.slot)
            raise
        timeout = max(0.001, min(c.connect_timeout, deadline - time.monotonic()))
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((self.addr.host, self.addr.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)   # urgent data: in order, as any byte
            if c.tls_context is not None:
                sock = c.tls_context.wrap_socket(sock, server_hostname=c.server_hostname
                                                 or self.addr.host)
            sock.setblocking(False)
        except OSError as e:            # ssl.SSLError and socket.timeout are OSErrors
            if sock is not None:
                sock.close()
            err = self.reconnect.failed(e)
            c._failed(self.slot)
            raise err from None
        self.reconnect.connected()
        conn = Connection(self.name, sock, c.timeout)
        conn.gen = self.gen
        return conn

    def close(self) -> None:
        with self.lock:
            self.gen += 1
            for conn in self.idle:
                conn.close()
                self.count -= 1
            self.idle.clear()


class Client(Commands):
    """A blocking memcached client placing keys as a router pool does.

    ``servers``: ``host:port`` strings (or (host, port) pairs); ``hash``: a
    router.yaml pool's ``hash`` mapping (function, distribution, salt,
    hash_stop, hash_tags); ``weights`` and ``on_down`` as in a pool.
    """

    def __init__(self, servers: Sequence[Server] | Placement, *, max_pool_size: int = 4,
                 **options: Any) -> None:
        super().__init__(servers, **options)
        placement = self.placement
        size = check_int(max_pool_size, "max_pool_size", 10_000, 1)
        self.pools = [ServerPool(self, a, size, i)
                      for i, a in enumerate(placement.servers)]

    @classmethod
    def from_config(cls, path: str, pool: str, **options: Any) -> "Client":
        """A client over pool ``pool`` of the router.yaml at ``path``: its
        servers, weights, hash and on_down (fail or rehash)."""
        return cls(Placement.from_config(path, pool), **options)

    # -- running a plan -------------------------------------------------------------

    def _run(self, plan: Plan[T]) -> T:
        """One request: one connection, waited on by itself; else _run_many."""
        if len(plan.reqs) != 1:
            return self._run_many(plan)
        slot, req = plan.reqs[0]
        deadline = time.monotonic() + self.timeout
        try:
            self.check_up(slot)
            conn = self.pools[slot].acquire(deadline)
        except MemcacheError as e:      # a failed connect was counted (ServerPool.connect)
            return plan.done([e])
        try:
            conn.push(req)
            conn.wait_for(req, deadline)
            err = self.settle_one(slot, req, conn.closed)
        finally:
            self.pools[slot].release(conn)
        return plan.done([err])

    def _run_many(self, plan: Plan[T], conns: dict[int, Connection] | None = None,
                  deadline: float | None = None) -> T:
        """Every request pipelined, a connection per server.  ``conns`` and
        ``deadline``: what the fast path (_fast.get_many) already took, in slot
        order and not yet checked (Connection.in_step), when it hands over."""
        reqs = plan.reqs
        errors: Errors = [None] * len(reqs)
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        if conns is None:
            conns = {}
        refused: dict[int, MemcacheError] = {}
        health = self.health
        try:
            # connections taken in slot order, as every call takes them: no two
            # threads can each hold one the other waits for
            all_up = health.all_up
            for slot in sorted({slot for slot, _ in reqs}):
                if slot in conns:
                    continue
                try:
                    if not all_up:
                        self.check_up(slot)
                    conns[slot] = self.pools[slot].acquire(deadline, check=False)
                except MemcacheError as e:  # a failed connect was counted (ServerPool.connect)
                    refused[slot] = e
            self._in_step(conns, refused, deadline)
            # each connection's last request of this call that its Ring took: the
            # one to wait for (one refused is answered already, those before it not)
            last: dict[int, Request] = {}
            for i, (slot, req) in enumerate(reqs):
                conn = conns.get(slot)
                if conn is None:
                    errors[i] = refused[slot]
                elif conn.push(req):
                    last[slot] = req
            if last:
                self._wait({slot: conns[slot] for slot in last}, last, deadline)
            self._settle(reqs, errors, conns, last)
        finally:
            for slot, conn in conns.items():
                self.pools[slot].release(conn)
        return plan.done(errors)

    def _settle(self, reqs: list[tuple[int, Request]], errors: Errors,
                conns: dict[int, Connection], last: dict[int, Request]) -> None:
        """After the wait: a timeout error for each request unanswered, and
        each server's health."""
        for i, (slot, req) in enumerate(reqs):
            if errors[i] is None and req.reply is None:
                errors[i] = MemcacheTimeoutError(f"no reply within {self.timeout}s",
                                                 server=self.names[slot])
        fails = self.health.fails
        for slot, conn in conns.items():
            if slot not in last:
                continue                    # nothing sent: no news of the server
            if conn.closed or last[slot].reply is None:
                self._failed(slot)
            else:
                fails[slot] = 0             # health.succeeded, inline: once per server

    def _after_send(self, plan: Plan[T], conns: dict[int, Connection],
                    verdicts: list[tuple[int, int]]) -> T:
        """The fast path's hand-over once it has sent and waited (exchange's
        ``verdicts``) but not everything came back clean: the rest of
        _run_many, from _exchange's closing of the broken connections on."""
        reqs = plan.reqs
        errors: Errors = [None] * len(reqs)
        last = {slot: req for slot, req in reqs}
        try:
            cs = list(conns.values())
            try:
                self._close_broken(cs, verdicts)
            except BaseException:
                for c in cs:
                    c.close(INTERRUPTED)
                raise
            self._settle(reqs, errors, conns, last)
        finally:
            for slot, conn in conns.items():
                self.pools[slot].release(conn)
        return plan.done(errors)

    def _abort(self, conns: dict[int, Connection], sent: bool) -> None:
        """The fast path cut by an exception (Ctrl-C): its connections go back,
        closed if anything was sent (where each stream stands is unknown)."""
        for slot, conn in conns.items():
            try:
                if sent:
                    conn.close(INTERRUPTED)
            finally:
                self.pools[slot].release(conn)

    def _get_chunked(self, given: dict[bytes, Key], lists: list[list[bytes]],
                     with_cas: bool) -> dict[Key, Any]:
        """The fast path's hand-over for a server owed more than MULTIGET_CHUNK keys."""
        return self._run(self.plan_get_groups(given, dict(enumerate(lists)), with_cas))

    def _failed(self, slot: int) -> None:
        if self.health.failed(slot):
            self.pools[slot].close()        # ejected: start afresh when it is tried again

    def _in_step(self, conns: dict[int, Connection], refused: dict[int, MemcacheError],
                 deadline: float) -> None:
        """Connection.in_step for every connection of a bulk call in one poll:
        one found out of step (stray bytes, or closed while idle) is replaced
        by a connection checked the usual way."""
        items = list(conns.items())
        revents = poll_fds([c.fd for _, c in items], [False] * len(items), 0)
        for (slot, conn), ev in zip(items, revents):
            if ev and conn.ring.inflight == 0:
                conn.read()
                if conn.closed:
                    pool = self.pools[slot]
                    pool.release(conn)
                    del conns[slot]
                    try:
                        conns[slot] = pool.acquire(deadline)
                    except MemcacheError as e:
                        refused[slot] = e

    def _wait(self, conns: dict[int, Connection], last: dict[int, Request],
              deadline: float) -> None:
        """Write to every server, then read and write until each connection's
        last request of this call is answered (replies come in order), all
        the connections watched by one poll (_fast.poll_fds)."""
        todo = [(conn, last[slot]) for slot, conn in conns.items()]
        if len(todo) <= EXCHANGE_MAX and not any(conn.tls for conn, _ in todo):
            self._exchange(todo, deadline)
            return
        unsent = [conn.flush() > 0 for conn, _ in todo]
        while True:
            if any(conn.closed or req.reply is not None for conn, req in todo):
                keep = [i for i, (conn, req) in enumerate(todo)
                        if not conn.closed and req.reply is None]
                todo = [todo[i] for i in keep]
                unsent = [unsent[i] for i in keep]
            if not todo:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            revents = poll_fds([conn.fd for conn, _ in todo], unsent,
                               min(int(left * 1000.0) + 1, POLL_MAX_MS))
            for i, ev in enumerate(revents):
                if ev:
                    conn = todo[i][0]
                    if ev & select.POLLOUT:
                        unsent[i] = conn.flush() > 0
                    if ev & ~select.POLLOUT:
                        conn.read()

    def _exchange(self, todo: list[tuple[Connection, Request]], deadline: float) -> None:
        """_wait's loop in C (_fast.exchange) for plain sockets: the same
        writes, one poll for all and reads; then each connection it found
        broken is closed (_close_broken).  The receive buffer is the first
        connection's: this call holds it."""
        conns = [conn for conn, _ in todo]
        try:
            verdicts = exchange([c.fd for c in conns], [c.ring for c in conns],
                                [req for _, req in todo], conns[0].buf, deadline,
                                READS_PER_WAKE)
            self._close_broken(conns, verdicts)
        except BaseException:           # Ctrl-C, a signal handler's error (a signal that came
            for c in conns:             # during exchange is raised once it returns, maybe
                c.close(INTERRUPTED)    # before a broken connection was closed): where each
            raise                       # stream stands is unknown

    @staticmethod
    def _close_broken(conns: list[Connection], verdicts: list[tuple[int, int]]) -> None:
        """Close each connection exchange found broken, with the reason
        Connection.read would give (str of the OSError it would have caught:
        "[Errno 104] ...")."""
        for conn, (kind, err) in zip(conns, verdicts):
            if kind == EX_EOF:
                conn.close("connection closed by the server")
            elif kind == EX_READ:
                conn.close(f"read failed: {OSError(err, os.strerror(err))}")
            elif kind == EX_WRITE:
                conn.close(f"write failed: {OSError(err, os.strerror(err))}")
            elif kind == EX_PROTOCOL:
                conn.close(f"{PROTOCOL_ERROR}reply {conn.ring.fault_bytes!r} answers "
                           "no request")

    # -- pymemcache's calls ------------------------------------------------------

    def get(self, key: Key, default: Any = None) -> Any:
        """The value, or ``default`` on a miss."""
        return self._run(self.plan_get(key, default))

    def gets(self, key: Key, default: Any = None, cas_default: Any = None) -> tuple[Any, Any]:
        """(value, cas unique as an int), or (default, cas_default) on a miss."""
        return self._run(self.plan_gets(key, default, cas_default))

    def gat(self, key: Key, expire: int = 0, default: Any = None) -> Any:
        """get and touch: the value (its expiry now ``expire``), or ``default``."""
        return self._run(self.plan_gat(key, expire, default))

    def gats(self, key: Key, expire: int = 0, default: Any = None,
             cas_default: Any = None) -> tuple[Any, Any]:
        return self._run(self.plan_gats(key, expire, default, cas_default))

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """{key: value} of the keys found; one request per server, all sent
        before any reply is read.  A server that fails costs its keys only:
        MemcachePartialError carries the rest (``result``) and each failed
        key's error (``errors``); with ``ignore_exc`` they are misses."""
        return fast_get_many(self, keys, False, READS_PER_WAKE)

    get_multi = get_many

    def gets_many(self, keys: Iterable[Key]) -> dict[Key, tuple[Any, bytes | None]]:
        return fast_get_many(self, keys, True, READS_PER_WAKE)

    def set(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        return self._run(self.plan_store("set", key, value, expire, noreply, flags))

    def add(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        """True if stored, False if the key exists."""
        return self._run(self.plan_store("add", key, value, expire, noreply, flags))

    def replace(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                flags: int | None = None) -> bool:
        """True if stored, False if the key does not exist."""
        return self._run(self.plan_store("replace", key, value, expire, noreply, flags))

    def append(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
               flags: int | None = None) -> bool:
        return self._run(self.plan_store("append", key, value, expire, noreply, flags))

    def prepend(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                flags: int | None = None) -> bool:
        return self._run(self.plan_store("prepend", key, value, expire, noreply, flags))

    def cas(self, key: Key, value: Any, cas: int | bytes | str, expire: int = 0,
            noreply: bool | None = None, flags: int | None = None) -> bool | None:
        """True if stored, False if the item changed since ``cas``, None if it is gone."""
        return self._run(self.plan_store("cas", key, value, expire, noreply, flags, cas))

    def set_many(self, values: Mapping[Key, Any], expire: int = 0,
                 noreply: bool | None = None) -> list[Key]:
        """The keys that were not stored."""
        return self._run(self.plan_set_many(values, expire, noreply))

    set_multi = set_many

    def delete(self, key: Key, noreply: bool | None = None) -> bool:
        """True if deleted, False if not found."""
        return self._run(self.plan_delete(key, noreply))

    def delete_many(self, keys: Iterable[Key], noreply: bool | None = None) -> bool:
        return self._run(self.plan_delete_many(keys, noreply))

    delete_multi = delete_many

    def incr(self, key: Key, value: int, noreply: bool = False) -> int | None:
        """The new value, or None if the key does not exist."""
        return self._run(self.plan_arith(CMD_INCR, key, value, noreply))

    def decr(self, key: Key, value: int, noreply: bool = False) -> int | None:
        return self._run(self.plan_arith(CMD_DECR, key, value, noreply))

    def touch(self, key: Key, expire: int = 0, noreply: bool | None = None) -> bool:
        """True if touched, False if not found."""
        return self._run(self.plan_touch(key, expire, noreply))

    def flush_all(self, delay: int = 0, noreply: bool | None = None,
                  server: str | None = None) -> bool:
        """Flush every server (or ``server``)."""
        self._run(self.plan_flush_all(delay, noreply, server))
        return True

    def version(self, server: str | None = None) -> bytes:
        """The version of ``server`` (pymemcache's bytes); it may be left out
        when the client has one server."""
        name = self.one_server(server, "version", "versions")
        return self._run(self.plan_version(name))[name]

    def versions(self) -> dict[str, bytes]:
        return self._run(self.plan_version(None))

    def stats(self, *args: str, server: str | None = None) -> dict[bytes, Any]:
        """``stats [args]`` of ``server`` (may be left out with one server) as
        pymemcache gives it: {name: value}, values converted as it does."""
        name = self.one_server(server, "stats", "stats_all")
        return self._run(self.plan_stats(args, name))[name]

    def stats_all(self, *args: str) -> dict[str, dict[bytes, Any]]:
        return self._run(self.plan_stats(args, None))

    # -- meta -------------------------------------------------------------------------

    def meta(self, request: MetaRequest) -> Any:
        """One meta request (Mg, Ms, Md, Ma, Mn, Me): its MetaResult (me: a
        MetaDebug, or None on a miss).  An error reply raises."""
        return self._run(self.plan_meta([request]))[0]

    def meta_many(self, requests: Sequence[MetaRequest]) -> list[MetaResult | MetaDebug | None]:
        """Meta requests pipelined, each to its key's server; results in order."""
        return self._run(self.plan_meta(requests))

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this client opened (one in use by another
        thread when it comes back).  The client stays usable: a later call
        connects again."""
        for pool in self.pools:
            pool.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
