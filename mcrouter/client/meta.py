"""The meta protocol (mg, ms, md, ma, mn, me) as memcached 1.6.18 speaks it.

Each command's flags are keyword arguments (``mg(key, cas=True, ttl=True)``
sends ``mg <key> v c t``); what comes back is a ``MetaResult`` with the
return code, the value and the returned flags, typed (``result.cas`` is an
int).  ``extra`` takes raw flag tokens for what a newer server knows
(``E<cas>``, md ``x``: 1.6.27).

Quiet mode (``quiet=True``, flag ``q``) is sent followed by ``mn``: what
memcached suppresses (mg's EN, ms/md's HD, every ma success) comes back as
a result with that code and ``quiet=True``; an error or a failed condition
still arrives and is returned.  Base64 keys (``base64=True``): the key is
sent base64 (``b``) so any bytes are a key, and is placed by its raw bytes,
as the router places it.
"""
from __future__ import annotations

import base64 as b64
from dataclasses import dataclass, field
from typing import Sequence

from mcrouter._parser import Request
from mcrouter.client.codec import KEY_MAX, MAX_EXPTIME, MAX_FLAGS, MAX_U64, MN, \
    check_int, key_bytes, line_error, plain, reply_of, request, text_bytes
from mcrouter.client.errors import MemcacheIllegalInputError, MemcacheProtocolError
from mcrouter.protocol import CMD_MA, CMD_MD, CMD_ME, CMD_MG, CMD_MN, CMD_MS, RK_META, RK_QUIET

OPAQUE_MAX = 31             # memcached: 32 bytes with the O
# memcached 1.6.18 refuses an ms with more flag tokens ("options flags too
# long") before it knows to swallow the data block, and runs the data as a command
MS_FLAGS_MAX = 16
MS_MODES = {"set": b"S", "add": b"E", "replace": b"R", "append": b"A", "prepend": b"P"}
MA_MODES = {"incr": b"I", "decr": b"D"}
_CODES = ("HD", "VA", "EN", "NF", "NS", "EX", "MN", "ME")


@dataclass(frozen=True, slots=True)
class MetaResult:
    """One meta reply: ``status`` is its code (HD VA EN NF NS EX MN),
    ``value`` the data of a VA, ``flags`` the returned flags as
    {letter: token} (``""`` for a bare flag: W, X, Z, b).  ``quiet`` says
    the server sent nothing (q) and ``status`` is what it suppressed."""

    status: str
    value: bytes | None = None
    flags: dict[str, str] = field(default_factory=dict)
    quiet: bool = False

    @property
    def ok(self) -> bool:
        """Found, stored, deleted, incremented: HD or VA."""
        return self.status in ("HD", "VA")

    @property
    def miss(self) -> bool:
        return self.status in ("EN", "NF")

    def _int(self, flag: str) -> int | None:
        token = self.flags.get(flag)
        return int(token) if token else None

    @property
    def cas(self) -> int | None:
        """``c``: the item's CAS unique."""
        return self._int("c")

    @property
    def ttl(self) -> int | None:
        """``t``: seconds left, -1 for no expiry."""
        return self._int("t")

    @property
    def client_flags(self) -> int | None:
        """``f``: the item's client flags."""
        return self._int("f")

    @property
    def size(self) -> int | None:
        """``s``: the item's value size."""
        return self._int("s")

    @property
    def last_access(self) -> int | None:
        """``l``: seconds since the item was last accessed (before this request)."""
        return self._int("l")

    @property
    def hit_before(self) -> bool | None:
        """``h``: whether the item had been fetched before this request."""
        token = self.flags.get("h")
        return None if token is None else token == "1"

    @property
    def key(self) -> bytes | None:
        """``k``: the key, decoded when it came base64 (``b``)."""
        token = self.flags.get("k")
        if token is None:
            return None
        return b64.b64decode(token) if "b" in self.flags else token.encode()

    @property
    def opaque(self) -> str | None:
        """``O``: the opaque token sent with the request."""
        return self.flags.get("O")

    @property
    def won(self) -> bool:
        """``W``: this client won the right to recache the item."""
        return "W" in self.flags

    @property
    def stale(self) -> bool:
        """``X``: the item is stale (invalidated)."""
        return "X" in self.flags

    @property
    def win_sent(self) -> bool:
        """``Z``: another client already holds the recache win."""
        return "Z" in self.flags

    @property
    def number(self) -> int | None:
        """An ma with ``v``: the new value."""
        return int(self.value) if self.value is not None else None


@dataclass(frozen=True, slots=True)
class MetaDebug:
    """``me``'s reply: the key (as sent) and its fields (exp, la, cas, fetch, cls, size)."""

    key: bytes
    fields: dict[str, str]


def wire_key(key: str | bytes, prefix: bytes, base64: bool) -> tuple[bytes, bytes]:
    """(the key as placed: prefix and raw bytes, the key as sent)."""
    key = text_bytes(key)
    if not key:         # the prefix alone would be a key no text call can name
        raise MemcacheIllegalInputError(f"key of 0 bytes: a key has 1 to {KEY_MAX} bytes")
    raw = prefix + key
    if not base64:
        return key_bytes(raw), raw
    sent = b64.b64encode(raw)
    if not raw or len(sent) > KEY_MAX:
        raise MemcacheIllegalInputError(f"key of {len(raw)} bytes is {len(sent)} in base64: "
                                        f"a key has 1 to {KEY_MAX} bytes as sent")
    return raw, sent


class Flags:
    """The flag tokens of one meta request, checked as they are added."""

    def __init__(self, base64: bool, quiet: bool, opaque: str | bytes | None,
                 extra: Sequence[str | bytes]) -> None:
        self.tokens: list[bytes] = []
        if base64:
            self.tokens.append(b"b")
        if opaque is not None:
            token = opaque.encode() if isinstance(opaque, str) else opaque
            if not 0 < len(token) <= OPAQUE_MAX or not plain(token):
                raise MemcacheIllegalInputError(f"opaque {opaque!r}: 1 to {OPAQUE_MAX} bytes, "
                                                "no space or control byte")
            self.tokens.append(b"O" + token)
        for t in extra:
            token = t.encode() if isinstance(t, str) else t
            # a control byte: memcached reads the line as a C string (a NUL ends it)
            if not token or not plain(token):
                raise MemcacheIllegalInputError(f"meta flag token {t!r}: one token, no space "
                                                "or control byte")
            if token.startswith(b"q"):      # unframed, a suppressed reply shifts every later one
                raise MemcacheIllegalInputError("meta flag q in extra: use quiet=True "
                                                "(q is sent with an mn)")
            self.tokens.append(token)
        self.quiet = quiet

    def bare(self, on: bool, letter: bytes) -> None:
        if on:
            self.tokens.append(letter)

    def number(self, value: int | None, letter: bytes, what: str, top: int, low: int = 0) -> None:
        if value is not None:
            self.tokens.append(letter + b"%d" % check_int(value, what, top, low))

    def line(self, head: bytes, most: int = 0) -> bytes:
        """The request line; more than ``most`` flag tokens (if given) are refused."""
        tokens = [*self.tokens, *([b"q"] if self.quiet else [])]
        if most and len(tokens) > most:
            raise MemcacheIllegalInputError(f"meta request with {len(tokens)} flag tokens: "
                                            f"memcached takes at most {most}")
        return b" ".join([head, *tokens]) + b"\r\n"


def _finish(cmd: int, key: bytes, line: bytes, quiet: bool, data: bytes | None = None) -> Request:
    wire = line if data is None else line + data + b"\r\n"
    if quiet:
        return request(cmd, RK_QUIET, key, wire + MN)
    return request(cmd, RK_META, key, wire)


class MetaRequest:
    """Base of the meta requests: ``build(prefix)`` is (the key as placed,
    the Request to send); the client decodes the reply with ``decode``."""

    key: str | bytes
    base64: bool = False
    quiet: bool = False
    opaque: str | bytes | None = None
    extra: Sequence[str | bytes] = ()

    def flags(self) -> Flags:
        return Flags(self.base64, self.quiet, self.opaque, self.extra)

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        raise NotImplementedError

    def decode(self, req: Request, server: str) -> MetaResult | MetaDebug | None:
        return parse_meta(req.cmd, reply_of(req), self.quiet, server)


@dataclass(frozen=True, slots=True)
class Mg(MetaRequest):
    """``mg``: fetch.  ``touch`` (T), ``vivify`` (N) and ``recache`` (R) are TTLs."""

    key: str | bytes
    value: bool = True
    cas: bool = False
    client_flags: bool = False
    ttl: bool = False
    size: bool = False
    last_access: bool = False
    hit_before: bool = False
    return_key: bool = False
    no_bump: bool = False
    touch: int | None = None
    vivify: int | None = None
    recache: int | None = None
    opaque: str | bytes | None = None
    quiet: bool = False
    base64: bool = False
    extra: Sequence[str | bytes] = ()

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed, sent = wire_key(self.key, prefix, self.base64)
        f = self.flags()
        f.bare(self.value, b"v")
        f.bare(self.cas, b"c")
        f.bare(self.client_flags, b"f")
        f.bare(self.ttl, b"t")
        f.bare(self.size, b"s")
        f.bare(self.last_access, b"l")
        f.bare(self.hit_before, b"h")
        f.bare(self.return_key, b"k")
        f.bare(self.no_bump, b"u")
        f.number(self.touch, b"T", "touch TTL", MAX_EXPTIME, -1)
        f.number(self.vivify, b"N", "vivify TTL", MAX_EXPTIME, -1)
        f.number(self.recache, b"R", "recache TTL", MAX_EXPTIME, -1)
        return placed, _finish(CMD_MG, sent, f.line(b"mg " + sent), f.quiet)


@dataclass(frozen=True, slots=True)
class Ms(MetaRequest):
    """``ms``: store.  ``cas`` compares (C), ``mode`` is set/add/replace/append/prepend (M),
    ``vivify`` (N) autovivifies an append on a miss (memcached 1.6.20+)."""

    key: str | bytes
    value: bytes
    ttl: int | None = None
    client_flags: int | None = None
    cas: int | None = None
    mode: str | None = None
    invalidate: bool = False
    return_cas: bool = False
    return_key: bool = False
    return_size: bool = False
    vivify: int | None = None
    opaque: str | bytes | None = None
    quiet: bool = False
    base64: bool = False
    extra: Sequence[str | bytes] = ()

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed, sent = wire_key(self.key, prefix, self.base64)
        if not isinstance(self.value, bytes):
            raise MemcacheIllegalInputError(f"Ms value of type {type(self.value).__name__}: "
                                            "give bytes")
        f = self.flags()
        f.number(self.ttl, b"T", "TTL", MAX_EXPTIME, -1)
        f.number(self.client_flags, b"F", "client flags", MAX_FLAGS)
        f.number(self.cas, b"C", "compare CAS", MAX_U64)
        if self.mode is not None:
            if self.mode not in MS_MODES:
                raise MemcacheIllegalInputError(f"ms mode {self.mode!r}: one of "
                                                + ", ".join(MS_MODES))
            f.tokens.append(b"M" + MS_MODES[self.mode])
        f.bare(self.invalidate, b"I")
        f.bare(self.return_cas, b"c")
        f.bare(self.return_key, b"k")
        f.bare(self.return_size, b"s")
        f.number(self.vivify, b"N", "vivify TTL", MAX_EXPTIME, -1)
        line = f.line(b"ms %s %d" % (sent, len(self.value)), MS_FLAGS_MAX)
        return placed, _finish(CMD_MS, sent, line, f.quiet, self.value)


@dataclass(frozen=True, slots=True)
class Md(MetaRequest):
    """``md``: delete, or with ``invalidate`` (I) mark stale (``ttl``: T)."""

    key: str | bytes
    cas: int | None = None
    invalidate: bool = False
    ttl: int | None = None
    return_key: bool = False
    opaque: str | bytes | None = None
    quiet: bool = False
    base64: bool = False
    extra: Sequence[str | bytes] = ()

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed, sent = wire_key(self.key, prefix, self.base64)
        f = self.flags()
        f.number(self.cas, b"C", "compare CAS", MAX_U64)
        f.bare(self.invalidate, b"I")
        f.number(self.ttl, b"T", "TTL", MAX_EXPTIME, -1)
        f.bare(self.return_key, b"k")
        return placed, _finish(CMD_MD, sent, f.line(b"md " + sent), f.quiet)


@dataclass(frozen=True, slots=True)
class Ma(MetaRequest):
    """``ma``: arithmetic.  ``mode`` incr/decr (M), ``delta`` (D, default 1 on the
    server), ``initial`` (J) and ``vivify`` (N: TTL) create on a miss."""

    key: str | bytes
    mode: str = "incr"
    delta: int | None = None
    initial: int | None = None
    vivify: int | None = None
    ttl: int | None = None
    cas: int | None = None
    return_value: bool = True
    return_ttl: bool = False
    return_cas: bool = False
    return_key: bool = False
    opaque: str | bytes | None = None
    quiet: bool = False
    base64: bool = False
    extra: Sequence[str | bytes] = ()

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed, sent = wire_key(self.key, prefix, self.base64)
        if self.mode not in MA_MODES:
            raise MemcacheIllegalInputError(f"ma mode {self.mode!r}: incr or decr")
        f = self.flags()
        if self.mode != "incr":
            f.tokens.append(b"M" + MA_MODES[self.mode])
        f.number(self.delta, b"D", "delta", MAX_U64)
        f.number(self.initial, b"J", "initial value", MAX_U64)
        f.number(self.vivify, b"N", "vivify TTL", MAX_EXPTIME, -1)
        f.number(self.ttl, b"T", "TTL", MAX_EXPTIME, -1)
        f.number(self.cas, b"C", "compare CAS", MAX_U64)
        f.bare(self.return_value, b"v")
        f.bare(self.return_ttl, b"t")
        f.bare(self.return_cas, b"c")
        f.bare(self.return_key, b"k")
        return placed, _finish(CMD_MA, sent, f.line(b"ma " + sent), f.quiet)


@dataclass(frozen=True, slots=True)
class Me(MetaRequest):
    """``me``: the server's debug view of one item (``MetaDebug``, None on a miss)."""

    key: str | bytes
    base64: bool = False

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed, sent = wire_key(self.key, prefix, self.base64)
        return placed, request(CMD_ME, RK_META, sent,
                               b"me %s%s\r\n" % (sent, b" b" if self.base64 else b""))

    def decode(self, req: Request, server: str) -> MetaResult | MetaDebug | None:
        return parse_me(reply_of(req), server)


@dataclass(frozen=True, slots=True)
class Mn(MetaRequest):
    """``mn``: a no-op that every server answers MN, in order (a pipeline's end).
    It has no key: ``key`` picks the server (that key's), "" the first."""

    key: str | bytes = ""

    def build(self, prefix: bytes) -> tuple[bytes, Request]:
        placed = prefix + text_bytes(self.key)
        return (placed if self.key else b""), request(CMD_MN, RK_META, b"", b"mn\r\n")


NUMBER_FLAGS = b"cftslh"       # returned flags whose token is a number (MetaResult's ints)


def malformed(reply: bytes, what: str, server: str) -> MemcacheProtocolError:
    """A reply framed as one but unreadable (a flag that is no letter, a
    number that is none): an error now rather than later from a property."""
    return MemcacheProtocolError(f"malformed reply {reply[:60]!r}: {what}", server=server)


def parse_meta(cmd: int, reply: bytes, quiet: bool, server: str) -> MetaResult:
    """A complete meta reply (checked by scan_reply) as a MetaResult; an
    error line raises, and so does a flag MetaResult could not read."""
    if quiet and not reply:
        return MetaResult("EN" if cmd == CMD_MG else "HD", quiet=True)
    err = line_error(reply, server)
    if err is not None:
        raise err
    le = reply.find(b"\r\n")
    toks = reply[:le].split(b" ")
    code = toks[0].decode()
    value = None
    if code == "VA":
        n = int(toks[1])
        value = reply[le + 2:le + 2 + n]
        toks = toks[2:]
        if cmd == CMD_MA and not (value.isdigit() and len(value) <= 20):
            raise malformed(reply, f"value {value!r}", server)
    else:
        toks = toks[1:]
    flags: dict[str, str] = {}
    for t in toks:
        if not t:
            continue
        letter, token = t[:1], t[1:]
        if not letter.isalpha():
            raise malformed(reply, f"flag {t!r}", server)
        text = token.decode(errors="replace")
        if letter in NUMBER_FLAGS and not (token.removeprefix(b"-").isdigit()
                                           and len(token) <= 21):
            raise malformed(reply, f"flag {letter.decode()} {text!r}", server)
        flags[letter.decode()] = text
    if "k" in flags and "b" in flags:
        try:
            b64.b64decode(flags["k"], validate=True)
        except ValueError:
            raise malformed(reply, f"flag k {flags['k']!r}", server) from None
    return MetaResult(code, value, flags)


def parse_me(reply: bytes, server: str) -> MetaDebug | None:
    err = line_error(reply, server)
    if err is not None:
        raise err
    if reply.startswith(b"EN"):
        return None
    toks = reply[:reply.find(b"\r\n")].split(b" ")
    if len(toks) < 2 or not toks[1]:
        raise malformed(reply, "no key", server)
    fields = {}
    for t in toks[2:]:
        name, _, value = t.partition(b"=")
        if not name.isascii():
            raise malformed(reply, f"field {name!r}", server)
        fields[name.decode()] = value.decode(errors="replace")
    return MetaDebug(toks[1], fields)
