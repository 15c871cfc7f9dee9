"""Upstream reply framing: where one reply ends, and how it is judged."""
from __future__ import annotations

import pytest

from mcrouter._parser import scan, split_values
from mcrouter.protocol import ST_FAIL, ST_OK

INCOMPLETE, GARBAGE = -1, -2

CASES = [
    # (the request as a client sends it, reply bytes, expected length, expected status)
    (b"get k\r\n", b"END\r\n", 5, ST_FAIL),
    (b"get k\r\n", b"VALUE k 0 3\r\nabc\r\nEND\r\n", 23, ST_OK),
    (b"gets k\r\n", b"VALUE k 5 4 99\r\na\r\nb\r\nEND\r\nVALUE", 27, ST_OK),
    # a repeated key is asked once (the client's reply repeats it: issue 11)
    (b"get a b a\r\n", b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n", 37, ST_OK),
    (b"get a b a\r\n",
     b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nVALUE a 0 1\r\nx\r\nEND\r\n", GARBAGE, ST_OK),
    (b"gat 10 a b\r\n", b"VALUE b 4294967295 0\r\n\r\nEND\r\n", 29, ST_OK),
    (b"gats 10 b\r\n", b"VALUE b 0 1 18446744073709551615\r\nx\r\nEND\r\n", 42, ST_OK),
    (b"get k\r\n", b"VALUE k 0 3\r\nabc\r\nEN", INCOMPLETE, ST_OK),
    (b"get k\r\n", b"VALUE k 0 3\r\nab", INCOMPLETE, ST_OK),
    (b"get k\r\n", b"VALUE k 0 3\r\nabcd\r\nEND\r\n", GARBAGE, ST_OK),
    (b"get k\r\n", b"VALUE k 0 x\r\nabc\r\nEND\r\n", GARBAGE, ST_OK),
    (b"get k\r\n", b"CLIENT_ERROR bad command line format\r\n", 38, ST_FAIL),
    (b"get k\r\n", b"STORED\r\n", GARBAGE, ST_OK),
    # flags are a uint32, a cas unique a uint64: memcached never sends more
    (b"get k\r\n", b"VALUE k 4294967296 0\r\n\r\nEND\r\n", GARBAGE, ST_OK),
    (b"get k\r\n", b"VALUE k 9999999999 0\r\n\r\nEND\r\n", GARBAGE, ST_OK),
    (b"gets k\r\n", b"VALUE k 0 0 18446744073709551616\r\n\r\nEND\r\n", GARBAGE, ST_OK),
    (b"gets k\r\n", b"VALUE k 0 0 99999999999999999999\r\n\r\nEND\r\n", GARBAGE, ST_OK),
    (b"gets k\r\n", b"VALUE k 0 0 0\r\n\r\nEND\r\n", 22, ST_OK),
    # no reply line is longer than 64 KiB: an endless one is garbage, not held
    (b"get k\r\n", b"VALUE k 0 1\r\nx\r\nVALUE " + b"k" * 70000, GARBAGE, ST_OK),
    (b"stats\r\n", b"STAT " + b"x" * 70000, GARBAGE, ST_OK),
    (b"get k\r\n", b"VALUE " + b"k" * 60000, INCOMPLETE, ST_OK),
    (b"set k 0 0 1\r\nx\r\n", b"STORED\r\n", 8, ST_OK),
    (b"add k 0 0 1\r\nx\r\n", b"NOT_STORED\r\n", 12, ST_FAIL),
    (b"cas k 0 0 1 5\r\nx\r\n", b"EXISTS\r\n", 8, ST_FAIL),
    (b"cas k 0 0 1 5\r\nx\r\n", b"NOT_FOUND\r\n", 11, ST_FAIL),
    (b"delete k\r\n", b"DELETED\r\n", 9, ST_OK),
    (b"delete k\r\n", b"SERVER_ERROR out of memory\r\n", 28, ST_FAIL),
    (b"touch k 1\r\n", b"TOUCHED\r\n", 9, ST_OK),
    (b"incr k 1\r\n", b"16\r\n", 4, ST_OK),
    (b"decr k 1\r\n", b"18446744073709551615\r\n", 22, ST_OK),
    (b"incr k 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n", 62,
     ST_FAIL),
    (b"set k 0 0 1\r\nx\r\n", b"SERVER_ERROR out of memory\r\n", 28, ST_FAIL),
    (b"flush_all\r\n", b"ERROR\r\n", 7, ST_FAIL),
    (b"verbosity 1\r\n", b"OK\r\n", 4, ST_OK),
    (b"version\r\n", b"VERSION 1.6.18\r\n", 16, ST_OK),
    # admin commands (when the admin: section allows them), as memcached 1.6.18 answers
    (b"cache_memlimit 100\r\n", b"OK\r\n", 4, ST_OK),
    (b"cache_memlimit 1\r\n", b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n", 56,
     ST_OK),
    (b"slabs reassign 1 2\r\n", b"NOSPARE source class has no spare pages\r\n", 41, ST_OK),
    (b"slabs reassign 1 1\r\n", b"SAME src and dst class are identical\r\n", 38, ST_OK),
    (b"slabs reassign 99 2\r\n", b"BADCLASS invalid src or dst class id\r\n", 38, ST_OK),
    (b"lru_crawler enable\r\n", b"ERROR failed to start lru crawler thread\r\n", 42, ST_FAIL),
    (b"refresh_certs\r\n", b"Error TLS not enabled\r\n", 23, ST_OK),
    (b"cache_memlimit 100 noreply\r\n", b"MN\r\n", 4, ST_OK),
    (b"lru_crawler crawl 1\r\n", b"STORED\r\n", GARBAGE, ST_OK),
    (b"set k 0 0 1\r\nx\r\n", b"STORED\n", GARBAGE, ST_OK),
    (b"set k 0 0 1\r\nx\r\n", b"STOR", INCOMPLETE, ST_OK),
    (b"stats\r\n", b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n", 32, ST_OK),
    (b"stats cachedump 1 1\r\n", b"ITEM k [3 b; 0 s]\r\nEND\r\n", 24, ST_OK),
    (b"stats detail dump\r\n", b"PREFIX a get 1 hit 0 set 0 del 0\r\nEND\r\n", 39, ST_OK),
    (b"stats reset\r\n", b"RESET\r\n", 7, ST_OK),
    (b"stats detail on\r\n", b"OK\r\n", 4, ST_OK),
    (b"stats foo\r\n", b"ERROR\r\n", 7, ST_FAIL),
    (b"stats\r\n", b"STAT pid 1\r\n", INCOMPLETE, ST_OK),
    (b"mg k\r\n", b"HD\r\n", 4, ST_OK),
    (b"mg missing k O1\r\n", b"EN kmissing O1\r\n", 16, ST_FAIL),
    (b"md k\r\n", b"NF\r\n", 4, ST_FAIL),
    (b"ms k 1 MA\r\nx\r\n", b"NS\r\n", 4, ST_FAIL),
    (b"ma k C1\r\n", b"EX c0\r\n", 7, ST_FAIL),
    (b"mg k v f t\r\n", b"VA 2 f0 t-1\r\nhi\r\n", 17, ST_OK),
    (b"ma k v\r\n", b"VA 1\r\n1\r\n", 9, ST_OK),
    (b"mg k v\r\n", b"VA 0 W\r\n\r\n", 10, ST_OK),
    (b"mg k v\r\n", b"VA 5\r\nhi\r\n", INCOMPLETE, ST_OK),
    (b"mg k v\r\n", b"VA x\r\nhi\r\n", GARBAGE, ST_OK),
    (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag\r\n", 29, ST_FAIL),
    (b"me k\r\n", b"ME k exp=-1 la=0 cas=1 fetch=no cls=1 size=63\r\n", 47, ST_OK),
    (b"me k\r\n", b"EN\r\n", 4, ST_FAIL),
    (b"mn\r\n", b"MN\r\n", 4, ST_OK),
    (b"md k q\r\n", b"MN\r\n", 4, ST_OK),
    (b"ms k 1 MR q\r\nx\r\n", b"NS\r\nMN\r\n", 8, ST_FAIL),
    (b"mg k v q\r\n", b"VA 4\r\nMN\r\n\r\nMN\r\n", 16, ST_OK),
    (b"set k 0 0 1 noreply\r\nx\r\n", b"SERVER_ERROR out of memory storing object\r\nMN\r\n",
     47, ST_FAIL),
    (b"mg k v q\r\n", b"VA 4\r\nMN\r\n", INCOMPLETE, ST_OK),
    # memcached's extra ERROR after a bad data chunk: the router never sends one
    (b"set k 0 0 1 noreply\r\nx\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\nMN\r\n", GARBAGE,
     ST_OK),
]


@pytest.mark.parametrize("request_bytes,data,length,status", CASES)
def test_scan(request_bytes, data, length, status):
    got_length, got_status = scan(data, request_bytes)
    assert got_length == length
    if length >= 0:
        assert got_status == status


@pytest.mark.parametrize("request_bytes,data,length,status", [c for c in CASES if c[2] > 0])
def test_scan_never_completes_early(request_bytes, data, length, status):
    for cut in range(1, length):
        assert scan(data[:cut], request_bytes)[0] in (INCOMPLETE, GARBAGE)


def test_split_values_keeps_blocks_whole():
    reply = b"VALUE a 0 3\r\nx\r\n\r\nVALUE b 7 1 42\r\ny\r\nEND\r\n"
    assert split_values(reply) == [(b"a", b"VALUE a 0 3\r\nx\r\n\r\n"),
                                   (b"b", b"VALUE b 7 1 42\r\ny\r\n")]
