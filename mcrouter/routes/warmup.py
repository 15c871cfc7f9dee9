"""WarmUpRoute: fill a new (cold) cache from an old (warm) one as keys are read.

``get``/``gets``/``gat``/``gats``: asked of ``cold``; the keys it misses are
asked of ``warm``; warm hits are returned to the client and written to
``cold`` in the background with ``add`` (so a value set meanwhile is never
overwritten), with ``exptime``; when warm fails, cold's miss stands.  ``mg``: cold, then warm on a miss (the
reply carries only the flags the client asked for, so nothing is written
back).  Every other command goes to ``cold`` only.
"""
from __future__ import annotations

from typing import Sequence

from mcrouter._parser import Owner, Request
from mcrouter.protocol import (CMD_ADD, CMD_GAT, CMD_GATS, CMD_GET, CMD_GETS, CMD_MG, RK_QUIET,
                               ST_FAIL)
from mcrouter.routes.base import DISCARD, Route
from mcrouter.routes.multiget import MissChain

_GETS = (CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS)


class WarmUpRoute(Route):
    name = "WarmUpRoute"

    def __init__(self, cold: Route, warm: Route, exptime: int = 0) -> None:
        self.cold = cold
        self.warm = warm
        self.exptime = exptime
        self.steps = (cold, warm)

    def dispatch(self, req: Request) -> None:
        cmd = req.cmd
        if cmd in _GETS:
            MissChain(req, self.steps, self.fill).next()
        elif cmd == CMD_MG:
            _MetaWarm(req, self).start()
        else:
            self.cold.dispatch(req)

    def fill(self, step: int, sub: Request, hits: list[tuple[bytes, bytes]]) -> None:
        """Warm hits → ``add`` to cold, quietly, replies dropped."""
        if step != 1:
            return
        for key, block in hits:
            line, _, rest = block.partition(b"\r\n")
            words = line.split(b" ")          # VALUE <key> <flags> <bytes> [<cas>]
            add = sub.child(DISCARD)
            add.cmd = CMD_ADD
            add.rkind = RK_QUIET
            add.quiet = True
            add.key = key
            add.keys = None
            add.wire = b"add %s %s %d %s noreply\r\n%smn\r\n" % (
                key, words[2], self.exptime, words[3], rest)
            self.cold.dispatch(add)

    def targets(self, req: Request) -> Sequence[Route]:
        return self.steps if req.cmd in _GETS or req.cmd == CMD_MG else (self.cold,)


class _MetaWarm(Owner):
    __slots__ = ("parent", "route", "step")

    def __init__(self, parent: Request, route: WarmUpRoute) -> None:
        self.parent = parent
        self.route = route
        self.step = 0

    def start(self) -> None:
        self.route.cold.dispatch(self.parent.child(self))

    def on_reply(self, sub: Request) -> None:
        if self.step == 0 and sub.status == ST_FAIL:
            self.step = 1
            self.route.warm.dispatch(self.parent.child(self))
        else:
            self.parent.finish(sub.reply or b"", sub.status)
