"""Every numeric field the router parses, at and beyond its limits.

One table shared by the probe (``tests/probe_numeric.py``, which records
memcached 1.6.18's exact replies into ``tests/support/numeric_expected.py``), the
parser unit test and the end-to-end test.  A case is sent on a fresh
connection as ``setup + request + check + TERMINATOR``:

* ``setup`` creates the item the request needs (its reply is fixed);
* ``request`` is the line under test; a storage line carries the 2-byte
  data block ``mn``, so a header memcached rejects shows up as an extra
  ``MN`` (the block was run as a command) and never goes unnoticed;
* ``check`` reads the item back (``mg <key> f k``): stored flags, expiry;
* ``TERMINATOR`` is a miss on a key no case uses: its reply ends the case.

Each case has its own key, so cases do not depend on each other; the
``flush_all`` cases come last because a delayed flush touches every item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

TERMINATOR = b"mg numeric-end k\r\n"
TERMINATOR_REPLY = b"EN knumeric-end\r\n"
DATA = b"mn\r\n"                   # the data block of every storage case
STORED = b"STORED\r\n"
CAS_UNIQUE = b"1099511627776"      # 2^40: never an item's real cas on a fresh server

# (label, token): numbers at every C type's limits, and the spellings
# strtol/strtoul accept or stop at.  A tab is not a token separator in
# memcached (only a space is), and strto* skip leading whitespace.
VALUES: list[tuple[str, bytes]] = [
    ("0", b"0"),
    ("5", b"5"),
    ("2^31-1", b"2147483647"),
    ("2^31", b"2147483648"),
    ("2^32-1", b"4294967295"),
    ("2^32", b"4294967296"),
    ("2^32+5", b"4294967301"),
    ("2^63-1", b"9223372036854775807"),
    ("2^63", b"9223372036854775808"),
    ("2^64-1", b"18446744073709551615"),
    ("2^64", b"18446744073709551616"),
    ("2^64+1", b"18446744073709551617"),
    ("-1", b"-1"),
    ("-2^31", b"-2147483648"),
    ("-2^31-1", b"-2147483649"),
    ("-2^32+5", b"-4294967291"),
    ("-2^63", b"-9223372036854775808"),
    ("-2^63-1", b"-9223372036854775809"),
    ("-2^64+1", b"-18446744073709551615"),
    ("30digits", b"123456789012345678901234567890"),
    ("+5", b"+5"),
    ("-0", b"-0"),
    ("00", b"00"),
    ("5x", b"5x"),
    ("x", b"x"),
    ("tab5", b"\t5"),
    ("5tab", b"5\t"),
]

# The <bytes>/<datalen> field: the data block is always 2 bytes, so the
# accepted small value is 2 (any other accepted size would eat the next
# lines as data); INT_MAX-2 is accepted and then refused as too large.
SIZE_VALUES: list[tuple[str, bytes]] = [
    ("0", b"0"),
    ("2", b"2"),
    ("+2", b"+2"),
    ("-0", b"-0"),
    ("02", b"02"),
    ("2x", b"2x"),
    ("tab2", b"\t2"),
    ("2tab", b"2\t"),
    ("-1", b"-1"),
    ("2^31-2", b"2147483646"),
    ("2^31-1", b"2147483647"),
    ("2^31", b"2147483648"),
    ("2^32-1", b"4294967295"),
    ("2^32", b"4294967296"),
    ("2^32+2", b"4294967298"),
    ("2^63-1", b"9223372036854775807"),
    ("2^63", b"9223372036854775808"),
    ("2^64-1", b"18446744073709551615"),
    ("2^64", b"18446744073709551616"),
    ("2^64+2", b"18446744073709551618"),
    ("-2^31", b"-2147483648"),
    ("-2^32+2", b"-4294967294"),
    ("-2^63", b"-9223372036854775808"),
    ("-2^63-1", b"-9223372036854775809"),
    ("-2^64+2", b"-18446744073709551614"),
    ("30digits", b"123456789012345678901234567890"),
]
# INT_MAX-2 (2147483645) passes the header check and is then refused as too
# large while memcached swallows 2 GB before it answers: not comparable here,
# see the parser unit test.

# meta flags: the same numbers as a flag's token, plus the empty token
META_VALUES: list[tuple[str, bytes]] = VALUES + [("empty", b"")]


@dataclass(frozen=True)
class Case:
    id: str
    cmd: str                 # command name as the parser reports it
    key: bytes
    line: bytes              # the request line, with \r\n
    data: Optional[bytes]    # the data block sent after it (storage), else None
    setup: bytes = b""
    setup_reply: bytes = b""
    check: bytes = b""

    @property
    def request(self) -> bytes:
        return self.line + (self.data or b"")

    @property
    def noreply(self) -> bool:
        return self.line.rstrip(b"\r\n").endswith(b" noreply")

    def stream(self) -> bytes:
        """Everything sent for this case on its own connection."""
        return self.setup + self.request + self.check + TERMINATOR


def _key(cid: str) -> bytes:
    return b"n:" + cid.replace("^", "p").replace("+", "P").encode()


def _set(key: bytes, value: bytes = b"a", exptime: bytes = b"0") -> bytes:
    return b"set %s 0 %s %d\r\n%s\r\n" % (key, exptime, len(value), value)


def _check(key: bytes) -> bytes:
    return b"mg %s f k\r\n" % key


def _cases() -> list[Case]:
    out: list[Case] = []

    def add(cid: str, cmd: str, line: bytes, data: Optional[bytes] = None,
            setup: bytes = b"", setup_reply: bytes = b"", extra_check: bytes = b"") -> None:
        key = _key(cid)
        line = line.replace(b"KEY", key)
        setup = setup.replace(b"KEY", key)
        out.append(Case(cid, cmd, key, line, data, setup, setup_reply,
                        extra_check + _check(key)))

    # -- classic storage: flags, exptime, bytes, cas unique -------------------
    for cmd in ("set", "add", "replace", "append", "prepend", "cas"):
        needs_item = cmd in ("replace", "append", "prepend")
        setup = _set(b"KEY") if needs_item else b""
        setup_reply = STORED if needs_item else b""
        tail = b" " + CAS_UNIQUE if cmd == "cas" else b""
        noreplies = (False, True) if cmd in ("set", "cas") else (False,)
        for noreply in noreplies:
            nr = b" noreply" if noreply else b""
            sfx = "-noreply" if noreply else ""
            for label, v in VALUES:
                add(f"{cmd}-flags-{label}{sfx}", cmd, b"%s KEY %s 0 2%s%s\r\n" % (
                    cmd.encode(), v, tail, nr), DATA, setup, setup_reply)
                add(f"{cmd}-exptime-{label}{sfx}", cmd, b"%s KEY 0 %s 2%s%s\r\n" % (
                    cmd.encode(), v, tail, nr), DATA, setup, setup_reply)
            for label, v in SIZE_VALUES:
                add(f"{cmd}-bytes-{label}{sfx}", cmd, b"%s KEY 0 0 %s%s%s\r\n" % (
                    cmd.encode(), v, tail, nr), DATA, setup, setup_reply)
            if cmd == "cas":
                for label, v in VALUES:
                    add(f"cas-unique-{label}{sfx}", cmd, b"cas KEY 0 0 2 %s%s\r\n" % (v, nr),
                        DATA)

    # -- incr/decr <delta>, touch <exptime>, gat/gats <exptime>, delete 0 ------
    for noreply in (False, True):
        nr = b" noreply" if noreply else b""
        sfx = "-noreply" if noreply else ""
        for label, v in VALUES:
            for cmd in ("incr", "decr"):
                add(f"{cmd}-delta-{label}{sfx}", cmd, b"%s KEY %s%s\r\n" % (cmd.encode(), v, nr),
                    setup=_set(b"KEY", b"10"), setup_reply=STORED)
            add(f"touch-exptime-{label}{sfx}", "touch", b"touch KEY %s%s\r\n" % (v, nr),
                setup=_set(b"KEY"), setup_reply=STORED)
            add(f"delete-hold-{label}{sfx}", "delete", b"delete KEY %s%s\r\n" % (v, nr),
                setup=_set(b"KEY"), setup_reply=STORED)
    for label, v in VALUES:
        add(f"gat-exptime-{label}", "gat", b"gat %s KEY\r\n" % v,
            setup=_set(b"KEY"), setup_reply=STORED)
        add(f"gats-exptime-{label}", "gats", b"gats %s KEY\r\n" % v)     # a miss: no cas shown

    # -- meta: mg T N R, ms <datalen> F T C N M I, md C T, ma N J D T C M ----
    item = _set(b"KEY")
    ttl_item = _set(b"KEY", exptime=b"100")
    number = _set(b"KEY", b"10")
    for label, v in META_VALUES:
        add(f"mg-T-{label}", "mg", b"mg KEY T%s\r\n" % v, setup=item, setup_reply=STORED)
        add(f"mg-N-{label}", "mg", b"mg KEY N%s\r\n" % v)
        add(f"mg-R-{label}", "mg", b"mg KEY R%s\r\n" % v, setup=ttl_item, setup_reply=STORED)
        for flag in (b"F", b"T", b"C", b"N", b"I", b"M"):
            add(f"ms-{flag.decode()}-{label}", "ms", b"ms KEY 2 %s%s\r\n" % (flag, v), DATA)
        add(f"ms-F-{label}-q", "ms", b"ms KEY 2 F%s q\r\n" % v, DATA)
        add(f"md-C-{label}", "md", b"md KEY C%s\r\n" % v)
        add(f"md-T-{label}", "md", b"md KEY I T%s\r\n" % v, setup=item, setup_reply=STORED)
        add(f"ma-N-{label}", "ma", b"ma KEY N%s v\r\n" % v)
        add(f"ma-J-{label}", "ma", b"ma KEY N0 J%s v\r\n" % v)
        add(f"ma-D-{label}", "ma", b"ma KEY D%s v\r\n" % v, setup=number, setup_reply=STORED)
        add(f"ma-D-decr-{label}", "ma", b"ma KEY MD D%s v\r\n" % v,
            setup=number, setup_reply=STORED)
        add(f"ma-T-{label}", "ma", b"ma KEY T%s v\r\n" % v, setup=number, setup_reply=STORED)
        add(f"ma-C-{label}", "ma", b"ma KEY C%s\r\n" % v)
        add(f"ma-M-{label}", "ma", b"ma KEY M%s v\r\n" % v, setup=number, setup_reply=STORED)
        add(f"ma-D-{label}-q", "ma", b"ma KEY D%s q\r\n" % v, setup=number, setup_reply=STORED)
    for label, v in SIZE_VALUES:
        add(f"ms-datalen-{label}", "ms", b"ms KEY %s\r\n" % v, DATA)
        add(f"ms-datalen-{label}-q", "ms", b"ms KEY %s q\r\n" % v, DATA)
    # opaque: at most 32 bytes
    for n in (31, 32, 33, 100):
        o = b"O" + b"9" * n
        add(f"mg-O-{n}", "mg", b"mg KEY %s\r\n" % o, setup=item, setup_reply=STORED)
        add(f"ms-O-{n}", "ms", b"ms KEY 2 %s\r\n" % o, DATA)
        add(f"md-O-{n}", "md", b"md KEY %s\r\n" % o, setup=item, setup_reply=STORED)
        add(f"ma-O-{n}", "ma", b"ma KEY %s\r\n" % o, setup=number, setup_reply=STORED)

    # -- verbosity <n>, then flush_all <delay> last (a delayed flush reaches
    # every item stored within the delay) --------------------------------------
    for noreply in (False, True):
        nr = b" noreply" if noreply else b""
        sfx = "-noreply" if noreply else ""
        for label, v in VALUES:
            add(f"verbosity-{label}{sfx}", "verbosity", b"verbosity %s%s\r\n" % (v, nr),
                extra_check=b"verbosity 0\r\n")
    for noreply in (False, True):
        nr = b" noreply" if noreply else b""
        sfx = "-noreply" if noreply else ""
        for label, v in VALUES:
            add(f"flush_all-delay-{label}{sfx}", "flush_all", b"flush_all %s%s\r\n" % (v, nr))
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return out


CASES: list[Case] = _cases()
BY_ID: dict[str, Case] = {c.id: c for c in CASES}


def split_reply(case: Case, reply: bytes) -> tuple[bytes, bytes, bytes]:
    """(setup reply, request reply, check reply) of one case's whole reply.
    The check reply is its last ``len(check lines)`` lines before the
    terminator's; raises ValueError when the reply does not have that shape."""
    if not reply.startswith(case.setup_reply):
        raise ValueError(f"setup reply missing: {reply!r}")
    rest = reply[len(case.setup_reply):]
    if not rest.endswith(TERMINATOR_REPLY):
        raise ValueError(f"terminator reply missing: {reply!r}")
    rest = rest[:-len(TERMINATOR_REPLY)]
    lines = rest.split(b"\r\n")[:-1]
    n = case.check.count(b"\r\n")
    if len(lines) < n:
        raise ValueError(f"check reply missing: {reply!r}")
    check = b"".join(line + b"\r\n" for line in lines[len(lines) - n:])
    return case.setup_reply, rest[:len(rest) - len(check)], check
