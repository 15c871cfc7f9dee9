"""What every route handle is: given a request, produce exactly one reply."""
from __future__ import annotations

from typing import Sequence

from mcrouter._parser import Request
from mcrouter.protocol import NO_HEALTHY_UPSTREAM, ST_ERROR, ST_FAIL, UPSTREAM_ERROR
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


class Attempts:
    """Base of a request's tries over several hosts: remembers the last
    failure reply and the last error, and answers with the failure if there
    was one (a real memcached reply beats the router's own error)."""

    __slots__ = ("parent", "failure", "error")

    def __init__(self, parent: Request) -> None:
        self.parent = parent
        self.failure: bytes | None = None
        self.error: bytes | None = None

    def note(self, sub: Request) -> None:
        if sub.status == ST_FAIL:
            self.failure = sub.reply
        else:
            self.error = sub.reply

    def give_up(self) -> None:
        if self.failure is not None:
            self.parent.finish(self.failure, ST_FAIL)
        else:
            self.parent.finish(self.error or UPSTREAM_ERROR, ST_ERROR)
