"""The reply bounds (no line past 64 KiB without CRLF; VALUE flags a uint32,
cas a uint64) against replies memcached 1.6.18 does send: none refused."""
from __future__ import annotations

import pytest

from mcrouter._parser import scan
from mcrouter.protocol import ST_FAIL, ST_OK

INCOMPLETE, GARBAGE, WHOLE = -1, -2, 0      # WHOLE: the reply is all of the bytes
KEY = b"k" * 250
BIG = 200_000                   # a data block far past 64 KiB, with no CRLF in it

CASES = [
    # a data block is no line: any length without CRLF is only unfinished
    (b"get k\r\n", b"VALUE k 0 %d\r\n" % BIG + b"x" * 70_000, INCOMPLETE),
    (b"get a b\r\n", b"VALUE a 0 1\r\nx\r\nVALUE b 0 %d\r\n" % BIG + b"x" * 70_000, INCOMPLETE),
    (b"gets k\r\n", b"VALUE k 1 %d 7\r\n" % BIG + b"\n" * 70_000, INCOMPLETE),
    (b"mg k v\r\n", b"VA %d\r\n" % BIG + b"x" * 70_000, INCOMPLETE),
    (b"mg k v q\r\n", b"VA %d\r\n" % BIG + b"x" * 70_000, INCOMPLETE),
    (b"get k\r\n", b"VALUE k 0 %d\r\n" % BIG + b"x" * BIG + b"\r\nEND\r\n", WHOLE),
    # the widest numbers memcached sends, a 250-byte key
    (b"gets " + KEY + b"\r\n",
     b"VALUE " + KEY + b" 4294967295 1 18446744073709551615\r\nx\r\nEND\r\n", WHOLE),
    (b"gats 0 " + KEY + b"\r\n",
     b"VALUE " + KEY + b" 4294967295 0 18446744073709551615\r\n\r\nEND\r\n", WHOLE),
    # leading zeros: the value is what counts
    (b"get k\r\n", b"VALUE k 0004294967295 0\r\n\r\nEND\r\n", WHOLE),
    (b"get k\r\n", b"VALUE k 04294967296 0\r\n\r\nEND\r\n", GARBAGE),
    # a meta reply with every flag memcached returns
    (b"mg " + KEY + b" v c f h k l O" + b"o" * 32 + b" s t\r\n",
     b"VA 1 c18446744073709551615 f4294967295 h1 k" + KEY + b" l1 O" + b"o" * 32
     + b" s1 t-1\r\nx\r\n", WHOLE),
    # stats lines: long ones (up to the bound) and many of them
    (b"stats\r\n", b"STAT x " + b"y" * 65_000 + b"\r\nEND\r\n", WHOLE),
    (b"stats items\r\n", b"STAT items:1:number 1\r\n" * 5_000 + b"END\r\n", WHOLE),
    (b"stats detail dump\r\n",
     b"PREFIX " + b"p" * 240 + b" get 18446744073709551615 hit 1 set 1 del 1\r\nEND\r\n", WHOLE),
    (b"stats cachedump 1 0\r\n", (b"ITEM " + KEY + b" [1000000 b; 0 s]\r\n") * 3_000 + b"END\r\n", WHOLE),
]


@pytest.mark.parametrize("request_bytes,data,length", CASES)
def test_memcacheds_replies_pass_the_bounds(request_bytes, data, length):
    got, status = scan(data, request_bytes)
    assert got == (len(data) if length == WHOLE else length)
    if length >= 0:
        assert status in (ST_OK, ST_FAIL)
