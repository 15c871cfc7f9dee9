"""Multi-key gets asked of destinations one after the other (MissFailoverRoute,
WarmUpRoute); asking all at once is ``_routing.split``.  Both collect hits
in ``_routing.Gather``.
"""
from __future__ import annotations

from typing import Callable, Sequence

from mcrouter._metrics import R_FAILOVER, R_MISS_FAILOVER, local as local_counters
from mcrouter._routing import Gather, for_keys, retrieval_prefix
from mcrouter._parser import Request
from mcrouter.protocol import ST_ERROR
from mcrouter.routes.base import Route

__all__ = ["MissChain"]


class MissChain(Gather):
    """Destinations one at a time; each is asked only for the keys still
    missing.  ``on_hits(step, sub, hits)`` sees every step's hits (WarmUpRoute
    writes the warm hits back to the cold route)."""

    def __init__(self, parent: Request, steps: Sequence[Route],
                 on_hits: Callable[[int, Request, list[tuple[bytes, bytes]]], None] | None = None) -> None:
        super().__init__(parent)
        self.steps = steps
        self.i = 0
        self.prefix = retrieval_prefix(parent)
        self.on_hits = on_hits

    def next(self) -> None:
        step = self.steps[self.i]
        self.i += 1
        if self.i == 1:
            step.dispatch(self.parent.child(self))
        else:
            step.dispatch(for_keys(self.parent, self, self.prefix, self.missing()))

    def on_reply(self, sub: Request) -> None:
        hits = self.take(sub)
        if hits and self.on_hits is not None:
            self.on_hits(self.i - 1, sub, hits)
        if self.i < len(self.steps) and self.missing():
            local_counters().route(R_FAILOVER if sub.status == ST_ERROR else R_MISS_FAILOVER)
            self.next()
        else:
            self.finish()
