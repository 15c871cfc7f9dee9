"""What a call means, apart from how it waits: the part Client and AsyncClient share.

Every public call becomes a ``Plan``: the requests to send, each with the
slot of its server, and ``done``, which turns their replies (or the error
that replaced a reply) into the call's result.  ``Client`` runs a plan
with blocking sockets, ``AsyncClient`` on an event loop; neither knows
what a command means, so the two cannot drift apart.

Health is shared too: ``Health`` counts each server's consecutive
failures (connection errors and timeouts, not the server's own error
replies) and ejects a server for ``retry_interval`` after ``tko`` of them,
like mcrouter's TKO.  While it is out its keys fail fast, or with
``on_down="rehash"`` go to the next live server on the continuum (the
router's ``on_down: rehash``); after the interval one call is let through
to try it again.
"""
from __future__ import annotations

import ssl
import time
from typing import Any, Callable, Generic, Iterable, Mapping, Sequence, TypeVar

from mcrouter._parser import Request
from mcrouter.client._fast import MULTIGET_CHUNK, group_keys, parse_get_into, parse_one
from mcrouter.client.codec import (MAX_EXPTIME, MAX_U64, STORE_CMDS, RawSerde, Serde, check_int,
                                   serde_of,
                                   error_of, get_request, key_bytes, line_error, line_request,
                                   parse_stats, plain, reply_of, stats_request, store_request)
from mcrouter.client.errors import (MemcacheConnectionError, MemcacheError,
                                    MemcacheIllegalInputError, MemcachePartialError, MemcacheServerDownError,
                                    MemcacheTimeoutError)
from mcrouter.client.meta import MetaRequest
from mcrouter.client.placement import Placement, Server
from mcrouter.protocol import (CMD_CAS, CMD_DELETE, CMD_FLUSH_ALL, CMD_GAT, CMD_GATS,
                               CMD_GET, CMD_GETS, CMD_INCR, CMD_TOUCH, CMD_VERSION)

T = TypeVar("T")
Key = str | bytes
Errors = list[MemcacheError | None]
# MULTIGET_CHUNK (_fast's): keys per get line: bounded lines, still one write per server
MAX_SECONDS = 365 * 86400       # the longest timeout or interval a client takes (a year)


class Plan(Generic[T]):
    """Requests (server slot, Request) and how their replies make the result.
    ``done(errors)`` gets, per request, None if it was answered (its reply is
    on the Request) or the error that stands for its reply."""

    __slots__ = ("reqs", "done")

    def __init__(self, reqs: list[tuple[int, Request]], done: Callable[[Errors], T]) -> None:
        self.reqs = reqs
        self.done = done


class Health:
    """Consecutive failures per server, and which servers are ejected."""

    def __init__(self, n: int, tko: int, retry_interval: float) -> None:
        self.tko = max(1, tko)
        self.retry_interval = retry_interval
        self.fails = [0] * n
        self.down_until = [0.0] * n
        self.up = bytearray(b"\x01" * n)      # the Hasher's up mask (index_up)
        self.all_up = True

    def usable(self, slot: int) -> bool:
        """Up, or out long enough to be tried again (one more failure ejects it again)."""
        if self.up[slot]:
            return True
        if time.monotonic() >= self.down_until[slot]:
            self.up[slot] = 1
            self.all_up = all(self.up)
            self.fails[slot] = self.tko - 1
            return True
        return False

    def failed(self, slot: int) -> bool:
        """Count a failure; True if this one ejects the server."""
        self.fails[slot] += 1
        if self.fails[slot] >= self.tko and self.up[slot]:
            self.up[slot] = 0
            self.all_up = False
            self.down_until[slot] = time.monotonic() + self.retry_interval
            return True
        return False

    def succeeded(self, slot: int) -> None:
        self.fails[slot] = 0


class Reconnect:
    """Backoff between connect attempts to one server: after a failed
    connect the next is not tried before the backoff has passed (doubling
    from ``initial`` up to ``ceiling``), and calls fail at once meanwhile."""

    def __init__(self, name: str, initial: float, ceiling: float) -> None:
        self.name = name
        self.initial = initial
        self.ceiling = ceiling
        self.backoff = 0.0
        self.retry_at = 0.0
        self.last_error = ""

    def check(self) -> None:
        now = time.monotonic()
        if now < self.retry_at:
            raise MemcacheConnectionError(f"reconnecting in {self.retry_at - now:.2f}s after: "
                                          f"{self.last_error}", server=self.name)

    def failed(self, e: BaseException) -> MemcacheError:
        """Note a failed connect; the error to raise for it."""
        self.last_error = str(e) or type(e).__name__
        self.backoff = min(self.ceiling, max(self.initial, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        kind = MemcacheTimeoutError if isinstance(e, TimeoutError) else MemcacheConnectionError
        return kind(f"connect failed: {self.last_error}", server=self.name)

    def connected(self) -> None:
        self.backoff = 0.0


class Commands:
    """The calls, as plans; a client subclass adds the running of them."""

    def __init__(self, servers: Sequence[Server] | Placement, *,
                 hash: Mapping[str, Any] | None = None, weights: Sequence[int] | None = None,
                 on_down: str = "fail", key_prefix: str | bytes = b"",
                 serde: Serde | None = None, serializer: Any = None, deserializer: Any = None,
                 default_noreply: bool = False, ignore_exc: bool = False,
                 connect_timeout: float = 1.0, timeout: float = 1.0,
                 tko: int = 3, retry_interval: float = 5.0, backoff_initial: float = 0.05,
                 tls_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        """The options both clients take (Client's docstring says what they mean)."""
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout),
                            ("retry_interval", retry_interval),
                            ("backoff_initial", backoff_initial)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value <= MAX_SECONDS:
                raise MemcacheIllegalInputError(
                    f"{name}={value!r}: give seconds above 0 and at most {MAX_SECONDS}")
        check_int(tko, "tko", 1_000_000, 1)
        placement = servers if isinstance(servers, Placement) else \
            Placement.from_values(servers, hash, weights, on_down)
        serde = serde_of(serde, serializer, deserializer)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.backoff_initial = backoff_initial
        self.tls_context = tls_context
        self.server_hostname = server_hostname
        self.placement = placement
        self.names = [str(a) for a in placement.servers]
        self.key_prefix = key_prefix.encode() if isinstance(key_prefix, str) else key_prefix
        self.serde = serde
        # None: values are the bytes as stored (no call per value)
        self.deserialize = None if type(serde) is RawSerde else serde.deserialize
        self.default_noreply = default_noreply
        self.ignore_exc = ignore_exc
        self.health = Health(len(self.names), tko, retry_interval)

    # -- placement --------------------------------------------------------------

    def slot(self, key: bytes) -> int:
        """The server of a key as sent: the router's placement, and with
        ``on_down="rehash"`` the next live server while its own is out."""
        i = self.placement.index(key)
        h = self.health
        if h.all_up or not self.placement.rehash or h.up[i] or h.usable(i):
            return i
        j = self.placement.index_up(key, bytes(h.up))
        return i if j < 0 else j

    def check_up(self, slot: int) -> None:
        """MemcacheServerDownError while ``slot`` is ejected."""
        h = self.health
        if not h.usable(slot):
            raise MemcacheServerDownError(
                f"ejected after {h.tko} failures in a row; tried again in "
                f"{h.down_until[slot] - time.monotonic():.2f}s", server=self.names[slot])

    timeout: float

    def _failed(self, slot: int) -> None:
        raise NotImplementedError       # the client's: count, and close its connections on ejection

    def settle_one(self, slot: int, req: Request, closed: bool) -> MemcacheError | None:
        """After a one-request call's wait: the server's health, and the
        error standing for the reply if none came in time."""
        if req.reply is None:
            self._failed(slot)
            return MemcacheTimeoutError(f"no reply within {self.timeout}s",
                                        server=self.names[slot])
        if closed:
            self._failed(slot)
        else:
            self.health.succeeded(slot)
        return None

    def _key(self, key: Key) -> bytes:
        return key_bytes(key, self.key_prefix)

    def _noreply(self, noreply: bool | None) -> bool:
        return self.default_noreply if noreply is None else noreply

    def _data(self, key: Key, value: Any) -> tuple[bytes, int]:
        data, flags = self.serde.serialize(key, value)
        if not isinstance(data, bytes):
            raise MemcacheIllegalInputError(f"serde gave {type(data).__name__} for {key!r}: "
                                            "serialize must return (bytes, int)")
        return data, check_int(flags, "client flags", 2**32 - 1)

    def _one(self, key: bytes, req: Request, decode: Callable[[Request, str], T],
             default: Any = None) -> Plan[T]:
        slot = self.slot(key)
        server = self.names[slot]

        def done(errors: Errors) -> T:
            err = errors[0] or error_of(req, server)
            if err is not None:
                if self.ignore_exc:
                    return default
                raise err
            return decode(req, server)
        return Plan([(slot, req)], done)

    # -- retrieval ----------------------------------------------------------------

    def _fetch(self, cmd: int, key: Key, exptime: int | None, default: Any,
               with_cas: bool, cas_default: Any = None) -> Plan[Any]:
        k = self._key(key)
        req = get_request(cmd, [k], exptime)

        def decode(req: Request, server: str) -> Any:
            got = parse_one(reply_of(req))
            if got is None:
                return (default, cas_default) if with_cas else default
            if isinstance(got, int):
                err = line_error(reply_of(req), server, got)
                if err is not None:
                    raise err
                return (default, cas_default) if with_cas else default
            flags, data, cas = got
            value = data if self.deserialize is None else self.deserialize(key, data, flags)
            return (value, cas) if with_cas else value
        return self._one(k, req, decode, (default, cas_default) if with_cas else default)

    def plan_get(self, key: Key, default: Any = None) -> Plan[Any]:
        return self._fetch(CMD_GET, key, None, default, False)

    def plan_gets(self, key: Key, default: Any = None, cas_default: Any = None) -> Plan[Any]:
        return self._fetch(CMD_GETS, key, None, default, True, cas_default)

    def plan_gat(self, key: Key, expire: int, default: Any = None) -> Plan[Any]:
        return self._fetch(CMD_GAT, key, check_int(expire, "expire", MAX_EXPTIME), default,
                           False)

    def plan_gats(self, key: Key, expire: int, default: Any = None,
                  cas_default: Any = None) -> Plan[Any]:
        return self._fetch(CMD_GATS, key, check_int(expire, "expire", MAX_EXPTIME), default,
                           True, cas_default)

    def _by_server(self, keys: Iterable[Key]) -> tuple[dict[bytes, Key], dict[int, list[bytes]]]:
        """Keys as sent → as given, and the keys of each server (each once),
        checked and placed in one compiled call (``_fast.group_keys``)."""
        p = self.placement
        slot = None if self.health.all_up or not p.rehash else self.slot
        given, lists = group_keys(keys, self.key_prefix, None if p.single else p.hasher,
                                  len(self.names), slot, key_bytes)
        return given, {i: ks for i, ks in enumerate(lists) if ks}

    def _failed_keys(self, reqs: list[tuple[int, Request]], errors: Errors,
                     given: Mapping[bytes, Key]) -> tuple[dict[Key, MemcacheError], list[bool]]:
        """The error of each key of a request that got no usable reply."""
        failed: dict[Key, MemcacheError] = {}
        bad = []
        for (slot, req), err in zip(reqs, errors):
            err = err or error_of(req, self.names[slot])
            bad.append(err is not None)
            if err is not None:
                for k in (req.keys or [req.key]):
                    failed[given[k]] = err
        return failed, bad

    def _partial(self, result: T, failed: dict[Key, MemcacheError]) -> T:
        if failed and not self.ignore_exc:
            raise MemcachePartialError(result, failed)
        return result

    def plan_get_many(self, keys: Iterable[Key], with_cas: bool = False,
                      expire: int | None = None) -> Plan[dict[Key, Any]]:
        """One get line per server (per MULTIGET_CHUNK keys), merged per key."""
        given, groups = self._by_server(keys)
        if expire is not None:
            check_int(expire, "expire", MAX_EXPTIME)
        return self.plan_get_groups(given, groups, with_cas, expire)

    def plan_get_groups(self, given: dict[bytes, Key], groups: Mapping[int, list[bytes]],
                        with_cas: bool, expire: int | None = None) -> Plan[dict[Key, Any]]:
        """plan_get_many once its keys are placed (``_by_server``'s result; the
        blocking client's fast path hands its grouping over here)."""
        cmd = (CMD_GETS if with_cas else CMD_GET) if expire is None else \
            (CMD_GATS if with_cas else CMD_GAT)
        reqs = [(slot, get_request(cmd, ks[i:i + MULTIGET_CHUNK], expire))
                for slot, ks in groups.items() if ks
                for i in range(0, len(ks), MULTIGET_CHUNK)]
        return self.plan_get_reqs(given, reqs, with_cas)

    def plan_get_reqs(self, given: dict[bytes, Key], reqs: list[tuple[int, Request]],
                      with_cas: bool) -> Plan[dict[Key, Any]]:
        """The plan of get requests already built (here, or by _fast.get_many)."""

        def done(errors: Errors) -> dict[Key, Any]:
            out: dict[Key, Any] = {}
            failed, bad = self._failed_keys(reqs, errors, given)
            for (slot, req), b in zip(reqs, bad):
                if b:
                    continue
                reply = reply_of(req)
                at = parse_get_into(reply, given, out, self.deserialize, with_cas, req.keys)
                if at >= 0:
                    e = line_error(reply, self.names[slot], at)
                    if e is not None:           # an error line after some values
                        for k in (req.keys or [req.key]):
                            out.pop(given[k], None)
                            failed[given[k]] = e
            return self._partial(out, failed)
        return Plan(reqs, done)

    # -- storage --------------------------------------------------------------------

    def plan_store(self, name: str, key: Key, value: Any, expire: int, noreply: bool | None,
                   flags: int | None = None, cas: int | bytes | str | None = None) -> Plan[Any]:
        k = self._key(key)
        data, dflags = self._data(key, value)
        if flags is not None:
            dflags = check_int(flags, "flags", 2**32 - 1)
        cmd = STORE_CMDS[name]
        quiet = self._noreply(noreply) and cmd != CMD_CAS
        casv = None
        if cmd == CMD_CAS:
            if isinstance(cas, (bytes, str)) and cas.isascii() and cas.isdigit():
                cas = int(cas)                  # as gets gave it (pymemcache's bytes)
            casv = check_int(cas, "cas unique", MAX_U64)  # type: ignore[arg-type]
        req = store_request(cmd, k, data, dflags, check_int(expire, "expire", MAX_EXPTIME),
                            quiet, casv)

        def decode(req: Request, server: str) -> Any:
            reply = req.reply
            if quiet:
                return True
            if cmd == CMD_CAS:
                return True if reply == b"STORED\r\n" else \
                    (False if reply == b"EXISTS\r\n" else None)
            return reply == b"STORED\r\n"
        return self._one(k, req, decode, False)

    def plan_set_many(self, values: Mapping[Key, Any], expire: int,
                      noreply: bool | None) -> Plan[list[Key]]:
        """Every set pipelined, per server; the keys not stored (pymemcache's return)."""
        quiet = self._noreply(noreply)
        exp = check_int(expire, "expire", MAX_EXPTIME)
        given: dict[bytes, Key] = {}
        reqs: list[tuple[int, Request]] = []
        for key, value in values.items():
            k = self._key(key)
            data, flags = self._data(key, value)
            given[k] = key
            reqs.append((self.slot(k), store_request(STORE_CMDS["set"], k, data, flags, exp,
                                                     quiet)))
        reqs.sort(key=lambda r: r[0])

        def done(errors: Errors) -> list[Key]:
            failed, bad = self._failed_keys(reqs, errors, given)
            not_stored = [given[req.key] for (_, req), b in zip(reqs, bad)
                          if not b and not quiet and req.reply != b"STORED\r\n"]
            if self.ignore_exc:
                not_stored += list(failed)
            return self._partial(not_stored, failed)
        return Plan(reqs, done)

    def plan_delete(self, key: Key, noreply: bool | None) -> Plan[bool]:
        k = self._key(key)
        quiet = self._noreply(noreply)
        req = line_request(CMD_DELETE, k, b"delete " + k, quiet)
        return self._one(k, req, lambda r, s: quiet or r.reply == b"DELETED\r\n", False)

    def plan_delete_many(self, keys: Iterable[Key], noreply: bool | None) -> Plan[bool]:
        quiet = self._noreply(noreply)
        given, groups = self._by_server(keys)
        reqs = [(slot, line_request(CMD_DELETE, k, b"delete " + k, quiet))
                for slot, ks in groups.items() for k in ks]

        def done(errors: Errors) -> bool:
            failed, _ = self._failed_keys(reqs, errors, given)
            return self._partial(True, failed)
        return Plan(reqs, done)

    def plan_arith(self, cmd: int, key: Key, value: int, noreply: bool) -> Plan[int | None]:
        k = self._key(key)
        name = b"incr" if cmd == CMD_INCR else b"decr"
        req = line_request(cmd, k, b"%s %s %d" % (name, k, check_int(value, "delta", MAX_U64)),
                           noreply)

        def decode(r: Request, server: str) -> int | None:
            if noreply or r.reply == b"NOT_FOUND\r\n":
                return None
            return int(reply_of(r))
        return self._one(k, req, decode)

    def plan_touch(self, key: Key, expire: int, noreply: bool | None) -> Plan[bool]:
        k = self._key(key)
        quiet = self._noreply(noreply)
        req = line_request(CMD_TOUCH, k, b"touch %s %d" % (k, check_int(expire, "expire",
                                                                         MAX_EXPTIME)), quiet)
        return self._one(k, req, lambda r, s: quiet or r.reply == b"TOUCHED\r\n", False)

    # -- every server -------------------------------------------------------------

    def _slots(self, server: str | None) -> list[int]:
        if server is None:
            return list(range(len(self.names)))
        if server not in self.names:
            raise MemcacheIllegalInputError(f"server {server!r} is not one of this client's: "
                                            + ", ".join(self.names))
        return [self.names.index(server)]

    def _each(self, make: Callable[[], Request], server: str | None,
              decode: Callable[[Request, str], T]) -> Plan[dict[str, T]]:
        """The same request to every server (or one): {server: result}."""
        reqs = [(slot, make()) for slot in self._slots(server)]

        def done(errors: Errors) -> dict[str, T]:
            out: dict[str, T] = {}
            failed: dict[Any, MemcacheError] = {}
            for (slot, req), err in zip(reqs, errors):
                name = self.names[slot]
                err = err or error_of(req, name)
                if err is not None:
                    if len(reqs) == 1:
                        raise err
                    failed[name] = err
                else:
                    out[name] = decode(req, name)
            return self._partial(out, failed)
        return Plan(reqs, done)

    def plan_flush_all(self, delay: int, noreply: bool | None,
                       server: str | None) -> Plan[dict[str, bool]]:
        quiet = self._noreply(noreply)
        line = b"flush_all %d" % check_int(delay, "delay", MAX_EXPTIME)
        return self._each(lambda: line_request(CMD_FLUSH_ALL, b"", line, quiet), server,
                          lambda r, s: True)

    def one_server(self, server: str | None, call: str, every: str) -> str:
        """The server a one-server call (``version``, ``stats``) asks: the
        one named, or the client's only one; with several, naming one is
        required rather than silently asking the first."""
        if server is not None or len(self.names) == 1:
            return server or self.names[0]
        raise MemcacheIllegalInputError(f"{call}(): this client has {len(self.names)} servers; "
                                        f"name one with server=, or call {every}()")

    def plan_version(self, server: str | None) -> Plan[dict[str, bytes]]:
        return self._each(lambda: line_request(CMD_VERSION, b"", b"version"), server,
                          lambda r, s: reply_of(r)[8:-2])

    def plan_stats(self, args: tuple[str, ...],
                   server: str | None) -> Plan[dict[str, dict[bytes, Any]]]:
        for a in args:
            if not isinstance(a, str) or not a or not a.isascii() or not plain(a.encode()):
                raise MemcacheIllegalInputError(f"stats argument {a!r}: one word (ASCII, "
                                                "no space or control byte)")
        return self._each(lambda: stats_request(args), server,
                          lambda r, s: parse_stats(reply_of(r)))

    # -- meta ------------------------------------------------------------------------

    def plan_meta(self, requests: Sequence[MetaRequest]) -> Plan[list[Any]]:
        """Meta requests pipelined (each to its key's server), results in order:
        a MetaResult (MetaDebug or None for me), or the request's error when
        ``return_errors``-style partial failure applies."""
        built: list[tuple[int, Request]] = []
        for m in requests:
            placed, req = m.build(self.key_prefix)
            built.append((self.slot(placed) if placed else 0, req))

        def done(errors: Errors) -> list[Any]:
            out: list[Any] = []
            failed: dict[Any, MemcacheError] = {}
            for i, ((slot, req), err, m) in enumerate(zip(built, errors, requests)):
                name = self.names[slot]
                err = err or error_of(req, name)
                if err is None:
                    try:
                        out.append(m.decode(req, name))
                        continue
                    except MemcacheError as e:
                        err = e
                if len(requests) == 1:
                    raise err
                failed[i] = err
                out.append(err)
            return self._partial(out, failed)
        return Plan(built, done)

