"""Type stubs for the client connection extension (see _downstream.pyx)."""
from typing import Any
from typing_extensions import disjoint_base

from mcrouter._parser import Request, RequestParser

MAX_PENDING: int
MAX_GET_LINE: int
REPLY_WINDOW: int
COALESCE: int
MAX_IOV: int
LINGER: float

@disjoint_base
class ClientConnection:
    worker: Any
    fd: int
    parser: RequestParser
    dirty: bool
    closed: bool
    lingering: bool
    answered: int
    last_read: float
    def __init__(self, worker: Any, sock: Any) -> None: ...
    def on_event(self, mask: int) -> None: ...
    def on_reply(self, req: Request) -> None: ...
    def flush(self) -> None: ...
    def drain(self) -> None: ...
    def stale(self, now: float, body_timeout: float, idle_timeout: float) -> bool: ...
    def reply_mark(self) -> int: ...
    @property
    def idle(self) -> bool: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
