"""The client connection's own I/O (_downstream.pyx): plain connections read
and write their descriptor with libc calls, a TLS session in ``tls`` takes
the same seam.  A fake worker whose route answers at once stands in for the
router, so what is checked is exactly the bytes a client receives."""
from __future__ import annotations

import socket
import ssl
import struct
import time
from types import SimpleNamespace
from typing import Callable

import pytest

from mcrouter._downstream import ClientConnection
from mcrouter.loop import Loop
from mcrouter.protocol import ST_OK
from support.polling import reader

DEADLINE = 5.0          # generous: only ever waited out on failure
VALUE = 100_000         # bytes of each value the fake route answers with


def value_reply(key: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, VALUE, key[-1:] * VALUE)


class Route:
    """Answers every get at once with a large value of its key."""

    def dispatch(self, req) -> None:
        req.finish(value_reply(req.key), ST_OK)


class Worker:
    """What a ClientConnection asks of its worker."""

    def __init__(self, loop: Loop) -> None:
        self.settings = SimpleNamespace(max_item_size=1 << 20, buffer_size=64 * 1024)
        self.loop = loop
        self.route = Route()
        self.clients: set[ClientConnection] = set()

    def next_channel(self) -> int:
        return 1


@pytest.fixture
def loop():
    lp = Loop()
    lp.busy.add("test")           # short polls
    yield lp
    lp.ep.close()


@pytest.fixture
def accepted():
    """A TCP client and the router's accepted, non-blocking side of it."""
    made: list[socket.socket] = []

    def make(rcvbuf: int = 0) -> tuple[socket.socket, socket.socket]:
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        client = socket.socket()
        if rcvbuf:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(lst.getsockname())
        side, _ = lst.accept()
        lst.close()
        side.setblocking(False)
        made.extend((client, side))
        return client, side
    yield make
    for s in made:
        s.close()


def drive(loop: Loop, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        loop.run_once()


def test_a_client_that_resets_is_closed_and_forgotten(loop, accepted):
    client, side = accepted()
    worker = Worker(loop)
    conn = ClientConnection(worker, side)
    worker.clients.add(conn)
    client.sendall(b"get a")                  # mid-line
    drive(loop, lambda: conn.parser.midway, "the partial line read")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()                            # a reset: recv fails with ECONNRESET
    drive(loop, lambda: conn.closed, "closed")
    assert conn.fd not in loop.handlers and worker.clients == set()


def test_a_client_that_does_not_read_gets_every_byte_in_order_once_it_does(loop, accepted):
    """Replies pass what the kernel takes (partial sends, then EAGAIN): the
    rest waits in the output, and the client reads exactly its replies, in
    order, once it reads."""
    client, side = accepted(rcvbuf=65536)
    side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    worker = Worker(loop)
    conn = ClientConnection(worker, side)
    keys = [b"k%d" % (i % 10) for i in range(40)]
    client.sendall(b"".join(b"get %s\r\n" % k for k in keys))
    expected = b"".join(value_reply(k) for k in keys)
    drive(loop, lambda: conn.answered > 0, "a reply")
    for _ in range(20):                       # the client does not read yet
        loop.run_once()
    client.setblocking(False)
    got = bytearray()
    try:
        while True:
            got.extend(client.recv(1 << 20) or b"")
    except BlockingIOError:
        pass
    assert 0 < len(got) < len(expected)       # the kernel refused the rest

    drive(loop, reader(client, got, len(expected)), "every reply read")
    assert bytes(got) == expected
    assert conn.answered == len(keys) and not conn.closed


class Seam:
    """Stands in for a TLS session (``ClientConnection.tls``) over the
    socket: takes at most ``chunk`` bytes a send, records the reads."""

    def __init__(self, sock: socket.socket, chunk: int) -> None:
        self.sock = sock
        self.chunk = chunk
        self.sends: list[bytes] = []
        self.reads: list[int] = []
        # the rest of tls.TlsSession's face: the handshake is done, the
        # socket holds whatever was not read, nothing waits to be written
        self.handshake_done = True
        self.more = False
        self.want_write = False

    def flush(self) -> bool:
        return True

    def recv_into(self, buf, nbytes: int) -> int:
        n = self.sock.recv_into(buf, nbytes)
        self.reads.append(n)
        return n

    def send(self, data) -> int:
        n = self.sock.send(bytes(data[:self.chunk]))
        self.sends.append(bytes(data[:n]))
        return n


def test_a_tls_session_takes_the_connections_reads_and_writes(loop, accepted):
    client, side = accepted()
    worker = Worker(loop)
    conn = ClientConnection(worker, side)
    seam = Seam(side, chunk=30_000)
    conn.tls = seam
    client.sendall(b"get a\r\nget b\r\n")
    expected = value_reply(b"a") + value_reply(b"b")
    client.setblocking(False)
    got = bytearray()

    drive(loop, reader(client, got, len(expected)), "both replies read")
    assert bytes(got) == expected
    assert seam.reads[0] == 14 and b"".join(seam.sends) == expected
    assert all(len(s) <= 30_000 for s in seam.sends) and len(seam.sends) >= 7


class WantRead(Seam):
    """A non-blocking ``ssl`` session: a read that meets only part of a TLS
    record raises SSLWantReadError (an OSError, not a BlockingIOError), and
    a send the kernel refuses raises SSLWantWriteError."""

    def __init__(self, sock: socket.socket, chunk: int) -> None:
        super().__init__(sock, chunk)
        self.want_read = 1
        self.want_write = 1

    def recv_into(self, buf, nbytes: int) -> int:
        if self.want_read:
            self.want_read -= 1
            raise ssl.SSLWantReadError("The operation did not complete (read)")
        return super().recv_into(buf, nbytes)

    def send(self, data) -> int:
        if self.want_write:
            self.want_write -= 1
            raise ssl.SSLWantWriteError("The operation did not complete (write)")
        return super().send(data)


def test_a_tls_session_that_wants_more_is_waited_for_not_closed(loop, accepted):
    """What an ``ssl`` session says when it has nothing now is "try again",
    as EAGAIN: the connection stays, and the client gets its replies."""
    client, side = accepted()
    worker = Worker(loop)
    conn = ClientConnection(worker, side)
    seam = WantRead(side, chunk=30_000)
    conn.tls = seam
    client.sendall(b"get a\r\n")
    expected = value_reply(b"a")
    client.setblocking(False)
    got = bytearray()

    drive(loop, reader(client, got, len(expected)), "the reply read")
    assert bytes(got) == expected and not conn.closed
