"""Host state shared by every process of one router: one verdict per host.

The master creates a ``HostTable`` in an anonymous shared mapping before it
forks, so the workers and the sidecar all see the same bytes.  Who writes:

* the master assigns a slot per host address (at boot and at reload) and
  writes its first resolved address; it frees the slot of a host no
  process can still refer to (see "Slots" below);
* the sidecar writes probe verdicts (up or down), refreshed addresses and
  the version each host's probe reported;
* a worker writes ``down`` when its data path sees a host fail (TKO).

Only the sidecar's probes bring a host back up.  A worker compares one short
slice of the mapping per loop turn (``HostTable.signature``, in C:
``_loop.SignatureWatch``) and acts only
when it changed, so a state change reaches every worker within one turn at
the cost of one ``memcmp``.

Slots.  A config may name at most ``capacity // 2`` distinct hosts (1024 by
default): the other half is room for the hosts of the generations that
processes still run while they move to the new one, so that a whole fleet
can be replaced by another in one change (every member of a DNS pool
renamed).  A host keeps its slot for as long as any process may refer to
it: the master frees it only once no worker (draining ones included) and
no sidecar holds a generation that names it (``Master.free_slots``), so a
host that leaves and comes back before then keeps its slot, its state and
every worker's connections.  A freed slot is reset (no key, state
``unused``, no address, no changes, no version) and goes on a free list
that later assignments take from first; ``slot_of`` never finds it, and
the operator's views (``statuses``) skip it.  ``used`` is the high-water
mark: slots at or past it were never assigned.

Each process keeps an index of key -> slot.  The master bumps ``epoch``
once an assignment or a free is complete; a reader whose index is of an
older epoch reads the keys again (a few KiB) before it answers "none".

Layout (all little-endian, offsets in bytes)::

    0    header   magic u32, layout version u32, capacity u32, used u32,
                  epoch u32, 12 bytes of padding
    32   status   capacity x 2 bytes: [state u8, address generation u8]
    R    records  capacity x 272 bytes, R = 32 + 2 * capacity rounded up to 64
         record:  0   key         64s  "host:port" as written in the config (stored_key)
                  64  family      u16  AF_INET / AF_INET6, 0 = no address yet
                  66  (pad)
                  68  ip          48s  the address in text form
                  116 changes     u32  state changes since the slot was made
                  120 changed_at  f64  wall-clock time of the last change
                  128 reason      128s why it last changed (or the DNS error)
                  256 version_seq u8   seqlock of the version: odd while written
                  257 version     15s  "x.y.z" from the last good probe, "" = unknown

The address is written with a seqlock on its generation byte: odd while the
single writer (master at boot, then the sidecar) is writing, even when done;
a reader that sees an odd or a moved generation tries again next turn.  The
version has a seqlock byte of its own (writer: the sidecar; readers: a
worker answering ``version`` itself, LocalRoute), so a reader never takes a
half-written version for a real one.  Layout version 2 added it; version
3 the epoch and free slots (state ``unused`` below ``used``).
"""
from __future__ import annotations

import hashlib
import heapq
import mmap
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterable

from mcrouter._metrics import swap_byte

MAGIC = 0x4D435254          # "MCRT"
LAYOUT_VERSION = 3
HEADER = struct.Struct("<IIIII12x")
STATUS_AT = HEADER.size                     # 32: [state, address generation] per slot
USED_AT = 12                                # the header's ``used`` (u32)
RECORD_SIZE = 272
REC_KEY = struct.Struct("<64s")
REC_ADDR = struct.Struct("<H2x48s")          # at offset 64
REC_CHANGE = struct.Struct("<Id128s")         # at offset 116
REC_VERSION_SEQ = 256                         # u8, then the version text
VERSION_SIZE = 15
# A memcached version as the router repeats it: three runs of digits and
# nothing else.  A probe reply that is not exactly this (a hostile or broken
# backend) is never stored, so it can never reach a client.
STRICT_VERSION = re.compile(rb"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}")
MAX_HOSTS = 1024                 # distinct hosts one config may name (by default)
DEFAULT_CAPACITY = 2 * MAX_HOSTS   # and as many again for the generations still draining
KEY_SIZE = 64

UNUSED, UP, DOWN = 0, 1, 2
STATE_NAMES = {UNUSED: "unused", UP: "up", DOWN: "down"}


class TableFull(Exception):
    """More distinct hosts than the table was made for."""


@dataclass(frozen=True)
class HostStatus:
    """One host as an operator sees it: a line of ``stats servers``
    (stats.py), read back as a row of ``mcrouter hosts`` (hosts_view.py)."""
    key: str                # "host:port" as the config writes it
    state: str              # "up" or "down"
    address: str            # the address in text form; "" while none is known
    changes: int            # state changes since the slot was made
    changed_at: float       # wall-clock time of the last change
    reason: str             # why it last changed; "" for no reason yet
    slot: int = -1          # its slot in the table (-1: read from a router's reply)


def stored_key(key: str) -> bytes:
    """The 64 bytes a host is known by: its ``host:port``, or when longer (a
    Kubernetes pod's DNS name can be) the start of it and a digest of all of
    it, so two long names never share a slot."""
    raw = key.encode()
    if len(raw) <= KEY_SIZE:
        return raw
    return raw[:KEY_SIZE - 17] + b"~" + hashlib.blake2b(raw, digest_size=8).hexdigest().encode()


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class HostTable:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.records_at = (STATUS_AT + 2 * capacity + 63) // 64 * 64
        self.mm = mmap.mmap(-1, self.records_at + capacity * RECORD_SIZE)
        HEADER.pack_into(self.mm, 0, MAGIC, LAYOUT_VERSION, capacity, 0, 0)
        self._used = memoryview(self.mm)[USED_AT:USED_AT + 4].cast("I")   # no unpack per read
        self._epoch = memoryview(self.mm)[16:20].cast("I")
        self._free: list[int] = []              # the master's: freed slots, lowest first
        self._index: dict[bytes, int] = {}      # this process's: stored key → slot
        self._index_epoch = 0

    # -- slots (the master) --------------------------------------------------

    @property
    def used(self) -> int:
        """Slots ever assigned (the high-water mark; free ones among them)."""
        return self._used[0]

    @property
    def max_hosts(self) -> int:
        """Distinct hosts one config may name: half the table (see "Slots")."""
        return self.capacity // 2

    @property
    def available(self) -> int:
        """Slots ``assign`` can still make (the master's count)."""
        return self.capacity - self.used + len(self._free)

    def assign(self, key: str) -> int:
        """The slot of host ``key``, made (up, no address) if it is new: a
        freed slot if there is one, else the next never used."""
        slot = self.slot_of(key)
        if slot >= 0:
            return slot
        raw = stored_key(key)
        if self._free:
            slot = heapq.heappop(self._free)
        elif self.used < self.capacity:
            slot = self.used
        else:
            raise TableFull(f"more than {self.capacity} distinct hosts")
        REC_KEY.pack_into(self.mm, self._rec(slot), raw)
        self.mm[STATUS_AT + 2 * slot] = UP          # last: slot_of skips an unused slot
        if slot == self.used:
            self._used[0] = slot + 1
        self._index[raw] = slot
        self._bump()
        return slot

    def free(self, slot: int) -> None:
        """Give back the slot of a host no process refers to any more (the
        master's call, see "Slots"): reset, then on the free list."""
        at = self._rec(slot)
        self._index.pop(self.mm[at:at + KEY_SIZE].rstrip(b"\0"), None)
        self.mm[STATUS_AT + 2 * slot] = UNUSED      # first: nobody finds it from now on
        self.mm[at:at + KEY_SIZE] = bytes(KEY_SIZE)
        self.set_address(slot, 0, "")
        REC_CHANGE.pack_into(self.mm, at + 116, 0, 0.0, b"")
        self.set_version(slot, b"")
        heapq.heappush(self._free, slot)
        self._bump()

    def _bump(self) -> None:
        self._epoch[0] = (self._epoch[0] + 1) & 0xFFFFFFFF
        self._index_epoch = self._epoch[0]          # the master's index is current

    def slot_of(self, key: str) -> int:
        """The slot of ``key``, or -1; from this process's index, read again
        from the table when the master has assigned or freed since."""
        raw = stored_key(key)
        slot = self._index.get(raw, -1)
        if slot >= 0 and self._holds(slot, raw):
            return slot
        if self._index_epoch != self._epoch[0]:
            self._reindex()
            slot = self._index.get(raw, -1)
            if slot >= 0 and self._holds(slot, raw):
                return slot
        return -1

    def _holds(self, slot: int, raw: bytes) -> bool:
        at = self._rec(slot)
        return (self.mm[STATUS_AT + 2 * slot] != UNUSED
                and self.mm[at:at + KEY_SIZE].rstrip(b"\0") == raw)

    def _reindex(self) -> None:
        epoch = self._epoch[0]                  # read first: a change meanwhile reindexes again
        index = {}
        for slot in range(self.used):
            if self.mm[STATUS_AT + 2 * slot] != UNUSED:
                at = self._rec(slot)
                index[self.mm[at:at + KEY_SIZE].rstrip(b"\0")] = slot
        self._index, self._index_epoch = index, epoch

    def _rec(self, slot: int) -> int:
        return self.records_at + slot * RECORD_SIZE

    # -- state (sidecar: probes; workers: TKO) --------------------------------

    def signature(self) -> bytes:
        """The bytes that change whenever any host's state or address does."""
        return self.mm[STATUS_AT:STATUS_AT + 2 * self._used[0]]

    def state(self, slot: int) -> int:
        return self.mm[STATUS_AT + 2 * slot]

    def set_state(self, slot: int, state: int, reason: str) -> bool:
        """Record a verdict; True when it changed the state (so the caller
        logs it).  Workers and the sidecar may judge a host at the same
        moment: the state byte is swapped atomically, so exactly one of them
        changes it, counts the change and logs it."""
        old = self.state(slot)
        if old == state or not swap_byte(self.mm, STATUS_AT + 2 * slot, old, state):
            return False
        at = self._rec(slot) + 116
        changes = struct.unpack_from("<I", self.mm, at)[0]
        REC_CHANGE.pack_into(self.mm, at, (changes + 1) & 0xFFFFFFFF, time.time(),
                             reason.encode()[:127])
        return True

    # -- addresses (master at boot, then the sidecar's resolver) --------------

    def generation(self, slot: int) -> int:
        return self.mm[STATUS_AT + 1 + 2 * slot]

    def set_address(self, slot: int, family: int, ip: str) -> None:
        gen = self.mm[STATUS_AT + 1 + 2 * slot]
        self.mm[STATUS_AT + 1 + 2 * slot] = (gen + 1) & 0xFF | 1          # odd: being written
        REC_ADDR.pack_into(self.mm, self._rec(slot) + 64, family, ip.encode())
        self.mm[STATUS_AT + 1 + 2 * slot] = (gen + 2) & 0xFE               # even: done

    def note(self, slot: int, reason: str) -> None:
        """Set the reason without changing the state (e.g. a DNS failure)."""
        at = self._rec(slot) + 128                     # the record's reason field
        self.mm[at:at + 128] = reason.encode()[:127].ljust(128, b"\0")

    def address(self, slot: int) -> tuple[int, str] | None:
        """(family, ip), or None while none is known or it is being rewritten."""
        gen = self.mm[STATUS_AT + 1 + 2 * slot]
        if gen & 1:
            return None
        family, ip = REC_ADDR.unpack_from(self.mm, self._rec(slot) + 64)
        if self.mm[STATUS_AT + 1 + 2 * slot] != gen or not family:
            return None
        return family, _text(ip)

    # -- backend versions (sidecar: probes; workers: LocalRoute) ------------------

    def set_version(self, slot: int, version: bytes) -> None:
        """Record the version a probe reported; anything but a strict x.y.z
        makes it unknown again.  Written only when it changed."""
        if not STRICT_VERSION.fullmatch(version):
            version = b""
        at = self._rec(slot) + REC_VERSION_SEQ
        field = version.ljust(VERSION_SIZE, b"\0")
        if self.mm[at + 1:at + 1 + VERSION_SIZE] == field:
            return
        seq = self.mm[at]
        self.mm[at] = (seq + 1) & 0xFF | 1                  # odd: being written
        self.mm[at + 1:at + 1 + VERSION_SIZE] = field
        self.mm[at] = (seq + 2) & 0xFE                      # even: done

    def version(self, slot: int) -> tuple[int, int, int] | None:
        """The version of one host as its probe last saw it, or None when
        unknown (never probed, not strict, or being rewritten right now)."""
        at = self._rec(slot) + REC_VERSION_SEQ
        seq = self.mm[at]
        raw = self.mm[at + 1:at + 1 + VERSION_SIZE].rstrip(b"\0")
        if seq & 1 or self.mm[at] != seq or not STRICT_VERSION.fullmatch(raw):
            return None
        major, minor, patch = raw.split(b".")
        return int(major), int(minor), int(patch)

    def lowest_version(self, slots: Iterable[int]) -> str | None:
        """The lowest known version among ``slots`` ("1.6.9" < "1.6.18"), or None."""
        known = [v for v in map(self.version, slots) if v is not None]
        return "%d.%d.%d" % min(known) if known else None

    # -- the operator's view ---------------------------------------------------

    def status(self, slot: int) -> HostStatus:
        at = self._rec(slot)
        addr = self.address(slot)
        changes, changed_at, reason = REC_CHANGE.unpack_from(self.mm, at + 116)
        return HostStatus(_text(self.mm[at:at + 64]), STATE_NAMES[self.state(slot)],
                          addr[1] if addr else "", changes, changed_at, _text(reason), slot)

    def statuses(self) -> list[HostStatus]:
        """Every host with a slot (free slots are no host)."""
        return [self.status(slot) for slot in self.live_slots()]

    def live_slots(self) -> list[int]:
        """The slots assigned to a host now, lowest first."""
        return [slot for slot in range(self.used) if self.mm[STATUS_AT + 2 * slot] != UNUSED]


def sockaddr(family: int, ip: str, port: int) -> tuple:
    """What ``socket.connect`` takes for this family."""
    return (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
