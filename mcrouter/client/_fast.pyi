"""Type stubs for the client's compiled helpers (see _fast.pyx)."""
from typing import Any, Callable, Iterable

from mcrouter._hash import Hasher
from mcrouter._parser import Owner, Request
from mcrouter._ring import Ring

MULTIGET_CHUNK: int

def group_keys(keys: Iterable[Any], prefix: bytes, hasher: Hasher | None, nservers: int,
               slot: Callable[[bytes], int] | None,
               key_bytes: Callable[[Any], bytes]) -> tuple[dict[bytes, Any], list[list[bytes]]]: ...
def parse_get_into(reply: bytes, given: dict[bytes, Any], out: dict[Any, Any],
                   deserialize: Callable[[Any, bytes, int], Any] | None, with_cas: bool,
                   asked: list[bytes] | None = None) -> int: ...
def parse_one(reply: bytes) -> tuple[int, bytes, bytes | None] | int | None: ...
def poll_fds(fds: list[int], want_out: list[bool], timeout_ms: int) -> list[int]: ...

EX_OK: int
EX_EOF: int
EX_READ: int
EX_WRITE: int
EX_PROTOCOL: int
EXCHANGE_MAX: int

def exchange(fds: list[int], rings: list[Ring], lasts: list[Request], buf: bytearray,
             deadline: float, reads_per_wake: int) -> list[tuple[int, int]]: ...

def get_many(client: Any, keys: Iterable[Any], with_cas: bool,
             reads_per_wake: int) -> dict[Any, Any]: ...

class Waited(Owner):
    def on_reply(self, req: Request) -> None: ...
