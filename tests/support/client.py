"""A blocking loopback client with a deadline on every read, and renderings
of wire bytes for assertion messages.

Every read is bounded in time so that a wedged socket fails the test
instead of hanging the run.  Network traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterable, Optional

HOST = "127.0.0.1"
READ_TIMEOUT = 10.0         # default deadline of one client read


class Client:
    """A blocking loopback client with deadlines on every read."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT, nodelay: bool = True) -> None:
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more; False on EOF or when the deadline has passed."""
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return time.monotonic() < deadline
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        """Exactly ``n`` bytes, or whatever arrived before EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n and self._fill(deadline):
            pass
        return self._take(min(n, len(self.buf)))

    def recv_until(self, terminator: bytes, timeout: Optional[float] = None) -> bytes:
        """Everything up to and including the first ``terminator`` that ends
        the data read so far (checked after each read and at each occurrence),
        or whatever arrived before EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        start = 0
        while True:
            i = self.buf.find(terminator, start)
            if i >= 0:
                return self._take(i + len(terminator))
            start = max(0, len(self.buf) - len(terminator) + 1)
            if not self._fill(deadline):
                return self._take(len(self.buf))

    def recv_until_end(self, terminator: bytes, timeout: Optional[float] = None) -> bytes:
        """Read until the *whole data received* ends with ``terminator`` (so a
        terminator-like sequence inside a value does not stop the read early
        as long as more data follows), or EOF/deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.buf.endswith(terminator):
            if not self._fill(deadline):
                break
        return self._take(len(self.buf))

    def recv_one_of(self, options: Iterable[bytes], timeout: Optional[float] = None) -> bytes:
        """The first of ``options`` that the data received so far starts with
        (read as needed), or everything received before EOF/deadline.  For
        replies that may legitimately be one of a few exact texts."""
        options = sorted(set(options), key=len)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for o in options:
                if self.buf.startswith(o):
                    return self._take(len(o))
            if not any(o.startswith(bytes(self.buf)) for o in options):
                return self._take(len(self.buf))      # can be none of them
            if not self._fill(deadline):
                return self._take(len(self.buf))

    def recv_idle(self, idle: float = 0.3, timeout: Optional[float] = None) -> bytes:
        """Everything that arrives until nothing more comes for ``idle`` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline and not self.eof:
            self.sock.settimeout(idle)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.buf += data
        return self._take(len(self.buf))

    def request(self, data: bytes, expect: bytes, timeout: Optional[float] = None) -> bytes:
        """Send ``data`` and read exactly ``len(expect)`` bytes (the reply
        that ``expect`` is the exact text of)."""
        self.send(data)
        return self.recv_exact(len(expect), timeout)

    def call(self, data: bytes, terminator: bytes = b"\r\n",
             timeout: Optional[float] = None) -> bytes:
        """Send ``data`` and read until ``terminator`` (first occurrence)."""
        self.send(data)
        return self.recv_until(terminator, timeout)

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the peer closes the connection within ``timeout`` (no data expected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.eof:
                return True
            self._fill(deadline)
        return self.eof

    def pipeline(self, data: bytes, terminator: bytes, timeout: float = 30.0,
                 chunk: int = 0, delay: float = 0.0) -> bytes:
        """Write ``data`` (from a thread, so that large writes cannot deadlock
        against unread replies) and read until all data received ends with
        ``terminator``.  ``chunk``>0 writes that many bytes per send with
        ``delay`` seconds between sends."""
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                if chunk <= 0:
                    self.sock.sendall(data)
                else:
                    for i in range(0, len(data), chunk):
                        self.sock.sendall(data[i:i + chunk])
                        if delay:
                            time.sleep(delay)
            except OSError as e:        # the reader reports what is missing
                errors.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        out = self.recv_until_end(terminator, timeout)
        t.join(timeout=5)
        return out


def connect(port: int, timeout: float = READ_TIMEOUT) -> Client:
    return Client(port, timeout)


def show(data: bytes, limit: int = 400) -> str:
    """A short readable rendering of (possibly large) wire bytes for failure messages."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit // 2]!r} ... ({len(data)} bytes) ... {data[-limit // 2:]!r}"


def first_difference(a: bytes, b: bytes, context: int = 120) -> str:
    """Where two byte streams first differ, with context, for assertion messages."""
    if a == b:
        return "identical"
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    lo = max(0, i - context)
    return (f"first difference at byte {i} (lengths {len(a)} vs {len(b)}):\n"
            f"  expected: {a[lo:i + context]!r}\n  actual:   {b[lo:i + context]!r}")
