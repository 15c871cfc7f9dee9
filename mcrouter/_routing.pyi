"""Type stubs for the multi-key get extension (see _routing.pyx)."""
from typing import Any, Protocol

from mcrouter._parser import Request

class _Dispatch(Protocol):
    def dispatch(self, req: Request) -> None: ...

def retrieval_prefix(req: Request) -> bytes: ...
def for_keys(parent: Request, owner: Any, prefix: bytes, keys: list[bytes]) -> Request: ...

class Gather:
    parent: Request
    keys: list[bytes]
    found: dict[bytes, bytes]
    answered: bool
    error: bytes | None
    error_status: int
    def __init__(self, parent: Request) -> None: ...
    def take(self, sub: Request) -> list[tuple[bytes, bytes]]: ...
    def missing(self) -> list[bytes]: ...
    def finish(self) -> None: ...

class Shards(Gather):
    def on_reply(self, sub: Request) -> None: ...

def group_keys(keys: list[bytes], hasher: Any, pick: Any) -> tuple[dict[int, list[bytes]], list[int] | None]: ...
def split(req: Request, routes: list[Any],
          grouping: tuple[dict[int, list[bytes]], list[int] | None]) -> None: ...

class TableDispatch:
    table: list[Any]
    def dispatch(self, req: Request) -> None: ...

class HostDispatch:
    host: Any
    def dispatch(self, req: Request) -> None: ...

class ServiceDispatch:
    tree: Any
    def dispatch(self, req: Request) -> None: ...

class HashDispatch:
    children: list[Any]
    hasher: Any
    keyless: list[Any]
    def dispatch(self, req: Request) -> None: ...
