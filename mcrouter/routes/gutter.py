"""GutterRoute: where a pool sends the requests of a host that is down
(``on_down: {gutter: POOL, max_ttl: 60}``), after Facebook's gutter pool.

The gutter pool is small and shared by every host of the pool it stands in
for, so what is written there must not outlive the outage by much: every
expiry a request sets is capped at ``max_ttl`` seconds (a missing or zero
expiry too).  The requests a cap touches: set, add, replace, cas (the
exptime), touch, gat, gats (theirs), and the meta ms (T; added when
absent), mg and ma (T, and the N they vivify a missing item with).  A
number is read as memcached reads it (``memcached_int``): "+0" and
"-4294967296" are both "never" to it, so they must be to the cap.  append,
prepend, incr, decr and delete do not set an expiry and go as they are.  Reads go to the gutter as they
are: a client sees a miss there the first time, fills it, and hits it while
the host is down.  When the host is back its keys go to it again; what the
gutter holds expires within ``max_ttl``.
"""
from __future__ import annotations

import re
import time
from typing import Sequence

from mcrouter._parser import Owner, Request
from mcrouter.config import MAX_RELATIVE_EXPTIME
from mcrouter.protocol import (CMD_ADD, CMD_CAS, CMD_GAT, CMD_GATS, CMD_MA, CMD_MG, CMD_MS,
                               CMD_REPLACE, CMD_SET, CMD_TOUCH)
from mcrouter.routes.base import Route

# text commands: the index of the exptime token in the request line
EXPTIME_TOKEN = {CMD_SET: 3, CMD_ADD: 3, CMD_REPLACE: 3, CMD_CAS: 3, CMD_TOUCH: 2,
                 CMD_GAT: 1, CMD_GATS: 1}
# meta commands: the token where flags start, and the flags that carry an expiry
META_FLAGS_AT = {CMD_MS: 3, CMD_MG: 2, CMD_MA: 2}
META_TTL_FLAGS = {CMD_MS: b"T", CMD_MG: b"TN", CMD_MA: b"TN"}
_NUMBER = re.compile(rb"[+-]?[0-9]+")


def memcached_int(token: bytes) -> int | None:
    """``token`` as memcached's safe_strtol reads an expiry: a signed decimal
    that fits a long, stored in an int32 (so it wraps); None when memcached
    refuses it (and answers its own error)."""
    if not _NUMBER.fullmatch(token):
        return None
    value = int(token)
    if not -(1 << 63) <= value < (1 << 63):
        return None                     # strtol's ERANGE
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def capped(exptime: int, max_ttl: int, now: float) -> int:
    """``exptime`` as memcached reads it (0: never; above 30 days: a unix
    time; negative: already expired), made to end within ``max_ttl``."""
    if exptime < 0:
        return exptime
    if exptime == 0:
        return max_ttl
    if exptime > MAX_RELATIVE_EXPTIME:
        return exptime if exptime - now <= max_ttl else max_ttl
    return min(exptime, max_ttl)


def cap_wire(cmd: int, wire: bytes, max_ttl: int, now: float) -> bytes:
    """``wire`` with its expiry capped (the request line only; a data block
    follows unchanged), or ``wire`` itself when nothing changes."""
    end = wire.find(b"\n")
    if end < 0:
        return wire
    cr = end > 0 and wire[end - 1] == 13
    # memcached's tokens: split on spaces only (a tab is part of a key)
    tokens = [t for t in wire[:end - 1 if cr else end].split(b" ") if t]
    if cmd in EXPTIME_TOKEN:
        at = EXPTIME_TOKEN[cmd]
        value = memcached_int(tokens[at]) if len(tokens) > at else None
        if value is None:
            return wire                 # memcached answers it with its own error
        new = capped(value, max_ttl, now)
        if new == value:
            return wire
        tokens[at] = b"%d" % new
    elif cmd in META_FLAGS_AT:
        at, letters = META_FLAGS_AT[cmd], META_TTL_FLAGS[cmd]
        changed = False
        seen_t = False
        for i in range(at, len(tokens)):
            flag = tokens[i][:1]
            value = memcached_int(tokens[i][1:]) if flag and flag in letters else None
            if value is not None:
                seen_t |= flag == b"T"
                new = capped(value, max_ttl, now)
                if new != value:
                    tokens[i] = flag + b"%d" % new
                    changed = True
        if cmd == CMD_MS and not seen_t and len(tokens) >= at:
            tokens.append(b"T%d" % max_ttl)     # no T: it would never expire
            changed = True
        if not changed:
            return wire
    else:
        return wire
    return b" ".join(tokens) + wire[end - 1 if cr else end:]


class _Forward(Owner):
    """Owner of a capped copy: its reply is the client's."""

    __slots__ = ("parent",)

    def __init__(self, parent: Request) -> None:
        self.parent = parent

    def on_reply(self, sub: Request) -> None:
        self.parent.finish(sub.reply or b"", sub.status)


class GutterRoute(Route):
    """The gutter pool's route, with every expiry written through it capped."""

    name = "GutterRoute"

    def __init__(self, pool: Route, max_ttl: int) -> None:
        self.pool = pool
        self.max_ttl = max_ttl

    def label(self) -> str:
        return f"GutterRoute|{self.pool.label()} (max_ttl {self.max_ttl}s)"

    def dispatch(self, req: Request) -> None:
        wire = cap_wire(req.cmd, req.wire, self.max_ttl, time.time())
        if wire is req.wire:
            self.pool.dispatch(req)
            return
        sub = req.child(_Forward(req))
        sub.wire = wire
        self.pool.dispatch(sub)

    def targets(self, req: Request) -> Sequence[Route]:
        return [self.pool]
