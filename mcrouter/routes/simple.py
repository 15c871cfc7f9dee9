"""DefaultRoute and LocalRoute: one destination, no fan-out."""
from __future__ import annotations

from mcrouter import __version__
from mcrouter._metrics import R_FAILOVER, local as local_counters
from mcrouter._parser import Request
from mcrouter.protocol import (CMD_MN, CMD_VERSION, MEMCACHED_PROTOCOL_LEVEL,
                               NOT_HANDLED_LOCALLY, ST_ERROR, ST_OK)
from mcrouter.routes.base import PoolRoute, Route

# The first token is the memcached protocol level clients test features
# against (libmemcached treats < 1.4 as an old server); see ROUTES.md.
VERSION_REPLY = f"VERSION {MEMCACHED_PROTOCOL_LEVEL} mcrouter/{__version__}\r\n".encode()


class DefaultRoute(PoolRoute):
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
