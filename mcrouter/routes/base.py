"""What every route handle is: given a request, produce exactly one reply."""
from __future__ import annotations

from typing import Sequence

from mcrouter._parser import Request
from mcrouter.protocol import NO_HEALTHY_UPSTREAM, ST_ERROR
from mcrouter.upstream import Host


class Route:
    """A node of the route tree.  ``dispatch`` must lead to exactly one
    ``req.finish(...)``, now or later, whatever happens upstream."""

    name = "Route"

    def dispatch(self, req: Request) -> None:
        raise NotImplementedError


class PoolRoute(Route):
    """A route over the ordered pool; hosts that are down are skipped."""

    def __init__(self, pool: Sequence[Host]) -> None:
        self.pool = tuple(pool)

    def healthy(self) -> list[Host]:
        return [h for h in self.pool if h.healthy]

    @staticmethod
    def no_host(req: Request) -> None:
        req.finish(NO_HEALTHY_UPSTREAM, ST_ERROR)
