"""Listen addresses: parsing ``-l`` (``tls://`` for a TLS listener) and binding sockets."""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace
from typing import Any

BACKLOG = 1024
SD_LISTEN_FDS_START = 3         # sd_listen_fds(3): passed sockets start at this fd


class ListenError(ValueError):
    """A listen address that cannot be used, phrased for the operator."""


@dataclass(frozen=True)
class ListenAddr:
    family: int
    address: Any                # a path (str) for AF_UNIX, (host, port) otherwise
    tls: bool = False           # clients speak TLS (-l tls://host:port)

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix://{self.address}"
        host, port = self.address
        where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
        return f"tls://{where}" if self.tls else where


_TCP = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_listen(text: str) -> ListenAddr:
    """``tcp://:8080``, ``tls://:8443``, ``host:port``, ``[::1]:port`` or ``unix:///path``."""
    if text.startswith("tls://"):
        addr = parse_listen(text[len("tls://"):])
        if addr.family == socket.AF_UNIX or text[len("tls://"):].startswith(("tcp://", "tls://")):
            raise ListenError(f"listen address {text!r} is not valid; write tls://:8443, "
                              "tls://host:port or tls://[::1]:port")
        return replace(addr, tls=True)
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path:
            raise ListenError(f"listen address {text!r} has no path; write unix:///path/to.sock")
        return ListenAddr(socket.AF_UNIX, path)
    rest = text[len("tcp://"):] if text.startswith("tcp://") else text
    m = _TCP.match(rest)
    if not m or not 0 <= int(m.group("port")) < 65536:
        raise ListenError(f"listen address {text!r} is not valid; write tcp://:8080, "
                          "host:port, [::1]:port or unix:///path")
    port = int(m.group("port"))
    if m.group("v6") is not None:
        return ListenAddr(socket.AF_INET6, (m.group("v6"), port))
    host = m.group("host")
    if host and ":" not in host:
        try:
            socket.inet_pton(socket.AF_INET, host)
            return ListenAddr(socket.AF_INET, (host, port))
        except OSError:
            pass
    return ListenAddr(socket.AF_INET6 if not host else socket.AF_UNSPEC, (host, port))


def bind(addr: ListenAddr, reuseport: bool = False) -> socket.socket:
    """A listening, non-blocking socket for ``addr``; OSError when it cannot bind."""
    if addr.family == socket.AF_UNIX:
        path = str(addr.address)
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, port = addr.address
        family: int
        sockaddr: Any
        if addr.family == socket.AF_UNSPEC:          # a host name
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        elif addr.family == socket.AF_INET6 and not host:   # all interfaces, v4 and v6
            family, sockaddr = socket.AF_INET6, ("::", port)
        else:
            family, sockaddr = addr.family, (host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if not host else 1)
        try:
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def activated_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation: ``LISTEN_PID``
    is this process and ``LISTEN_FDS`` counts them from fd 3), else [].
    systemd keeps such a socket open across restarts of the service, so
    connections made while the router restarts wait in its backlog."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)          # not for the children
    socks = [socket.socket(fileno=fd) for fd in range(SD_LISTEN_FDS_START,
                                                      SD_LISTEN_FDS_START + count)]
    for sock in socks:
        sock.setblocking(False)
    return socks


def port_of(sock: socket.socket) -> int | None:
    """The TCP port a listening socket is bound to (None for a unix socket)."""
    try:
        name = sock.getsockname()
    except OSError:
        return None
    return int(name[1]) if isinstance(name, tuple) else None
