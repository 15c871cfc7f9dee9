"""Closed-loop pipelined load for the operations tests, with every reply checked.

Each ``Loader`` is a thread with one connection.  It sends a batch of
``get`` requests in one write, reads the replies, and checks each against
the exact bytes every allowed source would give (``sources``: label →
key → reply).  It records, per batch, when it was sent, when its last
reply came and which source answered each request, so a test can check
the replies against a timeline (which config was in force).

``reconnect=True`` makes it behave like a memcached client in front of a
restarting server: on end-of-file it reconnects and sends again the
requests that got no reply (a router that hangs up has executed nothing it
did not answer).  Every loop is bounded in time.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def value_reply(key: str, value: bytes) -> bytes:
    return f"VALUE {key} 0 {len(value)}\r\n".encode() + value + b"\r\nEND\r\n"


@dataclass
class Batch:
    sent: float
    done: float
    labels: list[str] = field(default_factory=list)


class _Connection(threading.Thread):
    """A load thread's connection: reads up to a terminator, with a deadline."""

    def __init__(self, port: int, duration: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.deadline = time.monotonic() + duration
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.eofs = 0                 # connections the router ended
        self.sock = self._connect()
        self.buf = bytearray()

    def _connect(self) -> socket.socket:
        s = socket.create_connection((HOST, self.port), timeout=5.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def reconnect(self) -> None:
        self.sock.close()
        self.buf.clear()
        try:
            self.sock = self._connect()
        except OSError:
            time.sleep(0.05)          # the next read fails and this runs again

    def read_until(self, terminator: bytes) -> bytes | None:
        """Bytes through ``terminator``, or None at end-of-file/reset;
        socket.timeout when nothing comes for 5 s."""
        while True:
            i = self.buf.find(terminator)
            if i >= 0:
                out = bytes(self.buf[:i + len(terminator)])
                del self.buf[:i + len(terminator)]
                return out
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError:           # reset, or a socket a failed reconnect left closed
                data = b""
            if not data:
                return None
            self.buf += data

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)
        self.sock.close()


class Loader(_Connection):
    def __init__(self, port: int, keys: list[str], sources: dict[str, dict[str, bytes]],
                 batch: int = 16, reconnect: bool = False, duration: float = 60.0,
                 seed: int = 0) -> None:
        super().__init__(port, duration)
        self.keys = keys
        self.sources = sources
        self.batch = batch
        self.may_reconnect = reconnect
        self.seed = seed
        self.batches: list[Batch] = []
        self.retried = 0              # requests sent again after an end-of-file

    def run(self) -> None:
        n = self.seed
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            keys = [self.keys[(n + i) % len(self.keys)] for i in range(self.batch)]
            n += self.batch
            if not self.one_batch(keys):
                return

    def one_batch(self, keys: list[str]) -> bool:
        b = Batch(time.monotonic(), 0.0)
        todo = list(keys)
        for _attempt in range(5):
            try:
                self.sock.sendall(b"".join(f"get {k}\r\n".encode() for k in todo))
            except OSError:
                pass                  # the reads below see the end of the connection
            while todo:
                try:
                    reply = self.read_until(b"END\r\n")
                except socket.timeout:
                    self.errors.append(f"get {todo[0]}: no reply within 5 s")
                    return False
                if reply is None:
                    break
                label = next((lab for lab, src in self.sources.items()
                              if src[todo[0]] == reply), None)
                if label is None:
                    self.errors.append(f"get {todo[0]}: {reply[:120]!r}")
                    return False
                b.labels.append(label)
                todo.pop(0)
            if not todo:
                b.done = time.monotonic()
                self.batches.append(b)
                return True
            self.eofs += 1
            if not self.may_reconnect:
                return False
            self.retried += len(todo)
            self.reconnect()
        self.errors.append(f"gave up on {len(todo)} request(s) after 5 connections")
        return False

    @property
    def requests(self) -> int:
        return sum(len(b.labels) for b in self.batches)


class CounterLoader(_Connection):
    """``incr`` on a counter of its own, ``depth`` batches ahead of the
    replies it has read, reconnecting and sending again whatever got no
    reply.  The replies must read 1, 2, 3, ... exactly: a request the router
    executed but whose reply the client never saw would be executed twice
    when sent again, and the count would skip."""

    def __init__(self, port: int, key: str, batch: int = 8, depth: int = 2,
                 duration: float = 60.0) -> None:
        super().__init__(port, duration)
        self.key, self.batch, self.depth = key, batch, depth
        self.acked = 0                # replies read, in order
        self.sent = 0                 # requests written on this connection and before

    def run(self) -> None:
        wire = f"incr {self.key} 1\r\n".encode()
        while time.monotonic() < self.deadline and len(self.errors) == 0:
            if not self.stopping.is_set() and self.sent - self.acked < self.depth * self.batch:
                try:
                    self.sock.sendall(wire * self.batch)
                except OSError:
                    pass
                self.sent += self.batch
                continue
            if self.sent == self.acked:
                return
            try:
                line = self.read_until(b"\r\n")
            except socket.timeout:
                self.errors.append(f"no reply to incr #{self.acked + 1} within 5 s")
                return
            if line is None:
                self.eofs += 1
                if self.eofs > 20:
                    self.errors.append("more than 20 reconnects")
                    return
                self.reconnect()
                self.sent = self.acked        # what got no reply is sent again
                continue
            if line != f"{self.acked + 1}\r\n".encode():
                self.errors.append(f"incr #{self.acked + 1} answered {line!r}")
                return
            self.acked += 1
