"""The router's counters: one shared block, one slot per process that writes.

The master creates a ``MetricsBlock`` in an anonymous shared mapping before
it forks; it outlives every child.  Who writes:

* worker ``i`` writes only slot ``i`` (from Cython, ``_metrics.Counters``);
  a worker that is restarted takes over the same slot, so its counters
  carry on and the router's totals never go backwards (a worker retired by
  TTOU leaves its counts in its slot for the next one of that index);
* the master writes only the last slot (restarts, config reloads, start
  time) and the header's count of worker slots in use;
* nobody else writes.  The sidecar (``/metrics``) and a worker answering
  ``stats mcrouter`` read every slot and sum them (``snapshot``).

Layout (native-endian uint64 words; the word indices live in ``_metrics.pxd``)::

    0      header   4096 bytes: magic u64, layout version u64, slots u64,
                    host capacity u64, words per slot u64, worker slots used u64
    4096   slot 0   ``slot_words`` words, then slot 1, ... (each page aligned)
           slot:    0     G_*         global counters (clients, bytes, restarts, reloads)
                    16    G_REPLIES   16 counters: replies the router made itself, by reason
                    32    G_ROUTES    8 counters: route decisions
                    40    G_TLS_FAILURES  16 counters: TLS handshakes failed, by side
                                      (client, upstream) then reason (tls.REASONS)
                    64    G_REQUESTS  32 histograms (one per command id) of client
                                      request duration, 18 words each
                    640   G_LEFT_*    (master's slot) what the hosts whose HostTable
                                      slots were freed had counted
                    1024  hosts       ``capacity`` x 616 words, one part per
                                      HostTable slot:
                          0   connections up (gauge)   1 hits   2 misses
                          4   errors by reason (timeout, connect, reset, parse)
                          8   32 counters: requests queued to the host, by command
                          40  32 histograms of upstream round trips, by command
    histogram: [sum of durations in ns, 17 bucket counts (not cumulative), the
               last one +Inf]; bounds in ``_metrics.BOUNDS`` (seconds)

A gauge is a signed value kept as a wrapping uint64; a new slot owner zeroes
its gauges (``Counters.take_over``).  When the master frees a HostTable slot
(no process refers to its host any more) it adds that host's counts to the
G_LEFT_* words of its own slot and zeroes the host's part in every slot
(``forget_host``), so a host that later takes the slot starts from zero and
the totals of ``stats mcrouter`` never go backwards.  Pages of hosts nobody uses are never
touched, so the block costs memory only for the hosts in the config.
"""
from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass
from typing import Sequence

from mcrouter import _metrics
from mcrouter._metrics import (BOUNDS, G_GENERATION, G_LEFT_ERRORS, G_LEFT_HITS,
                               G_LEFT_MISSES, G_LEFT_SENT, G_REQUESTS, G_RELOAD_LAST_OK,
                               G_RELOADS_FAILED, G_RELOADS_OK, G_WORKERS, G_WORKERS_CURRENT,
                               H_DURATION, H_ERRORS, H_HITS, H_MISSES, H_SENT, HIST_WORDS,
                               HOST_WORDS, HOSTS_AT, NCMD, NERROR, Counters)
from mcrouter.protocol import COMMAND_NAMES, CMD_LOCAL

MAGIC = 0x4D43524D45545253            # "MCRMETRS"
LAYOUT_VERSION = 1
HEADER = struct.Struct("=QQQQQ")
USED = struct.Struct("=Q")                  # worker slots in use, at byte HEADER.size
HEADER_BYTES = 4096
PAGE_WORDS = 4096 // 8
MASK = (1 << 64) - 1


def command_name(cmd: int) -> str:
    """The ``cmd`` label: the command, or ``invalid`` for requests the parser refused."""
    return "invalid" if cmd == CMD_LOCAL else COMMAND_NAMES.get(cmd, "unknown")


@dataclass(frozen=True)
class Histogram:
    count: int
    sum_seconds: float
    buckets: list[tuple[float, int]]        # (upper bound, cumulative count), +Inf last


def _histogram(words: Sequence[int], at: int) -> Histogram:
    total, cumulative = 0, []
    for bound, n in zip(BOUNDS + (float("inf"),), words[at + 1:at + HIST_WORDS]):
        total += n
        cumulative.append((bound, total))
    return Histogram(total, words[at] / 1e9, cumulative)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class Snapshot:
    """The whole router's totals at one moment (every slot summed)."""

    def __init__(self, words: Sequence[int], hosts: Sequence[int], used: int) -> None:
        self.words = words
        self.host_words = hosts
        self.used = used              # host parts present (HostTable slots in use)

    def value(self, word: int) -> int:
        return self.words[word]

    def gauge(self, word: int) -> int:
        return _signed(self.words[word])

    def requests(self) -> dict[str, Histogram]:
        """Client request durations by command, for commands seen at least once."""
        out = {}
        for cmd in range(NCMD):
            h = _histogram(self.words, G_REQUESTS + cmd * HIST_WORDS)
            if h.count:
                out[command_name(cmd)] = h
        return out

    def host_value(self, host: int, word: int) -> int:
        return self.host_words[host * HOST_WORDS + word]

    def host_gauge(self, host: int, word: int) -> int:
        return _signed(self.host_value(host, word))

    def upstream(self, host: int) -> dict[str, tuple[int, Histogram]]:
        """Requests queued and round trips of one host, by command seen."""
        base = host * HOST_WORDS
        out = {}
        for cmd in range(NCMD):
            sent = self.host_words[base + H_SENT + cmd]
            h = _histogram(self.host_words, base + H_DURATION + cmd * HIST_WORDS)
            if sent or h.count:
                out[command_name(cmd)] = (sent, h)
        return out


class MetricsBlock:
    def __init__(self, workers: int, hosts: int) -> None:
        """Room for ``workers`` worker slots (more than -n: SIGTTIN adds
        workers) and ``hosts`` HostTable slots."""
        self.workers = workers
        self.slots = workers + 1                  # the workers', then the master's
        self.hosts = hosts
        words = HOSTS_AT + hosts * HOST_WORDS
        self.slot_words = (words + PAGE_WORDS - 1) // PAGE_WORDS * PAGE_WORDS
        self.mm = mmap.mmap(-1, HEADER_BYTES + self.slots * self.slot_words * 8)
        HEADER.pack_into(self.mm, 0, MAGIC, LAYOUT_VERSION, self.slots, hosts, self.slot_words)

    @property
    def master_slot(self) -> int:
        return self.slots - 1

    def use_slot(self, slot: int) -> None:
        """The master is about to fork worker ``slot``: sum it from now on."""
        used = USED.unpack_from(self.mm, HEADER.size)[0]
        if used <= slot < self.workers:
            USED.pack_into(self.mm, HEADER.size, slot + 1)

    def counters(self, slot: int) -> Counters:
        """A writer for ``slot`` (the caller is its only writer)."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"metrics slot {slot} does not exist")
        return Counters(self.mm, HEADER_BYTES + slot * self.slot_words * 8, self.hosts)

    def snapshot(self, hosts_used: int) -> Snapshot:
        """Every worker slot in use and the master's, summed; slots and hosts
        never used are not read (their pages stay unallocated)."""
        used = max(0, min(hosts_used, self.hosts))
        workers = USED.unpack_from(self.mm, HEADER.size)[0]
        worker_words, worker_hosts = self._sum(0, workers, used)
        master_words, master_hosts = self._sum(self.master_slot, 1, used)
        return Snapshot([a + b for a, b in zip(worker_words, master_words)],
                        [a + b for a, b in zip(worker_hosts, master_hosts)], used)

    def forget_host(self, host: int) -> None:
        """HostTable slot ``host`` was freed (the master's call; no process
        counts into it now): its counts go to the master's G_LEFT_* words,
        its part is zeroed in every slot in use."""
        if not 0 <= host < self.hosts:
            return
        workers = USED.unpack_from(self.mm, HEADER.size)[0]
        part = HOSTS_AT + host * HOST_WORDS
        first = [HEADER_BYTES + slot * self.slot_words * 8 for slot in range(workers)]
        first.append(HEADER_BYTES + self.master_slot * self.slot_words * 8)
        words = [0] * HOST_WORDS
        counted = []
        for at in first:
            part_words = _metrics.sum_slots(self.mm, at, 1, self.slot_words, part, HOST_WORDS)
            if any(part_words):             # a part never counted into stays untouched
                counted.append(at)
                words = [(a + b) & MASK for a, b in zip(words, part_words)]
        if not counted:
            return
        master = self.counters(self.master_slot)
        master.count(G_LEFT_SENT, sum(words[H_SENT:H_SENT + NCMD]) & MASK)
        master.count(G_LEFT_HITS, words[H_HITS])
        master.count(G_LEFT_MISSES, words[H_MISSES])
        for i in range(NERROR):
            master.count(G_LEFT_ERRORS + i, words[H_ERRORS + i])
        for at in counted:
            start = at + part * 8
            self.mm[start:start + HOST_WORDS * 8] = bytes(HOST_WORDS * 8)

    def _sum(self, first: int, count: int, hosts: int) -> tuple[Sequence[int], Sequence[int]]:
        at = HEADER_BYTES + first * self.slot_words * 8
        return (_metrics.sum_slots(self.mm, at, count, self.slot_words, 0, HOSTS_AT),
                _metrics.sum_slots(self.mm, at, count, self.slot_words, HOSTS_AT,
                                   hosts * HOST_WORDS))


def note_reload(ok: bool) -> None:
    """Count a config reload in this process's slot (the master's, where
    reloads happen): call it once per reload attempt."""
    counters = _metrics.local()
    if ok:
        counters.count(G_RELOADS_OK)
        counters.set(G_RELOAD_LAST_OK, int(time.time()))
    else:
        counters.count(G_RELOADS_FAILED)


def readiness(block: MetricsBlock) -> tuple[bool, str]:
    """Ready when every worker the master keeps runs the config generation it
    made current (a reload, or a DNS change, not yet applied everywhere is
    not ready): the words only the master writes, read from its slot."""
    words = _metrics.sum_slots(block.mm, HEADER_BYTES + block.master_slot * block.slot_words * 8,
                               1, block.slot_words, 0, HOSTS_AT)
    generation, workers, current = words[G_GENERATION], words[G_WORKERS], words[G_WORKERS_CURRENT]
    ok = generation > 0 and current >= workers > 0
    return ok, f"{current} of {workers} worker(s) on config generation {generation}"
