"""Routes with one destination or none.

* DefaultRoute (gomcrouter): the first healthy host; its reply, whatever it is.
* LocalRoute (gomcrouter): answered by the router: version and mn.
* NullRoute: answers at once as if nothing was found or stored (``END``,
  ``NOT_STORED``, ``NOT_FOUND``, ``EN``, ...); a quiet request gets nothing.
* ErrorRoute: answers ``SERVER_ERROR mcrouter: <response>``.
* RandomRoute: one child picked at random per request.
"""
from __future__ import annotations

import random
from typing import Sequence

from mcrouter import __version__
from mcrouter._metrics import R_FAILOVER, local as local_counters
from mcrouter._parser import Request
from mcrouter.protocol import (CMD_MN, CMD_VERSION, ERROR_ROUTE, MEMCACHED_PROTOCOL_LEVEL,
                               NOT_HANDLED_LOCALLY, NULL_REPLIES, ST_ERROR, ST_OK, router_error)
from mcrouter.routes.base import HostListRoute, HostRoute, Route

# The first token is the memcached protocol level clients test features
# against (libmemcached treats < 1.4 as an old server); see ROUTES.md.
VERSION_REPLY = f"VERSION {MEMCACHED_PROTOCOL_LEVEL} mcrouter/{__version__}\r\n".encode()


def null_reply(req: Request) -> tuple[bytes, int]:
    """NullRoute's (reply, status) for ``req``."""
    if req.quiet:
        return b"", ST_OK
    if req.cmd == CMD_VERSION:
        return VERSION_REPLY, ST_OK
    return NULL_REPLIES.get(req.cmd, (NOT_HANDLED_LOCALLY, ST_ERROR))


class DefaultRoute(HostListRoute):
    """The first healthy host of the ordered pool; its reply is forwarded."""

    name = "DefaultRoute"

    def dispatch(self, req: Request) -> None:
        pool = self.pool
        for host in pool:
            if host.healthy:
                if host is not pool[0]:
                    local_counters().route(R_FAILOVER)
                host.send(req)
                return
        self.no_host(req)

    def targets(self, req: Request) -> Sequence[Route]:
        return [HostRoute(h) for h in self.healthy()[:1]]


class LocalRoute(Route):
    """Answered by the router itself: version and mn (quit is the connection's)."""

    name = "LocalRoute"

    def dispatch(self, req: Request) -> None:
        if req.cmd == CMD_VERSION:
            req.finish(VERSION_REPLY, ST_OK)
        elif req.cmd == CMD_MN:
            req.finish(b"MN\r\n", ST_OK)
        else:
            req.finish(NOT_HANDLED_LOCALLY, ST_ERROR)


class NullRoute(Route):
    name = "NullRoute"

    def dispatch(self, req: Request) -> None:
        req.finish(*null_reply(req))


class ErrorRoute(Route):
    name = "ErrorRoute"

    def __init__(self, response: str = "") -> None:
        self.reply = router_error(response) if response else ERROR_ROUTE
        self.response = response

    def dispatch(self, req: Request) -> None:
        req.finish(self.reply, ST_ERROR)

    def label(self) -> str:
        return f"ErrorRoute|{self.response}" if self.response else "ErrorRoute"


class RandomRoute(Route):
    name = "RandomRoute"

    def __init__(self, children: Sequence[Route]) -> None:
        self.children = tuple(children)

    def dispatch(self, req: Request) -> None:
        random.choice(self.children).dispatch(req)

    def targets(self, req: Request) -> Sequence[Route]:
        return self.children                # any one of them

    def label(self) -> str:
        return "RandomRoute (one of)"
