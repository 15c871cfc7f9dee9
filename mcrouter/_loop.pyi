"""Type stubs for the compiled loop turn (see _loop.pyx)."""
import select
from typing import Any, Callable
from typing_extensions import disjoint_base

from mcrouter._parser import Owner

TICK: float
RECV_SIZE: int
IDLE_POLL: float

def guarded(fn: Callable[[], object]) -> None: ...

@disjoint_base
class Handler(Owner):
    dirty: bool

@disjoint_base
class TurnHook:
    def __call__(self, *args: Any, **kwargs: Any) -> None: ...   # takes none

@disjoint_base
class SignatureWatch(TurnHook):
    changed: Callable[[], None]
    def __init__(self, buf: Any, count_at: int, data_at: int, width: int, limit: int,
                 changed: Callable[[], None]) -> None: ...

@disjoint_base
class Loop:
    handlers: dict[int, Any]        # Handler (or any object with on_event) by descriptor
    now: float
    dirty_upstreams: list[Any]      # Handler, or loop.Flushable
    dirty_clients: list[Any]
    busy: set[Any]
    @property
    def recv_buf(self) -> bytearray: ...
    _timers: list[tuple[float, int, Callable[[], None]]]
    on_turn: Callable[[], None]     # a TurnHook is called in C
    ep: select.epoll
    clock: Callable[[], float]
    def __init__(self, clock: Callable[[], float] | None = None) -> None: ...
    def add(self, fd: int, mask: int, handler: Any) -> None: ...
    def modify(self, fd: int, mask: int) -> None: ...
    def remove(self, fd: int) -> None: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...
    def poll_timeout(self) -> float: ...
    def run_once(self) -> None: ...
    def flush(self) -> None: ...
