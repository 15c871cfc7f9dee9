"""The router's own counters as text, byte for byte: ``stats mcrouter``,
``stats servers`` and ``/metrics``, rendered in one process from a metrics
block whose every word counted holds a value of its own, so that a counter
shown under another's name, or a name, help text, label or line moved,
changes the bytes.  The expected texts are kept in ``rendered/`` (LF line
ends there; the replies end lines with CRLF)."""
from __future__ import annotations

import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mcrouter import __version__, _metrics
from mcrouter._metrics import (G_LEFT_ERRORS, G_LEFT_HITS, G_LEFT_MISSES, G_LEFT_SENT,
                               G_REPLIES, G_REQUESTS, G_ROUTES, H_CONNS, H_DURATION, H_ERRORS,
                               H_HITS, H_MISSES, H_SENT, HIST_WORDS, HOST_WORDS, HOSTS_AT,
                               NERROR, NREPLY, NROUTE, NTLS, G_TLS_FAILURES)
from mcrouter.exposition import registry_for
from mcrouter.hosts_view import parse_servers, render_hosts
from mcrouter.hosttable import DOWN, HostTable
from mcrouter.metrics import HEADER_BYTES, MetricsBlock
from mcrouter.protocol import CMD_ADMIN, CMD_GET, CMD_LOCAL, CMD_SET
from mcrouter.stats import router_stats

RENDERED = Path(__file__).parent / "rendered"
NOW = 1_700_000_000.25


def expected(name: str, crlf: bool) -> bytes:
    text = (RENDERED / name).read_text().replace("@VERSION@", __version__) \
        .replace("@PYTHON@", sys.version.split()[0])
    return (text.replace("\n", "\r\n") if crlf else text).encode()


@pytest.fixture
def router_state(monkeypatch):
    """A host table of three hosts (one down, one freed) and a metrics block
    with two workers, every word the renderings read set to its own value."""
    saved = _metrics.local()
    monkeypatch.setattr(time, "time", lambda: NOW)
    table = HostTable(capacity=8)
    a, b, c = table.assign("a.example:11211"), table.assign("[::1]:11212"), table.assign("c:1")
    table.set_address(a, 2, "10.0.0.1")
    table.set_state(b, DOWN, "3 failures in a row, last: timeout")
    table.free(c)
    block = MetricsBlock(workers=2, hosts=table.capacity)
    block.use_slot(0)
    block.use_slot(1)

    def put(slot: int, word: int, value: int) -> None:
        struct.pack_into("=Q", block.mm, HEADER_BYTES + (slot * block.slot_words + word) * 8,
                         value & ((1 << 64) - 1))

    for word in range(15):                          # G_CLIENTS .. G_WORKERS_CURRENT
        put(block.master_slot, word, 1000 + word)
    put(block.master_slot, 10, int(NOW) - 3600)      # G_START_TIME: an hour ago
    put(0, 0, -1024)                                 # G_CLIENTS, a gauge: 1000 - 1024 in all
    for i in range(NREPLY):
        put(1, G_REPLIES + i, 2000 + i)
    for i in range(NROUTE):
        put(1, G_ROUTES + i, 3000 + i)
    for i in range(NTLS):                            # TLS failures: two workers add up
        put(0, G_TLS_FAILURES + i, 5000 + i)
        put(1, G_TLS_FAILURES + i, 100 * i)
    for n, cmd in enumerate((CMD_GET, CMD_SET, CMD_ADMIN, CMD_LOCAL)):
        at = G_REQUESTS + cmd * HIST_WORDS
        put(0, at, 1_500_000 * (n + 1))               # the sum, in ns
        for bucket in range(1, HIST_WORDS):
            put(0, at + bucket, (n + 1) * bucket)
    put(block.master_slot, G_LEFT_SENT, 4000)
    put(block.master_slot, G_LEFT_HITS, 4001)
    put(block.master_slot, G_LEFT_MISSES, 4002)
    for i in range(NERROR):
        put(block.master_slot, G_LEFT_ERRORS + i, 4010 + i)
    for host, base in ((a, 10_000), (b, 20_000)):
        part = HOSTS_AT + host * HOST_WORDS
        put(0, part + H_CONNS, base + 1)
        put(0, part + H_HITS, base + 2)
        put(0, part + H_MISSES, base + 3)
        for i in range(NERROR):
            put(0, part + H_ERRORS + i, base + 10 + i)
        put(1, part + H_SENT + CMD_GET, base + 20)
        put(1, part + H_SENT + CMD_SET, base + 21)
        at = part + H_DURATION + CMD_GET * HIST_WORDS
        put(1, at, 250_000 + base)
        for bucket in range(1, HIST_WORDS):
            put(1, at + bucket, base // 1000 + bucket)
    yield table, block, frozenset({a, b})
    _metrics.install(saved)


def test_stats_mcrouter_bytes(router_state):
    table, block, slots = router_state
    assert router_stats(table, block, slots)[b"mcrouter"]() == expected("stats_mcrouter.txt", True)


def test_stats_servers_bytes(router_state):
    table, block, slots = router_state
    assert router_stats(table, block, slots)[b"servers"]() == expected("stats_servers.txt", True)
    # a host of the table that the running config does not name is not listed
    assert router_stats(table, block, frozenset({0}))[b"servers"]() == \
        expected("stats_servers.txt", True).split(b"\r\n", 1)[0] + b"\r\nEND\r\n"


def test_metrics_bytes(router_state):
    table, block, _ = router_state
    assert generate_latest(registry_for(block, table)) == expected("metrics.txt", False)


def test_mcrouter_hosts_prints_stats_servers(router_state, monkeypatch):
    """``mcrouter hosts`` reads ``stats servers`` back into the host table's
    own rows, and prints them (times in the local zone)."""
    table, block, slots = router_state
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        rows = parse_servers(router_stats(table, block, slots)[b"servers"]())
        assert rows == [replace(h, slot=-1) for h in table.statuses() if h.slot in slots]
        assert render_hosts(rows) == (
            "HOST             STATE  ADDRESS   CHANGES  SINCE                LAST CHANGE / ERROR\n"
            "a.example:11211  up     10.0.0.1  0        -                    -\n"
            "[::1]:11212      down   -         1        2023-11-14 22:13:20  "
            "3 failures in a row, last: timeout\n")
    finally:
        monkeypatch.undo()
        time.tzset()
