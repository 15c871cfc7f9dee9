"""Type stubs for the client's compiled helpers (see _fast.pyx)."""
from typing import Any, Callable, Iterable

from mcrouter._hash import Hasher

def group_keys(keys: Iterable[Any], prefix: bytes, hasher: Hasher | None, nservers: int,
               slot: Callable[[bytes], int] | None,
               key_bytes: Callable[[Any], bytes]) -> tuple[dict[bytes, Any], list[list[bytes]]]: ...
def parse_get_into(reply: bytes, given: dict[bytes, Any], out: dict[Any, Any],
                   deserialize: Callable[[Any, bytes, int], Any] | None, with_cas: bool) -> int: ...
def parse_one(reply: bytes) -> tuple[int, bytes, bytes | None] | int | None: ...
