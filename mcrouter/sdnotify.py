"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` to a unix datagram
socket (a path, or ``@name`` for the abstract namespace) and reads
newline-separated ``KEY=value`` assignments from it:

  READY=1                    the service is up (after every worker listens)
  RELOADING=1 + MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>
                             a reload has begun (systemd ≥ 253 wants the time)
  READY=1                    ... and is over, applied or refused
  STOPPING=1                 shutdown has begun
  STATUS=<text>              free text shown by ``systemctl status``

Only the master speaks (systemd's default ``NotifyAccess=main``).  Without
``NOTIFY_SOCKET`` every call is a no-op, so the router runs the same way by
hand, in a container or under systemd.
"""
from __future__ import annotations

import os
import socket
import time

_sock: socket.socket | None = None


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return None         # unset, or a vsock address we do not speak
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines in one datagram; False when not under systemd
    or when the socket refused it (systemd is never worth failing over)."""
    global _sock
    addr = _address()
    if addr is None:
        return False
    try:
        if _sock is None:
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _sock.sendto("\n".join(assignments).encode(), addr)
        return True
    except OSError:
        return False


def _status(text: str) -> list[str]:
    return [f"STATUS={text}"] if text else []


def ready(status: str = "") -> bool:
    return notify("READY=1", *_status(status))


def reloading(status: str = "") -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))


def stopping() -> bool:
    return notify("STOPPING=1")
