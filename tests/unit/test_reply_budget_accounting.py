"""The reply budget's books (_downstream.pyx: _charge, _waiting, _uncharge),
driven by hand: a route that holds each request until the test answers it,
so which replies arrive while a client is past -b is exact."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from mcrouter._downstream import ClientConnection, reply_bytes_charged, set_reply_budget
from mcrouter.loop import Loop
from mcrouter.protocol import ST_OK
from support.polling import reader

LIMIT = 64 * 1024           # the connection's out_limit (-b, at its floor)
BIG = 100_000
OOM = b"SERVER_ERROR out of memory writing get response\r\n"


def value(key: bytes, size: int = BIG) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, size, b"x" * size)


class Held:
    """A route that answers nothing by itself."""

    def __init__(self) -> None:
        self.got: list = []

    def dispatch(self, req) -> None:
        self.got.append(req)


class Worker:
    def __init__(self, loop: Loop) -> None:
        self.settings = SimpleNamespace(max_item_size=1 << 20, buffer_size=LIMIT)
        self.loop = loop
        self.route = Held()
        self.clients: set = set()

    def next_channel(self) -> int:
        return 1


@pytest.fixture
def loop():
    lp = Loop()
    lp.busy.add("test")
    yield lp
    lp.ep.close()


@pytest.fixture
def budget():
    set_reply_budget(64 << 20)
    base = reply_bytes_charged()
    yield base
    set_reply_budget(64 << 20)


@pytest.fixture
def pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(lst.getsockname())
    side, _ = lst.accept()
    lst.close()
    side.setblocking(False)
    side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield client, side
    client.close()
    side.close()


def drive(loop, done, what):
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        loop.run_once()


def turns(loop, n=5):
    for _ in range(n):
        loop.run_once()


def read_all(loop, client, total):
    """The client reads (the loop turning) until ``total`` bytes came."""
    client.setblocking(False)
    data = bytearray()
    drive(loop, reader(client, data, total), "every reply read")
    return bytes(data)


def setup(loop, pair, count):
    client, side = pair
    worker = Worker(loop)
    conn = ClientConnection(worker, side)
    worker.clients.add(conn)
    client.sendall(b"".join(b"get k%d\r\n" % i for i in range(count)))
    drive(loop, lambda: len(worker.route.got) >= 3, "requests forwarded")
    return client, conn, worker.route.got


def test_a_reply_past_b_is_charged_and_given_back_once_the_client_reads(loop, pair, budget):
    client, conn, got = setup(loop, pair, 3)
    got[0].finish(value(b"k0"), ST_OK)      # the head: written at once, never charged
    turns(loop)
    assert reply_bytes_charged() == budget
    got[1].finish(value(b"k1"), ST_OK)      # arrives while ~100 KB are unwritten: charged
    assert reply_bytes_charged() == budget + len(value(b"k1"))
    got[2].finish(value(b"k2"), ST_OK)
    assert reply_bytes_charged() == budget + 2 * len(value(b"k1"))
    assert read_all(loop, client, len(value(b"k0")) * 3) == \
        value(b"k0") + value(b"k1") + value(b"k2")
    turns(loop)
    assert reply_bytes_charged() == budget
    conn.close()
    assert reply_bytes_charged() == budget


def test_a_charged_client_that_closes_gives_its_charge_back(loop, pair, budget):
    client, conn, got = setup(loop, pair, 3)
    for i in range(3):
        got[i].finish(value(b"k%d" % i), ST_OK)
    turns(loop)
    assert reply_bytes_charged() > budget
    conn.close()
    assert reply_bytes_charged() == budget


def test_past_the_budget_the_reply_is_memcacheds_out_of_memory_line(loop, pair, budget):
    set_reply_budget(len(value(b"k1")))     # room for one charged reply
    client, conn, got = setup(loop, pair, 3)
    for i in range(3):
        got[i].finish(value(b"k%d" % i), ST_OK)
    turns(loop)
    expected = value(b"k0") + value(b"k1") + OOM
    assert read_all(loop, client, len(expected)) == expected
    turns(loop)
    assert reply_bytes_charged() == budget
    conn.close()
