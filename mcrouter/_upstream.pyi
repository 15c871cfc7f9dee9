"""Type stubs for the compiled half of upstream.py (see _upstream.pyx)."""
from typing import Any
from typing_extensions import disjoint_base

from mcrouter._loop import Handler, Loop
from mcrouter._parser import Request
from mcrouter._ring import Ring

CONN_DOWN: int
CONN_CONNECTING: int
CONN_UP: int

@disjoint_base
class HostBase:
    loop: Loop
    conns: list[Any]            # upstream.Connection
    timeout: float
    healthy: bool
    failures: int
    def send(self, req: Request) -> None: ...

@disjoint_base
class ConnectionBase(Handler):
    host: Any                   # upstream.Host
    loop: Loop
    ring: Ring
    sock: Any                   # a socket.socket while connecting or up, else None
    fd: int
    state: int
    want_write: bool
    tls: Any                    # None: plain I/O on fd; else a TLS session
    def flush(self) -> None: ...
    def on_event(self, mask: int) -> None: ...
    def want_writable(self, want: bool) -> None: ...
