"""Type stubs for the wire protocol extension (see _parser.pyx)."""
from typing import Any

class Request:
    cmd: int
    rkind: int
    quiet: bool
    status: int
    key: bytes
    keys: list[bytes] | None
    wire: bytes
    reply: bytes | None
    owner: Any
    deadline: float
    born_ns: int
    sent_ns: int
    override: bytes | None
    chan: int
    def finish(self, reply: bytes, status: int) -> None: ...
    def child(self, owner: Any) -> Request: ...

class RequestParser:
    closing: bool
    chan: int
    def __init__(self, max_item_size: int = ..., max_line: int = ..., chan: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    def discard(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview, n: int = ...) -> list[Request]: ...

def scan(data: bytes | bytearray | memoryview, request: Request | bytes) -> tuple[int, int]: ...
def split_values(reply: bytes) -> list[tuple[bytes, bytes]]: ...
