"""Type stubs for the wire protocol extension (see _parser.pyx)."""
from typing_extensions import disjoint_base

# the cpdef enum of _parser.pxd
CMD_GET: int
CMD_GETS: int
CMD_GAT: int
CMD_GATS: int
CMD_SET: int
CMD_ADD: int
CMD_REPLACE: int
CMD_APPEND: int
CMD_PREPEND: int
CMD_CAS: int
CMD_DELETE: int
CMD_INCR: int
CMD_DECR: int
CMD_TOUCH: int
CMD_FLUSH_ALL: int
CMD_VERSION: int
CMD_VERBOSITY: int
CMD_STATS: int
CMD_QUIT: int
CMD_MG: int
CMD_MS: int
CMD_MD: int
CMD_MA: int
CMD_MN: int
CMD_ME: int
CMD_LOCAL: int
CMD_ADMIN: int
CMD_LIMIT: int
RK_NONE: int
RK_GET: int
RK_LINE: int
RK_STATS: int
RK_META: int
RK_QUIET: int
ST_OK: int
ST_FAIL: int
ST_ERROR: int

@disjoint_base
class Request:
    cmd: int
    rkind: int
    quiet: bool
    status: int
    key: bytes
    keys: list[bytes] | None
    wire: bytes
    reply: bytes | None
    owner: Owner | None
    deadline: float
    born_ns: int
    sent_ns: int
    override: bytes | None
    chan: int
    order: list[bytes] | None
    stream: bool
    cursor: int
    streamed: int
    parent: Request | None
    todo: int
    note: bytes | None
    note_fail: bool
    def finish(self, reply: bytes, status: int) -> None: ...
    def child(self, owner: Owner | None) -> Request: ...

@disjoint_base
class Owner:
    def on_reply(self, req: Request) -> None: ...

@disjoint_base
class RequestParser:
    closing: bool
    chan: int
    def __init__(self, max_item_size: int = ..., max_line: int = ..., chan: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    @property
    def midway(self) -> bool: ...
    @property
    def body_pending(self) -> bool: ...
    def release(self) -> None: ...
    def discard(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview = ..., n: int = ...,
             limit: int = ...) -> list[Request]: ...

def base64_key(token: bytes) -> bytes | None: ...
def set_body_budget(budget: int) -> None: ...
def body_bytes_held() -> int: ...
def scan(data: bytes | bytearray | memoryview, request: Request | bytes) -> tuple[int, int]: ...
def split_values(reply: bytes) -> list[tuple[bytes, bytes]]: ...
