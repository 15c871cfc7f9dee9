"""Hostile client input end to end (issue 10): what memcached would answer,
never a smuggled command, and a router that keeps serving everyone else.

Each case is sent to memcached directly and through the router; both must
give exactly the bytes written here, probed against memcached 1.6.18."""
from __future__ import annotations

import pytest

from conftest import pool_config

NOT_SUPPORTED = b"SERVER_ERROR mcrouter: command not supported\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"

# (stream, memcached's reply, the router's reply when it differs on purpose)
CASES = [
    # numbers out of range reject the header; the "value" is then a command
    (b"set x 0 99999999999999999999 16 noreply\r\nverbosity 1 2 3\r\nmn\r\n",
     b"ERROR\r\nMN\r\n", None),
    (b"set x 18446744073709551616 0 9\r\ndelete zz\r\nmn\r\n",
     BAD_FORMAT + b"NOT_FOUND\r\nMN\r\n", None),
    (b"cas x 0 0 5 18446744073709551616\r\nget x\r\nmn\r\n", BAD_FORMAT + b"END\r\nMN\r\n", None),
    (b"add x 0 9223372036854775808 7\r\nget x y\r\nmn\r\n", BAD_FORMAT + b"END\r\nMN\r\n", None),
    (b"ms x 9223372036854775808\r\nmn\r\n", BAD_FORMAT + b"MN\r\n", None),
    # the admin command inside the value is refused by the router, never run
    (b"set x 0 99999999999999999999 16 noreply\r\ncache_memlimit 8\r\nmn\r\n",
     b"OK\r\nMN\r\n", NOT_SUPPORTED + b"MN\r\n"),
    # a '-' anywhere in a number's token refuses 2^63 and up (memcached's strchr)
    (b"set k 9223372036854775808\t- 0 15 noreply\r\nstats detail on\r\nmn\r\n",
     b"OK\r\nMN\r\n", NOT_SUPPORTED + b"MN\r\n"),
    (b"cas k 0 0 16 9223372036854775808\t-\r\ncache_memlimit 8\r\nmn\r\n",
     BAD_FORMAT + b"OK\r\nMN\r\n", BAD_FORMAT + NOT_SUPPORTED + b"MN\r\n"),
    # ms judges its flags before a bad data chunk
    (b"ms k 1 S\r\nxx\r\nmn\r\n", b"CLIENT_ERROR invalid flag\r\nERROR\r\nMN\r\n", None),
    (b"ms k@ 1 b\r\nxx\r\nmn\r\n", b"CLIENT_ERROR error decoding key\r\nERROR\r\nMN\r\n", None),
    (b"ms k 1 O" + b"o" * 40 + b"\r\nxx\r\nmn\r\n",
     b"CLIENT_ERROR opaque token too long\r\nERROR\r\nMN\r\n", None),
    (b"delete " + b"k" * 251 + b" x\r\nmn\r\n",
     b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\nMN\r\n", None),
    (b"gat v " + b"k" * 251 + b"\r\ngat 10\r\nmn\r\n",
     b"CLIENT_ERROR invalid exptime argument\r\nEND\r\nMN\r\n", None),
]


def exchange(client, data: bytes) -> bytes:
    return client.call(data, b"MN\r\n")


@pytest.mark.parametrize("route", ["DefaultRoute", "PoolRoute"])
def test_hostile_lines_get_memcacheds_reply(memcached, router, route):
    m1, m2, ref = memcached(), memcached(), memcached()
    if route == "PoolRoute":
        r = router(f"pools:\n  main:\n    servers: [{m1.addr}, {m2.addr}]\nroute: PoolRoute|main\n")
    else:
        r = router(pool_config([m1]))
    for data, direct, routed in CASES:
        with ref.client() as c:
            assert exchange(c, data) == direct, data
        with r.client() as c:
            assert exchange(c, data) == (routed or direct), data
    with ref.client() as c:     # the check below can tell: memcached direct did obey
        assert b"STAT maxbytes 8388608\r\n" in c.call(b"stats settings\r\n", b"END\r\n")
    for m in (m1, m2):          # nothing reached the backends' settings
        with m.client() as c:
            settings = c.call(b"stats settings\r\n", b"END\r\n")
            assert b"STAT maxbytes 67108864\r\n" in settings
            assert b"STAT detail_enabled no\r\n" in settings


def test_binary_protocol_request_is_closed_at_once(memcached, router):
    m = memcached()
    r = router(pool_config([m]))
    get_k = b"\x80\x00\x00\x01" + b"\x00" * 4 + b"\x00\x00\x00\x01" + b"\x00" * 12 + b"k"
    with r.client() as other, r.client() as c:
        c.send(get_k)                   # memcached judges the first byte only
        assert c.is_closed(timeout=2.0)
        assert c.buf == b""
        assert other.call(b"mn\r\n") == b"MN\r\n"


def test_a_line_over_2048_bytes_closes_its_client_and_no_one_elses(memcached, router):
    """memcached may reset a connection on such a line (when its first 2048
    bytes arrive without the newline); the router never forwards one, so the
    upstream connection other clients share is never reset."""
    m = memcached()
    r = router(pool_config([m]))
    with r.client() as other, r.client() as c:
        other.send(b"set shared 0 0 2\r\nok\r\n")
        assert other.recv_until(b"\r\n") == b"STORED\r\n"
        c.send(b"version\r\nverbosity 1" + b" " * 3000 + b"\r\nmn\r\n")
        assert c.recv_until(b"\r\n") == b"VERSION 1.6.18\r\n"
        assert c.is_closed(timeout=2.0)
        assert other.call(b"get shared\r\n", b"END\r\n") == b"VALUE shared 0 2\r\nok\r\nEND\r\n"
        assert b"protocol error" not in r.stderr().encode() and b"reset" not in r.stderr().encode()
