"""Upstream reply framing: where one reply ends, and how it is judged."""
from __future__ import annotations

import pytest

from mcrouter._parser import scan, split_values
from mcrouter.protocol import (RK_GET, RK_LINE, RK_META, RK_QUIET, RK_STATS, ST_FAIL,
                               ST_OK)

INCOMPLETE, GARBAGE = -1, -2

CASES = [
    # (reply kind, bytes, expected length, expected status)
    (RK_GET, b"END\r\n", 5, ST_FAIL),
    (RK_GET, b"VALUE k 0 3\r\nabc\r\nEND\r\n", 23, ST_OK),
    (RK_GET, b"VALUE k 5 4 99\r\na\r\nb\r\nEND\r\nVALUE", 27, ST_OK),
    (RK_GET, b"VALUE k 0 3\r\nabc\r\nEN", INCOMPLETE, ST_OK),
    (RK_GET, b"VALUE k 0 3\r\nab", INCOMPLETE, ST_OK),
    (RK_GET, b"VALUE k 0 3\r\nabcd\r\nEND\r\n", GARBAGE, ST_OK),
    (RK_GET, b"VALUE k 0 x\r\nabc\r\nEND\r\n", GARBAGE, ST_OK),
    (RK_GET, b"CLIENT_ERROR bad command line format\r\n", 38, ST_FAIL),
    (RK_GET, b"STORED\r\n", GARBAGE, ST_OK),
    (RK_LINE, b"STORED\r\n", 8, ST_OK),
    (RK_LINE, b"NOT_STORED\r\n", 12, ST_FAIL),
    (RK_LINE, b"EXISTS\r\n", 8, ST_FAIL),
    (RK_LINE, b"NOT_FOUND\r\n", 11, ST_FAIL),
    (RK_LINE, b"DELETED\r\n", 9, ST_OK),
    (RK_LINE, b"16\r\n", 4, ST_OK),
    (RK_LINE, b"SERVER_ERROR out of memory\r\n", 28, ST_FAIL),
    (RK_LINE, b"ERROR\r\n", 7, ST_FAIL),
    (RK_LINE, b"STORED\n", GARBAGE, ST_OK),
    (RK_LINE, b"STOR", INCOMPLETE, ST_OK),
    (RK_STATS, b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n", 32, ST_OK),
    (RK_STATS, b"ITEM k [3 b; 0 s]\r\nEND\r\n", 24, ST_OK),
    (RK_STATS, b"RESET\r\n", 7, ST_OK),
    (RK_STATS, b"ERROR\r\n", 7, ST_FAIL),
    (RK_STATS, b"STAT pid 1\r\n", INCOMPLETE, ST_OK),
    (RK_META, b"HD\r\n", 4, ST_OK),
    (RK_META, b"EN kmissing O1\r\n", 16, ST_FAIL),
    (RK_META, b"NF\r\n", 4, ST_FAIL),
    (RK_META, b"NS\r\n", 4, ST_FAIL),
    (RK_META, b"EX c0\r\n", 7, ST_FAIL),
    (RK_META, b"VA 2 f0 t-1\r\nhi\r\n", 17, ST_OK),
    (RK_META, b"VA 0 W\r\n\r\n", 10, ST_OK),
    (RK_META, b"VA 5\r\nhi\r\n", INCOMPLETE, ST_OK),
    (RK_META, b"VA x\r\nhi\r\n", GARBAGE, ST_OK),
    (RK_META, b"ME k exp=-1 la=0 cas=1 fetch=no cls=1 size=63\r\n", 47, ST_OK),
    (RK_META, b"MN\r\n", 4, ST_OK),
    (RK_QUIET, b"MN\r\n", 4, ST_OK),
    (RK_QUIET, b"NS\r\nMN\r\n", 8, ST_FAIL),
    (RK_QUIET, b"VA 4\r\nMN\r\n\r\nMN\r\n", 16, ST_OK),
    (RK_QUIET, b"CLIENT_ERROR bad data chunk\r\nERROR\r\nMN\r\n", 40, ST_FAIL),
    (RK_QUIET, b"VA 4\r\nMN\r\n", INCOMPLETE, ST_OK),
]


@pytest.mark.parametrize("rkind,data,length,status", CASES)
def test_scan(rkind, data, length, status):
    got_length, got_status = scan(data, rkind)
    assert got_length == length
    if length >= 0:
        assert got_status == status


@pytest.mark.parametrize("rkind,data,length,status", [c for c in CASES if c[2] > 0])
def test_scan_never_completes_early(rkind, data, length, status):
    for cut in range(1, length):
        assert scan(data[:cut], rkind)[0] in (INCOMPLETE, GARBAGE)


def test_split_values_keeps_blocks_whole():
    reply = b"VALUE a 0 3\r\nx\r\n\r\nVALUE b 7 1 42\r\ny\r\nEND\r\n"
    assert split_values(reply) == [(b"a", b"VALUE a 0 3\r\nx\r\n\r\n"),
                                   (b"b", b"VALUE b 7 1 42\r\ny\r\n")]
