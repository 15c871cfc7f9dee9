"""The shared metrics block in one process: slots, sums, histograms, gauges."""
from __future__ import annotations

import struct
import time

import pytest

from mcrouter import _metrics
from mcrouter._metrics import (E_TIMEOUT, G_BYTES_IN, G_LEFT_ERRORS, G_LEFT_HITS,
                               G_LEFT_MISSES, G_LEFT_SENT, G_RELOAD_LAST_OK, G_RELOADS_FAILED,
                               G_RELOADS_OK, H_CONNS, H_ERRORS, H_HITS, H_MISSES, H_SENT,
                               HOST_WORDS, HOSTS_AT, R_FANOUT, G_ROUTES, Counters)
from mcrouter._parser import Owner, RequestParser
from mcrouter._ring import Ring
from mcrouter.metrics import HEADER_BYTES, MetricsBlock, note_reload


class Inbox(Owner):
    def on_reply(self, req):
        pass


@pytest.fixture
def block():
    saved = _metrics.local()
    b = MetricsBlock(workers=2, hosts=8)
    b.use_slot(1)                     # the master forked workers 0 and 1
    yield b
    _metrics.install(saved)


def test_only_worker_slots_in_use_are_summed():
    block = MetricsBlock(workers=4, hosts=2)
    for slot in (0, 2, block.master_slot):
        block.counters(slot).count(G_BYTES_IN, 1)
    assert block.snapshot(2).value(G_BYTES_IN) == 1        # the master's only: no worker yet
    block.use_slot(0)
    assert block.snapshot(2).value(G_BYTES_IN) == 2        # slot 0 and the master's
    block.use_slot(2)
    block.use_slot(1)                                      # never shrinks
    assert block.snapshot(2).value(G_BYTES_IN) == 3


def test_each_slot_counts_apart_and_a_snapshot_sums_them(block):
    a, b, master = block.counters(0), block.counters(1), block.counters(block.master_slot)
    a.count(G_BYTES_IN, 5)
    b.count(G_BYTES_IN, 7)
    master.route(R_FANOUT)
    a.upstream_error(3, E_TIMEOUT, 4)
    b.upstream_error(3, E_TIMEOUT)
    snap = block.snapshot(hosts_used=4)
    assert snap.value(G_BYTES_IN) == 12
    assert snap.value(G_ROUTES + R_FANOUT) == 1
    assert snap.host_value(3, H_ERRORS + E_TIMEOUT) == 5
    with pytest.raises(ValueError):
        block.counters(block.slots)


def test_a_restarted_writer_keeps_counters_and_zeroes_gauges(block):
    old = block.counters(0)
    old.count(G_BYTES_IN, 10)
    old.upstream_connections(2, 1)
    old.upstream_connections(5, 1)
    assert block.snapshot(8).host_gauge(2, H_CONNS) == 1
    new = block.counters(0)           # the respawned worker takes the same slot
    new.take_over(hosts_used=8)
    snap = block.snapshot(8)
    assert snap.value(G_BYTES_IN) == 10
    assert snap.host_gauge(2, H_CONNS) == snap.host_gauge(5, H_CONNS) == 0
    new.upstream_connections(2, -1)   # a gauge may dip below zero in a slot; it reads signed
    assert block.snapshot(8).host_gauge(2, H_CONNS) == -1


def test_writes_outside_the_slot_are_ignored(block):
    c = block.counters(0)
    c.upstream_error(8, E_TIMEOUT)    # host 8 of 8: past the capacity
    c.upstream_error(-1, E_TIMEOUT)
    c.count(10 ** 6)
    assert sum(block.snapshot(8).host_words) == 0
    assert sum(block.snapshot(8).words) == 0


def test_counting_off_writes_nothing(block):
    off = Counters()
    assert not off.on
    off.count(G_BYTES_IN, 5)
    off.upstream_error(0, E_TIMEOUT)
    assert sum(block.snapshot(8).words) == 0


def test_a_ring_times_upstream_round_trips_and_counts_hits(block):
    _metrics.install(block.counters(1))
    ring = Ring(host=6)
    reqs = RequestParser().feed(b"get a\r\nget b\r\nset c 0 0 1\r\nx\r\n")
    for r in reqs:
        r.owner = Inbox()
        assert ring.push(r, 1e18)
    time.sleep(0.06)
    assert ring.feed(b"VALUE a 0 1\r\nx\r\nEND\r\nEND\r\nSTORED\r\n") == 0
    up = block.snapshot(8).upstream(6)
    sent, hist = up["get"]
    assert sent == 2 and hist.count == 2
    assert dict(hist.buckets)[0.05] == 0 and hist.sum_seconds >= 0.12
    assert up["set"][0] == 1 and up["set"][1].count == 1
    snap = block.snapshot(8)
    assert snap.host_value(6, H_HITS) == 1 and snap.host_value(6, H_MISSES) == 1


class AcceptAll:
    """A socket stand-in that takes every byte."""

    def send(self, data):
        return len(data)


def test_a_timed_out_request_is_not_timed_when_its_reply_comes_late(block):
    _metrics.install(block.counters(0))
    ring = Ring(host=0, timeout=0.5)
    (req,) = RequestParser().feed(b"get a\r\n")
    req.owner = Inbox()
    ring.push(req, 0.0)
    ring.write_to(AcceptAll(), 0.0)             # its reply is due at 0.5
    assert ring.expire(1.0, b"SERVER_ERROR mcrouter: upstream timeout\r\n") == 1
    assert ring.feed(b"END\r\n") == 0
    sent, hist = block.snapshot(1).upstream(0)["get"]
    assert (sent, hist.count) == (1, 0)


def test_note_reload_counts_in_this_process_slot(block):
    _metrics.install(block.counters(block.master_slot))
    note_reload(True)
    note_reload(False)
    note_reload(True)
    snap = block.snapshot(0)
    assert snap.value(G_RELOADS_OK) == 2 and snap.value(G_RELOADS_FAILED) == 1
    assert abs(snap.value(G_RELOAD_LAST_OK) - time.time()) < 5


def test_a_freed_host_slot_starts_from_zero_and_the_totals_keep_its_counts(block):
    """The master frees HostTable slot 3 (no process counts into it now):
    the next host of that slot starts from zero; stats mcrouter's totals,
    summed over hosts, must not go backwards."""
    def poke(slot: int, host: int, word: int, value: int) -> None:
        at = HEADER_BYTES + (slot * block.slot_words + HOSTS_AT + host * HOST_WORDS + word) * 8
        struct.pack_into("=Q", block.mm, at, value)

    a, b = block.counters(0), block.counters(1)
    a.upstream_error(3, E_TIMEOUT, 4)
    b.upstream_error(3, E_TIMEOUT)
    b.upstream_error(2, E_TIMEOUT, 9)                   # another host: untouched
    poke(0, 3, H_HITS, 6)
    poke(1, 3, H_MISSES, 2)
    poke(0, 3, H_SENT, 10)
    poke(1, 3, H_SENT + 5, 3)
    block.forget_host(3)
    snap = block.snapshot(8)
    assert [snap.host_value(3, w) for w in range(HOST_WORDS)] == [0] * HOST_WORDS
    assert snap.host_value(2, H_ERRORS + E_TIMEOUT) == 9
    assert (snap.value(G_LEFT_SENT), snap.value(G_LEFT_HITS), snap.value(G_LEFT_MISSES),
            snap.value(G_LEFT_ERRORS + E_TIMEOUT)) == (13, 6, 2, 5)
    block.forget_host(3)                                # nothing counted since: nothing added
    assert block.snapshot(8).value(G_LEFT_HITS) == 6
