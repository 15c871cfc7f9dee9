"""Waiting for the router, or a memcached behind it, to settle on a reply
while hosts die and come back (the route tests share these)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from .client import Client, show


def poll(port: int, request: bytes, expected: bytes, transient: tuple[bytes, ...],
         timeout: float = 15.0) -> bytes:
    """Send ``request`` on fresh connections until the reply is ``expected``.

    While the router notices a host change (a killed or restarted memcached)
    a reply may be one of ``transient``; any other reply fails at once.
    Returns the last reply."""
    deadline = time.monotonic() + timeout
    reply = b""
    while time.monotonic() < deadline:
        with Client(port) as c:
            c.send(request)
            reply = c.recv_one_of((expected, *transient))
            if reply == expected:
                return reply
        assert reply in transient, f"unexpected reply {show(reply)} while waiting for {show(expected)}"
        time.sleep(0.1)
    pytest.fail(f"reply to {show(request)} never became {show(expected)}; last {show(reply)}")


def wait_value(m, key: str, expected: bytes, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        got = m.get_raw(key)
        if got == expected or time.monotonic() > deadline:
            assert got == expected, f"{m.addr} has {show(got)} for {key}, expected {show(expected)}"
            return True
        time.sleep(0.05)


def reader(sock, got: bytearray, total: int):
    """A ``done()`` for tests that run a router loop by hand: each call takes
    what the non-blocking ``sock`` has into ``got``; true once ``total``
    bytes are in."""
    def read_some() -> bool:
        try:
            got.extend(sock.recv(1 << 20))
        except BlockingIOError:
            pass
        return len(got) >= total
    return read_some


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once the kernel shows it stopped: the signal
    is delivered asynchronously, and on a busy machine a request sent right
    after ``kill`` can still be served."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_state(f"/proc/{pid}/task/{tid}/stat") in ("T", "t")     # every thread: one
               for tid in os.listdir(f"/proc/{pid}/task")):            # may serve meanwhile
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} did not stop within {timeout} s of SIGSTOP")


def _state(stat_path: str) -> str:
    try:
        with open(stat_path) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:             # a thread that just ended
        return "T"
