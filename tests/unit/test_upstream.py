"""Upstream hosts and connections, over real loopback sockets and a real loop.

The "memcached" here is a listening socket on 127.0.0.1 that the test
drives by hand (accept, read the exact bytes, answer or hang up), so every
byte the router writes and every reply a client gets is asserted exactly.
Time is the loop's: ``Connection.expire`` is called with chosen instants,
so no test sleeps for a timeout.  What these pin down is what a rewrite of
the upstream path (in Cython) must keep.
"""
from __future__ import annotations

import errno
import socket
import struct
import time
from typing import Callable

import pytest

from mcrouter import _metrics
from mcrouter import upstream as upstream_mod
from mcrouter._metrics import E_CONNECT, E_PARSE, E_RESET, E_TIMEOUT, H_CONNS, H_ERRORS
from mcrouter._parser import Owner, RequestParser
from mcrouter._ring import Ring
from mcrouter.config import HostAddr
from mcrouter.hosttable import DOWN as HOST_DOWN, UP as HOST_UP, HostTable
from mcrouter.loop import EV_IN, EV_OUT, Loop
from mcrouter.metrics import MetricsBlock
from mcrouter.protocol import (NO_HEALTHY_UPSTREAM, ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_ERROR,
                               UPSTREAM_QUEUE_FULL, UPSTREAM_TIMEOUT)
from mcrouter.upstream import (BACKOFF_MAX, BACKOFF_MIN, CONN_CONNECTING, CONN_DOWN, CONN_UP,
                               Connection, Host)
from support.polling import reader

# the router's own replies, as the client reads them (and as protocol.py writes them)
ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
QUEUE_FULL = b"SERVER_ERROR mcrouter: upstream queue full\r\n"
DEADLINE = 5.0          # generous: only ever waited out on failure


def test_the_router_replies_expected_here_are_protocol_py_s():
    assert (ERROR, TIMEOUT, NO_HEALTHY, QUEUE_FULL) == (
        UPSTREAM_ERROR, UPSTREAM_TIMEOUT, NO_HEALTHY_UPSTREAM, UPSTREAM_QUEUE_FULL)


class Inbox(Owner):
    """The requests' owner (a client connection in the router): every answer."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes, int]] = []

    def on_reply(self, req) -> None:
        self.got.append((req.wire, req.reply, req.status))


def requests(data: bytes, owner: Inbox, chan: int = 0) -> list:
    reqs = RequestParser(chan=chan).feed(data)
    for r in reqs:
        r.owner = owner
    return reqs


@pytest.fixture
def block():
    """This process counts into slot 0 of a fresh metrics block."""
    saved = _metrics.local()
    b = MetricsBlock(workers=1, hosts=8)
    b.use_slot(0)
    _metrics.install(b.counters(0))
    yield b
    _metrics.install(saved)


def errors(block: MetricsBlock, host: Host, kind: int) -> int:
    return block.snapshot(8).host_value(host.slot, H_ERRORS + kind)


def conns_gauge(block: MetricsBlock, host: Host) -> int:
    return block.snapshot(8).host_gauge(host.slot, H_CONNS)


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.ep.close()


@pytest.fixture
def server():
    """A listening socket on 127.0.0.1 (the memcached the host points at)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(DEADLINE)
    yield s
    s.close()


@pytest.fixture
def make_host(loop, block):
    """Hosts on a fresh HostTable; closed at the end of the test."""
    table = HostTable(capacity=8)
    made: list[Host] = []

    def make(port: int, connections: int = 1, timeout: float = 1.0, tko: int = 3,
             connect_timeout: float = 10.0, address: str | None = "127.0.0.1") -> Host:
        slot = table.assign(f"127.0.0.1:{port}")
        if address is not None:
            table.set_address(slot, socket.AF_INET, address)
        h = Host(HostAddr("127.0.0.1", port), loop, table, slot, connections=connections,
                 timeout=timeout, connect_timeout=connect_timeout, max_item_size=1 << 20,
                 tko=tko)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def drive(loop: Loop, done: Callable[[], bool], what: str) -> None:
    """Run loop turns until ``done()`` (bounded in time)."""
    loop.busy.add("test")         # short polls
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        loop.run_once()
    loop.busy.discard("test")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def connected(loop: Loop, host: Host, server: socket.socket) -> tuple[socket.socket, Connection]:
    """Start ``host`` (one connection); return the server's side and the
    router's, up."""
    host.start()
    conn = host.conns[0]
    assert conn.state == CONN_CONNECTING          # a loopback connect is still in progress
    drive(loop, lambda: conn.state == CONN_UP, "connected")
    peer, _ = server.accept()
    peer.settimeout(DEADLINE)
    return peer, conn


def written(loop: Loop, host: Host, peer: socket.socket, data: bytes, inbox: Inbox) -> bytes:
    """Send the requests of ``data`` through ``host`` (one connection, up),
    run the loop until they are written; return what the server read."""
    reqs = requests(data, inbox)
    for r in reqs:
        host.send(r)
    drive(loop, lambda: host.conns[0].ring.pending == 0, "written")
    return recv_exact(peer, sum(len(r.wire) for r in reqs))


# -- Host.send: which connection -------------------------------------------

def fake_up(host: Host) -> None:
    """Every connection up without a socket (nothing is flushed in these tests)."""
    for c in host.conns:
        c.state = CONN_UP


def test_send_queues_on_the_connection_of_the_client_channel(make_host, loop):
    host = make_host(1, connections=3)
    fake_up(host)
    inbox = Inbox()
    for chan in (4, 0, 5, 3, 1):
        host.send(requests(f"get k{chan}\r\n".encode(), inbox, chan)[0])
    # 4 % 3, 0 % 3, 5 % 3, 3 % 3, 1 % 3: each connection marked dirty once, in order
    assert [c.ring.inflight for c in host.conns] == [2, 2, 1]
    assert loop.dirty_upstreams == [host.conns[1], host.conns[0], host.conns[2]]
    assert all(c.dirty for c in host.conns)
    assert loop.busy == set(host.conns)
    assert inbox.got == []


def test_send_skips_a_connection_in_backoff_to_the_next_one(make_host):
    host = make_host(1, connections=3)
    fake_up(host)
    host.conns[1].state = CONN_DOWN
    inbox = Inbox()
    host.send(requests(b"get a\r\n", inbox, chan=1)[0])
    assert [c.ring.inflight for c in host.conns] == [0, 0, 1]
    host.conns[2].state = CONN_DOWN
    host.send(requests(b"get a\r\n", inbox, chan=1)[0])        # wraps around
    assert [c.ring.inflight for c in host.conns] == [1, 0, 1]


def test_a_request_sent_while_connecting_is_queued_not_marked_for_writing(make_host, loop):
    host = make_host(1)
    host.conns[0].state = CONN_CONNECTING
    host.send(requests(b"get a\r\n", Inbox())[0])
    assert host.conns[0].ring.inflight == 1 and host.conns[0].ring.pending == 7
    assert not host.conns[0].dirty and loop.dirty_upstreams == []
    assert loop.busy == {host.conns[0]}


def test_every_connection_down_answers_at_once(make_host, loop, block):
    """A healthy host whose connect fails right away: "upstream error"; a
    host marked down: "no healthy upstream", without a connect attempt."""
    inbox = Inbox()
    host = make_host(1, connections=2, address=None, tko=100)
    host.send(requests(b"get a\r\n", inbox)[0])
    assert inbox.got == [(b"get a\r\n", ERROR, ST_ERROR)]
    assert host.last_error == "no address for the host name"
    assert errors(block, host, E_CONNECT) == 1
    host.table.set_state(host.table.assign("127.0.0.1:2"), HOST_DOWN, "probe: down")
    down = make_host(2, connections=2)
    assert not down.healthy
    down.send(requests(b"get b\r\n", inbox)[0])
    assert inbox.got[1] == (b"get b\r\n", NO_HEALTHY, ST_ERROR)
    assert all(c.sock is None and c.state == CONN_DOWN for c in down.conns)
    assert errors(block, down, E_CONNECT) == 0


def test_a_full_queue_refuses_the_request_with_queue_full(make_host, loop):
    host = make_host(1)
    fake_up(host)
    conn = host.conns[0]
    conn.ring = Ring(max_inflight=1, host=host.slot)
    inbox = Inbox()
    first, second = requests(b"get a\r\nget b\r\n", inbox)
    host.send(first)
    host.send(second)
    assert inbox.got == [(b"get b\r\n", QUEUE_FULL, ST_ERROR)]
    assert conn.ring.inflight == 1


# -- connecting ------------------------------------------------------------

def test_requests_queued_while_connecting_are_written_once_connected(make_host, loop, server,
                                                                     block):
    host = make_host(server.getsockname()[1], connections=1)
    host.start()
    conn = host.conns[0]
    assert conn.state == CONN_CONNECTING and loop.busy == {conn}
    inbox = Inbox()
    sent = (requests(b"get a\r\n", inbox, chan=0) + requests(b"set b 0 0 1\r\nx\r\n", inbox, 1)
            + requests(b"mg c v\r\n", inbox, 0))
    for r in sent:
        host.send(r)
    peer, _ = server.accept()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)                        # no turn has run: nothing written yet
    peer.settimeout(DEADLINE)
    drive(loop, lambda: conn.state == CONN_UP, "connected")
    wire = b"get a\r\nset b 0 0 1\r\nx\r\nmg c v\r\n"
    assert recv_exact(peer, len(wire)) == wire  # the turn that connected wrote them, in order
    assert conns_gauge(block, host) == 1
    peer.sendall(b"END\r\nSTORED\r\nVA 1\r\nC\r\n")
    drive(loop, lambda: len(inbox.got) == 3, "three replies")
    assert inbox.got == [(b"get a\r\n", b"END\r\n", ST_FAIL),
                         (b"set b 0 0 1\r\nx\r\n", b"STORED\r\n", ST_OK),
                         (b"mg c v\r\n", b"VA 1\r\nC\r\n", ST_OK)]
    conn.expire(loop.now)                     # nothing owed: no longer busy
    assert conn not in loop.busy and conn.state == CONN_UP
    peer.close()


def test_a_refused_connect_answers_queued_requests_and_marks_the_host_down(make_host, loop,
                                                                            block):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))             # bound, never listening: refused
    host = make_host(closed.getsockname()[1], connections=1)
    host.start()
    conn = host.conns[0]
    assert conn.state == CONN_CONNECTING
    inbox = Inbox()
    for r in requests(b"get a\r\ndelete b\r\n", inbox):
        host.send(r)
    drive(loop, lambda: conn.state == CONN_DOWN, "refused")
    assert inbox.got == [(b"get a\r\n", ERROR, ST_ERROR), (b"delete b\r\n", ERROR, ST_ERROR)]
    # at once, not after tko: nobody is there
    assert not host.healthy and host.failures == host.tko
    assert host.table.state(host.slot) == HOST_DOWN
    assert host.table.status(host.slot).reason == "connect: ECONNREFUSED"
    assert errors(block, host, E_CONNECT) == 1 and errors(block, host, E_RESET) == 0
    assert conn.sock is None and conn.fd == -1 and loop.handlers == {}
    assert conn not in loop.busy and conns_gauge(block, host) == 0
    # the reconnect timer fires while the host is down: no connect (no storm)
    [(_, _, reconnect)] = loop._timers
    reconnect()
    assert conn.state == CONN_DOWN and conn.sock is None
    host.send(requests(b"get c\r\n", inbox)[0])
    assert inbox.got[2] == (b"get c\r\n", NO_HEALTHY, ST_ERROR)
    # only the probes bring it back: then it connects at once, backoff reset
    host.table.set_state(host.slot, HOST_UP, "probe: up")
    host.sync()
    assert host.healthy and host.failures == 0
    assert conn.state == CONN_CONNECTING and conn.backoff == BACKOFF_MIN
    closed.close()


def test_reconnects_back_off_exponentially_with_jitter_up_to_the_cap(make_host, loop,
                                                                     monkeypatch, server):
    jitter: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        jitter.append((a, b))
        return b
    monkeypatch.setattr(upstream_mod.random, "uniform", uniform)
    timers: list[tuple[float, Callable[[], None]]] = []
    monkeypatch.setattr(loop, "call_later", lambda delay, fn: timers.append((delay, fn)))
    host = make_host(server.getsockname()[1], address=None, tko=100)
    conn = host.conns[0]
    host.start()                              # no address yet: fails, not hard
    for _ in range(8):
        timers[-1][1]()
    assert [d for d, _ in timers] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, BACKOFF_MAX, BACKOFF_MAX])
    assert jitter == [(0.5, 1.0)] * 9
    assert conn.backoff == BACKOFF_MAX == 5.0
    assert host.healthy and host.failures == 9
    # an address appears: the next try connects, and a connection that
    # came up starts its backoff again from the minimum
    host.table.set_address(host.slot, socket.AF_INET, "127.0.0.1")
    timers[-1][1]()
    drive(loop, lambda: conn.state == CONN_UP, "connected")
    assert conn.backoff == BACKOFF_MIN
    peer, _ = server.accept()
    peer.close()
    drive(loop, lambda: conn.state == CONN_DOWN, "closed by the server")
    assert timers[-1][0] == pytest.approx(BACKOFF_MIN)
    monkeypatch.setattr(upstream_mod.random, "uniform", lambda a, b: a)
    conn.fail("again")                        # the low end of the jitter: half the backoff
    assert timers[-1][0] == pytest.approx(BACKOFF_MIN)      # 2 * 0.05 * 0.5


# -- a connection that breaks ------------------------------------------------

def test_a_broken_connection_fails_everything_in_flight_exactly_once(make_host, loop, server,
                                                                    block, monkeypatch):
    monkeypatch.setattr(upstream_mod.random, "uniform", lambda a, b: a)
    host = make_host(server.getsockname()[1], tko=3)
    peer, conn = connected(loop, host, server)
    inbox = Inbox()
    assert written(loop, host, peer, b"get a\r\nget b\r\nset c 0 0 1 noreply\r\nx\r\n",
                   inbox) == b"get a\r\nget b\r\nset c 0 0 1 noreply\r\nx\r\nmn\r\n"
    peer.sendall(b"VALUE a 0 1\r\nA\r\nEND\r\n")
    peer.close()                              # the rest never comes
    drive(loop, lambda: conn.state == CONN_DOWN, "closed by the server")
    assert inbox.got == [(b"get a\r\n", b"VALUE a 0 1\r\nA\r\nEND\r\n", ST_OK),
                         (b"get b\r\n", ERROR, ST_ERROR),
                         (b"set c 0 0 1 noreply\r\nx\r\nmn\r\n", ERROR, ST_ERROR)]
    assert host.failures == 1 and host.healthy          # one failure, not one per request
    assert host.last_error == "connection closed by server"
    assert errors(block, host, E_RESET) == 1 and conns_gauge(block, host) == 0
    assert conn.ring.inflight == 0 and conn not in loop.busy
    conn.expire(loop.now + 100.0)             # nothing left to answer twice
    assert len(inbox.got) == 3
    # the reconnect comes after the backoff, and the connection serves again
    drive(loop, lambda: conn.state == CONN_UP, "reconnected")
    peer, _ = server.accept()
    peer.settimeout(DEADLINE)
    assert written(loop, host, peer, b"get d\r\n", inbox) == b"get d\r\n"
    peer.close()
    host.close()
    assert len(inbox.got) == 4 and inbox.got[3] == (b"get d\r\n", ERROR, ST_ERROR)
    assert conns_gauge(block, host) == 0


def test_a_reply_that_cannot_answer_its_request_closes_the_connection(make_host, loop, server,
                                                                      block, caplog):
    """A desynchronised pipeline: the good reply before the bad one is
    delivered, nothing of the bad one nor what follows it."""
    host = make_host(server.getsockname()[1], tko=3)
    peer, conn = connected(loop, host, server)
    inbox = Inbox()
    data = b"get a\r\nget b\r\nset c 0 0 1\r\nx\r\n"
    assert written(loop, host, peer, data, inbox) == data
    caplog.set_level("WARNING", logger="mcrouter.upstream")
    peer.sendall(b"END\r\nSTORED\r\nSTORED\r\n")   # get b answered with STORED
    drive(loop, lambda: conn.state == CONN_DOWN, "dropped")
    assert inbox.got == [(b"get a\r\n", b"END\r\n", ST_FAIL), (b"get b\r\n", ERROR, ST_ERROR),
                         (b"set c 0 0 1\r\nx\r\n", ERROR, ST_ERROR)]
    assert host.last_error == "protocol error (a reply to get that cannot answer it)"
    assert errors(block, host, E_PARSE) == 1 and errors(block, host, E_RESET) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "host 127.0.0.1:%d: protocol error, connection closed: a reply to get that cannot "
        "answer it: b'STORED\\r\\nSTORED\\r\\n'" % host.addr.port]
    assert peer.recv(10) == b""               # the router hung up
    assert len(loop._timers) == 1             # and will reconnect
    peer.close()


# -- timeouts ----------------------------------------------------------------

def test_a_request_that_only_waited_in_the_queue_times_out_without_blame(make_host, loop,
                                                                          server, block):
    """Never written: the timeout reply, but neither a failure of the host
    nor a timeout counted; the connect deadline is judged on its own."""
    host = make_host(server.getsockname()[1], timeout=0.5, connect_timeout=3.0, tko=1)
    host.start()
    conn = host.conns[0]
    assert conn.state == CONN_CONNECTING           # the loop never runs: it stays so
    inbox = Inbox()
    for r in requests(b"get a\r\nget b\r\n", inbox):
        host.send(r)
    start = loop.now
    conn.expire(start + 0.49)
    assert inbox.got == []
    conn.expire(start + 0.5)
    assert inbox.got == [(b"get a\r\n", TIMEOUT, ST_ERROR), (b"get b\r\n", TIMEOUT, ST_ERROR)]
    assert host.failures == 0 and host.healthy
    assert errors(block, host, E_TIMEOUT) == 0
    assert conn.state == CONN_CONNECTING and conn in loop.busy
    conn.expire(start + 3.01)                 # past the connect deadline
    assert conn.state == CONN_DOWN and host.last_error == "connect timeout"
    assert errors(block, host, E_CONNECT) == 1 and not host.healthy    # tko=1
    assert len(inbox.got) == 2                # answered once only


def test_written_requests_that_time_out_count_towards_tko(make_host, loop, server, block):
    host = make_host(server.getsockname()[1], timeout=0.5, tko=2)
    peer, conn = connected(loop, host, server)
    inbox = Inbox()
    assert written(loop, host, peer, b"get a\r\nget b\r\n", inbox) == b"get a\r\nget b\r\n"
    at = conn.ring.progress_at                # the turn clock of the write
    conn.expire(at + 0.49)
    assert inbox.got == []
    conn.expire(at + 0.5)
    assert inbox.got == [(b"get a\r\n", TIMEOUT, ST_ERROR), (b"get b\r\n", TIMEOUT, ST_ERROR)]
    assert errors(block, host, E_TIMEOUT) == 2
    assert host.failures == 2 and not host.healthy
    assert host.table.status(host.slot).reason == "2 failures in a row, last: timeout"
    assert conn.state == CONN_UP                   # kept: the late replies may still come
    # the late replies are dropped (the slots were kept), and reply bytes
    # clear the count of failures in a row
    peer.sendall(b"END\r\nEND\r\n")
    drive(loop, lambda: conn.ring.inflight == 0, "late replies read")
    assert len(inbox.got) == 2 and host.failures == 0
    peer.close()


def test_a_connection_silent_for_twice_the_timeout_is_dropped(make_host, loop, server, block):
    host = make_host(server.getsockname()[1], timeout=0.5, tko=10)
    peer, conn = connected(loop, host, server)
    inbox = Inbox()
    assert written(loop, host, peer, b"get a\r\n", inbox) == b"get a\r\n"
    at = conn.ring.progress_at
    conn.expire(at + 1.0)                     # answered, the connection kept
    assert inbox.got == [(b"get a\r\n", TIMEOUT, ST_ERROR)] and conn.state == CONN_UP
    conn.expire(at + 1.01)
    assert conn.state == CONN_DOWN
    assert host.last_error == "no reply within twice the timeout"
    assert errors(block, host, E_TIMEOUT) == 1 and errors(block, host, E_RESET) == 0
    assert len(inbox.got) == 1 and host.failures == 2
    assert peer.recv(10) == b""
    peer.close()


# -- the socket seam ---------------------------------------------------------

class Seam:
    """Stands in for a TLS session (``Connection.tls``) over the connection's
    socket: takes at most ``chunk`` bytes a send, and records which buffer
    each recv_into was given."""

    def __init__(self, sock: socket.socket, chunk: int) -> None:
        self.sock = sock
        self.chunk = chunk
        self.sends: list[bytes] = []
        self.recv_buffers: list[object] = []
        # the rest of tls.TlsSession's face: the handshake is done, the
        # socket holds whatever was not read, nothing waits to be written
        self.handshake_done = True
        self.more = False
        self.want_write = False

    def flush(self) -> bool:
        return True

    def close_notify(self) -> None:
        pass

    def send(self, data) -> int:
        n = self.sock.send(bytes(data[:self.chunk]))
        self.sends.append(bytes(data[:n]))
        return n

    def recv_into(self, buf) -> int:
        self.recv_buffers.append(buf)
        return self.sock.recv_into(buf)

    def close(self) -> None:
        self.sock.close()


def test_write_interest_only_while_bytes_wait_and_reads_use_the_loop_buffer(make_host, loop,
                                                                           server,
                                                                           monkeypatch):
    host = make_host(server.getsockname()[1])
    peer, conn = connected(loop, host, server)
    seam = Seam(conn.sock, chunk=6)
    conn.tls = seam                           # the I/O seam a TLS session takes
    modified: list[tuple[int, int]] = []
    real_modify = loop.modify

    def modify(fd: int, mask: int) -> None:
        modified.append((fd, mask))
        real_modify(fd, mask)
    monkeypatch.setattr(loop, "modify", modify)
    inbox = Inbox()
    host.send(requests(b"get abcdefghij\r\n", inbox)[0])   # 16 bytes, 6 a send
    drive(loop, lambda: conn.ring.pending == 0, "written")
    assert seam.sends == [b"get ab", b"cdefgh", b"ij\r\n"]
    assert modified == [(conn.fd, EV_IN | EV_OUT), (conn.fd, EV_IN)]
    assert recv_exact(peer, 16) == b"get abcdefghij\r\n"
    peer.sendall(b"END\r\n")
    drive(loop, lambda: inbox.got != [], "reply")
    assert inbox.got == [(b"get abcdefghij\r\n", b"END\r\n", ST_FAIL)]
    assert seam.recv_buffers and all(b is loop.recv_buf for b in seam.recv_buffers)
    assert len(modified) == 2                 # no epoll_ctl in a plain turn
    peer.close()


# -- a new address -------------------------------------------------------------

def test_a_new_address_moves_new_requests_while_the_old_connection_finishes(make_host, loop,
                                                                           server):
    port = server.getsockname()[1]
    other = socket.socket()
    try:
        other.bind(("127.0.0.2", port))
    except OSError:
        pytest.skip(f"127.0.0.2:{port} is taken")
    other.listen(8)
    other.settimeout(DEADLINE)
    host = make_host(port)
    peer, old = connected(loop, host, server)
    inbox = Inbox()
    host.send(requests(b"get a\r\n", inbox)[0])
    drive(loop, lambda: old.ring.awaiting == 1, "written")
    host.table.set_address(host.slot, socket.AF_INET, "127.0.0.2")
    host.sync()
    new = host.conns[0]
    assert new is not old and host.retiring == [old] and old.state == CONN_UP
    drive(loop, lambda: new.state == CONN_UP, "connected to the new address")
    peer2, _ = other.accept()
    peer2.settimeout(DEADLINE)
    host.send(requests(b"get b\r\n", inbox)[0])
    drive(loop, lambda: new.ring.awaiting == 1, "written")
    assert recv_exact(peer2, 7) == b"get b\r\n"
    assert recv_exact(peer, 7) == b"get a\r\n"
    peer.sendall(b"END\r\n")
    peer2.sendall(b"VALUE b 0 1\r\nB\r\nEND\r\n")
    drive(loop, lambda: len(inbox.got) == 2, "both replies")
    assert sorted(inbox.got) == [(b"get a\r\n", b"END\r\n", ST_FAIL),
                                 (b"get b\r\n", b"VALUE b 0 1\r\nB\r\nEND\r\n", ST_OK)]
    old.expire(loop.now)                      # idle now: closed, and no reconnect
    assert host.retiring == [] and old.state == CONN_DOWN and old.closed
    assert peer.recv(10) == b""
    for s in (peer, peer2, other):
        s.close()


# -- a descriptor shortage -----------------------------------------------------

class NoDescriptors:
    """upstream.py's ``socket`` when the process is out of descriptors."""

    def __getattr__(self, name: str):
        return getattr(socket, name)

    @staticmethod
    def socket(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")


def test_running_out_of_descriptors_at_a_reconnect_is_a_connect_failure(make_host, loop,
                                                                         monkeypatch, block):
    monkeypatch.setattr(upstream_mod.random, "uniform", lambda a, b: a)
    host = make_host(1, address=None, tko=100)
    host.start()                              # no address yet: a reconnect is due
    assert errors(block, host, E_CONNECT) == 1 and len(loop._timers) == 1
    host.table.set_address(host.slot, socket.AF_INET, "127.0.0.1")
    monkeypatch.setattr(upstream_mod, "socket", NoDescriptors())
    drive(loop, lambda: errors(block, host, E_CONNECT) == 2, "the retry failing")
    conn = host.conns[0]
    assert conn.state == CONN_DOWN and conn.sock is None and len(loop._timers) == 1


# -- raw descriptor I/O (plain connections: libc recv/send on the fd) --------

def test_a_server_reset_fails_the_connection_with_the_recv_error(make_host, loop, server,
                                                                 block):
    host = make_host(server.getsockname()[1])
    peer, conn = connected(loop, host, server)
    inbox = Inbox()
    assert written(loop, host, peer, b"get a\r\n", inbox) == b"get a\r\n"
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()                              # a reset, not an end of file
    drive(loop, lambda: conn.state == CONN_DOWN, "reset seen")
    assert inbox.got == [(b"get a\r\n", ERROR, ST_ERROR)]
    assert host.last_error == "recv: Connection reset by peer"
    assert errors(block, host, E_RESET) == 1
    assert conn.sock is None and conn.fd == -1 and loop.handlers == {}


def test_a_server_that_reads_slowly_gets_every_byte_in_order(make_host, loop, server):
    """The kernel takes part of a send (a partial write, then EAGAIN): the
    rest stays in the ring, EPOLLOUT is asked for, and the server reads
    exactly the requests' bytes once it reads."""
    host = make_host(server.getsockname()[1])
    peer, conn = connected(loop, host, server)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    inbox = Inbox()
    data = b"".join(b"set k%d 0 0 65536\r\n%s\r\n" % (i, bytes([65 + i]) * 65536)
                    for i in range(16))
    reqs = requests(data, inbox)
    for r in reqs:
        host.send(r)
    drive(loop, lambda: conn.want_write, "the kernel refused bytes")
    assert 0 < conn.ring.pending < len(data)
    got = bytearray()
    peer.setblocking(False)

    drive(loop, reader(peer, got, len(data)), "every byte read")
    assert bytes(got) == data
    drive(loop, lambda: not conn.want_write, "write interest dropped")
    assert conn.ring.pending == 0 and inbox.got == []
    peer.close()
