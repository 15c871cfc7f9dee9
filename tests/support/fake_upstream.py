"""A fake memcached for fault injection, threaded, loopback only.

It speaks just enough of the text protocol to be a useful upstream (get,
gets, set, delete, version, mn, mg) and can be switched, at any moment, to
misbehave on the next requests it reads:

* ``normal``  answer like memcached (a dict behind it)
* ``hang``    read requests and never answer them
* ``garbage`` answer with the given bytes instead of the reply (default:
              bytes that are no valid reply)
* ``extra``   answer normally, then send the given bytes too
* ``torn``    start a VALUE reply (for the key asked), stop in the middle of
              the data, close
* ``delay``   answer normally but only after ``delay`` seconds (in order:
              later replies on that connection wait behind it, as on a
              real pipelined connection)
* ``trickle`` answer normally, one byte per send with ``delay`` seconds
              between bytes

``drop(True)`` makes the server close every connection it has and every
new one at once after accepting it (a host that is there and not there, to
make it flap); ``drop(False)`` ends that.

``behave(mode, count)`` applies ``mode`` to the next ``count`` requests read
(across all connections), then falls back to ``normal``; ``count=None``
keeps the mode until changed.  Every request line read is logged in
``requests``; ``accepted`` counts connections; ``closed_by_peer`` counts
connections the router closed.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Optional

import pytest

GARBAGE = b"HTTP/1.1 200 OK\r\n"


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.data: dict[bytes, tuple[int, bytes]] = {}
        self.mode = "normal"
        self.mode_left: Optional[int] = None
        self.delay = 0.0
        self.garbage = GARBAGE
        self.version = b"fake"          # what follows "VERSION " in its version reply
        self.requests: list[bytes] = []
        self.accepted = 0
        self.dropping = False
        self.closed_by_peer = 0
        self.cas = 0
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    # -- control -------------------------------------------------------------

    def behave(self, mode: str, count: Optional[int] = None, delay: float = 0.0,
               garbage: bytes = GARBAGE) -> None:
        assert mode in ("normal", "hang", "garbage", "extra", "torn", "delay", "trickle")
        with self.lock:
            self.mode, self.mode_left, self.delay, self.garbage = mode, count, delay, garbage

    def drop(self, on: bool) -> None:
        with self.lock:
            self.dropping = on
            conns = list(self.conns) if on else []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def set(self, key: bytes, value: bytes, flags: int = 0) -> None:
        with self.lock:
            self.data[key] = (flags, value)

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.lsock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        for t in self.threads:
            t.join(2)

    # -- server --------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self.lock:
                self.accepted += 1
                if self.dropping:
                    conn.close()
                    continue
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _next_mode(self) -> tuple[str, float]:
        with self.lock:
            mode, delay = self.mode, self.delay
            if self.mode_left is not None:
                self.mode_left -= 1
                if self.mode_left <= 0:
                    self.mode, self.mode_left = "normal", None
            return mode, delay

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self.stopping.is_set():
                req = self._read_request(conn, buf)
                if req is None:
                    with self.lock:
                        self.closed_by_peer += 1
                    return
                line, block = req
                with self.lock:
                    self.requests.append(line)
                mode, delay = self._next_mode()
                if mode == "hang":
                    continue
                if mode == "garbage":
                    conn.sendall(self.garbage)
                    continue
                if mode == "torn":
                    # a reply to a get of that key, cut short
                    parts = line.split()
                    key = parts[1] if len(parts) > 1 else b"torn"
                    conn.sendall(b"VALUE %s 0 100\r\n%s" % (key, b"t" * 40))
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                    return
                if mode == "delay":
                    end = time.monotonic() + delay
                    while time.monotonic() < end and not self.stopping.is_set():
                        time.sleep(0.01)
                answer = self._answer(line, block)
                if mode == "extra":
                    answer += self.garbage
                if mode == "trickle":
                    for i in range(len(answer)):
                        conn.sendall(answer[i:i + 1])
                        time.sleep(delay)
                else:
                    conn.sendall(answer)
        except OSError:
            return
        finally:
            with self.lock:
                if conn in self.conns:
                    self.conns.remove(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _read_request(self, conn: socket.socket, buf: bytearray):
        """(line, data block or None); None at EOF or when stopping."""
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                line = bytes(buf[:i])
                parts = line.split()
                need = 0
                if parts and parts[0] in (b"set", b"add", b"replace", b"append", b"prepend",
                                          b"cas") and len(parts) >= 5:
                    need = int(parts[4]) + 2
                elif parts and parts[0] == b"ms" and len(parts) >= 3:
                    need = int(parts[2]) + 2
                if len(buf) >= i + 2 + need:
                    block = bytes(buf[i + 2:i + 2 + need - 2]) if need else None
                    del buf[:i + 2 + need]
                    return line, block
            if self.stopping.is_set():
                return None
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return None
            buf += data

    def _answer(self, line: bytes, block: Optional[bytes]) -> bytes:
        parts = line.split()
        cmd = parts[0] if parts else b""
        noreply = parts[-1] == b"noreply" if parts else False
        with self.lock:
            if cmd in (b"get", b"gets"):
                out = bytearray()
                for k in parts[1:]:
                    if k in self.data:
                        flags, v = self.data[k]
                        cas = b" 1" if cmd == b"gets" else b""
                        out += b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(v), cas, v)
                return bytes(out) + b"END\r\n"
            if cmd == b"set":
                self.data[parts[1]] = (int(parts[2]), block or b"")
                return b"" if noreply else b"STORED\r\n"
            if cmd == b"delete":
                hit = self.data.pop(parts[1], None) is not None
                return b"" if noreply else (b"DELETED\r\n" if hit else b"NOT_FOUND\r\n")
            if cmd == b"version":
                return b"VERSION %s\r\n" % self.version
            if cmd == b"mn":
                return b"MN\r\n"
            if cmd == b"mg":
                item = self.data.get(parts[1])
                if item is None:
                    return b"EN\r\n"
                if b"v" in parts[2:]:
                    return b"VA %d\r\n%s\r\n" % (len(item[1]), item[1])
                return b"HD\r\n"
            return b"ERROR\r\n"


@pytest.fixture
def fake():
    """``fake()`` → a running FakeUpstream, closed at teardown."""
    made: list[FakeUpstream] = []

    def make() -> FakeUpstream:
        f = FakeUpstream()
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()
