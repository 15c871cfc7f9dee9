"""Commands the router answers about itself, whatever the route tree says.

Both are in memcached's ``STAT name value`` format and answered by whichever
worker reads them, from state every worker shares:

* ``stats servers`` (as in Facebook mcrouter) lists every upstream host with
  its health state, so that ``mcrouter hosts`` and memcached tools can read it;
* ``stats mcrouter`` gives the router's own counters summed over every
  worker (the numbers ``/metrics`` exposes), for memcached dashboards.

Other ``stats`` requests go where the config sends them.
"""
from __future__ import annotations

import time
from typing import Callable

from mcrouter import __version__
from mcrouter._metrics import (ERROR_REASONS, G_BYTES_IN, G_BYTES_OUT, G_CLIENTS,
                               G_CLIENTS_REJECTED, G_CLIENTS_TOTAL, G_LEFT_ERRORS,
                               G_LEFT_HITS, G_LEFT_MISSES, G_LEFT_SENT, G_MASTER_PID,
                               G_RELOAD_LAST_OK, G_RELOADS_FAILED, G_RELOADS_OK, G_REPLIES,
                               G_ROUTES, G_SIDECAR_RESTARTS, G_START_TIME, G_WORKER_RESTARTS,
                               G_WORKERS, H_CONNS, H_ERRORS, H_HITS, H_MISSES, REPLY_REASONS,
                               ROUTE_DECISIONS)
from mcrouter.hosttable import DOWN, HostTable
from mcrouter.metrics import MetricsBlock
from mcrouter.protocol import COMMAND_IDS


def servers_reply(table: HostTable, slots: frozenset[int]) -> bytes:
    """One line per host of the running config (``slots``; the table keeps
    every host of every config accepted, and a DNS pool's members come and go):
    ``STAT <host> <state> <address|-> <changes> <changed_at> <reason>``."""
    lines = [f"STAT {h.key} {h.state} {h.address or '-'} {h.changes} {h.changed_at:.3f} "
             f"{h.reason or '-'}\r\n" for h in table.statuses() if h.slot in slots]
    return ("".join(lines) + "END\r\n").encode()


def mcrouter_reply(table: HostTable, block: MetricsBlock) -> bytes:
    """The router's counters, summed over workers, in a fixed order of names."""
    snap = block.snapshot(table.used)
    hosts = [h for h in table.live_slots() if h < snap.used]
    requests = snap.requests()
    now = int(time.time())

    def host_sum(word: int, left: int) -> int:
        """Over the hosts with a slot, and those whose slots were freed."""
        return sum(snap.host_value(h, word) for h in hosts) + snap.value(left)

    stats: list[tuple[str, int | str]] = [
        ("pid", snap.value(G_MASTER_PID)),
        ("uptime", now - snap.value(G_START_TIME)),
        ("time", now),
        ("version", __version__),
        ("workers", snap.value(G_WORKERS)),
        ("curr_connections", snap.gauge(G_CLIENTS)),
        ("total_connections", snap.value(G_CLIENTS_TOTAL)),
        ("rejected_connections", snap.value(G_CLIENTS_REJECTED)),
        ("bytes_read", snap.value(G_BYTES_IN)),
        ("bytes_written", snap.value(G_BYTES_OUT)),
    ]
    stats += [(f"cmd_{name}", requests[name].count if name in requests else 0)
              for name in [*COMMAND_IDS, "admin", "invalid"]]
    stats += [
        ("upstream_requests", sum(n for h in hosts for n, _ in snap.upstream(h).values())
         + snap.value(G_LEFT_SENT)),
        ("upstream_connections", sum(snap.host_gauge(h, H_CONNS) for h in hosts)),
        ("get_hits", host_sum(H_HITS, G_LEFT_HITS)),
        ("get_misses", host_sum(H_MISSES, G_LEFT_MISSES)),
    ]
    stats += [(f"upstream_errors_{r}", host_sum(H_ERRORS + i, G_LEFT_ERRORS + i))
              for i, r in enumerate(ERROR_REASONS)]
    stats += [("hosts", len(hosts)),
              ("healthy_hosts", sum(1 for h in hosts if table.state(h) != DOWN))]
    stats += [(f"replies_{r}", snap.value(G_REPLIES + i)) for i, r in enumerate(REPLY_REASONS)]
    stats += [(f"route_{d}", snap.value(G_ROUTES + i)) for i, d in enumerate(ROUTE_DECISIONS)]
    stats += [
        ("worker_restarts", snap.value(G_WORKER_RESTARTS)),
        ("sidecar_restarts", snap.value(G_SIDECAR_RESTARTS)),
        ("config_reloads", snap.value(G_RELOADS_OK)),
        ("config_reload_failures", snap.value(G_RELOADS_FAILED)),
        ("config_last_reload_success", snap.value(G_RELOAD_LAST_OK)),
    ]
    return ("".join(f"STAT {k} {v}\r\n" for k, v in stats) + "END\r\n").encode()


def router_stats(table: HostTable, block: MetricsBlock,
                 slots: frozenset[int]) -> dict[bytes, Callable[[], bytes]]:
    """The ``stats <group>`` replies the router makes itself (RootRoute serves
    them); ``slots``: the running config's hosts."""
    return {b"servers": lambda: servers_reply(table, slots),
            b"mcrouter": lambda: mcrouter_reply(table, block)}
