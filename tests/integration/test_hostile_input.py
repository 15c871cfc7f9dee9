"""Hostile client input end to end (issue 10): what memcached would answer,
never a smuggled command, and a router that keeps serving everyone else.

Each case is sent to memcached directly and through the router; both must
give exactly the bytes written here, probed against memcached 1.6.18."""
from __future__ import annotations

import time

import pytest

from support import pool_config

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
    # a block with a bad terminator is judged by memcached: at the edge of its
    # item size "too large" (it swallows the block either way), else "bad data chunk"
    (b"set k 0 0 1048576\r\n" + b"v" * 1048576 + b"xx\r\nmn\r\n",
     b"SERVER_ERROR object too large for cache\r\nERROR\r\nMN\r\n", None),
    (b"set k 0 0 3\r\nabcXXmn\r\n", b"CLIENT_ERROR bad data chunk\r\nMN\r\n", None),
    (b"set k 0 0 3 noreply\r\nabcXXmn\r\n", b"MN\r\n", None),
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


@pytest.mark.parametrize("route", ["DefaultRoute", "PoolRoute"])
def test_gat_touches_the_keys_before_a_long_one(memcached, router, route):
    """memcached runs gat on every key before a key over 250 bytes, then
    answers the error alone: those keys' new exptime must hold via the router too."""
    m1, m2, ref = memcached(), memcached(), memcached()
    if route == "PoolRoute":
        r = router(f"pools:\n  main:\n    servers: [{m1.addr}, {m2.addr}]\nroute: PoolRoute|main\n")
    else:
        r = router(pool_config([m1]))
    for target in (ref, r):
        with target.client() as c:
            assert c.call(b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\nset z 0 0 1\r\nw\r\n",
                          b"STORED\r\nSTORED\r\nSTORED\r\n") == b"STORED\r\n" * 3
            assert exchange(c, b"gat -1 a b " + b"k" * 251 + b" z\r\nget a b z\r\nmn\r\n") == (
                BAD_FORMAT + b"VALUE z 0 1\r\nw\r\nEND\r\nMN\r\n"), target
            # a repeated key is touched again: an exptime in the past expires it
            # at the first touch, so the repeat misses (keys over both servers)
            others = b" ".join(b"o%d" % i for i in range(24))
            assert exchange(c, b"gat 2592001 z %s z\r\nmn\r\n" % others) == (
                b"VALUE z 0 1\r\nw\r\nEND\r\nMN\r\n"), target


@pytest.mark.parametrize("line", [
    b"verbosity 1" + b" " * 3000 + b"\r\n",          # memcached would run it, when read whole
    b"xyzzy" + b"x" * 3000 + b"\r\n",                # memcached would answer ERROR, likewise
    b"ms k 1047576" + b" T1" * 25 + b"\r\n" + b"v" * 1047576 + b"\r\n",   # a value read as a line
], ids=["spaces", "junk", "value-as-line"])
def test_a_long_line_closes_after_every_earlier_reply(memcached, router, line):
    """The replies before the long line are all delivered, even with
    megabytes of the client's stream still unread (no reset eats them)."""
    m = memcached()
    r = router(pool_config([m]))
    with r.client() as c:
        # 8 MB more than the socket buffers hold: the router must read and drop
        # them (closing with them unread would reset the client mid-send)
        c.send(b"set a 0 0 1\r\nx\r\nget a\r\n" + line + b"mn\r\n" * 2_000_000)
        time.sleep(0.5)     # the router has hung up before the client reads a byte
        want = b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        if line.startswith(b"ms"):
            want += b"CLIENT_ERROR options flags too long\r\n"
        assert c.recv_until(want) == want
        assert c.is_closed(timeout=5.0)
        assert c.buf == b""
