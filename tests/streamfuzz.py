"""Stream-level differential fuzzer: memcached directly vs. the router (issue 10).

Each case is a stream of valid text and meta commands, mutated (flipped
bytes, truncations, CR/LF/NUL/space runs, numbers at and beyond every
type's limits, base64 keys, long opaques, duplicate and many flags, 250/251
byte keys), followed by ``mn\\r\\n``.  The same bytes go, on a fresh
connection each, to a reference memcached and to every router under test.
The client reads until the trailing ``mn`` is answered (as many ``MN`` as the
stream has ``mn``), or nothing comes for 0.15 s (a data block left open
swallowed it), then half-closes (SHUT_WR) and reads to EOF: whatever a side
answered before closing is its reply.  (Half-closing at once is wrong:
memcached drops replies it has queued when EOF ends an open data block.)
The replies must be equal after the normalisations below, and the
reference's trailing ``MN`` must be the router's too (smuggling/desync).
A target with ``tls`` (a client context) is reached over TLS (``TlsStream``):
the same writes and reads, the half-close being a close_notify then the FIN.

Keys carry a per-case prefix, so concurrent cases never share a key and
PoolRoute (keys over two servers) answers as one memcached would; the
global-state commands are handled so that this holds:
* a case containing ``flush_all`` runs alone (no other case in flight) and
  is followed by ``flush_all`` on every server, which also cancels any
  delayed flush it scheduled;
* ``stats``: only names are compared (values are pids, counters, times);
* CAS uniques differ per server (one counter each): ``gets`` cas fields and
  meta ``c<n>`` return flags are normalised; cas *arguments* are literals far
  from any counter value, so they never match an item on one side only.

Normalised fields (time or server dependent), and only those: STAT values,
``VALUE`` cas field, meta ``c<n>``, meta ``t<n>`` (n >= 0) and ``l<n>``.

From the repository root (``-m`` puts it on the path, so this checkout's
parser is the one the routers it starts run):
replay a case: ``python3 -m tests.streamfuzz --seed S --case N --show``;
long run: ``python3 -m tests.streamfuzz --cases 1000000 --seed 1``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from mcrouter._parser import RequestParser  # this checkout's (see above), as the routers run it

ROUTER_MAX_ITEM = 1048576          # the routers under test run with the defaults
# The largest value a case carries (about 1% of values, at the item size's
# edge).  The TLS sessions lower it: memcached 1.6.18's own TLS stalls on a
# write of more than about 17 KB followed by more requests (README, TLS), so
# through a TLS upstream such a case times out whatever the router does.
BIG_VALUE = 1048576
ROUTER_MAX_LINE = 1048576

# ---------------------------------------------------------------------------
# KNOWN, INTENDED DIFFERENCES (the only ones the comparison allows)
#
# | # | stream                                   | router reply                    | why                             |
# |---|------------------------------------------|---------------------------------|---------------------------------|
# | 1 | an admin command (cache_memlimit,        | SERVER_ERROR mcrouter: command  | issue 10 admin policy: a client |
# |   | shutdown, slabs, lru, lru_crawler, watch,| not supported  (in place of     | must not reach a backend's      |
# |   | misbehave, debugtime, stats detail/reset/| memcached's reply)              | admin commands                  |
# |   | cachedump, me) at a command position     |                                 |                                 |
# | 2 | first byte of the connection is 0x80     | nothing; connection closed      | the router speaks no binary     |
# |   | (binary protocol)                        |                                 | protocol (issue 10 item 6)      |
# | 3 | ``version`` answered by LocalRoute       | VERSION <x.y.z>, any version    | the backends' version, as probed|
# |   | (PoolRoute's keyless commands)           | number (form checked exactly)   | (issue 10 item 7)               |
# | 4 | memcached closes the connection (HTTP/   | also closes; may first write    | memcached drops the replies it  |
# |   | line, line over 2048 bytes)              | replies memcached dropped:      | had queued but not written when |
# |   |                                          | memcached's reply is a prefix   | it closes (same read batch);    |
# |   |                                          | of the router's, no trailing MN | an artefact of batching         |
# | 5 | a command line over 2048 bytes (not a    | closes there, after answering   | memcached closes on such a line |
# |   | ``get``/``gets`` line): memcached answers| every earlier request: equal to | when its first 2048 bytes come  |
# |   | it, or closes, as its reads fall         | memcached's reply to the stream | without the newline, else runs  |
# |   |                                          | cut before that line, closed    | it; the router always closes    |
#
# Admin with ``noreply``: memcached is silent, and so is the router.
# Difference 1 is exercised only by ADMIN cases, whose framing is known (an
# unmutated valid prefix; the admin line at a command position, possibly
# after a header memcached certainly rejects): the reference stream carries
# ``mn\r\n`` in place of the admin line and that one ``MN`` is replaced by
# the router's refusal.  Mutated streams never contain an admin word at a
# line start (checked; such a case would be skipped and counted).
# Values over the router's max item size are answered by the router with
# memcached's exact text: no entry needed (a difference there is a bug).
# ---------------------------------------------------------------------------

NOT_SUPPORTED = b"SERVER_ERROR mcrouter: command not supported\r\n"
ADMIN_LINES = [b"cache_memlimit 8\r\n", b"cache_memlimit 8 noreply\r\n", b"shutdown\r\n",
               b"slabs automove 0\r\n", b"lru mode flat\r\n", b"lru_crawler metadump all\r\n",
               b"watch\r\n", b"stats detail on\r\n", b"stats cachedump 1 1\r\n",
               b"stats reset\r\n", b"me fzadmin\r\n", b"misbehave\r\n", b"debugtime 1\r\n"]
ADMIN_AT_LINE_START = re.compile(
    rb"(?:^|\n) *(?:cache_memlimit|shutdown|slabs|lru|lru_crawler|watch|misbehave|debugtime|me"
    rb"|stats +(?:detail|reset|cachedump))(?: |\r|\n|$)")

LIMITS = [2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64]
NUMBERS = ([str(v + d).encode() for v in LIMITS for d in (-1, 0, 1)]
           + [b"-" + str(v + d).encode() for v in LIMITS for d in (-1, 0, 1)]
           + [b"-1", b"-0", b"+0", b"+5", b"0", b"1" * 30, b"-" + b"9" * 30, b"00000000000000000000001",
              b"1.5", b"0x10", b"5 ", b"\t7", b"", b"99999999999999999999"])
FLAG_CHARS = b"bNTRlOkstcfvhuqPLMICFEDJSwxXZW"


# ---------------------------------------------------------------------------
# generation

class Gen:
    """Commands of one case: keys carry ``prefix`` so cases never share one."""

    def __init__(self, rnd: random.Random, prefix: bytes) -> None:
        self.r = rnd
        self.prefix = prefix

    def key(self) -> bytes:
        r = self.r
        x = r.random()
        if x < 0.04:
            return self.prefix + b"k" * (250 - len(self.prefix))
        if x < 0.07:
            return self.prefix + b"k" * (251 - len(self.prefix))
        return self.prefix + b"k%d" % r.randrange(4)

    def value(self) -> bytes:
        r = self.r
        x = r.random()
        if x < 0.1:
            return b""
        if x < 0.15:
            return b"12345678901234567890"[:r.randrange(1, 21)]
        if x < 0.2:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))
        if x < 0.21:
            return b"v" * (BIG_VALUE + r.choice((-1000, 0, 1)))
        return b"%d" % r.randrange(1000) if r.random() < 0.5 else b"val" * r.randrange(1, 10)

    def exptime(self) -> bytes:
        return self.r.choice((b"0", b"0", b"1000", b"-1", b"2592000", b"2592001", b"4000000000"))

    def flags(self) -> bytes:
        return self.r.choice((b"0", b"1", b"4294967295", b"65535"))

    def b64key(self) -> tuple[bytes, bool]:
        raw = self.key()
        enc = base64.b64encode(raw)
        if self.r.random() < 0.3:
            enc = self.r.choice((enc[:-1], enc + b"!", b"!!!!", enc.replace(b"=", b""), b"===="))
            return enc, False
        return enc, True

    def meta_flags(self, choices: bytes) -> list[bytes]:
        r = self.r
        out = []
        for _ in range(r.choice((0, 1, 2, 3, 5, 20, 25))):
            c = bytes([r.choice(choices)])
            if c in b"TNRLM":
                c += r.choice((b"100", b"0", b"-1", b"E", b"S", b"A", b"I", b"D", b"")) \
                    if c == b"M" else r.choice((b"100", b"0", b"", b"-1", b"x"))
            elif c == b"O":
                c += b"o" * r.choice((1, 31, 32, 33, 40))
            elif c in b"CEDJ":
                c += r.choice((b"99999999999", b"0", b"1", b""))
            out.append(c)
        return out

    def command(self) -> bytes:
        r = self.r
        kind = r.choice(("set", "add", "replace", "append", "prepend", "cas", "get", "gets",
                         "gat", "gats", "delete", "incr", "decr", "touch", "mg", "ms", "md",
                         "ma", "mn", "version", "verbosity", "stats", "mg", "ms", "set", "get"))
        nr = b" noreply" if r.random() < 0.2 else b""
        if kind in ("set", "add", "replace", "append", "prepend", "cas"):
            v = self.value()
            cas = b" " + r.choice((b"0", b"99999999999", b"12345678901234")) if kind == "cas" else b""
            return b"%s %s %s %s %d%s%s\r\n%s\r\n" % (kind.encode(), self.key(), self.flags(),
                                                     self.exptime(), len(v), cas, nr, v)
        if kind in ("get", "gets"):
            return kind.encode() + b"".join(b" " + self.key() for _ in range(r.randrange(1, 4))) + b"\r\n"
        if kind in ("gat", "gats"):
            return (kind.encode() + b" " + self.exptime()
                    + b"".join(b" " + self.key() for _ in range(r.randrange(0, 3))) + b"\r\n")
        if kind == "delete":
            return b"delete %s%s%s\r\n" % (self.key(), r.choice((b"", b"", b" 0", b" 1")), nr)
        if kind in ("incr", "decr"):
            return b"%s %s %s%s\r\n" % (kind.encode(), self.key(), r.choice(NUMBERS[:12] + [b"1", b"7"]), nr)
        if kind == "touch":
            return b"touch %s %s%s\r\n" % (self.key(), self.exptime(), nr)
        if kind in ("mg", "ms", "md", "ma"):
            if r.random() < 0.15:
                key, _ok = self.b64key()
                fl = [b"b"] + self.meta_flags(FLAG_CHARS)
            else:
                key, fl = self.key(), self.meta_flags(FLAG_CHARS)
            tail = b"".join(b" " + f for f in fl)
            if kind == "ms":
                v = self.value()
                return b"ms %s %d%s\r\n%s\r\n" % (key, len(v), tail, v)
            return b"%s %s%s\r\n" % (kind.encode(), key, tail)
        if kind == "mn":
            return b"mn\r\n"
        if kind == "version":
            return b"version\r\n"
        if kind == "verbosity":
            return b"verbosity %s%s\r\n" % (r.choice((b"0", b"1", b"")), nr)
        if kind == "stats":
            return r.choice((b"stats\r\n", b"stats settings\r\n"))
        raise AssertionError(kind)

    def stream(self) -> bytes:
        r = self.r
        cmds = [self.command() for _ in range(r.randrange(1, 8))]
        if r.random() < 0.005:         # runs alone (exclusive): kept rare for throughput
            cmds.insert(r.randrange(len(cmds) + 1),
                        b"flush_all%s\r\n" % r.choice((b"", b" 0", b" 5", b" -1", b" noreply",
                                                       b" 99999999999999999999")))
        data = b"".join(cmds)
        for _ in range(r.choice((0, 1, 1, 2, 3))):
            data = self.mutate(data)
        return data

    def mutate(self, data: bytes) -> bytes:
        r = self.r
        if not data:
            return data
        i = r.randrange(len(data))
        m = r.randrange(9)
        if m == 0:      # flip a byte
            return data[:i] + bytes([data[i] ^ r.randrange(1, 256)]) + data[i + 1:]
        if m == 1:      # truncate
            return data[:i]
        if m == 2:      # runs of CR/LF/NUL/space
            return data[:i] + r.choice((b"\r", b"\n", b"\x00", b" ", b"\r\n")) * r.choice((1, 2, 5, 300)) + data[i:]
        if m in (3, 4):   # a number replaced by a limit value
            nums = [mm for mm in re.finditer(rb"(?<=[ TNRLCEDJ])-?\d+(?=[ \r])", data)]
            if nums:
                mm = r.choice(nums)
                return data[:mm.start()] + r.choice(NUMBERS) + data[mm.end():]
            return data
        if m == 5:      # delete a span
            return data[:i] + data[i + r.randrange(1, 20):]
        if m == 6:      # duplicate a span
            j = min(len(data), i + r.randrange(1, 40))
            return data[:j] + data[i:j] + data[j:]
        if m == 7:      # a long line without newline
            return data + b"x" * r.choice((2047, 2049, 3000))
        if m == 8:      # HTTP-looking line
            return data[:i] + b"GET / HTTP/1.1\r\n" + data[i:]
        return data


@dataclass
class Case:
    number: int
    stream: bytes                  # what the router gets
    reference: bytes               # what memcached gets (differs only for ADMIN cases)
    admin_mn: int = -1             # ADMIN case: 0, or 1 when the admin line has noreply; else -1
    exclusive: bool = False        # touches global state: runs alone


def make_case(seed: int, number: int, attempt: int = 0) -> Case:
    r = random.Random(f"{seed}:{number}")
    g = Gen(r, b"f%dx%dx%d:" % (seed, number, attempt))
    x = r.random()
    if x < 0.05:                   # known difference 1: admin line at a command position
        prefix = b"".join(g.command() for _ in range(r.randrange(0, 3)))
        prefix = re.sub(rb"(?m)^(?:mn|stats|flush_all|verbosity).*\r\n", b"", prefix)
        smuggle = r.choice((b"", b"", b"set %s 0 99999999999999999999 16 noreply\r\n" % g.key(),
                            b"cas %s 0 0 %%d 18446744073709551616\r\n" % g.key()))
        admin = r.choice(ADMIN_LINES)
        if b"%d" in smuggle:
            smuggle = smuggle % len(admin)
        suffix = g.command() if r.random() < 0.5 else b""
        suffix = re.sub(rb"(?m)^(?:mn|stats|flush_all|verbosity).*\r\n", b"", suffix)
        head = prefix + smuggle
        return Case(number, head + admin + suffix + b"mn\r\n", head + b"mn\r\n" + suffix + b"mn\r\n",
                    admin_mn=1 if admin.endswith(b"noreply\r\n") else 0)
    if x < 0.06:                   # known difference 2: binary protocol
        body = b"\x80" + bytes(r.randrange(256) for _ in range(r.randrange(0, 40)))
        return Case(number, body + b"mn\r\n", body + b"mn\r\n")
    s = g.stream()
    if s and not s.endswith(b"\n") and r.random() < 0.8:
        s += b"\r\n"             # mostly end a truncated line, so the trailer stays a command
    s += b"mn\r\n"
    if ADMIN_AT_LINE_START.search(s):
        s = b"mn\r\n"              # never happens from the bases used; kept safe
    if s[:1] == b"\x80":
        s = b"\x00" + s[1:]
    return Case(number, s, s, exclusive=b"flush_all" in s)


# ---------------------------------------------------------------------------
# comparison

STAT = re.compile(rb"^STAT (\S+) .*$")
VALUE_CAS = re.compile(rb"^(VALUE \S+ \S+ \S+) \d+$")
META_LINE = re.compile(rb"^(VA \d+|HD|EN|NF|NS|EX|MN)( .*)?$")
META_NORM = re.compile(rb"(?<= )(?:c\d+|t\d+|l\d+)(?= |$)")
VERSION = re.compile(rb"^VERSION \d+\.\d+\.\d+$")


def normalise(reply: bytes, local_version: bool = False) -> bytes:
    """Replace time and server dependent fields (the list in the module doc)."""
    out = []
    lines = reply.split(b"\r\n")
    skip_data = 0
    for line in lines:
        if skip_data:
            skip_data -= 1
            out.append(line)
            continue
        m = STAT.match(line)
        if m:
            out.append(b"STAT " + m.group(1) + b" <v>")
            continue
        m = VALUE_CAS.match(line)
        if m:
            out.append(m.group(1) + b" <cas>")
            continue
        if META_LINE.match(line):
            out.append(META_NORM.sub(lambda mm: mm.group(0)[:1] + b"<n>", line))
            continue
        if local_version and VERSION.match(line):
            out.append(b"VERSION <x.y.z>")
            continue
        out.append(line)
    return b"\r\n".join(out)


def expected_router_reply(case: Case, ref: bytes) -> bytes:
    """The reference reply with the known differences applied (the table above)."""
    if case.admin_mn != -1:
        # the MN that stood for the admin line is the first one (nothing before
        # the admin line has an mn; the stream may end before the trailing one)
        first = ref.find(b"MN\r\n")
        while first > 0 and ref[first - 1:first] != b"\n":
            first = ref.find(b"MN\r\n", first + 1)
        if first < 0:
            return ref
        refusal = b"" if case.admin_mn == 1 else NOT_SUPPORTED
        return ref[:first] + refusal + ref[first + 4:]
    return ref


LONG_KEY_RETRIEVAL = re.compile(rb"(?:get|gets|gat|gats) [^\n]*[^ \n]{251}")
DROPPER = re.compile(rb" *(?:get|gets|gat|gats) [^\n]*[^ \n]{251}|[^\n]*HTTP/|[^\n]{2049}")


def long_line_cut(stream: bytes) -> Optional[int]:
    """Where the router closes on a line over 2048 bytes (difference 5), or None.

    The router's own parser frames the stream (its framing is what the rest
    of the comparison checks against memcached)."""
    def closes(n: int) -> bool:
        parser = RequestParser(ROUTER_MAX_ITEM, ROUTER_MAX_LINE)
        parser.feed(stream[:n])
        return parser.closing

    if stream[:1] == b"\x80" or not closes(len(stream)):
        return None
    # The shortest prefix that closes it ends 2049 bytes into that line: the
    # parser closes once it holds more than 2048 bytes of a line without its
    # newline (or has the whole line).  Closing is monotonic in the prefix.
    lo, hi = 0, len(stream)
    while lo < hi:
        mid = (lo + hi) // 2
        if closes(mid):
            hi = mid
        else:
            lo = mid + 1
    cut = lo - 2049     # (a line may start right after a data block: no "\n" before it)
    if cut < 0:
        return None     # it closed for another reason (HTTP/, quit)
    nl = stream.find(b"\n", cut)
    if (nl if nl >= 0 else len(stream)) - cut <= 2048:
        return None     # likewise
    parser = RequestParser(ROUTER_MAX_ITEM, ROUTER_MAX_LINE)
    reqs = parser.feed(stream[:cut] + b"mn\r\n")
    if parser.closing or not reqs or reqs[-1].wire != b"mn\r\n":
        return None     # the cut is not at a command's start (inside a data block)
    return cut


def split_reference(stream: bytes) -> list[bytes]:
    """The reference stream in pieces, cut before every line after which memcached
    discards the replies it has queued but not written (a retrieval with a key
    over 250 bytes, an HTTP/ line, a line over 2048 bytes); sent with a pause
    between pieces, memcached writes those replies first, as it does for any
    client that does not batch them.  Cutting at a line start never changes
    memcached's framing (the stream is the same bytes)."""
    cuts = {0}
    pos = 0
    while True:
        nl = stream.find(b"\n", pos)
        start = nl + 1
        if nl < 0 or start >= len(stream):
            break
        if DROPPER.match(stream, start):
            cuts.add(start)
        pos = start
    # such a retrieval may also start right after a data block (no newline
    # before it); a cut anywhere else only splits bytes memcached reads anyway
    cuts.update(m.start() for m in LONG_KEY_RETRIEVAL.finditer(stream))
    cuts = sorted(cuts)
    return [stream[a:b] for a, b in zip(cuts, cuts[1:] + [len(stream)]) if b > a] or [stream]


@dataclass
class Outcome:
    reply: bytes
    closed: bool


def diverges(case: Case, ref: Outcome, got: Outcome, local_version: bool,
             cut: Optional[int] = None) -> Optional[str]:
    """None when the router's outcome is the reference's (up to the known differences);
    ``cut``: the reference ran the stream cut there (difference 5)."""
    if case.stream[:1] == b"\x80":
        if got.reply == b"" and got.closed:
            return None
        return "binary protocol: the router must close without a reply"
    want = normalise(expected_router_reply(case, ref.reply), local_version)
    have = normalise(got.reply, local_version)
    if cut is not None:
        if want != have:
            return "replies differ (router closed on a long line)"
        if not got.closed:
            return "the router must close on a line over 2048 bytes"
        return None
    if ref.closed and want != have and have.startswith(want) and case.admin_mn == -1:
        # difference 4: memcached closed early and dropped replies it had queued
        if not got.closed:
            return "memcached closed the connection, the router did not"
        if b"MN\r\n" not in have[len(want):]:
            return None
        return "replies differ (memcached closed)"
    if want != have:
        return "replies differ"
    if expected_router_reply(case, ref.reply).endswith(b"MN\r\n") != got.reply.endswith(b"MN\r\n"):
        return "trailing mn"
    return None


# ---------------------------------------------------------------------------
# running

_source = [0]


def next_source() -> str:
    """A loopback source address, rotating over 127.1.0.0/16: each case opens fresh
    connections that end in TIME_WAIT on this side, and one source address has
    only ~28,000 ephemeral ports (a long run stalled at ~20,000 cases without this)."""
    _source[0] = (_source[0] + 1) % 65024
    return f"127.1.{_source[0] // 254}.{_source[0] % 254 + 1}"


class TlsStream:
    """The client side of a TLS connection with the reads and writes of an
    asyncio (reader, writer) pair, over a MemoryBIO session, so that
    ``exchange`` does the same over TLS as in plain TCP: ``write_eof`` is the
    TLS half-close (a close_notify, then the TCP one); ``read`` returns b""
    at the peer's close_notify or its TCP EOF, whichever comes first.
    (asyncio's own TLS transport cannot half-close.)"""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: ssl.SSLContext, server_name: str) -> None:
        self.reader, self.writer = reader, writer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.writer.write(self.outgoing.read())

    async def _fill(self) -> None:
        """Ciphertext from the socket into the session; EOF is passed on too."""
        self._flush()
        data = await self.reader.read(1 << 20)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                await self._fill()

    def write(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 16):
            self.obj.write(data[i:i + (1 << 16)])
            self._flush()

    async def drain(self) -> None:
        await self.writer.drain()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` plaintext bytes; b"" at the end.  Cancellation-safe
        (a cancelled socket read leaves its bytes in the StreamReader)."""
        while True:
            try:
                data = self.obj.read(size)
            except ssl.SSLWantReadError:
                await self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            self._flush()           # a TLS 1.3 key update's answer
            return data

    def write_eof(self) -> None:
        try:
            self.obj.unwrap()       # sends close_notify; its answer is read as EOF
        except ssl.SSLWantReadError:
            pass
        self._flush()
        self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


async def exchange(port: int, pieces: list[bytes], timeout: float, idle: float = 0.15,
                   tls: Optional[ssl.SSLContext] = None, server_name: str = "localhost") -> Outcome:
    """Fresh connection: send; once the trailing mn is answered (or nothing came for
    ``idle`` s) half-close and read to EOF; everything bounded by ``timeout``.
    With ``tls``, the same over a TLS session (handshake also within ``timeout``)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(next_source(), 0)), timeout)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        stream = TlsStream(reader, writer, tls, server_name)
        try:
            await asyncio.wait_for(stream.handshake(), timeout)
        except BaseException:
            writer.close()
            raise
        reader, writer = stream, stream     # type: ignore[assignment]
    try:
        chunks: list[bytes] = []
        for piece in pieces[:-1]:
            # let memcached write what it has queued before the next piece (see split_points)
            writer.write(piece)
            with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), timeout)
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(1 << 20), 0.03)
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        data = pieces[-1] if pieces else b""
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        got = b"".join(chunks)
        deadline = time.monotonic() + timeout
        closed = False
        half_closed = False
        most_mn = sum(p.count(b"mn") for p in pieces)   # at most this many MN replies can come
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not half_closed and got.endswith(b"MN\r\n") and got.count(b"MN\r\n") >= most_mn:
                half_closed = True       # the trailing mn is answered: end the stream
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write_eof()
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), left if half_closed else min(left, idle))
            except asyncio.TimeoutError:
                if half_closed:
                    break
                half_closed = True       # silent for a while: no more replies without EOF
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write_eof()
                continue
            except (ConnectionError, OSError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            got = b"".join(chunks)
        return Outcome(b"".join(chunks), closed)
    finally:
        writer.close()


@dataclass
class Target:
    name: str
    port: int
    local_version: bool = False          # PoolRoute answers version itself
    tls: Optional[ssl.SSLContext] = None  # the router's listener speaks TLS (a client context)
    server_name: str = "localhost"       # the name checked in its certificate


@dataclass
class Divergence:
    seed: int
    case: int
    target: str
    why: str
    stream: bytes
    reference_stream: bytes
    ref: Outcome
    got: Outcome

    def report(self) -> str:
        def cut(b: bytes) -> str:
            return repr(b) if len(b) < 1200 else repr(b[:600]) + f" ...({len(b)} bytes)... " + repr(b[-600:])
        return (f"DIVERGENCE ({self.why}) seed={self.seed} case={self.case} target={self.target}\n"
                f"  stream:    {cut(self.stream)}\n"
                + (f"  reference stream: {cut(self.reference_stream)}\n"
                   if self.reference_stream != self.stream else "")
                + f"  memcached: {cut(self.ref.reply)} closed={self.ref.closed}\n"
                f"  router:    {cut(self.got.reply)} closed={self.got.closed}\n"
                f"  replay: python3 -m tests.streamfuzz --seed {self.seed} --case {self.case}")


@dataclass
class Stats:
    cases: int = 0
    divergences: list = field(default_factory=list)
    flaky: int = 0
    elapsed: float = 0.0


async def run_case(seed: int, number: int, ref_port: int, targets: list[Target],
                   timeout: float) -> list[Divergence]:
    """Run one case; a divergence is reported only if it repeats on a re-run with fresh keys."""
    found: list[Divergence] = []
    for attempt in range(3):
        case = make_case(seed, number, attempt)
        reference = case.reference
        cut = long_line_cut(case.stream) if case.admin_mn == -1 else None
        if cut is not None:
            reference = reference[:cut]
        outs = await asyncio.gather(exchange(ref_port, split_reference(reference), timeout),
                                    *(exchange(t.port, [case.stream], timeout, tls=t.tls, server_name=t.server_name)
                                      for t in targets))
        ref = outs[0]
        found = []
        for t, got in zip(targets, outs[1:]):
            why = diverges(case, ref, got, t.local_version, cut)
            if why:
                found.append(Divergence(seed, number, t.name, why, case.stream, reference, ref, got))
        if not found:
            return []
    return found


async def flush_everything(ports: list[int], timeout: float) -> None:
    for p in ports:
        await exchange(p, [b"flush_all\r\nverbosity 0\r\nmn\r\n"], timeout)


async def fuzz(seed: int, ref_port: int, targets: list[Target], backend_ports: list[int],
               max_cases: int, seconds: float, first: int = 0, concurrency: int = 32,
               timeout: float = 5.0, on_divergence: Optional[Callable[[Divergence], None]] = None,
               progress: Optional[Callable[[Stats], None]] = None) -> Stats:
    """Run cases ``first ..`` until ``max_cases`` or ``seconds``; exclusive cases run alone."""
    stats = Stats()
    start = time.monotonic()
    all_ports = [ref_port] + backend_ports
    next_number = [first]
    in_flight = [0]
    waiting = [0]                       # exclusive cases waiting for the others to finish
    gate = asyncio.Condition()          # exclusive cases wait for in_flight == 0

    def more() -> bool:
        return next_number[0] - first < max_cases and time.monotonic() - start < seconds

    async def worker() -> None:
        while more():
            n = next_number[0]
            next_number[0] += 1
            exclusive = make_case(seed, n).exclusive
            async with gate:
                if exclusive:       # writer-preferring: no new case starts while one waits
                    waiting[0] += 1
                    await gate.wait_for(lambda: in_flight[0] == 0)
                    waiting[0] -= 1
                    in_flight[0] = -1
                else:
                    await gate.wait_for(lambda: in_flight[0] >= 0 and waiting[0] == 0)
                    in_flight[0] += 1
            try:
                divs = await run_case(seed, n, ref_port, targets, timeout)
                if exclusive:
                    await flush_everything(all_ports, timeout)
            finally:
                async with gate:
                    in_flight[0] = 0 if exclusive else in_flight[0] - 1
                    gate.notify_all()
            for d in divs:
                stats.divergences.append(d)
                if on_divergence:
                    on_divergence(d)
            stats.cases += 1
            if progress and stats.cases % 5000 == 0:
                stats.elapsed = time.monotonic() - start
                progress(stats)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.elapsed = time.monotonic() - start
    return stats


def divergence_class(d: Divergence) -> str:
    """A coarse signature to group divergences: target and the first differing reply lines."""
    a = normalise(expected_router_reply(make_case(d.seed, d.case), d.ref.reply)).split(b"\r\n")
    b = normalise(d.got.reply).split(b"\r\n")
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    la = a[i] if i < len(a) else b"<none>"
    lb = b[i] if i < len(b) else b"<none>"
    return f"{d.target}: {d.why}: {la[:50]!r} vs {lb[:50]!r}"


# ---------------------------------------------------------------------------
# stand-alone processes for the CLI

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def router_configs(pool: list[str], single: str) -> dict[str, str]:
    return {
        "default": f"orderedPool: [{single}]\nroute: {{type: DefaultRoute}}\n",
        "pool": (f"pools:\n  main:\n    servers: [{', '.join(pool)}]\n"
                 f"    hash: {{function: md5, distribution: ketama}}\nroute: PoolRoute|main\n"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--case", type=int, help="print and run only this case")
    ap.add_argument("--max-reports", type=int, default=20)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop what it started (finally)
    memcached = shutil.which("memcached")
    if not memcached:
        print("memcached is not installed", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="streamfuzz-")
    try:
        mports = [free_port() for _ in range(4)]
        for p in mports:
            procs.append(subprocess.Popen([memcached, "-u", "root", "-l", "127.0.0.1", "-p", str(p),
                                           "-U", "0", "-t", "1", "-m", "1024"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        for p in mports:
            wait_port(p)
        cfgs = router_configs([f"127.0.0.1:{mports[2]}", f"127.0.0.1:{mports[3]}"],
                              f"127.0.0.1:{mports[1]}")
        targets = []
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, MCROUTER_METRICS_LISTEN_ADDR="off")
        for name, text in cfgs.items():
            path = os.path.join(tmp, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(text)
            port = free_port()
            log = open(os.path.join(tmp, f"{name}.log"), "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mcrouter", "run", "-f", path,
                                           "-l", f"127.0.0.1:{port}", "-n", "1"], cwd=repo, env=env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            wait_port(port)
            targets.append(Target(name, port, local_version=name == "pool"))
        time.sleep(0.5)
        if args.case is not None:
            c = make_case(args.seed, args.case)
            print("stream:", repr(c.stream))
            divs = asyncio.run(run_case(args.seed, args.case, mports[0], targets, 5.0))
            for d in divs:
                print(d.report())
            return 1 if divs else 0
        classes: dict[str, Divergence] = {}
        counts: dict[str, int] = {}

        def on_div(d: Divergence) -> None:
            k = divergence_class(d)
            counts[k] = counts.get(k, 0) + 1
            if k not in classes:
                classes[k] = d
                if len(classes) <= args.max_reports:
                    print(d.report(), flush=True)

        def progress(s: Stats) -> None:
            if True:
                print(f"# {s.cases} cases, {s.cases / max(s.elapsed, 1e-9):.0f}/s, "
                      f"{len(s.divergences)} divergences, {len(classes)} classes", flush=True)

        st = asyncio.run(fuzz(args.seed, mports[0], targets, mports[1:], args.cases, args.seconds,
                              first=args.first, concurrency=args.concurrency,
                              on_divergence=on_div, progress=progress))
        print(f"# done: {st.cases} cases in {st.elapsed:.1f}s ({st.cases / max(st.elapsed, 1e-9):.0f}/s), "
              f"{len(st.divergences)} divergences in {len(classes)} classes")
        for k, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"#   {n:7d}  {k}")
        return 1 if st.divergences else 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
