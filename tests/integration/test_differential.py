"""Differential test: the router (DefaultRoute) must be byte-for-byte memcached.

One scripted session covers every text and meta command, noreply and quiet
mixes, error paths, large and binary values.  It is sent to a fresh
memcached directly and, through the router, to another fresh memcached
started the same way; the two reply streams must be identical.

How the session is made concrete: a few steps need values only known at
run time (the CAS unique of an item for ``cas``/``C``).  A fresh memcached
hands out CAS values deterministically (a global counter bumped once per
store), so the session is first *resolved* by playing it one step at a time
against a scratch fresh memcached, reading CAS values from its replies.
The resulting list of concrete requests is then replayed against the
router in front of a fresh memcached (sequential mode: the resolving run is
the reference) or against a fresh direct memcached and the router in front
of another fresh one (pipelined mode); the CAS values are the same on all.

Two modes:
* sequential: each step is written, then a marker request is written,
  ``mg __marker__ O<n>`` (a miss whose reply ``EN O<n>`` is unique to the
  step), and the reply is read until it ends with the marker's reply; the
  next step is written only then.  The marker is what lets us wait for
  steps that have no reply at all (noreply, quiet meta).
* pipelined: the whole session in one write, closed by a sentinel get whose
  reply cannot occur earlier.

Normalised fields (and only those), because they depend on the wall clock
and the two servers run a little apart in time:
* ``STAT <name> <value>``: only the names and their order are compared (the
  values are pids, uptimes, ports, counters);
* meta ``t<n>`` with n >= 0 (remaining TTL of an item that has one: may be
  one second apart if the server's clock ticks between the store and the
  fetch); ``t-1`` (no TTL) is compared exactly;
* ``me``'s ``exp=<n>`` (any n but -1, same reason; memcached prints it
  relative to its clock) and ``la=<n>`` (seconds since last access).

Further differential tests below, each on fresh servers: cases that close
the connection or depend on line length, values over the size limit (with
every storage command and ms mode/flag error), NUL bytes in command lines,
out-of-memory errors (memcached -m 2 -M), and a small -b with a long multiget.
"""
from __future__ import annotations

import re
from typing import Callable, Union

import pytest

from support import Client, first_difference, show
from mcrouter.config import ADMIN_COMMANDS

Step = Union[bytes, Callable[[dict], bytes]]

KEY250 = b"k" * 250
KEY251 = b"k" * 251
# 1,000,000 bytes of every byte value, with \r\n, NUL and reply-like text inside
BIG = ((bytes(range(256)) + b"\r\n\x00END\r\nVALUE a 0 1\r\n") * 3700)[:1_000_000]
BINARY = b"\x00\r\n\x00END\r\nVALUE x 0 1\r\n\r\n\x00\xff\rEN\r\n\n"
TOO_LARGE = 1048577          # > 1 MiB: rejected by the router itself (and by memcached)
EDGE = 1048576               # exactly 1 MiB: forwarded, memcached rejects (item header overhead)
MARKER = b"mg __marker__ O%d\r\n"         # a miss whose reply (EN O<n>) is unique per step
MARKER_REPLY = b"EN O%d\r\n"
SENTINEL = b"set __end__ 0 0 3\r\nend\r\nget __end__\r\n"
SENTINEL_REPLY = b"STORED\r\nVALUE __end__ 0 3\r\nend\r\nEND\r\n"


def setcmd(cmd: str, key: bytes | str, value: bytes, flags: int = 0, exptime: int = 0,
           extra: str = "") -> bytes:
    if isinstance(key, str):
        key = key.encode()
    line = b"%s %s %d %d %d%s\r\n" % (cmd.encode(), key, flags, exptime, len(value),
                                      extra.encode())
    return line + value + b"\r\n"


def cas_of(key: str) -> Callable[[dict], bytes]:
    """Placeholder resolved to the CAS of ``key`` last seen in a reply."""
    return lambda st: str(st[key]).encode()


def build_session() -> list[Step]:
    """The scripted session: a list of steps (bytes, or callables of the CAS map)."""
    s: list[Step] = []
    add = s.append

    # -- housekeeping commands
    add(b"version\r\n")
    add(b"verbosity 1\r\n")
    add(b"verbosity 0 noreply\r\n")
    add(b"verbosity\r\n")                        # ERROR
    add(b"flush_all\r\n")
    add(b"flush_all 0\r\n")
    add(b"flush_all noreply\r\n")
    add(b"stats settings\r\n")
    add(b"stats\r\n")

    # -- retrieval misses, one and many keys
    add(b"get nokey\r\n")
    add(b"get a b c\r\n")
    add(b"gets a b c\r\n")
    add(b"gat 100 a\r\n")
    add(b"gats 100 a b c\r\n")
    add(b"get\r\n")                              # ERROR
    add(b"get " + KEY250 + b"\r\n")              # a miss: 250 is allowed
    add(b"get " + KEY251 + b"\r\n")              # CLIENT_ERROR bad command line format

    # -- storage: hits and misses
    add(setcmd("set", "k1", b"abc", flags=5))
    add(b"get k1\r\n")
    add(b"gets k1\r\n")
    add(setcmd("add", "k1", b"x"))               # NOT_STORED
    add(setcmd("add", "k2", b"hi", flags=7))     # STORED
    add(setcmd("replace", "k3", b"x"))           # NOT_STORED
    add(setcmd("replace", "k2", b"bye", flags=8))
    add(setcmd("append", "k1", b"def"))
    add(setcmd("prepend", "k1", b"zz"))
    add(setcmd("append", "nokey", b"x"))         # NOT_STORED
    add(setcmd("prepend", "nokey", b"x"))        # NOT_STORED
    add(b"get k1 k2 k3 k1\r\n")                  # many keys, a miss and a repeat
    add(b"gets k2 k1\r\n")
    add(lambda st: b"cas k1 0 0 1 " + cas_of("k1")(st) + b"\r\nX\r\n")     # STORED
    add(lambda st: b"cas k1 0 0 1 " + cas_of("k1")(st) + b"\r\nY\r\n")     # EXISTS (stale)
    add(b"cas nokey 0 0 1 1\r\nZ\r\n")           # NOT_FOUND
    add(b"cas k1 0 0 1 abc\r\nZ\r\n")            # CLIENT_ERROR, then "Z" → ERROR
    add(b"cas k1 0 0 1\r\nZ\r\n")                # too few tokens: ERROR, then ERROR
    add(b"gets k1\r\n")
    add(b"set k4 0 0 notanumber\r\nabc\r\n")     # CLIENT_ERROR, then ERROR
    add(b"set k4 0 0 -1\r\n")                    # CLIENT_ERROR bad command line format
    add(setcmd("set", "empty", b""))
    add(b"get empty\r\n")

    # -- delete
    add(b"delete k2\r\n")
    add(b"delete k2\r\n")                        # NOT_FOUND
    add(setcmd("set", "k5", b"v"))
    add(b"delete k5 0\r\n")                      # legacy form still accepted
    add(b"delete k5 1\r\n")                      # CLIENT_ERROR ... Usage: delete
    add(b"delete\r\n")                           # ERROR
    add(b"delete " + KEY251 + b"\r\n")

    # -- incr / decr
    add(setcmd("set", "n", b"10"))
    add(b"incr n 5\r\n")
    add(b"decr n 100\r\n")                       # floors at 0
    # Not read back here: when incr/decr shortens a number, memcached either
    # rewrites the item in place padded with spaces ("0 ") or stores a new
    # item ("0"), depending on whether another of its threads holds a
    # reference at that instant: not deterministic.  Values are re-set
    # before they are read again.
    add(b"incr n 18446744073709551615\r\n")
    add(b"incr n 1\r\n")                         # wraps to 0
    add(setcmd("set", "n", b"20"))
    add(b"incr nokey 1\r\n")                     # NOT_FOUND
    add(b"decr nokey 1\r\n")
    add(b"incr k1 1\r\n")                        # non-numeric value
    add(b"incr n abc\r\n")                       # bad delta
    add(b"incr n -1\r\n")
    add(b"incr n 18446744073709551616\r\n")      # delta overflow
    add(b"incr n\r\n")                           # ERROR

    # -- touch, gat, gats
    add(b"touch k1 1000\r\n")
    add(b"touch nokey 10\r\n")
    add(b"touch k1 abc\r\n")
    add(b"gat 0 k1\r\n")
    add(b"gats 0 k1 n nokey\r\n")
    add(b"gat abc k1\r\n")                       # CLIENT_ERROR invalid exptime argument
    add(b"gat 100\r\n")                          # no key: ERROR

    # -- noreply mixes, including failing noreply commands
    add(setcmd("set", "nr1", b"x", extra=" noreply") + b"get nr1\r\n")
    add(setcmd("add", "nr1", b"y", extra=" noreply")                     # fails silently
        + b"incr nr1 1 noreply\r\n"                                       # non-numeric: silent
        + b"get nr1\r\n"
        + setcmd("append", "nr1", b"z", extra=" noreply")
        + b"delete nr1 noreply\r\ndelete nr1 noreply\r\n"                 # second fails
        + b"get nr1\r\n"
        + b"incr nr1 1 noreply\r\n"                                       # NOT_FOUND: silent
        + setcmd("set", "nr2", b"5", extra=" noreply")
        + b"incr nr2 2 noreply\r\ndecr nr2 1 noreply\r\ntouch nr2 100 noreply\r\n"
        + b"get nr2\r\n")
    add(b"set nr3 0 0 1 noreply\r\nxyz\r\n")     # bad data chunk with noreply
    add(b"set " + KEY251 + b" 0 0 1 noreply\r\nx\r\n")
    add(b"incr nr2 abc noreply\r\nget nr2\r\n")
    add(b"flush_all 0 noreply\r\nget nr2\r\n")

    # -- errors
    add(b"bogus\r\n")
    add(b"bogus with args\r\n")
    add(b"GET a\r\n")
    add(b"Set a 0 0 1\r\nx\r\n")
    add(b"\r\n")
    add(b"set " + KEY251 + b" 0 0 1\r\nx\r\n")   # CLIENT_ERROR, then "x" → ERROR
    add(setcmd("set", KEY250, b"250"))
    add(b"get " + KEY250 + b"\r\n")
    add(b"set bc 0 0 3\r\nabcd\r\n")             # bad data chunk, then leftover → ERROR
    add(b"set bc 0 0 3\r\nab\r\n\r\n")
    add(b"set toobig 0 0 %d\r\n" % TOO_LARGE + b"t" * TOO_LARGE + b"\r\nget toobig\r\n")
    add(b"set toobig 0 0 %d noreply\r\n" % TOO_LARGE + b"t" * TOO_LARGE + b"\r\n")
    add(b"set edge 0 0 %d\r\n" % EDGE + b"e" * EDGE + b"\r\nget edge\r\n")

    # -- large and binary values
    add(setcmd("set", "big", BIG, flags=42))
    add(b"get big\r\n")
    add(b"gets big k1 big\r\n")
    add(setcmd("set", "bin", BINARY, flags=4294967295))
    add(b"get bin\r\n")
    add(setcmd("append", "bin", b"\r\n\x00"))
    add(b"get bin big\r\n")
    add(b"ms binm %d F3\r\n" % len(BINARY) + BINARY + b"\r\n")
    add(b"mg binm v f s\r\n")

    # -- a long multiget line (> 2048 bytes is allowed for get/gets)
    add(b"get " + b" ".join(b"lk%05d" % i for i in range(400)) + b" k1\r\n")

    # -- meta: set / get with many flags
    add(b"ms mk1 3 T0 F5 c k O1\r\nabc\r\n")
    add(b"mg mk1 v t f c s k O2\r\n")
    add(b"mg mk1\r\n")                           # HD
    add(b"mg mk1 k v h\r\n")
    add(b"mg mk1 h\r\n")
    add(b"mg nokey v k O3\r\n")                  # EN O3 knokey
    add(b"mg nokey\r\n")
    add(b"mg mk1 v v\r\n")                       # duplicate flag
    add(b"mg mk1 !\r\n")                         # invalid flag
    add(b"mg mk1 P/foo Lbar v\r\n")              # proxy hints ignored
    add(b"mg mk1 v O" + b"o" * 32 + b"\r\n")
    add(b"mg mk1 v O" + b"o" * 33 + b"\r\n")     # opaque too long
    add(b"mg mk1 " + b" ".join([b"v", b"t", b"f", b"c", b"s", b"k", b"h", b"u"] +
                               [b"O%d" % i for i in range(12)]) + b"\r\n")   # too many tokens
    add(b"mg mk1 v f k O1 O2\r\n")               # duplicate O
    add(b"mg mk1 T300 v t\r\n")                  # update TTL (t normalised)
    add(b"mg mk1 N30 v\r\n")
    add(b"mg newviv N30 v c k s\r\n")            # vivify on miss
    add(b"mg newviv v\r\n")
    add(b"mg mk1 Tabc v\r\n")                    # bad token
    add(b"mg " + KEY251 + b" v\r\n")
    add(b"mg\r\n")                               # ERROR
    add(b"MG mk1 v\r\n")                         # upper case: ERROR
    add(b"mz mk1\r\n")                           # unknown meta: ERROR
    add(b"mg mk1 c k\r\n")                       # CAS for the next steps

    # -- ms modes and CAS
    add(b"ms mk2 2 ME\r\nhi\r\n")                # add: HD
    add(b"ms mk2 2 ME\r\nho\r\n")                # add again: NS
    add(b"ms mk2 2 MA\r\n!!\r\n")                # append
    add(b"ms mk2 2 MP\r\n<<\r\n")                # prepend
    add(b"ms mk9 2 MR\r\nxx\r\n")                # replace a miss: NS
    add(b"ms mk9 2 MA\r\nxx\r\n")                # append a miss: NS
    add(b"ms mk2 2 MS k O9\r\nzz\r\n")
    add(b"ms mk2 2 MX\r\nzz\r\n")                # invalid mode, block swallowed
    add(b"ms mk2 2 Mx\r\nzz\r\n")
    add(b"ms mk2 2 s\r\nzz\r\n")                 # 1.6.18: s not yet valid for ms
    add(b"ms mk2 2 !\r\nzz\r\n")                 # invalid flag
    add(b"ms mk2 2 T1 T2\r\nzz\r\n")             # duplicate flag
    add(b"ms mk2 2 C999999 c\r\nzz\r\n")         # EX
    add(b"ms nokey 2 C1\r\nzz\r\n")              # NF
    add(lambda st: b"ms mk1 3 c k C" + cas_of("mk1")(st) + b"\r\nnew\r\n")  # HD, new CAS
    add(b"ms mk1 3 I\r\nxyz\r\n")
    add(b"ms mk3 abc\r\nxx\r\n")                 # bad length
    add(b"ms mk3\r\n")
    add(b"ms mk3 2\r\nabc\r\n")                  # bad data chunk: two lines
    add(b"ms mk3 -1\r\n")
    add(b"ms mk3 2 Fabc\r\nxx\r\n")
    add(b"ms mk3 2 T-1\r\nxx\r\n")               # expires at once
    add(b"mg mk3 v\r\n")
    add(b"ms mk4 5 T3600 F9 c\r\nhello\r\n")
    add(b"mg mk4 v t f\r\n")                     # t normalised
    add(b"ms toobigm %d T0\r\n" % TOO_LARGE + b"m" * TOO_LARGE + b"\r\nmg toobigm v\r\n")
    add(b"ms toobigm %d q\r\n" % TOO_LARGE + b"m" * TOO_LARGE + b"\r\nmn\r\n")
    add(b"ms " + KEY251 + b" 1\r\nx\r\n")

    # -- base64 keys
    add(b"ms Zm9vYmFy 3 b k\r\nbar\r\n")
    add(b"mg Zm9vYmFy b v k\r\n")
    add(b"mg Zm9vYmFy v k\r\n")                  # not decoded: a miss
    add(b"mg foobar v\r\n")                      # the decoded key exists
    add(b"mg !!!! b v\r\n")                      # decode error
    add(b"me Zm9vYmFy b\r\n")
    add(b"md Zm9vYmFy b k\r\n")
    add(b"mg Zm9vYmFy b v k\r\n")                # EN kZm9vYmFy b

    # -- md
    add(b"md mk2\r\n")
    add(b"md mk2\r\n")                           # NF
    add(b"md mk1 C1\r\n")                        # EX
    add(b"md nokey O5 k\r\n")
    add(b"md mk1 x\r\n")                         # 1.6.18 rejects x
    add(b"md mk1 !\r\n")
    add(b"md mk1 I T30\r\n")                     # invalidate: stale
    add(b"mg mk1 v c\r\n")                       # X W
    add(b"mg mk1 v c\r\n")                       # Z X
    add(b"md mk1 q\r\nmn\r\n")

    # -- ma
    add(b"ma mnum\r\n")                          # NF
    add(b"ma mnum N0 J10 v t c k O1\r\n")        # auto-create
    add(b"ma mnum v\r\n")
    add(b"ma mnum MD D5 v\r\n")
    add(b"ma mnum M- D100 v\r\n")                # floors at 0
    add(b"ma mnum M+ D18446744073709551615 v\r\nma mnum v\r\n")   # wraps
    add(b"ma mnum MI\r\n")
    add(setcmd("set", "mnum", b"7"))             # see the note on shortened numbers
    add(b"ma mnum MX\r\n")                       # invalid mode
    add(b"ma mnum D abc\r\n")
    add(b"ma mnum Dabc\r\n")
    add(b"ma mnum v v\r\n")
    add(b"ma mnum J5\r\n")
    add(b"ma mk4 v\r\n")                         # non-numeric
    add(b"ma mnum C1 v\r\n")                     # EX
    add(b"ma mnum T100 t v\r\n")                 # t normalised
    add(b"ma nokey q\r\nma mnum q v\r\nmn\r\n")

    # -- quiet pipelines closed with mn
    add(b"mg nokey v q\r\nmg mk4 v q k\r\nmg nokey2 O7 k q\r\nmn\r\n")
    add(b"ms mq1 1 q\r\nx\r\nms mq1 1 ME q\r\ny\r\nms mq2 2 q\r\nab\r\n"
        b"ms mq1 1 C1 q O4\r\nz\r\nmn\r\n")
    add(b"md mq2 q\r\nmd mq2 q O5 k\r\nmd mq1 q\r\nmn\r\n")
    add(b"mg mq1 v q\r\nmg mq2 v q\r\nms mq3 1 q\r\nx\r\nmg mq3 v q\r\nmn\r\nmn\r\n")
    add(b"mg mk4 q v v\r\nms mq3 1 q MX\r\nx\r\nmn\r\n")        # errors are never quiet
    add(b"ms mq4 3 q\r\nabcd\r\nmn\r\n")         # bad data chunk with q
    add(b"mn\r\n")
    add(b"mn extra tokens\r\n")

    # -- me
    add(b"me mk4\r\n")                           # exp=/la= normalised
    add(b"me nokey\r\n")
    add(b"me mnum\r\n")
    add(b"me\r\n")

    # -- mixed pipeline of text and meta with noreply and quiet
    add(setcmd("set", "mix", b"1", extra=" noreply") + b"ma mix q\r\nincr mix 1 noreply\r\n"
        b"mg mix v\r\nget mix\r\nmd mix q\r\nget mix\r\nmn\r\n")

    # -- tokenizer and number-parsing corners
    add(b"get a\n")                              # bare LF ends a line too
    add(b"get  k1   n  \r\n")                   # runs of spaces, trailing spaces
    add(b"get\tk1\r\n")                         # a tab is not a separator
    add(b"set  sp  1  0  1 \r\nx\r\nget sp\r\n")
    add(b"set k6 0 0 1 noreply extra\r\nx\r\n")  # too many tokens
    add(b"set k6 -1 0 1\r\nx\r\n")            # negative flags
    add(b"set k6 4294967296 0 1\r\nx\r\nget k6\r\n")   # flags past 32 bits
    add(b"set k6 +5 0 1\r\nx\r\nget k6\r\n")
    add(b"set k6 0 -1 1\r\nx\r\nget k6\r\n")          # negative exptime: gone at once
    add(b"set k6 0 0 4294967297\r\nx\r\nget k6\r\n")   # length wraps to 1 in an int32
    add(b"set k6 0 0 01\r\ny\r\nget k6\r\n")
    add(b"set k6 0 0 1x\r\ny\r\n")
    add(b"incr n 00012\r\nincr n +3\r\ndecr n 1 noreply\r\nget n\r\n")
    add(b"touch k1\r\n")                        # ERROR
    add(b"touch k1 10 noreply\r\n")
    add(b"gats 0\r\n")
    add(b"gat\r\n")
    add(b"verbosity 1 2 3\r\n")
    add(b"verbosity abc\r\n")
    add(b"flush_all abc\r\n")
    add(b"flush_all -1\r\n")
    add(b"flush_all 0 0 0\r\n")
    add(b"delete a b c d\r\n")
    add(b"delete k1 noreply extra\r\n")
    add(b"version extra\r\n")
    # (not "stats items"/"stats slabs": which slab classes they list depends on
    # when memcached's background LRU crawler reclaims expired items)
    add(b"stats sizes\r\n")
    add(b"stats detail dump\r\n")
    add(b"stats bogus\r\n")
    add(b"stats reset\r\n")
    add(b"mg " + b"a" * 250 + b" v\r\n")
    add(b"ms " + b"YWJj" * 62 + b"YQ== 1 b\r\nx\r\n")  # 252 bytes as sent
    add(b"mg YWJj b v k\r\n")
    add(b"mg " + b"x" * 20 + b" v" * 18 + b"\r\n")      # 20 tokens
    add(b"mg k1 v t f c s k O1 h u q\r\nmn\r\n")
    add(b"ma mnum N0 J5 D2 MI T0 t c v k O9 q\r\nmn\r\n")
    add(b"md k1 I q\r\nmg k1 v c\r\n")
    add(b"me k1 extra\r\n")
    add(b"ms k7 0 T0\r\n\r\nmg k7 v s\r\n")          # an empty value
    add(b"ms k7 2 T0 F4294967295\r\nab\r\nmg k7 f\r\n")
    add(b"ms k7 2 F4294967296\r\nab\r\nmg k7 f\r\n")

    # -- LF-only line ends
    add(b"set lf 0 0 1\nx\r\nget lf\n")
    add(b"set lf 0 0 1\r\nx\n\r\n")           # block not ended by \r\n
    add(b"ms lf 1 T0\nx\r\nmg lf v\n")
    add(b"ms lf 1\r\nx\nmn\r\n")
    add(b"get lf\r\r\n")
    add(b"\n")
    add(b"mn\n")

    # -- odd bytes in keys (memcached does not check them in the text protocol)
    add(b"set k\x01\x7f\xff 0 0 1\r\nx\r\nget k\x01\x7f\xff\r\n")
    add(b"set a\rb 0 0 1\r\ny\r\nget a\rb\r\nmg a\rb v k\r\n")
    add(b"get a\r\r\n")                        # key "a\r"
    add(b"mg k\x01\x7f\xff v\r\nmd k\x01\x7f\xff\r\n")

    add(b"stats settings\r\n")
    add(b"version\r\n")
    return s


# ---------------------------------------------------------------------------
# running a session

_VALUE_CAS = re.compile(rb"^VALUE (\S+) \d+ \d+ (\d+)\r$", re.M)
_META_CAS = re.compile(rb"^(?:HD|VA \d+|EN|NF|NS|EX)\b(?=[^\r\n]* c(\d+))(?=[^\r\n]* k(\S+))", re.M)


def learn_cas(reply: bytes, state: dict) -> None:
    """Record CAS values seen in ``gets``/``gats`` replies and meta replies with ``c`` and ``k``."""
    for m in _VALUE_CAS.finditer(reply):
        state[m.group(1).decode()] = int(m.group(2))
    for m in _META_CAS.finditer(reply):
        state[m.group(2).decode()] = int(m.group(1))


def run_sequential(client: Client, steps: list[Step], state: dict | None = None,
                   timeout: float = 20.0) -> tuple[list[bytes], list[bytes]]:
    """Play steps one at a time (write the step, then the marker; read until
    the reply ends with the marker's reply).  Returns (concrete requests, replies
    without the marker reply)."""
    concrete, replies = [], []
    state = {} if state is None else state
    for i, step in enumerate(steps):
        req = step(state) if callable(step) else step
        marker_reply = MARKER_REPLY % i
        client.send(req)
        client.send(MARKER % i)
        reply = client.recv_until_end(marker_reply, timeout)
        assert reply.endswith(marker_reply), (
            f"no complete reply to {show(req)}; got {show(reply)}")
        reply = reply[:-len(marker_reply)]
        learn_cas(reply, state)
        concrete.append(req)
        replies.append(reply)
    return concrete, replies


_STAT = re.compile(rb"^STAT (\S+) [^\r\n]*\r\n", re.M)
_META_TTL = re.compile(rb"^((?:HD|VA \d+|EN|NF|NS|EX)(?: [^\r\n]*)?) t\d+(?=[ \r])", re.M)
_ME_TIMES = (re.compile(rb"^(ME \S+ exp=)(?!-1 )-?\d+", re.M), re.compile(rb"^(ME [^\r\n]* la=)\d+", re.M))


def normalise(data: bytes) -> bytes:
    """Blank out the wall-clock dependent fields documented in the module doc."""
    data = _STAT.sub(rb"STAT \1 *\r\n", data)
    data = _META_TTL.sub(rb"\1 t*", data)
    for rx in _ME_TIMES:
        data = rx.sub(rb"\1*", data)
    return data


@pytest.fixture(scope="module")
def session() -> list[Step]:
    return build_session()


def resolve(memcached, session) -> tuple[list[bytes], list[bytes]]:
    """Concrete requests (CAS filled in) and the reference replies, from a fresh memcached."""
    scratch = memcached()
    with scratch.client() as c:
        return run_sequential(c, session)


def test_normalise_only_touches_clock_fields():
    raw = (b"STAT pid 123\r\nEND\r\nVA 3 t59 f5 c3\r\nt12\r\nHD t-1 c2\r\n"
           b"ME k exp=30 la=2 cas=4 fetch=no cls=1 size=60\r\nVALUE t1 0 3\r\nt33\r\n"
           b"ME k exp=-1 la=0 cas=5 fetch=no cls=1 size=60\r\n"
           b"ME k exp=-100 la=0 cas=5 fetch=no cls=1 size=60\r\n")
    assert normalise(raw) == (b"STAT pid *\r\nEND\r\nVA 3 t* f5 c3\r\nt12\r\nHD t-1 c2\r\n"
                              b"ME k exp=* la=* cas=4 fetch=no cls=1 size=60\r\n"
                              b"VALUE t1 0 3\r\nt33\r\n"
                              b"ME k exp=-1 la=* cas=5 fetch=no cls=1 size=60\r\n"
                              b"ME k exp=* la=* cas=5 fetch=no cls=1 size=60\r\n")


def test_session_is_deterministic_on_memcached(memcached, session):
    """Sanity check of the method: two fresh memcacheds give the same stream."""
    _, a = resolve(memcached, session)
    _, b = resolve(memcached, session)
    assert [normalise(x) for x in a] == [normalise(x) for x in b]


# The session sends stats reset, stats detail and me, which the router refuses
# by default (README "Admin commands"); here every admin command is allowed, so
# that how the router forwards them is compared with memcached too.
ALLOW_ADMIN = {"allow": list(ADMIN_COMMANDS)}


@pytest.mark.parametrize("conns", [None, 1], ids=["default-C", "C1"])
def test_sequential_identical(memcached, router, session, conns):
    concrete, expected = resolve(memcached, session)
    backend = memcached()
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"},
                "admin": ALLOW_ADMIN}, workers=2, conns=conns)
    with r.client() as c:
        _, actual = run_sequential(c, concrete)
    for req, exp, act in zip(concrete, expected, actual):
        assert normalise(act) == normalise(exp), (
            f"request {show(req)}:\n{first_difference(normalise(exp), normalise(act))}")
    assert len(actual) == len(expected)


@pytest.mark.parametrize("conns", [None, 1], ids=["default-C", "C1"])
def test_pipelined_identical(memcached, router, session, conns):
    concrete, _ = resolve(memcached, session)
    stream = b"".join(concrete) + SENTINEL
    direct = memcached()
    backend = memcached()
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"},
                "admin": ALLOW_ADMIN}, workers=2, conns=conns)
    with direct.client() as c:
        expected = c.pipeline(stream, SENTINEL_REPLY, timeout=30)
    assert expected.endswith(SENTINEL_REPLY), f"memcached did not answer: {show(expected)}"
    with r.client() as c:
        actual = c.pipeline(stream, SENTINEL_REPLY, timeout=30)
    exp, act = normalise(expected), normalise(actual)
    assert act == exp, first_difference(exp, act)


# ---------------------------------------------------------------------------
# cases that end the connection, or depend on how a line is cut; each on a
# fresh connection.  (request, memcached closes the connection?)

CONNECTION_CASES = {
    "long-line-closes": (b"get a\r\nset " + b"k" * 3000, True),
    "long-line-with-newline": (b"get a\r\nbogus " + b"k" * 2100 + b"\r\nget a\r\n", False),
    "http-closes": (b"get a\r\nGET / HTTP/1.1\r\nget a\r\n", True),
    "http-last-token": (b"get a\r\nPOST /x HTTP/1.0\r\n", True),
    "quit": (b"get a\r\nquit\r\nget a\r\n", True),
    "quit-with-args": (b"get a\r\nquit now\r\nget a\r\n", True),
    "long-get-line": (b"get " + b" ".join([b"k" * 200] * 30) + b"\r\n", False),
    "long-gets-line": (b"gets " + b"x " * 1500 + b"\r\n", False),
    "long-get-key": (b"get " + b"k" * 3000 + b"\r\n", False),
    "leading-spaces-get": (b"   get " + b"y " * 1500 + b"\r\n", False),
    "meta-too-many-flags": (b"mg " + b"v " * 1100 + b"\r\n", False),
    "line-2047": (b"get a\r\n" + b"x" * 2047 + b"\r\nget a\r\n", False),
    "line-2049-no-newline": (b"get a\r\n" + b"x" * 2049, True),
}


# A line over 2048 bytes (not a get/gets) closes the client after the replies
# before it: memcached itself closes on one whenever its first 2048 bytes
# arrive without the newline, which depends on how its reads fall (here it
# read the line whole, so it answered it); the router always closes, and so
# never sends one upstream, where it could reset a connection others share.
ROUTER_CLOSES = {"meta-too-many-flags": b"", "long-line-with-newline": b"END\r\n"}


@pytest.mark.parametrize("name", list(CONNECTION_CASES))
def test_connection_level_cases_identical(memcached, router, name):
    req, closes = CONNECTION_CASES[name]
    direct, backend = memcached(), memcached()
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"}}, workers=2)
    results = []
    for port in (direct.port, r.port):
        with Client(port) as c:
            if closes:
                c.send(req)
                got = c.recv_until_end(b"\x00never\x00", timeout=10)   # until EOF
                results.append((got, c.eof))
            else:
                c.send(req)
                c.send(MARKER % 1)
                got = c.recv_until_end(MARKER_REPLY % 1, timeout=10)
                results.append((got, c.eof))
    (exp, exp_eof), (act, act_eof) = results
    assert exp_eof == closes, f"memcached itself did not behave as the case says: {show(exp)}"
    if name in ROUTER_CLOSES:
        exp, exp_eof = ROUTER_CLOSES[name], True
    assert act == exp, first_difference(exp, act)
    assert act_eof == exp_eof


def test_out_of_memory_errors_identical(memcached, router):
    """memcached -m 2 -M (no eviction): storage fails with SERVER_ERROR.  A
    text noreply set fails silently, a quiet ms still reports the error;
    the router must pass both through exactly."""
    v = b"x" * 100000
    stream = (b"".join(b"set k%d 0 0 100000 noreply\r\n" % i + v + b"\r\n" for i in range(40))
              + b"mn\r\n"
              + b"".join(b"ms m%d 100000 q\r\n" % i + v + b"\r\n" for i in range(40)) + b"mn\r\n"
              + b"".join(b"set z%d 0 0 100000\r\n" % i + v + b"\r\n" for i in range(5))
              + b"get k0 k39 m0\r\n" + SENTINEL)
    direct, backend = memcached("-m", "2", "-M"), memcached("-m", "2", "-M")
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"}})
    with direct.client() as c:
        expected = c.pipeline(stream, SENTINEL_REPLY, timeout=30)
    assert b"SERVER_ERROR out of memory" in expected
    with r.client() as c:
        actual = c.pipeline(stream, SENTINEL_REPLY, timeout=30)
    assert actual == expected, first_difference(expected, actual)


# A value over the item size limit: memcached swallows the data block and
# answers "too large"; for set and for ms in any mode it also drops the old
# value; flag errors in the ms line win over the size.  Each case starts
# from a stored "k" and reads it back.
TOO_LARGE_CASES = [b"set k 0 0 %d", b"set k 0 0 %d noreply", b"add k 0 0 %d",
                   b"replace k 0 0 %d", b"append k 0 0 %d", b"prepend k 0 0 %d",
                   b"cas k 0 0 %d 1", b"ms k %d", b"ms k %d T0 F1", b"ms k %d q",
                   b"ms k %d k O1 c", b"ms k %d I", b"ms k %d C1",
                   b"ms k %d MS", b"ms k %d MA", b"ms k %d MP", b"ms k %d ME", b"ms k %d MR",
                   b"ms k %d q MA", b"ms k %d N5 MA", b"ms k %d Ms", b"ms k %d Ma",
                   b"ms k %d MX", b"ms k %d !", b"ms k %d T1 T2", b"ms k %d Tabc",
                   b"ms k %d Fabc", b"ms k %d Cabc", b"ms k %d O" + b"o" * 40, b"ms k %d b",
                   b"ms k %d S100", b"ms k %d E5"]


def test_too_large_values_identical(memcached, router):
    steps = [b"set k 0 0 1\r\nx\r\n" + (case % TOO_LARGE) + b"\r\n" + b"y" * TOO_LARGE
             + b"\r\nget k\r\n" for case in TOO_LARGE_CASES]
    direct, backend = memcached(), memcached()
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"}})
    with direct.client() as c:
        _, expected = run_sequential(c, steps)
    with r.client() as c:
        _, actual = run_sequential(c, steps)
    bad = [f"{case.decode()}: memcached {exp!r}, router {act!r}"
           for case, exp, act in zip(TOO_LARGE_CASES, expected, actual) if exp != act]
    assert not bad, "\n".join(bad)


def test_long_multiget_with_small_buffer_size(memcached, router):
    """BUGS.md #6: -b is a read size and output bound; it must not cap the
    length of a multiget line (memcached has no cap)."""
    direct, backend = memcached(), memcached()
    for m in (direct, backend):
        m.set("key00700", b"hit")
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"}},
               extra=["-b", "4096"])
    req = b"get " + b" ".join(b"key%05d" % i for i in range(1200)) + b"\r\n"
    results = []
    for port in (direct.port, r.port):
        with Client(port) as c:
            c.send(req)
            c.send(MARKER % 1)
            results.append(c.recv_until_end(MARKER_REPLY % 1, timeout=10))
    assert results[0] == b"VALUE key00700 0 3\r\nhit\r\nEND\r\n" + MARKER_REPLY % 1
    assert results[1] == results[0]


NUL_CASES = {
    "set": b"set k\x00z 0 0 1\r\nx\r\n",
    "ms": b"ms k\x00 2\r\nab\r\n",
    "get": b"get a\x00b\r\n",
    "get-multi": b"get a\x00b b\r\n",
    "mg": b"mg a\x00 v\r\n",
    "incr": b"incr n\x00 1\r\n",
    "line": b"\x00\r\n",
    "delete": b"delete a\x00 noreply\r\n",
}


@pytest.mark.parametrize("name", list(NUL_CASES))
def test_nul_in_command_line_identical(memcached, router, name):
    """BUGS.md #7: memcached parses a line only up to a NUL byte; the router
    must frame it the same way or the upstream replies shift."""
    direct, backend = memcached(), memcached()
    for m in (direct, backend):
        m.set("a", b"A")
        m.set("b", b"B")
        m.set("n", b"1")
    r = router({"orderedPool": [backend.addr], "route": {"type": "DefaultRoute"}})
    stream = NUL_CASES[name] + b"get a\r\nget b\r\n" + SENTINEL
    with direct.client() as c:
        expected = c.pipeline(stream, SENTINEL_REPLY, timeout=4)
    assert expected.endswith(SENTINEL_REPLY)
    with r.client() as c:
        actual = c.pipeline(stream, SENTINEL_REPLY, timeout=4)
    assert actual == expected, first_difference(expected, actual)
