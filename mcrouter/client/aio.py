"""``AsyncClient``: the asyncio face (uvloop works too; it is not required).

Same calls as ``Client``, as coroutines.  Each server has ``pool_size``
connections (default 1), opened on first use; callers' requests are
queued on a connection's ``Ring`` and written together once per loop turn
(every request queued during one turn of the loop goes out in one write).

Cancellation-safe: a call that is cancelled or times out leaves its
requests in their rings; their replies, when they come, are matched to
them and dropped.  No reply can ever be given to a later request.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Iterable, Mapping, Sequence, TypeVar, cast

from mcrouter._parser import Owner, Request
from mcrouter._ring import Ring
from mcrouter.client._core import Commands, Errors, Key, Plan, Reconnect
from mcrouter.client.blocking import INTERRUPTED, MAX_INFLIGHT, MAX_OUT, MAX_REPLY, lost
from mcrouter.client.codec import PROTOCOL_ERROR, check_int
from mcrouter.client.errors import (MemcacheConnectionError, MemcacheError,
                                    MemcacheServerDownError, MemcacheTimeoutError)
from mcrouter.client.meta import MetaDebug, MetaRequest, MetaResult
from mcrouter.client.placement import Placement, Server
from mcrouter.config import HostAddr
from mcrouter.protocol import CMD_DECR, CMD_INCR

T = TypeVar("T")


class _Waiter:
    """One call's requests still unanswered; its future is set at zero."""

    __slots__ = ("fut", "left")

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut
        self.left = 1           # the call's own hold, released once all are queued

    def hit(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(None)


class _Replies(Owner):
    """The owner of a connection's requests: tells each one's call."""

    def on_reply(self, req: Request) -> None:
        # ``note``: a route's scratch field (typed for the router's use); a call's waiter here
        waiter = cast("_Waiter | None", req.note)
        req.note = None
        if waiter is not None:
            waiter.hit()


_REPLIES = _Replies()


def _wake(fut: asyncio.Future[None]) -> None:
    """A one-request call's deadline: stop waiting (its request stays in the ring)."""
    if not fut.done():
        fut.set_result(None)


class AsyncConnection(asyncio.Protocol):
    """One connection: its transport and its Ring."""

    def __init__(self, server: str, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.ring = Ring(MAX_INFLIGHT, MAX_OUT, MAX_REPLY, -1, 1.0)
        self.transport: asyncio.Transport | None = None
        self.scheduled = False
        self.closed = False
        self.why = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)   # urgent data: in order, as any byte

    def data_received(self, data: bytes) -> None:
        try:
            if self.ring.feed(data) < 0:
                self.close(f"{PROTOCOL_ERROR}reply {self.ring.fault_bytes!r} answers no request")
        except BaseException:           # raised in a reply's callback, or a Ctrl-C before the
            self.close(INTERRUPTED)     # refused reply's connection was closed: out of step
            raise

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone(f"connection lost: {exc}" if exc else "connection closed by the server")

    # the Ring's socket
    def send(self, data: bytearray) -> int:
        # a copy: the Ring trims its buffer once this returns
        self.transport.write(bytes(data))  # type: ignore[union-attr]
        return len(data)

    def push(self, req: Request, waiter: _Waiter) -> None:
        req.owner = _REPLIES
        req.note = waiter  # type: ignore[assignment]
        waiter.left += 1
        if self.closed:
            req.finish(lost(self.why), 2)
        elif self.transport is not None and self.transport.get_write_buffer_size() > MAX_OUT:
            # a server that does not read: the transport would buffer without bound
            req.finish(lost(f"more than {MAX_OUT} bytes queued and not taken by the server"), 2)
        elif not self.ring.push(req, 0.0):
            req.finish(lost(f"more than {MAX_INFLIGHT} requests or {MAX_OUT} bytes queued"), 2)
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Everything queued this loop turn, in one write."""
        self.scheduled = False
        if not self.closed:
            self.ring.write_to(self)

    def _gone(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self.why = why
            self.ring.fail_all(lost(why))

    def close(self, why: str = "closed by the client") -> None:
        self._gone(why)
        if self.transport is None:
            return
        if not self.loop.is_closed():
            self.transport.abort()
        else:                           # its loop is over (asyncio.run returned): no abort
            # (uvloop's socket object refuses shutdown with TypeError)
            with contextlib.suppress(OSError, AttributeError, TypeError):
                self.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)

    def usable(self) -> bool:
        """Open, on a loop still running (a client may outlive one asyncio.run)."""
        if self.closed:
            return False
        if self.loop.is_closed():
            self.close("its event loop was closed")
            return False
        return True


class AsyncServer:
    """One server's connections (``size`` of them, used in turn)."""

    def __init__(self, client: "AsyncClient", addr: HostAddr, size: int) -> None:
        self.client = client
        self.addr = addr
        self.name = str(addr)
        self.conns: list[AsyncConnection | None] = [None] * size
        self.connecting: list[asyncio.Future[AsyncConnection] | None] = [None] * size
        self.turn = 0
        self.reconnect = Reconnect(self.name, client.backoff_initial, client.retry_interval)

    def ready(self) -> AsyncConnection | None:
        """The next connection in turn if it is open (no await on the fast path)."""
        i = self.turn
        self.turn = (i + 1) % len(self.conns)
        conn = self.conns[i]
        if conn is not None and conn.usable():
            return conn
        return None

    async def get(self) -> AsyncConnection:
        i = (self.turn - 1) % len(self.conns)
        conn = self.conns[i]
        if conn is not None and conn.usable():
            return conn
        pending = self.connecting[i]
        if pending is not None and pending.get_loop().is_closed():
            pending = self.connecting[i] = None
        if pending is None:
            self.reconnect.check()
            pending = self.connecting[i] = asyncio.ensure_future(self._connect(i))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            # the connect was cancelled under us (close()), not this caller's task
            task = asyncio.current_task()
            if pending.cancelled() and task is not None and not task.cancelling():
                raise MemcacheConnectionError("connect abandoned: the client was closed",
                                              server=self.name) from None
            raise
        finally:
            if pending.done() and self.connecting[i] is pending:
                self.connecting[i] = None

    async def _connect(self, i: int) -> AsyncConnection:
        c = self.client
        loop = asyncio.get_running_loop()
        conn = AsyncConnection(self.name, loop)
        try:
            async with asyncio.timeout(c.connect_timeout):
                await loop.create_connection(
                    lambda: conn, self.addr.host, self.addr.port, ssl=c.tls_context,
                    server_hostname=(c.server_hostname or self.addr.host)
                    if c.tls_context is not None else None)
        except OSError as e:            # ssl.SSLError and TimeoutError are OSErrors
            raise self.reconnect.failed(e) from None
        self.reconnect.connected()
        self.conns[i] = conn
        return conn

    def close(self) -> None:
        for i, conn in enumerate(self.conns):
            if conn is not None:
                conn.close()
            self.conns[i] = None
            pending = self.connecting[i]
            if pending is not None:
                pending.cancel()
                self.connecting[i] = None


class AsyncClient(Commands):
    """An asyncio memcached client placing keys as a router pool does; the
    arguments are Client's, with ``pool_size`` connections per server."""

    def __init__(self, servers: Sequence[Server] | Placement, *, pool_size: int = 1,
                 **options: Any) -> None:
        super().__init__(servers, **options)
        placement = self.placement
        size = check_int(pool_size, "pool_size", 10_000, 1)
        self.servers = [AsyncServer(self, a, size) for a in placement.servers]

    @classmethod
    def from_config(cls, path: str, pool: str, **options: Any) -> "AsyncClient":
        """A client over pool ``pool`` of the router.yaml at ``path``."""
        return cls(Placement.from_config(path, pool), **options)

    # -- running a plan -------------------------------------------------------------

    async def _run(self, plan: Plan[T]) -> T:
        """One request to an open connection of a live server: queued and
        awaited with one timer and no context manager; anything else: _run_many."""
        if len(plan.reqs) != 1:
            return await self._run_many(plan)
        slot, req = plan.reqs[0]
        conn = self.servers[slot].ready() if self.health.up[slot] else None
        if conn is None:
            return await self._run_many(plan)
        loop = conn.loop
        fut = loop.create_future()
        waiter = _Waiter(fut)
        conn.push(req, waiter)
        waiter.hit()
        if not fut.done():
            handle = loop.call_at(loop.time() + self.timeout, _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
        return plan.done([self.settle_one(slot, req, conn.closed)])

    async def _run_many(self, plan: Plan[T]) -> T:
        reqs = plan.reqs
        errors: Errors = [None] * len(reqs)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        deadline = loop.time() + self.timeout
        conns: dict[int, AsyncConnection] = {}
        refused: dict[int, MemcacheError] = {}
        for i, (slot, req) in enumerate(reqs):
            conn = conns.get(slot)
            if conn is None:
                if slot in refused:
                    errors[i] = refused[slot]
                    continue
                server = self.servers[slot]
                try:
                    self.check_up(slot)
                    conn = server.ready()
                    if conn is None:
                        async with asyncio.timeout_at(deadline):
                            conn = await server.get()
                except TimeoutError:
                    refused[slot] = errors[i] = MemcacheTimeoutError(
                        f"no connection within {self.timeout}s", server=self.names[slot])
                    self.health.failed(slot)
                    continue
                except MemcacheError as e:
                    refused[slot] = errors[i] = e
                    if not isinstance(e, MemcacheServerDownError):
                        self._failed(slot)
                    continue
                conns[slot] = conn
            conn.push(req, waiter)
        waiter.hit()
        if not waiter.fut.done():
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter.fut
            except TimeoutError:
                pass
        timed_out = set()
        for i, (slot, req) in enumerate(reqs):
            if errors[i] is None and req.reply is None:
                errors[i] = MemcacheTimeoutError(f"no reply within {self.timeout}s",
                                                 server=self.names[slot])
                timed_out.add(slot)
        for slot, conn in conns.items():
            if slot in timed_out or conn.closed:
                self._failed(slot)
            else:
                self.health.succeeded(slot)
        return plan.done(errors)

    def _failed(self, slot: int) -> None:
        if self.health.failed(slot):
            self.servers[slot].close()      # ejected: start afresh when it is tried again

    # -- pymemcache's calls, as coroutines (see Client for each one's meaning) ----------

    async def get(self, key: Key, default: Any = None) -> Any:
        return await self._run(self.plan_get(key, default))

    async def gets(self, key: Key, default: Any = None,
                   cas_default: Any = None) -> tuple[Any, Any]:
        return await self._run(self.plan_gets(key, default, cas_default))

    async def gat(self, key: Key, expire: int = 0, default: Any = None) -> Any:
        return await self._run(self.plan_gat(key, expire, default))

    async def gats(self, key: Key, expire: int = 0, default: Any = None,
                   cas_default: Any = None) -> tuple[Any, Any]:
        return await self._run(self.plan_gats(key, expire, default, cas_default))

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return await self._run(self.plan_get_many(keys))

    get_multi = get_many

    async def gets_many(self, keys: Iterable[Key]) -> dict[Key, tuple[Any, bytes | None]]:
        return await self._run(self.plan_get_many(keys, with_cas=True))

    async def set(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                  flags: int | None = None) -> bool:
        return await self._run(self.plan_store("set", key, value, expire, noreply, flags))

    async def add(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                  flags: int | None = None) -> bool:
        return await self._run(self.plan_store("add", key, value, expire, noreply, flags))

    async def replace(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                      flags: int | None = None) -> bool:
        return await self._run(self.plan_store("replace", key, value, expire, noreply, flags))

    async def append(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                     flags: int | None = None) -> bool:
        return await self._run(self.plan_store("append", key, value, expire, noreply, flags))

    async def prepend(self, key: Key, value: Any, expire: int = 0, noreply: bool | None = None,
                      flags: int | None = None) -> bool:
        return await self._run(self.plan_store("prepend", key, value, expire, noreply, flags))

    async def cas(self, key: Key, value: Any, cas: int | bytes | str, expire: int = 0,
                  noreply: bool | None = None, flags: int | None = None) -> bool | None:
        return await self._run(self.plan_store("cas", key, value, expire, noreply, flags, cas))

    async def set_many(self, values: Mapping[Key, Any], expire: int = 0,
                       noreply: bool | None = None) -> list[Key]:
        return await self._run(self.plan_set_many(values, expire, noreply))

    set_multi = set_many

    async def delete(self, key: Key, noreply: bool | None = None) -> bool:
        return await self._run(self.plan_delete(key, noreply))

    async def delete_many(self, keys: Iterable[Key], noreply: bool | None = None) -> bool:
        return await self._run(self.plan_delete_many(keys, noreply))

    delete_multi = delete_many

    async def incr(self, key: Key, value: int, noreply: bool = False) -> int | None:
        return await self._run(self.plan_arith(CMD_INCR, key, value, noreply))

    async def decr(self, key: Key, value: int, noreply: bool = False) -> int | None:
        return await self._run(self.plan_arith(CMD_DECR, key, value, noreply))

    async def touch(self, key: Key, expire: int = 0, noreply: bool | None = None) -> bool:
        return await self._run(self.plan_touch(key, expire, noreply))

    async def flush_all(self, delay: int = 0, noreply: bool | None = None,
                        server: str | None = None) -> bool:
        await self._run(self.plan_flush_all(delay, noreply, server))
        return True

    async def version(self, server: str | None = None) -> bytes:
        name = self.one_server(server, "version", "versions")
        return (await self._run(self.plan_version(name)))[name]

    async def versions(self) -> dict[str, bytes]:
        return await self._run(self.plan_version(None))

    async def stats(self, *args: str, server: str | None = None) -> dict[bytes, Any]:
        name = self.one_server(server, "stats", "stats_all")
        return (await self._run(self.plan_stats(args, name)))[name]

    async def stats_all(self, *args: str) -> dict[str, dict[bytes, Any]]:
        return await self._run(self.plan_stats(args, None))

    async def meta(self, request: MetaRequest) -> Any:
        return (await self._run(self.plan_meta([request])))[0]

    async def meta_many(self,
                        requests: Sequence[MetaRequest]) -> list[MetaResult | MetaDebug | None]:
        return await self._run(self.plan_meta(requests))

    # -- lifetime -----------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection; requests still out get a connection error."""
        for server in self.servers:
            server.close()
        await asyncio.sleep(0)          # let the transports finish closing

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

