"""Requests as the router's engine carries them, and replies as Python values.

A request is the router's own ``Request`` (``_parser.pyx``): its command,
its reply kind, its key(s) and the exact bytes to send.  The connection's
``Ring`` (``_ring.pyx``) queues it, writes it and cuts its reply out of
the stream with the compiled ``scan_reply``, checking that the reply can
answer that command; what is left here is turning a complete, checked
reply into a value.

A quiet request (text ``noreply``, meta ``q``) is sent followed by
``mn\\r\\n``, as the router sends it: memcached then answers exactly what
it did not suppress (an error, a miss) and ``MN``, so a quiet request
still has a reply to match and can still report its error.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Protocol, cast

from mcrouter._parser import Request
from mcrouter.client.errors import (MemcacheClientError, MemcacheConnectionError,
                                    MemcacheError, MemcacheIllegalInputError,
                                    MemcacheProtocolError, MemcacheServerError,
                                    MemcacheUnknownCommandError)
from mcrouter.protocol import (CMD_ADD, CMD_APPEND, CMD_CAS, CMD_GAT, CMD_GATS, CMD_GET, CMD_GETS, CMD_PREPEND, CMD_REPLACE, CMD_SET, CMD_STATS, REPLY_TOO_LARGE, RK_GET, RK_LINE, RK_QUIET,
                               RK_STATS, ST_ERROR)

KEY_MAX = 250
MN = b"mn\r\n"
MAX_EXPTIME = 2**31 - 1
MAX_FLAGS = 2**32 - 1
MAX_U64 = 2**64 - 1
# a reply of ours, never of a server: what a request lost with its connection is answered
LOST_PREFIX = b"\x00lost "
PROTOCOL_ERROR = "protocol error: "     # what a connection dropped for garbage says it lost

STORE_CMDS = {"set": CMD_SET, "add": CMD_ADD, "replace": CMD_REPLACE, "append": CMD_APPEND,
              "prepend": CMD_PREPEND, "cas": CMD_CAS}
_BAD_KEY_BYTES = bytes(range(33)) + b"\x7f"


def text_bytes(key: str | bytes) -> bytes:
    """A key's bytes: a str as UTF-8 (one with a lone surrogate has none)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        try:
            return key.encode()
        except UnicodeEncodeError:
            raise MemcacheIllegalInputError(f"key {key!r} is not UTF-8 text: give bytes") \
                from None
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise MemcacheIllegalInputError(f"key of type {type(key).__name__}: give str or bytes")


def plain(token: bytes) -> bool:
    """No space or control byte: what memcached reads as one token of a line
    (a NUL ends its line there; a CR or LF starts another command)."""
    return len(token.translate(None, _BAD_KEY_BYTES)) == len(token)


def key_bytes(key: str | bytes, prefix: bytes = b"") -> bytes:
    """The key as sent (prefix included), or MemcacheIllegalInputError when
    the text protocol cannot carry it: empty (before the prefix), over 250 bytes, or with a
    space or control byte (memcached would read the rest as another command)."""
    raw = text_bytes(key)
    k = prefix + raw
    if not raw or len(k) > KEY_MAX:
        raise MemcacheIllegalInputError(f"key of {len(k)} bytes: a key has 1 to {KEY_MAX} "
                                        f"bytes: {k[:60]!r}")
    if not plain(k):
        raise MemcacheIllegalInputError(f"key {k[:60]!r} has a space or control byte; "
                                        "use the meta API with base64=True for binary keys")
    return k


def check_int(value: int, what: str, top: int, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= top:
        raise MemcacheIllegalInputError(f"{what} {value!r} is not an integer from {low} to {top}")
    return value


def request(cmd: int, rkind: int, key: bytes, wire: bytes,
            keys: list[bytes] | None = None) -> Request:
    """A Request for the Ring: ``wire`` is sent as is, ``key``/``keys`` are
    what a get's VALUE lines are checked against."""
    r = Request()
    r.cmd = cmd
    r.rkind = rkind
    r.key = key
    r.keys = keys
    r.wire = wire
    return r


# -- text requests ------------------------------------------------------------

GET_HEADS = {CMD_GET: b"get ", CMD_GETS: b"gets ", CMD_GAT: b"gat ", CMD_GATS: b"gats "}


def get_request(cmd: int, keys: list[bytes], exptime: int | None = None) -> Request:
    """``get``/``gets`` (``gat``/``gats`` with ``exptime``) of one or more keys."""
    head = GET_HEADS[cmd]
    if exptime is not None:
        head += b"%d " % exptime
    r = Request()
    r.cmd = cmd
    r.rkind = RK_GET
    r.key = keys[0]
    r.keys = keys if len(keys) > 1 else None
    r.wire = head + b" ".join(keys) + b"\r\n"
    return r


def store_request(cmd: int, key: bytes, data: bytes, flags: int, exptime: int, noreply: bool,
                  cas: int | None = None) -> Request:
    name = {CMD_SET: b"set", CMD_ADD: b"add", CMD_REPLACE: b"replace", CMD_APPEND: b"append",
            CMD_PREPEND: b"prepend", CMD_CAS: b"cas"}[cmd]
    head = b"%s %s %d %d %d" % (name, key, flags, exptime, len(data))
    if cas is not None:
        head += b" %d" % cas
    if noreply:
        return request(cmd, RK_QUIET, key, b"%s noreply\r\n%s\r\n%s" % (head, data, MN))
    return request(cmd, RK_LINE, key, b"%s\r\n%s\r\n" % (head, data))


def line_request(cmd: int, key: bytes, line: bytes, noreply: bool = False) -> Request:
    """A one-line command (delete, incr, decr, touch, flush_all, version)."""
    if noreply:
        return request(cmd, RK_QUIET, key, line + b" noreply\r\n" + MN)
    return request(cmd, RK_LINE, key, line + b"\r\n")


def stats_request(args: tuple[str, ...]) -> Request:
    line = b" ".join([b"stats", *(a.encode() for a in args)])
    return request(CMD_STATS, RK_STATS, b"", line + b"\r\n")


# -- replies --------------------------------------------------------------------

def reply_of(req: Request) -> bytes:
    """An answered request's reply (the Ring has set it: never None here)."""
    return cast(bytes, req.reply)


def error_of(req: Request, server: str) -> MemcacheError | None:
    """The error a reply stands for, or None if it is a reply of the command."""
    reply = reply_of(req)
    if req.status == ST_ERROR:
        if reply.startswith(LOST_PREFIX):
            why = reply[len(LOST_PREFIX):].decode(errors="replace")
            kind = MemcacheProtocolError if why.startswith(PROTOCOL_ERROR) else \
                MemcacheConnectionError
            return kind(why, server=server)
        if reply == REPLY_TOO_LARGE:
            return MemcacheServerError("reply larger than the client's max_reply",
                                       server=server)
        return MemcacheServerError(reply.decode(errors="replace").strip(), server=server)
    return line_error(reply, server)


def line_error(reply: bytes, server: str, at: int = 0) -> MemcacheError | None:
    """MemcacheError for an ``ERROR``/``CLIENT_ERROR``/``SERVER_ERROR`` line at ``at``."""
    c = reply[at:at + 1]
    if c not in (b"E", b"C", b"S"):
        return None
    end = reply.find(b"\r\n", at)
    line = reply[at:end]
    if line == b"ERROR" or line.startswith(b"ERROR "):
        text = line[6:].decode(errors="replace")
        return MemcacheUnknownCommandError("ERROR" + (f" {text}" if text else "")
                                           + ": the server does not know this command",
                                           server=server, text=text)
    if line.startswith(b"CLIENT_ERROR "):
        text = line[13:].decode(errors="replace")
        return MemcacheClientError(f"CLIENT_ERROR {text}", server=server, text=text)
    if line.startswith(b"SERVER_ERROR "):
        text = line[13:].decode(errors="replace")
        return MemcacheServerError(f"SERVER_ERROR {text}", server=server, text=text)
    return None


def parse_values(reply: bytes, server: str) -> list[tuple[bytes, int, bytes, bytes | None]]:
    """A get-family reply (checked by scan_reply) as [(key, flags, data, cas)];
    cas is the unique as sent (bytes, as pymemcache gives it), None for
    get/gat.  An error line raises."""
    out = []
    pos = 0
    find = reply.find
    while reply.startswith(b"VALUE ", pos):
        le = find(b"\r\n", pos)
        parts = reply[pos + 6:le].split(b" ")
        n = int(parts[2])
        out.append((parts[0], int(parts[1]), reply[le + 2:le + 2 + n],
                    parts[3] if len(parts) > 3 else None))
        pos = le + 4 + n
    if not reply.startswith(b"END\r\n", pos):
        err = line_error(reply, server, pos)
        if err is not None:
            raise err
    return out


def _bool_int(v: bytes) -> bool:
    return int(v) != 0


# pymemcache's conversions of stats values (its STAT_TYPES): named ones here,
# every other value an int where it parses as one, else the bytes sent.
STAT_TYPES: dict[bytes, Callable[[bytes], Any]] = {
    b"version": bytes, b"inter": bytes, b"stat_key_prefix": bytes,
    b"rusage_user": lambda v: float(v.replace(b":", b".")),
    b"rusage_system": lambda v: float(v.replace(b":", b".")),
    b"growth_factor": float,
    b"umask": lambda v: int(v, 8),
    b"auth_enabled_sasl": lambda v: v == b"yes",
    **{name: _bool_int for name in (b"hash_is_expanding", b"slab_reassign_running",
                                    b"detail_enabled", b"cas_enabled", b"maxconns_fast",
                                    b"slab_reassign", b"slab_automove")},
}


def parse_stats(reply: bytes) -> dict[bytes, Any]:
    """STAT/ITEM/PREFIX lines as {name: value}, names as bytes and values
    converted as pymemcache's ``stats`` converts them (STAT_TYPES)."""
    out: dict[bytes, Any] = {}
    for line in reply.split(b"\r\n"):
        if line.startswith((b"STAT ", b"ITEM ", b"PREFIX ")):
            _, name, value = (line.split(b" ", 2) + [b""])[:3]
            try:
                out[name] = STAT_TYPES.get(name, int)(value)
            except ValueError:
                out[name] = value
    return out


# -- values ---------------------------------------------------------------------

class Serde(Protocol):
    """pymemcache's serializer/deserializer pair: a value to (bytes, flags)
    on the way in, (bytes, flags) back to a value on the way out."""

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]: ...

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any: ...


class RawSerde:
    """The default: bytes as they are, str as UTF-8, int and float as their
    text (as memcached's incr stores numbers); values come back as bytes."""

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        if isinstance(value, bytes):
            return value, 0
        if isinstance(value, str):
            return value.encode(), 0
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value).encode(), 0
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value), 0
        raise MemcacheIllegalInputError(f"value of type {type(value).__name__} for key "
                                        f"{key!r}: give bytes or str, or a serde")

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        return value


# pymemcache's flag bits, so that values written by either client read back in the other
FLAG_BYTES = 0
FLAG_PICKLE = 1 << 0
FLAG_INTEGER = 1 << 1
FLAG_TEXT = 1 << 4


class PickleSerde:
    """bytes, str and int stored as themselves (flagged), anything else pickled."""

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        if isinstance(value, bytes):
            return value, FLAG_BYTES
        if isinstance(value, str):
            return value.encode(), FLAG_TEXT
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value).encode(), FLAG_INTEGER
        return pickle.dumps(value, self.protocol), FLAG_PICKLE

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if flags & FLAG_PICKLE:
            return pickle.loads(value)
        if flags & FLAG_INTEGER:
            return int(value)
        if flags & FLAG_TEXT:
            return value.decode()
        return value


def serde_of(serde: Serde | None, serializer: Callable[[Any, Any], tuple[bytes, int]] | None,
             deserializer: Callable[[Any, bytes, int], Any] | None) -> Serde:
    """pymemcache's ``serde`` object, or its older ``serializer``/``deserializer`` pair."""
    if serde is not None:
        return serde
    if serializer is None and deserializer is None:
        return RawSerde()
    raw = RawSerde()

    class _Pair:
        def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
            return serializer(key, value) if serializer else raw.serialize(key, value)

        def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
            return deserializer(key, value, flags) if deserializer else value

    return _Pair()

