"""Type stubs for the metrics counting extension (see _metrics.pyx)."""
from array import array
from typing import Any
from typing_extensions import disjoint_base

NCMD: int
NBUCKETS: int
HIST_WORDS: int
NREPLY: int
NROUTE: int
NERROR: int
NTLS_REASON: int
NTLS: int
G_CLIENTS: int
G_CLIENTS_TOTAL: int
G_CLIENTS_REJECTED: int
G_BYTES_IN: int
G_BYTES_OUT: int
G_WORKER_RESTARTS: int
G_SIDECAR_RESTARTS: int
G_RELOADS_OK: int
G_RELOADS_FAILED: int
G_RELOAD_LAST_OK: int
G_START_TIME: int
G_MASTER_PID: int
G_WORKERS: int
G_GENERATION: int
G_WORKERS_CURRENT: int
G_REPLIES: int
G_ROUTES: int
G_TLS_FAILURES: int
G_REQUESTS: int
G_LEFT_SENT: int
G_LEFT_HITS: int
G_LEFT_MISSES: int
G_LEFT_ERRORS: int
HOSTS_AT: int
H_CONNS: int
H_HITS: int
H_MISSES: int
H_ERRORS: int
H_SENT: int
H_DURATION: int
HOST_WORDS: int
E_TIMEOUT: int
E_CONNECT: int
E_RESET: int
E_PARSE: int
R_FAILOVER: int
R_MISS_FAILOVER: int
R_FANOUT: int

BOUNDS: tuple[float, ...]
REPLY_REASONS: tuple[str, ...]
ERROR_REASONS: tuple[str, ...]
ROUTE_DECISIONS: tuple[str, ...]

@disjoint_base
class Counters:
    on: bool
    hosts: int
    now: int
    def __init__(self, buf: Any = ..., offset: int = ..., hosts: int = ...) -> None: ...
    def count(self, word: int, n: int = ...) -> None: ...
    def set(self, word: int, value: int) -> None: ...
    def upstream_error(self, host: int, reason: int, n: int = ...) -> None: ...
    def upstream_connections(self, host: int, delta: int) -> None: ...
    def route(self, decision: int) -> None: ...
    def take_over(self, hosts_used: int) -> None: ...

def install(counters: Counters) -> None: ...
def local() -> Counters: ...
def swap_byte(buf: Any, at: int, expected: int, desired: int) -> bool: ...
def sum_slots(buf: Any, first: int, nslots: int, slot_words: int, at: int, count: int) -> array[int]: ...
