"""Type stubs for the route tree's hot steps (see _routing.pyx)."""
from typing import Any, Callable
from typing_extensions import disjoint_base

from mcrouter._hash import Hasher
from mcrouter._parser import Owner, Request

def retrieval_prefix(req: Request) -> bytes: ...
def for_keys(parent: Request, owner: Owner | None, prefix: bytes, keys: list[bytes]) -> Request: ...

@disjoint_base
class Gather(Owner):
    parent: Request
    keys: list[bytes]
    found: dict[bytes, bytes]
    answered: bool
    error: bytes | None
    error_status: int
    def __init__(self, parent: Request) -> None: ...
    def take(self, sub: Request, want_hits: bool = ...) -> list[tuple[bytes, bytes]]: ...
    def missing(self) -> list[bytes]: ...
    def finish(self) -> None: ...

@disjoint_base
class Shards(Gather):
    left: int
    def takes_parts(self, sub: Request) -> int: ...
    def on_partial(self, sub: Request, part: bytes) -> None: ...
    def on_reply(self, sub: Request) -> None: ...

def group_keys(req: Request, hasher: Hasher | None,
               pick: Callable[[bytes], int] | None) -> tuple[dict[int, list[bytes]], list[int] | None]: ...
def split(req: Request, routes: list[Any],
          grouping: tuple[dict[int, list[bytes]], list[int] | None]) -> None: ...

@disjoint_base
class Node:
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class TableDispatch(Node):
    table: list[Any]
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class HostDispatch(Node):
    host: Any
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class ServiceDispatch(Node):
    """Subclasses define ``serve`` (reserved keys), ``serve_stats`` (stats) and
    ``serve_admin`` (commands whose bit is set in ``gated``)."""
    tree: Any
    gated: int
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class HashDispatch(Node):
    children: list[Any]
    hasher: Hasher
    keyless: list[Any]
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class PolicyDispatch(HashDispatch):
    rehash: bool
    routes: list[Any]
    def up_mask(self) -> bytes: ...
    def destination(self, key: bytes, up: bytes) -> int: ...

@disjoint_base
class HostListDispatch(Node):
    pool: tuple[Any, ...]           # upstream.HostBase

class DefaultDispatch(HostListDispatch):
    def dispatch(self, req: Request) -> None: ...

@disjoint_base
class MissFailover(Owner):
    def on_reply(self, sub: Request) -> None: ...

@disjoint_base
class MissFailoverDispatch(HostListDispatch):
    """Subclasses define ``chain`` (multi-key gets, pools over 64 hosts)."""
    def dispatch(self, req: Request) -> None: ...

class Race(Owner):
    def on_reply(self, sub: Request) -> None: ...

class AllFastestDispatch(HostListDispatch):
    def dispatch(self, req: Request) -> None: ...
