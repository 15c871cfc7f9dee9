"""``mcrouter hosts``: ask a running router for ``stats servers`` and print
a table an operator can read (state, last change, why)."""
from __future__ import annotations

import socket
import time
from typing import Any

from mcrouter.hosttable import HostStatus
from mcrouter.listen import ListenAddr

TIMEOUT = 5.0
MAX_REPLY = 4 << 20


class HostsError(Exception):
    """The router could not be asked; phrased for the operator."""


def _connect_target(addr: ListenAddr) -> tuple[int, Any]:
    if addr.family == socket.AF_UNIX:
        return socket.AF_UNIX, addr.address
    host, port = addr.address
    if not host or host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"      # a wildcard listener: ask locally
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, port)


def fetch_hosts(addr: ListenAddr) -> list[HostStatus]:
    family, target = _connect_target(addr)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(target)
            sock.sendall(b"stats servers\r\n")
            data = b""
            while not (data == b"END\r\n" or data.endswith(b"\r\nEND\r\n")):
                chunk = sock.recv(65536)
                if not chunk or len(data) > MAX_REPLY:
                    raise HostsError(f"the router at {addr} closed the connection or sent "
                                     "too much; is it an mcrouter?")
                data += chunk
                if data.endswith(b"\r\n") and data.startswith((b"ERROR", b"SERVER_ERROR",
                                                                 b"CLIENT_ERROR")):
                    raise HostsError(f"{addr} answered {data.strip().decode(errors='replace')!r} "
                                     "to 'stats servers'; is it an mcrouter?")
    except OSError as e:
        raise HostsError(f"cannot ask the router at {addr}: {e.strerror or e}; "
                         "is it running? pass its address with -l") from None
    return parse_servers(data)


def parse_servers(data: bytes) -> list[HostStatus]:
    """The rows of a ``stats servers`` reply (stats.server_line; "-" there is "" here)."""
    rows = []
    for line in data.decode("utf-8", "replace").split("\r\n"):
        if not line.startswith("STAT "):
            continue
        parts = line.split(" ", 6)
        if len(parts) < 7:
            raise HostsError(f"unexpected reply line {line!r}; is this an mcrouter?")
        _, host, state, address, changes, changed_at, reason = parts
        rows.append(HostStatus(host, state, "" if address == "-" else address, int(changes),
                               float(changed_at), "" if reason == "-" else reason))
    return rows


def render_hosts(rows: list[HostStatus]) -> str:
    table = [("HOST", "STATE", "ADDRESS", "CHANGES", "SINCE", "LAST CHANGE / ERROR")]
    for r in rows:
        since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.changed_at))
                 if r.changes else "-")
        table.append((r.key, r.state, r.address or "-", str(r.changes), since, r.reason or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5] + "\n"
                   for row in table)
