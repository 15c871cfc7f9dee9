"""Type stubs for the client connection extension (see _downstream.pyx)."""
from typing import Any, final

from typing_extensions import disjoint_base

from mcrouter._loop import Handler
from mcrouter._parser import Request, RequestParser

MAX_PENDING: int
MAX_GET_LINE: int
REPLY_WINDOW: int
MAX_WINDOW_KEYS: int
COALESCE: int
MAX_IOV: int
LINGER: float

@final
class Fifo: ...            # a queue for the compiled side only

@disjoint_base
class ClientConnection(Handler):
    worker: Any
    fd: int
    parser: RequestParser
    closed: bool
    lingering: bool
    answered: int
    last_read: float
    tls: Any                # None: plain I/O on fd; else a TLS session
    def __init__(self, worker: Any, sock: Any) -> None: ...
    def on_event(self, mask: int) -> None: ...
    def on_reply(self, req: Request) -> None: ...
    def takes_parts(self, req: Request) -> int: ...
    def on_partial(self, req: Request, part: bytes) -> None: ...
    def flush(self) -> None: ...
    def drain(self) -> None: ...
    def stale(self, now: float, body_timeout: float, idle_timeout: float) -> bool: ...
    def reply_mark(self) -> int: ...
    @property
    def idle(self) -> bool: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
