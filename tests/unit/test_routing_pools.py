"""The compiled routes over an ordered pool of hosts (_routing.pyx:
DefaultDispatch, MissFailoverDispatch, AllFastestDispatch) with stand-in hosts.

Each host holds what it was sent until the test answers it, so the order of
events a real network only sometimes produces (a host going down between two
attempts, an error before a success, a late reply after the answer) is set up
exactly, and the client's bytes and the route counters are checked.
"""
from __future__ import annotations

import struct
from typing import Iterator

import pytest

from mcrouter import _metrics
from mcrouter._metrics import G_ROUTES, HOSTS_AT, R_FAILOVER, R_FANOUT, R_MISS_FAILOVER, Counters
from mcrouter._parser import Owner, Request, RequestParser
from mcrouter._upstream import HostBase
from mcrouter.protocol import (NO_HEALTHY_UPSTREAM, ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_ERROR,
                               UPSTREAM_TIMEOUT)
from mcrouter.routes.fanout import AllFastestRoute
from mcrouter.routes.failover import MissFailoverRoute
from mcrouter.routes.simple import DefaultRoute

HIT = b"VALUE k 0 1\r\nv\r\nEND\r\n"
STORED = b"STORED\r\n"


class Host(HostBase):
    """A host that keeps every request it is sent, unanswered."""

    def __init__(self, name: str, healthy: bool = True) -> None:
        self.name = name
        self.healthy = healthy
        self.got: list[Request] = []

    def send(self, req: Request) -> None:
        self.got.append(req)

    def answer(self, reply: bytes, status: int) -> None:
        self.got.pop(0).finish(reply, status)


class RefusingHost(Host):
    """A host whose send fails at once (every connection down)."""

    def send(self, req: Request) -> None:
        self.got.append(req)
        req.finish(UPSTREAM_ERROR, ST_ERROR)


class Client(Owner):
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, int]] = []

    def on_reply(self, req: Request) -> None:
        self.replies.append((req.reply, req.status))


@pytest.fixture
def counters() -> Iterator[bytearray]:
    """This process's route counters, counted into a buffer the test reads."""
    saved = _metrics.local()
    buf = bytearray(HOSTS_AT * 8)
    _metrics.install(Counters(buf))
    yield buf
    _metrics.install(saved)


def routed(buf: bytearray) -> tuple[int, int, int]:
    """(failover, miss_failover, fanout) counted so far."""
    return tuple(struct.unpack_from("<Q", buf, (G_ROUTES + r) * 8)[0]   # type: ignore[return-value]
                 for r in (R_FAILOVER, R_MISS_FAILOVER, R_FANOUT))


def request(line: bytes) -> tuple[Request, Client]:
    req = RequestParser().feed(line)[0]
    client = Client()
    req.owner = client
    return req, client


# -- DefaultRoute ------------------------------------------------------------

def test_default_route_first_healthy_host_and_counts_the_failover(counters):
    a, b, c = Host("a", healthy=False), Host("b"), Host("c")
    route = DefaultRoute([a, b, c])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert b.got == [req] and not a.got and not c.got       # the request itself, no copy
    b.answer(HIT, ST_OK)
    assert client.replies == [(HIT, ST_OK)]
    assert routed(counters) == (1, 0, 0)
    a.healthy = True
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert a.got == [req]
    assert routed(counters) == (1, 0, 0)                    # the first host: no failover


def test_default_route_with_no_healthy_host(counters):
    route = DefaultRoute([Host("a", healthy=False), Host("b", healthy=False)])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert client.replies == [(NO_HEALTHY_UPSTREAM, ST_ERROR)]
    assert routed(counters) == (0, 0, 0)


def test_a_pool_holds_hosts_only():
    with pytest.raises(TypeError, match="upstream hosts, not str"):
        DefaultRoute(["127.0.0.1:11211"])                   # type: ignore[list-item]


# -- MissFailoverRoute -------------------------------------------------------

def test_miss_failover_a_miss_then_a_hit(counters):
    a, b = Host("a"), Host("b")
    route = MissFailoverRoute([a, b])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert len(a.got) == 1 and not b.got
    sub = a.got[0]
    assert sub is not req and sub.wire == req.wire and sub.parent is req
    a.answer(b"END\r\n", ST_FAIL)
    assert client.replies == [] and len(b.got) == 1
    b.answer(HIT, ST_OK)
    assert client.replies == [(HIT, ST_OK)]
    assert routed(counters) == (0, 1, 0)


def test_miss_failover_every_host_misses_or_errs(counters):
    """The last failure if any host gave one (a real reply beats the router's
    error), else the last error."""
    a, b, c = Host("a"), Host("b"), Host("c")
    route = MissFailoverRoute([a, b, c])
    req, client = request(b"mg k v\r\n")
    route.dispatch(req)
    a.answer(b"EN\r\n", ST_FAIL)
    b.answer(UPSTREAM_TIMEOUT, ST_ERROR)
    c.answer(UPSTREAM_ERROR, ST_ERROR)
    assert client.replies == [(b"EN\r\n", ST_FAIL)]
    assert routed(counters) == (1, 1, 0)        # after the miss, after the timeout

    req, client = request(b"get k\r\n")
    route.dispatch(req)
    a.answer(UPSTREAM_TIMEOUT, ST_ERROR)
    b.answer(b"END\r\n", ST_FAIL)
    c.answer(b"SERVER_ERROR busy\r\n", ST_FAIL)              # the last failure
    assert client.replies == [(b"SERVER_ERROR busy\r\n", ST_FAIL)]

    req, client = request(b"get k\r\n")
    route.dispatch(req)
    a.answer(UPSTREAM_ERROR, ST_ERROR)
    b.answer(UPSTREAM_TIMEOUT, ST_ERROR)
    c.answer(b"", ST_ERROR)                                 # an empty error: the router's own
    assert client.replies == [(UPSTREAM_ERROR, ST_ERROR)]


def test_miss_failover_counts_each_move_by_its_cause(counters):
    a, b, c = Host("a"), Host("b"), Host("c")
    route = MissFailoverRoute([a, b, c])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    a.answer(UPSTREAM_TIMEOUT, ST_ERROR)                     # an error: failover
    b.answer(b"END\r\n", ST_FAIL)                            # a miss: miss failover
    c.answer(b"END\r\n", ST_FAIL)                            # the last: no move
    assert client.replies == [(b"END\r\n", ST_FAIL)]
    assert routed(counters) == (1, 1, 0)


def test_miss_failover_client_error_ends_the_chain(counters):
    a, b = Host("a"), Host("b")
    route = MissFailoverRoute([a, b])
    req, client = request(b"incr k 1\r\n")
    route.dispatch(req)
    error = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    a.answer(error, ST_FAIL)
    assert client.replies == [(error, ST_FAIL)] and not b.got
    assert routed(counters) == (0, 0, 0)


def test_miss_failover_asks_the_hosts_healthy_when_the_request_came(counters):
    """A host that goes down between two attempts is still asked (its own
    send answers for it); one that comes up meanwhile is not."""
    a, b, c = Host("a"), Host("b", healthy=False), Host("c")
    route = MissFailoverRoute([a, b, c])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    b.healthy = True
    c.healthy = False
    a.answer(b"END\r\n", ST_FAIL)
    assert not b.got and len(c.got) == 1
    c.answer(HIT, ST_OK)
    assert client.replies == [(HIT, ST_OK)]


def test_miss_failover_no_healthy_host():
    route = MissFailoverRoute([Host("a", healthy=False)])
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert client.replies == [(NO_HEALTHY_UPSTREAM, ST_ERROR)]


def test_miss_failover_over_hosts_that_fail_at_once(counters):
    """Sends answered before they return: the next host is asked from inside
    the previous one's reply, and the client gets exactly one reply."""
    hosts = [RefusingHost(str(i)) for i in range(3)]
    route = MissFailoverRoute(hosts)
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    assert [len(h.got) for h in hosts] == [1, 1, 1]
    assert client.replies == [(UPSTREAM_ERROR, ST_ERROR)]
    assert routed(counters) == (2, 0, 0)


def test_miss_failover_over_more_than_64_hosts():
    """Past 64 hosts the Python chain takes over, with the same answers."""
    hosts = [Host(str(i), healthy=i != 1) for i in range(70)]
    route = MissFailoverRoute(hosts)
    req, client = request(b"get k\r\n")
    route.dispatch(req)
    for i in range(68):
        if i != 1:
            hosts[i].answer(b"END\r\n", ST_FAIL)
    assert not hosts[1].got and client.replies == []
    hosts[68].answer(HIT, ST_OK)
    assert client.replies == [(HIT, ST_OK)] and not hosts[69].got


def test_miss_failover_multi_key_gets_go_through_the_chain():
    a, b = Host("a"), Host("b")
    route = MissFailoverRoute([a, b])
    req, client = request(b"get k j\r\n")
    route.dispatch(req)
    a.answer(HIT, ST_OK)
    assert b.got[0].wire == b"get j\r\n"
    b.answer(b"VALUE j 0 1\r\nw\r\nEND\r\n", ST_OK)
    assert client.replies == [(b"VALUE k 0 1\r\nv\r\nVALUE j 0 1\r\nw\r\nEND\r\n", ST_OK)]


# -- AllFastestRoute ---------------------------------------------------------

def test_all_fastest_an_error_then_a_success(counters):
    a, b, c = Host("a"), Host("b"), Host("c")
    route = AllFastestRoute([a, b, c])
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert [len(h.got) for h in (a, b, c)] == [1, 1, 1]
    assert all(h.got[0] is not req and h.got[0].parent is req for h in (a, b, c))
    a.answer(UPSTREAM_TIMEOUT, ST_ERROR)
    assert client.replies == []
    c.answer(STORED, ST_OK)
    assert client.replies == [(STORED, ST_OK)]
    b.answer(b"SERVER_ERROR out of memory storing object\r\n", ST_FAIL)   # late: dropped
    assert client.replies == [(STORED, ST_OK)]
    assert routed(counters) == (0, 0, 1)


def test_all_fastest_none_succeeds():
    a, b, c = Host("a"), Host("b"), Host("c")
    route = AllFastestRoute([a, b, c])
    req, client = request(b"add k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    b.answer(b"NOT_STORED\r\n", ST_FAIL)
    a.answer(UPSTREAM_ERROR, ST_ERROR)
    assert client.replies == []
    c.answer(UPSTREAM_TIMEOUT, ST_ERROR)
    assert client.replies == [(b"NOT_STORED\r\n", ST_FAIL)]   # the failure beats the errors

    req, client = request(b"delete k\r\n")
    route.dispatch(req)
    for h, reply in ((a, UPSTREAM_ERROR), (c, UPSTREAM_TIMEOUT), (b, UPSTREAM_ERROR)):
        h.answer(reply, ST_ERROR)
    assert client.replies == [(UPSTREAM_ERROR, ST_ERROR)]       # the last error


def test_all_fastest_one_healthy_host_gets_the_request_itself(counters):
    a, b = Host("a", healthy=False), Host("b")
    route = AllFastestRoute([a, b])
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert b.got == [req] and not a.got
    b.answer(b"NOT_STORED\r\n", ST_FAIL)
    assert client.replies == [(b"NOT_STORED\r\n", ST_FAIL)]
    assert routed(counters) == (0, 0, 0)
    b.healthy = False
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert client.replies == [(NO_HEALTHY_UPSTREAM, ST_ERROR)]


def test_all_fastest_over_hosts_that_fail_at_once():
    """Every copy answered inside its own send: one reply, after the last."""
    hosts = [RefusingHost("a"), Host("b"), RefusingHost("c")]
    route = AllFastestRoute(hosts)
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert client.replies == []
    hosts[1].answer(b"NOT_STORED\r\n", ST_FAIL)
    assert client.replies == [(b"NOT_STORED\r\n", ST_FAIL)]

    route = AllFastestRoute([RefusingHost("a"), RefusingHost("c")])
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert client.replies == [(UPSTREAM_ERROR, ST_ERROR)]


def test_all_fastest_over_more_than_64_hosts(counters):
    hosts = [Host(str(i), healthy=i % 2 == 0) for i in range(70)]
    route = AllFastestRoute(hosts)
    req, client = request(b"set k 0 0 1\r\nv\r\n")
    route.dispatch(req)
    assert [len(h.got) for h in hosts] == [1 - i % 2 for i in range(70)]
    for h in hosts[:68:2]:
        h.answer(b"NOT_STORED\r\n", ST_FAIL)
    assert client.replies == []
    hosts[68].answer(STORED, ST_OK)
    assert client.replies == [(STORED, ST_OK)]
    assert routed(counters) == (0, 0, 1)
