"""Measuring a process's memory and playing a client that never reads:
the bounded-memory tests (issue 11) share these."""
from __future__ import annotations

import socket
import threading
import time


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


class PeakRss:
    """Samples a process's RSS on a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def __enter__(self) -> "PeakRss":
        def sample() -> None:
            while not self.stop.wait(0.02):
                self.peak = max(self.peak, rss_kib(self.pid))
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.peak = max(self.peak, rss_kib(self.pid))


def send_without_reading(port: int, data: bytes, seconds: float = 5.0) -> tuple[socket.socket, int]:
    """Send as much of ``data`` as the router takes in ``seconds``, reading nothing."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent:sent + (1 << 20)])
        except BlockingIOError:
            time.sleep(0.02)
    return s, sent


def read_replies(s: socket.socket, size: int, timeout: float = 30.0,
                 until: bytes | None = None) -> bytes:
    """Up to ``size`` bytes, or what came before EOF or ``timeout`` seconds of
    silence, or (``until``) up to the first time the bytes end with it."""
    s.setblocking(True)
    s.settimeout(timeout)
    got = bytearray()
    while len(got) < size:
        try:
            chunk = s.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
        if until is not None and got.endswith(until):
            break
    return bytes(got)


def growth_while_read(r, line: bytes, expected: bytes) -> int:
    """KiB the worker's RSS peaked above its level after one warm-up, while
    a client sends ``line`` three times and reads each reply (``expected``)."""
    (worker,) = r.worker_pids()
    with r.client() as c:
        assert c.request(line, expected) == expected      # warm: buffers, allocator
        before = rss_kib(worker)
        with PeakRss(worker) as peak:
            for _ in range(3):
                assert c.request(line, expected) == expected
    return peak.peak - before
