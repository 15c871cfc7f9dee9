"""The router's counters, listed once, and the ``stats`` replies made of them.

``COUNTERS`` is the one table of what the router reports about itself: per
row, its lines in ``stats mcrouter``, its family in ``/metrics``
(exposition.py renders it), the family's kind and help text, and how both
read it from one ``Reading`` of the shared blocks.  A row only one of them
shows has no names or no metric.  The rows are in the order of the
``stats mcrouter`` reply; ``/metrics`` lists its families in
``METRICS_ORDER``.  Both orders are fixed (tests/unit/test_stats.py keeps
every byte of both), so a dashboard reading either never sees a line move.

The router answers two ``stats`` groups itself, whatever the route tree
says, in memcached's ``STAT name value`` format, from state every worker
shares (so whichever worker reads the request gives the same answer):

* ``stats servers`` (as in Facebook mcrouter) lists every upstream host with
  its health state, so that ``mcrouter hosts`` and memcached tools can read it;
* ``stats mcrouter`` gives the router's own counters summed over every
  worker (the numbers ``/metrics`` exposes), for memcached dashboards.

Other ``stats`` requests go where the config sends them.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from mcrouter import __version__
from mcrouter._metrics import (ERROR_REASONS, G_BYTES_IN, G_BYTES_OUT, G_CLIENTS,
                               G_CLIENTS_REJECTED, G_CLIENTS_TOTAL, G_GENERATION,
                               G_LEFT_ERRORS, G_LEFT_HITS, G_LEFT_MISSES, G_LEFT_SENT,
                               G_MASTER_PID, G_RELOAD_LAST_OK, G_RELOADS_FAILED, G_RELOADS_OK,
                               G_REPLIES, G_ROUTES, G_SIDECAR_RESTARTS, G_START_TIME,
                               G_TLS_FAILURES, NTLS_REASON,
                               G_WORKER_RESTARTS, G_WORKERS, G_WORKERS_CURRENT, H_CONNS,
                               H_ERRORS, H_HITS, H_MISSES, REPLY_REASONS, ROUTE_DECISIONS)
from mcrouter.hosttable import DOWN, HostStatus, HostTable
from mcrouter.metrics import Histogram, MetricsBlock
from mcrouter.protocol import COMMAND_IDS
from mcrouter.tls import REASONS as TLS_REASONS, SIDES as TLS_SIDES

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# one series of a /metrics family: its label values (in the row's label order), its value
Series = Sequence[tuple[Sequence[str], int | Histogram]]


class Reading:
    """One look at the shared blocks, for one reply or one scrape: every
    worker's counters summed, and the hosts that have a slot now."""

    def __init__(self, table: HostTable, block: MetricsBlock) -> None:
        self.snap = block.snapshot(table.used)
        self.hosts = [h for h in table.statuses() if h.slot < self.snap.used]   # free slots: none
        self.up = [table.state(h.slot) != DOWN for h in self.hosts]
        self.requests = self.snap.requests()                        # by command seen
        self.upstream = [self.snap.upstream(h.slot) for h in self.hosts]     # by host, command
        self.now = int(time.time())

    def host_total(self, word: int, left: int) -> int:
        """Over the hosts with a slot, and those whose slots were freed
        (``left``, a G_LEFT_* word): a total that never goes backwards."""
        return sum(self.snap.host_value(h.slot, word) for h in self.hosts) + self.snap.value(left)


def _nothing(_r: Reading) -> list:
    return []


@dataclass(frozen=True)
class Counter:
    """One row: what the router reports, under which names, read how."""
    names: tuple[str, ...]      # its ``stats mcrouter`` lines; () for /metrics only
    metric: str                 # its /metrics family ("" for none); a counter's samples add _total
    kind: str                   # COUNTER, GAUGE or HISTOGRAM (the /metrics type)
    help: str                   # the family's help text (for a stats line only: what it says)
    labels: tuple[str, ...] = ()                                    # of its /metrics series
    stat: Callable[[Reading], list[int | str]] = _nothing           # one value per name
    series: Callable[[Reading], Series] = _nothing                  # its /metrics series


def word(names: tuple[str, ...], metric: str, kind: str, help: str, at: int) -> Counter:
    """One word of the global part (a gauge's is signed)."""
    read = (lambda r: r.snap.gauge(at)) if kind == GAUGE else (lambda r: r.snap.value(at))
    return Counter(names, metric, kind, help, (), lambda r: [read(r)], lambda r: [((), read(r))])


def by_label(names: tuple[str, ...], metric: str, help: str, label: str,
             words: Sequence[tuple[str, int]]) -> Counter:
    """Counters of the global part, one per (value of ``label``, word): a
    series each in /metrics, a line each (``names``) in ``stats mcrouter``."""
    return Counter(names, metric, COUNTER, help, (label,),
                   lambda r: [r.snap.value(at) for _, at in words],
                   lambda r: [((value,), r.snap.value(at)) for value, at in words])


def per_host(names: tuple[str, ...], metric: str, kind: str, help: str, at: int,
             left: int | None) -> Counter:
    """A word of every host's part: one series per host; ``stats mcrouter``
    sums them, and for a counter what freed hosts had counted (``left``, a
    G_LEFT_* word; None for a gauge)."""

    def stat(r: Reading) -> list[int | str]:
        if left is None:
            return [sum(r.snap.host_gauge(h.slot, at) for h in r.hosts)]
        return [r.host_total(at, left)]

    def series(r: Reading) -> Series:
        if kind == GAUGE:
            return [((h.key,), r.snap.host_gauge(h.slot, at)) for h in r.hosts]
        return [((h.key,), r.snap.host_value(h.slot, at)) for h in r.hosts]
    return Counter(names, metric, kind, help, ("host",), stat, series)


def run(values: tuple[str, ...], at: int) -> list[tuple[str, int]]:
    """Label values of consecutive words from ``at``."""
    return [(value, at + i) for i, value in enumerate(values)]


# the commands ``stats mcrouter`` always lists (/metrics: those seen, by command id)
STATS_COMMANDS = (*COMMAND_IDS, "admin", "invalid")
PYTHON = sys.version.split()[0]


def _upstream_requests(r: Reading) -> list[tuple[tuple[str, str], int]]:
    return [((cmd, h.key), n) for h, sent in zip(r.hosts, r.upstream)
            for cmd, (n, _) in sent.items()]


def _upstream_durations(r: Reading) -> Series:
    return [((cmd, h.key), hist) for h, sent in zip(r.hosts, r.upstream)
            for cmd, (_, hist) in sent.items() if hist.count]


COUNTERS: tuple[Counter, ...] = (
    Counter(("pid",), "", GAUGE, "The master's process id.",
            stat=lambda r: [r.snap.value(G_MASTER_PID)]),
    Counter(("uptime",), "mcrouter_start_time_seconds", GAUGE,
            "When the router started (unix time).",      # stats: the seconds since then
            stat=lambda r: [r.now - r.snap.value(G_START_TIME)],
            series=lambda r: [((), r.snap.value(G_START_TIME))]),
    Counter(("time",), "", GAUGE, "The time now (unix time).", stat=lambda r: [r.now]),
    Counter(("version",), "mcrouter_build_info", GAUGE, "The router's version.",
            ("version", "python"), lambda r: [__version__],
            lambda r: [((__version__, PYTHON), 1)]),
    word(("workers",), "mcrouter_workers", GAUGE,
         "Worker processes the master keeps running.", G_WORKERS),
    word((), "mcrouter_config_generation", GAUGE, "The config generation the master made "
         "current (a reload or a DNS change adds one).", G_GENERATION),
    word((), "mcrouter_workers_current", GAUGE,
         "Workers that confirmed the current config generation.", G_WORKERS_CURRENT),
    word(("curr_connections",), "mcrouter_client_connections", GAUGE,
         "Client connections open now.", G_CLIENTS),
    word(("total_connections",), "mcrouter_client_connections_accepted", COUNTER,
         "Client connections accepted.", G_CLIENTS_TOTAL),
    word(("rejected_connections",), "mcrouter_client_connections_rejected", COUNTER,
         "Client connections refused: past -c, or out of file descriptors.", G_CLIENTS_REJECTED),
    word(("bytes_read",), "mcrouter_client_received_bytes", COUNTER,
         "Bytes read from clients.", G_BYTES_IN),
    word(("bytes_written",), "mcrouter_client_sent_bytes", COUNTER,
         "Bytes written to clients.", G_BYTES_OUT),
    Counter(tuple(f"cmd_{name}" for name in STATS_COMMANDS), "mcrouter_requests", COUNTER,
            "Client requests answered, by command (a multi-key get counts once).", ("cmd",),
            lambda r: [r.requests[name].count if name in r.requests else 0
                       for name in STATS_COMMANDS],
            lambda r: [((cmd,), h.count) for cmd, h in r.requests.items()]),
    Counter((), "mcrouter_request_duration_seconds", HISTOGRAM,
            "From reading a client request to queueing its reply.", ("cmd",),
            series=lambda r: [((cmd,), h) for cmd, h in r.requests.items()]),
    Counter(("upstream_requests",), "mcrouter_upstream_requests", COUNTER,
            "Requests queued to an upstream host.", ("cmd", "host"),
            lambda r: [sum(n for _, n in _upstream_requests(r)) + r.snap.value(G_LEFT_SENT)],
            _upstream_requests),
    Counter((), "mcrouter_upstream_request_duration_seconds", HISTOGRAM,
            "Upstream round trips that got their reply in time.", ("cmd", "host"),
            series=_upstream_durations),
    per_host(("upstream_connections",), "mcrouter_upstream_connections", GAUGE,
             "Upstream connections up now.", H_CONNS, None),
    per_host(("get_hits",), "mcrouter_get_hits", COUNTER,
             "Get-family replies with a value.", H_HITS, G_LEFT_HITS),
    per_host(("get_misses",), "mcrouter_get_misses", COUNTER,
             "Get-family replies without a value.", H_MISSES, G_LEFT_MISSES),
    Counter(tuple(f"upstream_errors_{reason}" for reason in ERROR_REASONS),
            "mcrouter_upstream_errors", COUNTER,
            "Upstream failures: requests timed out, connects failed, connections broken, "
            "replies that cannot answer their request (parse).", ("host", "reason"),
            lambda r: [r.host_total(H_ERRORS + i, G_LEFT_ERRORS + i)
                       for i in range(len(ERROR_REASONS))],
            lambda r: [((h.key, reason), r.snap.host_value(h.slot, H_ERRORS + i))
                       for h in r.hosts for i, reason in enumerate(ERROR_REASONS)]),
    Counter(("hosts",), "", GAUGE, "Upstream hosts with a slot in the host table.",
            stat=lambda r: [len(r.hosts)]),
    Counter((), "mcrouter_host_up", GAUGE, "1 while the shared verdict says the host is up.",
            ("host",), series=lambda r: [((h.key,), int(up)) for h, up in zip(r.hosts, r.up)]),
    Counter(("healthy_hosts",), "mcrouter_healthy_hosts", GAUGE, "Upstream hosts up.",
            stat=lambda r: [sum(r.up)], series=lambda r: [((), sum(r.up))]),
    by_label(tuple(f"replies_{reason}" for reason in REPLY_REASONS), "mcrouter_router_replies",
             "Replies the router made itself, by reason.", "reason", run(REPLY_REASONS, G_REPLIES)),
    by_label(tuple(f"route_{decision}" for decision in ROUTE_DECISIONS),
             "mcrouter_route_decisions", "Route decisions: failover to a later host, another "
             "host asked after a miss, fan-out to several hosts.", "decision",
             run(ROUTE_DECISIONS, G_ROUTES)),
    by_label(("worker_restarts", "sidecar_restarts"), "mcrouter_restarts",
             "Child processes the master restarted after they died.", "process",
             [("worker", G_WORKER_RESTARTS), ("sidecar", G_SIDECAR_RESTARTS)]),
    by_label(("config_reloads", "config_reload_failures"), "mcrouter_config_reloads",
             "Config reloads (a DNS pool's change counts as one), by result.", "result",
             [("success", G_RELOADS_OK), ("failure", G_RELOADS_FAILED)]),
    word(("config_last_reload_success",), "mcrouter_config_last_reload_success_timestamp_seconds",
         GAUGE, "When the config in force was loaded (unix time).", G_RELOAD_LAST_OK),
    Counter(tuple(f"tls_handshake_failures_{side}" for side in TLS_SIDES),
            "mcrouter_tls_handshake_failures", COUNTER,
            "TLS handshakes that failed, by side (client: to the router's tls:// listener; "
            "upstream: to memcached) and reason.", ("side", "reason"),
            lambda r: [sum(r.snap.value(G_TLS_FAILURES + i * NTLS_REASON + j)
                           for j in range(len(TLS_REASONS))) for i in range(len(TLS_SIDES))],
            lambda r: [((side, reason), r.snap.value(G_TLS_FAILURES + i * NTLS_REASON + j))
                       for i, side in enumerate(TLS_SIDES)
                       for j, reason in enumerate(TLS_REASONS)]),
)

# The order /metrics has always listed its families in (the table's is that of stats mcrouter).
METRICS_ORDER = (
    "mcrouter_build_info", "mcrouter_start_time_seconds", "mcrouter_workers",
    "mcrouter_config_generation", "mcrouter_workers_current", "mcrouter_requests",
    "mcrouter_request_duration_seconds", "mcrouter_client_connections",
    "mcrouter_client_connections_accepted", "mcrouter_client_connections_rejected",
    "mcrouter_client_received_bytes", "mcrouter_client_sent_bytes", "mcrouter_router_replies",
    "mcrouter_route_decisions", "mcrouter_upstream_requests",
    "mcrouter_upstream_request_duration_seconds", "mcrouter_upstream_errors",
    "mcrouter_upstream_connections", "mcrouter_get_hits", "mcrouter_get_misses",
    "mcrouter_host_up", "mcrouter_healthy_hosts", "mcrouter_restarts", "mcrouter_config_reloads",
    "mcrouter_config_last_reload_success_timestamp_seconds", "mcrouter_tls_handshake_failures",
)
if sorted(c.metric for c in COUNTERS if c.metric) != sorted(METRICS_ORDER):
    raise RuntimeError("stats.METRICS_ORDER must name every metric of stats.COUNTERS once")
FAMILIES: tuple[Counter, ...] = tuple(sorted((c for c in COUNTERS if c.metric),
                                             key=lambda c: METRICS_ORDER.index(c.metric)))


def servers_reply(table: HostTable, slots: frozenset[int]) -> bytes:
    """One line per host of the running config (``slots``; the table keeps
    every host of every config accepted, and a DNS pool's members come and go):
    ``STAT <host> <state> <address|-> <changes> <changed_at> <reason|->``."""
    return ("".join(server_line(h) for h in table.statuses() if h.slot in slots)
            + "END\r\n").encode()


def server_line(h: HostStatus) -> str:
    return (f"STAT {h.key} {h.state} {h.address or '-'} {h.changes} {h.changed_at:.3f} "
            f"{h.reason or '-'}\r\n")


def mcrouter_reply(table: HostTable, block: MetricsBlock) -> bytes:
    """The router's counters, summed over workers, in the table's order."""
    r = Reading(table, block)
    lines = [f"STAT {name} {value}\r\n" for c in COUNTERS if c.names
             for name, value in zip(c.names, c.stat(r), strict=True)]
    return ("".join(lines) + "END\r\n").encode()


def router_stats(table: HostTable, block: MetricsBlock,
                 slots: frozenset[int]) -> dict[bytes, Callable[[], bytes]]:
    """The ``stats <group>`` replies the router makes itself (RootRoute serves
    them); ``slots``: the running config's hosts."""
    return {b"servers": lambda: servers_reply(table, slots),
            b"mcrouter": lambda: mcrouter_reply(table, block)}
