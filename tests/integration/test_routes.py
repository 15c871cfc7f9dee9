"""Route handles end to end: the router in front of 2-3 real memcached servers.

State is set up and inspected by talking to each memcached directly, so
every assertion says exactly where a value landed and where a reply came from.
"""
from __future__ import annotations

import time

import pytest

from support import Client, pool_config
from support.polling import poll, wait_value

NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
UPSTREAM_ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
UPSTREAM_TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
NOT_LOCAL = b"SERVER_ERROR mcrouter: command not handled locally\r\n"
VERSION = b"VERSION 1.6.18\r\n"


def value(key: str, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    line = f"VALUE {key} {flags} {len(data)}" + (f" {cas}" if cas is not None else "")
    return line.encode() + b"\r\n" + data + b"\r\n"


def get_reply(*values: bytes) -> bytes:
    return b"".join(values) + b"END\r\n"


def cas_of(m, key: str) -> int:
    reply = m.get_raw(key, cmd="gets")
    return int(reply.split(b"\r\n", 1)[0].split()[4])


# ---------------------------------------------------------------------------
# DefaultRoute

def test_default_route_uses_first_host(memcached, router):
    m1, m2, m3 = memcached(), memcached(), memcached()
    r = router(pool_config([m1, m2, m3], "DefaultRoute"))
    with r.client() as c:
        assert c.request(b"set k 0 0 2\r\nv1\r\n", b"STORED\r\n") == b"STORED\r\n"
    assert m1.get_raw("k") == get_reply(value("k", b"v1"))
    assert m2.get_raw("k") == b"END\r\n"
    assert m3.get_raw("k") == b"END\r\n"
    m2.set("only2", b"two")
    with r.client() as c:
        assert c.request(b"get only2\r\n", b"END\r\n") == b"END\r\n"     # never asks host 2
        assert c.request(b"get k\r\n", get_reply(value("k", b"v1"))) == get_reply(value("k", b"v1"))


def test_default_route_skips_dead_host_and_comes_back(memcached, router):
    m1, m2, m3 = memcached(), memcached(), memcached()
    m1.set("k", b"one")
    m2.set("k", b"two")
    m3.set("k", b"three")
    # short probes: a host marked down comes back after two good ones
    r = router(pool_config([m1, m2, m3], "DefaultRoute"), extra=["-H", "300ms"])
    one, two, three = (get_reply(value("k", v)) for v in (b"one", b"two", b"three"))
    with r.client() as c:
        assert c.request(b"get k\r\n", one) == one
    m1.kill()
    poll(r.port, b"get k\r\n", two, (one, UPSTREAM_ERROR))
    # the same client connection keeps working after the switch
    with r.client() as c:
        for _ in range(3):
            assert c.request(b"get k\r\n", two) == two
    m2.kill()
    poll(r.port, b"get k\r\n", three, (two, UPSTREAM_ERROR))
    m1.restart()                       # an empty memcached on the old port
    poll(r.port, b"get k\r\n", b"END\r\n", (three,), timeout=20)


def test_default_route_no_healthy_upstream(memcached, router):
    m1, m2 = memcached(), memcached()
    r = router(pool_config([m1, m2], "DefaultRoute"))
    with r.client() as c:
        assert c.request(b"version\r\n", b"VERSION 1.6.18\r\n") == b"VERSION 1.6.18\r\n"
    m1.kill()
    m2.kill()
    poll(r.port, b"get k\r\n", NO_HEALTHY, (b"END\r\n", UPSTREAM_ERROR))
    with r.client() as c:
        # every kind of request gets the router's error, each exactly once, in order
        req = (b"get a b\r\nset k 0 0 1\r\nx\r\nmg k v\r\nmn\r\nversion\r\n"
               b"set k 0 0 1 noreply\r\nx\r\ndelete k\r\n")
        expect = NO_HEALTHY * 7
        assert c.request(req, expect) == expect
        # errors the router finds in the request itself are still memcached's
        assert c.request(b"bogus\r\nget\r\n", b"ERROR\r\nERROR\r\n") == b"ERROR\r\nERROR\r\n"


def test_default_route_unreachable_at_start(memcached, router):
    """A host that never accepted a connection is skipped from the start."""
    m2 = memcached()
    dead = memcached()
    dead.kill()
    m2.set("k", b"two")
    r = router(pool_config([dead, m2], "DefaultRoute"))
    poll(r.port, b"get k\r\n", get_reply(value("k", b"two")), (UPSTREAM_ERROR, NO_HEALTHY))


# ---------------------------------------------------------------------------
# AllFastestRoute

def test_all_fastest_writes_everywhere(memcached, router):
    hosts = [memcached(), memcached(), memcached()]
    r = router(pool_config(hosts, "AllFastestRoute"))
    with r.client() as c:
        assert c.request(b"set k 3 0 5\r\nhello\r\n", b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"ms mk 2 F4 T0\r\nhi\r\n", b"HD\r\n") == b"HD\r\n"
        # the reply comes as soon as one host stored it: the rest complete in the background
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
    for m in hosts:
        assert wait_value(m, "k", get_reply(value("k", b"hello", 3)))
        assert wait_value(m, "mk", get_reply(value("mk", b"hi", 4)))
    with r.client() as c:
        assert c.request(b"delete k\r\n", b"DELETED\r\n") == b"DELETED\r\n"
    for m in hosts:
        assert wait_value(m, "k", b"END\r\n")


def test_all_fastest_first_success_wins(memcached, router):
    m1, m2 = memcached(), memcached()
    m1.set("k", b"old")                          # add fails on host 1, succeeds on host 2
    r = router(pool_config([m1, m2], "AllFastestRoute"))
    with r.client() as c:
        assert c.request(b"add k 0 0 3\r\nnew\r\n", b"STORED\r\n") == b"STORED\r\n"
        # none succeeds: the failure reply is forwarded
        assert c.request(b"add k 0 0 3\r\nnew\r\n", b"NOT_STORED\r\n") == b"NOT_STORED\r\n"
        assert c.request(b"delete nokey\r\n", b"NOT_FOUND\r\n") == b"NOT_FOUND\r\n"
        assert c.request(b"ms k 1 ME\r\nx\r\n", b"NS\r\n") == b"NS\r\n"
    wait_value(m1, "k", get_reply(value("k", b"old")))
    wait_value(m2, "k", get_reply(value("k", b"new")))


def test_all_fastest_with_a_dead_host(memcached, router):
    m1, m2, m3 = memcached(), memcached(), memcached()
    r = router(pool_config([m1, m2, m3], "AllFastestRoute"))
    m2.kill()
    with r.client() as c:
        # the write succeeds whether or not the router has noticed host 2 is gone
        for i in range(5):
            req = f"set k{i} 0 0 1\r\n{i}\r\n".encode()
            assert c.request(req, b"STORED\r\n") == b"STORED\r\n"
    for m in (m1, m3):
        for i in range(5):
            wait_value(m, f"k{i}", get_reply(value(f"k{i}", str(i).encode())))
    m1.kill()
    m3.kill()
    poll(r.port, b"set z 0 0 1\r\nz\r\n", NO_HEALTHY, (UPSTREAM_ERROR,))


# ---------------------------------------------------------------------------
# MissFailoverRoute

def test_miss_failover_single_key(memcached, router):
    m1, m2, m3 = memcached(), memcached(), memcached()
    m2.set("b", b"from2", flags=2)
    m3.set("b", b"from3", flags=3)
    m3.set("c", b"from3", flags=3)
    m1.set("a", b"from1", flags=1)
    m2.set("a", b"from2", flags=2)
    r = router(pool_config([m1, m2, m3], "MissFailoverRoute"))
    with r.client() as c:
        for req, exp in [
            (b"get a\r\n", get_reply(value("a", b"from1", 1))),     # hit on host 1
            (b"get b\r\n", get_reply(value("b", b"from2", 2))),     # miss on 1, hit on 2
            (b"get c\r\n", get_reply(value("c", b"from3", 3))),     # only on host 3
            (b"get zz\r\n", b"END\r\n"),                            # nowhere
            (b"mg b v f\r\n", b"VA 5 f2\r\nfrom2\r\n"),
            (b"mg c v k O1\r\n", b"VA 5 kc O1\r\nfrom3\r\n"),
            (b"mg zz v k O2\r\n", b"EN kzz O2\r\n"),                 # the last failure
            (b"mg zz v q\r\nmn\r\n", b"MN\r\n"),
            (b"mg b v q\r\nmn\r\n", b"VA 5\r\nfrom2\r\nMN\r\n"),
            (b"touch c 100\r\n", b"TOUCHED\r\n"),                   # NOT_FOUND moves on too
            (b"delete zz\r\n", b"NOT_FOUND\r\n"),
            (b"incr b 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        ]:
            assert c.request(req, exp) == exp, req
        assert c.recv_idle(0.1) == b""


def test_miss_failover_multi_key_partial_hits(memcached, router):
    m1, m2, m3 = memcached(), memcached(), memcached()
    m1.set("a", b"A1", flags=1)
    m2.set("b", b"B2", flags=2)
    m2.set("a", b"A2", flags=2)            # shadowed by host 1
    m3.set("d", b"D3\r\nEND\r\n", flags=3)  # value bytes that look like a reply end
    r = router(pool_config([m1, m2, m3], "MissFailoverRoute"))
    a, b, d = value("a", b"A1", 1), value("b", b"B2", 2), value("d", b"D3\r\nEND\r\n", 3)
    with r.client() as c:
        for req, exp in [
            (b"get a b c\r\n", get_reply(a, b)),
            (b"get c b a\r\n", get_reply(b, a)),        # request order, not host order
            (b"get b a\r\n", get_reply(b, a)),
            (b"get d c b a\r\n", get_reply(d, b, a)),
            (b"get a a b\r\n", get_reply(a, a, b)),     # repeats as memcached repeats them
            (b"get x y z\r\n", b"END\r\n"),
            (b"gat 0 c a b\r\n", get_reply(a, b)),
        ]:
            assert c.request(req, exp) == exp, req
        # pipelined: all at once, same replies in order
        req = b"get a b c\r\nget c b a\r\nget x y\r\nget b\r\n"
        exp = get_reply(a, b) + get_reply(b, a) + b"END\r\n" + get_reply(b)
        assert c.request(req, exp) == exp


def test_miss_failover_gets_cas_from_the_host_that_had_it(memcached, router):
    m1, m2 = memcached(), memcached()
    for i in range(7):                     # make host 2's CAS counter differ from host 1's
        m2.set(f"pad{i}", b"x")
    m1.set("a", b"A1")
    m2.set("b", b"B2")
    cas_a, cas_b = cas_of(m1, "a"), cas_of(m2, "b")
    assert cas_a != cas_b
    r = router(pool_config([m1, m2], "MissFailoverRoute"))
    a, b = value("a", b"A1", cas=cas_a), value("b", b"B2", cas=cas_b)
    with r.client() as c:
        assert c.request(b"gets b\r\n", get_reply(b)) == get_reply(b)
        assert c.request(b"gets a b nokey\r\n", get_reply(a, b)) == get_reply(a, b)
        assert c.request(b"gets b a\r\n", get_reply(b, a)) == get_reply(b, a)
        exp = f"VA 2 c{cas_b} kb\r\nB2\r\n".encode()
        assert c.request(b"mg b v c k\r\n", exp) == exp
    # that CAS is good for a cas on host 2, directly
    with m2.client() as c:
        req = f"cas b 0 0 2 {cas_b}\r\nB3\r\n".encode()
        assert c.request(req, b"STORED\r\n") == b"STORED\r\n"


def test_miss_failover_skips_dead_host(memcached, router):
    m1, m2 = memcached(), memcached()
    m1.set("a", b"A1")
    m2.set("a", b"A2")
    m2.set("b", b"B2")
    r = router(pool_config([m1, m2], "MissFailoverRoute"))
    with r.client() as c:
        assert c.request(b"get a b\r\n", get_reply(value("a", b"A1"), value("b", b"B2"))) \
            == get_reply(value("a", b"A1"), value("b", b"B2"))
    m1.kill()
    # an error on host 1 (or host 1 being down) moves on to host 2
    poll(r.port, b"get a b\r\n", get_reply(value("a", b"A2"), value("b", b"B2")),
         (get_reply(value("a", b"A1"), value("b", b"B2")),))
    m2.kill()
    poll(r.port, b"get a\r\n", NO_HEALTHY, (get_reply(value("a", b"A2")), UPSTREAM_ERROR))


# ---------------------------------------------------------------------------
# LocalRoute

def test_local_route_replies(router):
    r = router({"orderedPool": [], "route": {"type": "LocalRoute"}})
    with r.client() as c:
        for req, exp in [
            (b"version\r\n", VERSION),
            (b"mn\r\n", b"MN\r\n"),
            (b"get a\r\n", NOT_LOCAL),
            (b"get a b c\r\n", NOT_LOCAL),
            (b"set a 0 0 3\r\nabc\r\n", NOT_LOCAL),     # the data block is consumed
            (b"ms a 3 T0\r\nabc\r\n", NOT_LOCAL),
            (b"mg a v\r\n", NOT_LOCAL),
            (b"stats\r\n", NOT_LOCAL),
            (b"flush_all\r\n", NOT_LOCAL),
            (b"bogus\r\n", b"ERROR\r\n"),                 # parse errors stay memcached's
            (b"get " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        ]:
            assert c.request(req, exp) == exp, req
        # pipelined, in order
        req = b"version\r\nget a\r\nmn\r\nversion\r\n"
        exp = VERSION + NOT_LOCAL + b"MN\r\n" + VERSION
        assert c.request(req, exp) == exp
        assert c.request(b"quit\r\n", b"") == b""
        assert c.is_closed()


# ---------------------------------------------------------------------------
# OperationSelectorRoute

def selector(hosts, **policies) -> dict:
    return pool_config(hosts, "OperationSelectorRoute", **policies)


def test_operation_selector_dispatch(memcached, router):
    m1, m2 = memcached(), memcached()
    m2.set("b", b"B2")
    m1.set("n", b"5")
    m2.set("n", b"100")
    r = router(selector([m1, m2], get="MissFailoverRoute", set="AllFastestRoute",
                        version="LocalRoute", delete="AllFastestRoute"))
    with r.client() as c:
        assert c.request(b"version\r\n", VERSION) == VERSION              # LocalRoute
        assert c.request(b"get b\r\n", get_reply(value("b", b"B2"))) \
            == get_reply(value("b", b"B2"))                               # MissFailover
        assert c.request(b"gets b\r\n", b"END\r\n") == b"END\r\n"         # unlisted: host 1 only
        assert c.request(b"set s 0 0 1\r\nS\r\n", b"STORED\r\n") == b"STORED\r\n"   # both
        assert c.request(b"add s2 0 0 1\r\nS\r\n", b"STORED\r\n") == b"STORED\r\n"  # host 1 only
        assert c.request(b"incr n 1\r\n", b"6\r\n") == b"6\r\n"           # unlisted: host 1
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"               # unlisted: memcached's MN
    for m in (m1, m2):
        wait_value(m, "s", get_reply(value("s", b"S")))
    assert m1.get_raw("s2") == get_reply(value("s2", b"S"))
    assert m2.get_raw("s2") == b"END\r\n"
    assert m2.get_raw("n") == get_reply(value("n", b"100"))
    with r.client() as c:
        assert c.request(b"delete s\r\n", b"DELETED\r\n") == b"DELETED\r\n"
    for m in (m1, m2):
        wait_value(m, "s", b"END\r\n")


def test_operation_selector_meta_follows_text_twin(memcached, router):
    m1, m2 = memcached(), memcached()
    m2.set("b", b"B2")
    m1.set("n", b"5")
    m2.set("n", b"100")
    m1.set("d", b"D")
    m2.set("d", b"D")
    r = router(selector([m1, m2], get="MissFailoverRoute", set="AllFastestRoute",
                        delete="AllFastestRoute", incr="LocalRoute"))
    with r.client() as c:
        assert c.request(b"mg b v\r\n", b"VA 2\r\nB2\r\n") == b"VA 2\r\nB2\r\n"   # get's policy
        assert c.request(b"ms s 1 T0\r\nS\r\n", b"HD\r\n") == b"HD\r\n"            # set's policy
        assert c.request(b"md d\r\n", b"HD\r\n") == b"HD\r\n"                      # delete's
        assert c.request(b"ma n\r\n", NOT_LOCAL) == NOT_LOCAL                      # incr's
        assert c.request(b"decr n 1\r\n", b"4\r\n") == b"4\r\n"   # decr is not incr: default
    for m in (m1, m2):
        wait_value(m, "s", get_reply(value("s", b"S")))
        wait_value(m, "d", b"END\r\n")


def test_operation_selector_explicit_meta_policy_wins(memcached, router):
    m1, m2 = memcached(), memcached()
    m2.set("b", b"B2")
    r = router(selector([m1, m2], get="MissFailoverRoute", mg="DefaultRoute",
                        mn="LocalRoute"))
    with r.client() as c:
        assert c.request(b"get b\r\n", get_reply(value("b", b"B2"))) == get_reply(value("b", b"B2"))
        assert c.request(b"mg b v\r\n", b"EN\r\n") == b"EN\r\n"
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"


# ---------------------------------------------------------------------------
# quit

@pytest.mark.parametrize("route", ["DefaultRoute", "MissFailoverRoute", "AllFastestRoute"])
def test_quit_closes_after_earlier_replies(memcached, router, route):
    m1, m2 = memcached(), memcached()
    m2.set("b", b"B2")
    r = router(pool_config([m1, m2], route))
    with r.client() as c:
        req = (b"set a 0 0 2\r\nA1\r\nget a\r\nmg a v\r\nversion\r\nquit\r\n"
               b"get a\r\nset z 0 0 1\r\nz\r\n")
        exp = (b"STORED\r\n" + get_reply(value("a", b"A1")) + b"VA 2\r\nA1\r\n"
               + b"VERSION 1.6.18\r\n")
        got = c.request(req, exp)
        assert got == exp
        assert c.is_closed(), "the connection stays open after quit"
        assert c.buf == b""
    # nothing after quit was executed
    time.sleep(0.2)
    assert m1.get_raw("z") == b"END\r\n"
    assert m2.get_raw("z") == b"END\r\n"


def test_quit_waits_for_slow_earlier_replies(memcached, router):
    """quit right behind a large multiget: every byte of the reply comes first."""
    m1 = memcached()
    big = bytes(range(256)) * 2000
    for i in range(4):
        m1.set(f"big{i}", big)
    r = router(pool_config([m1], "DefaultRoute"))
    exp = get_reply(*(value(f"big{i}", big) for i in range(4))) * 3
    with r.client() as c:
        got = c.request(b"get big0 big1 big2 big3\r\n" * 3 + b"quit\r\n", exp)
        assert got == exp
        assert c.is_closed()
        assert c.buf == b""


# ---------------------------------------------------------------------------
# quiet and noreply requests through the fan-out routes

def test_miss_failover_quiet_and_noreply(memcached, router):
    m1, m2 = memcached(), memcached()
    m2.set("b", b"B2")
    m2.set("d", b"D2")
    r = router(pool_config([m1, m2], "MissFailoverRoute"))
    with r.client() as c:
        for req, exp in [
            # a quiet mg miss on host 1 is a miss: host 2 is asked
            (b"mg b v q k\r\nmg zz v q\r\nmn\r\n", b"VA 2 kb\r\nB2\r\nMN\r\n"),
            # md q: NF on host 1 moves on, HD on host 2 is quiet
            (b"md d q\r\nmn\r\n", b"MN\r\n"),
            (b"md d q O7\r\nmn\r\n", b"NF O7\r\nMN\r\n"),
            # set noreply stores on host 1 (a success) and says nothing
            (b"set s 0 0 1 noreply\r\nS\r\nget s\r\n", get_reply(value("s", b"S"))),
            (b"ms q1 2 q\r\nhi\r\nmg q1 v\r\n", b"VA 2\r\nhi\r\n"),
        ]:
            assert c.request(req, exp) == exp, req
        assert c.recv_idle(0.2) == b""
    assert m1.get_raw("s") == get_reply(value("s", b"S"))
    assert m2.get_raw("s") == b"END\r\n"
    assert m2.get_raw("d") == b"END\r\n"


def test_all_fastest_quiet_and_noreply(memcached, router):
    m1, m2 = memcached(), memcached()
    m1.set("old", b"O")
    m2.set("old", b"O")
    r = router(pool_config([m1, m2], "AllFastestRoute"))
    with r.client() as c:
        for req, exp in [
            # the write reaches each host before the read that follows it
            (b"set s 0 0 1 noreply\r\nS\r\nget s\r\n", get_reply(value("s", b"S"))),
            (b"ms q1 2 q\r\nhi\r\nmg q1 v\r\n", b"VA 2\r\nhi\r\n"),
            # failing everywhere: the failure is still sent (quiet hides only HD)
            (b"ms old 1 ME q\r\nx\r\nmn\r\n", b"NS\r\nMN\r\n"),
            (b"md nokey q\r\nmn\r\n", b"NF\r\nMN\r\n"),
            (b"delete old noreply\r\nget old\r\n", b"END\r\n"),
        ]:
            assert c.request(req, exp) == exp, req
        assert c.recv_idle(0.2) == b""
    for m in (m1, m2):
        wait_value(m, "s", get_reply(value("s", b"S")))
        wait_value(m, "old", b"END\r\n")


def test_miss_failover_merges_large_values(memcached, router):
    """Hits of about 1 MB each from different hosts merged into one reply."""
    m1, m2, m3 = memcached(), memcached(), memcached()
    va = bytes(range(256)) * 3900             # 998,400 bytes
    vb = b"\r\nEND\r\n" * 140000              # 980,000 bytes that look like reply ends
    vc = b"\x00" * 1000000
    m1.set("a", va)
    m2.set("b", vb)
    m3.set("c", vc)
    r = router(pool_config([m1, m2, m3], "MissFailoverRoute"))
    exp = get_reply(value("c", vc), value("b", vb), value("a", va))
    with Client(r.port, timeout=30) as c:
        got = c.request(b"get c nokey b a\r\n", exp, timeout=30)
        assert got == exp, f"{len(got)} bytes vs {len(exp)}"
        assert c.recv_idle(0.2) == b""


def test_too_large_set_through_fan_out_routes(memcached, router):
    """The router rejects a value over the limit itself; memcached semantics:
    the old value is dropped where the write would have gone."""
    m1, m2 = memcached(), memcached()
    big = b"y" * 1048577
    too_large = b"SERVER_ERROR object too large for cache\r\n"
    for route, where in [("AllFastestRoute", (m1, m2)), ("MissFailoverRoute", (m1,)),
                         ("DefaultRoute", (m1,))]:
        m1.set("k", b"old")
        m2.set("k", b"old")
        r = router(pool_config([m1, m2], route))
        with Client(r.port, timeout=20) as c:
            assert c.request(b"set k 0 0 %d\r\n" % len(big) + big + b"\r\n", too_large) == too_large
            assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
        for m in (m1, m2):
            exp = b"END\r\n" if m in where else get_reply(value("k", b"old"))
            wait_value(m, "k", exp)
        r.stop()


def test_miss_failover_too_large_ms_touches_only_the_first_host(memcached, router):
    """BUGS.md #4: a rejected ms must not fail over and delete on host 2."""
    m1, m2 = memcached(), memcached()
    m2.set("k", b"old")
    r = router(pool_config([m1, m2], "MissFailoverRoute"))
    big = b"y" * 1048577
    too_large = b"SERVER_ERROR object too large for cache\r\n"
    with Client(r.port, timeout=20) as c:
        assert c.request(b"ms k %d T0\r\n" % len(big) + big + b"\r\n", too_large) == too_large
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
        # a normal ms goes to host 1 only, for comparison
        assert c.request(b"ms j 1 T0\r\nj\r\n", b"HD\r\n") == b"HD\r\n"
    assert m2.get_raw("j") == b"END\r\n"
    assert m2.get_raw("k") == get_reply(value("k", b"old"))


def test_miss_failover_line_with_nul(memcached, router):
    """BUGS.md #7: memcached reads ``get a\\0b b`` as ``get a``; so must the
    merge of MissFailoverRoute (it loses the hit today)."""
    m1, m2 = memcached(), memcached()
    m1.set("a", b"A")
    m2.set("b", b"B")
    direct = m1.get_raw("a\x00b b")
    assert direct == get_reply(value("a", b"A"))
    r = router(pool_config([m1, m2], "MissFailoverRoute"))
    with r.client() as c:
        assert c.call(b"get a\x00b b\r\n", b"END\r\n") == direct


def test_all_fastest_read_waits_for_a_hit(memcached, router):
    """A miss is a failure: AllFastestRoute forwards a hit from any host, and
    the miss only when every host missed."""
    m1, m2, m3 = memcached(), memcached(), memcached()
    m3.set("k", b"three", flags=3)
    r = router(pool_config([m1, m2, m3], "AllFastestRoute"))
    with r.client() as c:
        for _ in range(5):
            exp = get_reply(value("k", b"three", 3))
            assert c.request(b"get k\r\n", exp) == exp
            assert c.request(b"mg k v f\r\n", b"VA 5 f3\r\nthree\r\n") == b"VA 5 f3\r\nthree\r\n"
            assert c.request(b"get nokey\r\n", b"END\r\n") == b"END\r\n"
            assert c.request(b"mg nokey v k\r\n", b"EN knokey\r\n") == b"EN knokey\r\n"


def test_ipv6_upstream(router):
    """An orderedPool entry [::1]:port reaches a memcached listening on ::1."""
    import socket
    import subprocess
    from support import MEMCACHED, free_ipv6_port, wait_until
    if MEMCACHED is None:
        pytest.skip("memcached is not installed")
    port = free_ipv6_port()
    proc = subprocess.Popen([MEMCACHED, "-u", "root", "-l", "::1", "-p", str(port), "-U", "0",
                             "-t", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                socket.create_connection(("::1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        assert wait_until(up, 10), "memcached did not start on ::1"
        r = router({"orderedPool": [f"[::1]:{port}"], "route": {"type": "DefaultRoute"}})
        with r.client() as c:
            exp = b"STORED\r\nVALUE k6 0 2\r\nv6\r\nEND\r\n"
            assert c.request(b"set k6 0 0 2\r\nv6\r\nget k6\r\n", exp) == exp
    finally:
        proc.kill()
        proc.wait(10)


def test_miss_failover_pipelined_random_multigets(memcached, router):
    """500 random multi-key gets in one write against keys spread over three
    hosts; every reply is what a model of the route predicts: for each key in
    request order, the value from the first host that has it."""
    import random
    rng = random.Random(7)
    hosts = [memcached(), memcached(), memcached()]
    keys = [f"k{i}" for i in range(40)]
    where: dict[str, list[tuple[int, bytes]]] = {}
    for k in keys:
        for h in rng.sample(range(3), rng.randint(0, 3)):
            v = f"{k}@{h}".encode() * rng.randint(1, 3)
            hosts[h].set(k, v, flags=h)
            where.setdefault(k, []).append((h, v))
    r = router(pool_config(hosts, "MissFailoverRoute"), workers=2)
    reqs, exp = [], []
    for _ in range(500):
        ks = [rng.choice(keys) for _ in range(rng.randint(1, 8))]
        reqs.append(("get " + " ".join(ks) + "\r\n").encode())
        body = b""
        for k in ks:
            if k in where:
                h, v = min(where[k])
                body += value(k, v, h)
        exp.append(body + b"END\r\n")
    want = b"".join(exp)
    with Client(r.port, timeout=30) as c:
        got = c.pipeline(b"".join(reqs), want, timeout=30)
    if got != want:
        from support import first_difference
        pytest.fail(first_difference(want, got))


def test_all_fastest_pipelined_writes_converge(memcached, router):
    """A pipeline of writes (set, delete, append) through AllFastestRoute
    leaves every host with the same final state as a model predicts."""
    import random
    rng = random.Random(11)
    hosts = [memcached(), memcached(), memcached()]
    r = router(pool_config(hosts, "AllFastestRoute"), workers=1)
    keys = [f"w{i}" for i in range(15)]
    model: dict[str, bytes] = {}
    reqs, exp = [], []
    for i in range(600):
        k = rng.choice(keys)
        op = rng.randrange(3)
        if op == 0:
            v = b"v%d" % i
            reqs.append(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v))
            exp.append(b"STORED\r\n")
            model[k] = v
        elif op == 1:
            reqs.append(b"delete %s\r\n" % k.encode())
            exp.append(b"DELETED\r\n" if k in model else b"NOT_FOUND\r\n")
            model.pop(k, None)
        else:
            reqs.append(b"append %s 0 0 1\r\n+\r\n" % k.encode())
            exp.append(b"STORED\r\n" if k in model else b"NOT_STORED\r\n")
            if k in model:
                model[k] += b"+"
    want = b"".join(exp)
    with Client(r.port, timeout=30) as c:
        got = c.pipeline(b"".join(reqs), want, timeout=30)
    assert got == want
    for m in hosts:
        for k in keys:
            wait_value(m, k, get_reply(value(k, model[k])) if k in model else b"END\r\n")
