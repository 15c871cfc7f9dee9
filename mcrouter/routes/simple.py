"""Routes with one destination or none.

* DefaultRoute (gomcrouter): the first healthy host; its reply, whatever it is.
* LocalRoute (gomcrouter): answered by the router: version and mn.  The
  version is the backends' (see ``BackendVersion``), never the router's own.
* NullRoute: answers at once as if nothing was found or stored (``END``,
  ``NOT_STORED``, ``NOT_FOUND``, ``EN``, ...); a quiet request gets nothing.
* ErrorRoute: answers ``SERVER_ERROR mcrouter: <response>``.
* RandomRoute: one child picked at random per request.
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

from mcrouter._parser import Request
from mcrouter._routing import DefaultDispatch
from mcrouter.protocol import (CMD_MN, CMD_VERSION, ERROR_ROUTE, MEMCACHED_PROTOCOL_LEVEL,
                               NOT_HANDLED_LOCALLY, NULL_REPLIES, ST_ERROR, ST_OK, router_error)
from mcrouter.hosttable import HostTable
from mcrouter.routes.base import HostListRoute, HostRoute, Route


class BackendVersion:
    """What the router answers to ``version`` itself: exactly ``VERSION x.y.z``.

    Clients parse that line strictly (Cache::Memcached::Fast dies on
    anything after the number; libmemcached treats < 1.4 as an old server:
    ROUTES.md), so it carries a memcached version and nothing else: the
    lowest that the health probes saw among the current config's hosts (the
    sidecar writes each into the HostTable, strict x.y.z only), else 1.6.18,
    the version this router is tested against.  The router's own version is
    in ``stats mcrouter``, ``--version`` and the metrics.  Read per request:
    ``version`` is rare, and a backend upgrade shows at once.
    """

    def __init__(self, table: HostTable | None = None, slots: Iterable[int] = ()) -> None:
        self.table = table
        self.slots = tuple(slots)

    def reply(self) -> bytes:
        found = self.table.lowest_version(self.slots) if self.table is not None else None
        return b"VERSION %s\r\n" % (found or MEMCACHED_PROTOCOL_LEVEL).encode()


_backend_version = BackendVersion()       # one per process: the worker's table and hosts


def use_backend_version(source: BackendVersion) -> None:
    """Answer ``version`` from ``source`` from now on (the worker, at each build)."""
    global _backend_version
    _backend_version = source


def version_reply() -> bytes:
    return _backend_version.reply()


def null_reply(req: Request) -> tuple[bytes, int]:
    """NullRoute's (reply, status) for ``req``."""
    if req.quiet:
        return b"", ST_OK
    if req.cmd == CMD_VERSION:
        return version_reply(), ST_OK
    return NULL_REPLIES.get(req.cmd, (NOT_HANDLED_LOCALLY, ST_ERROR))


class DefaultRoute(DefaultDispatch, HostListRoute):
    """The first healthy host of the ordered pool; its reply is forwarded
    (``dispatch`` is DefaultDispatch's, in _routing.pyx)."""

    name = "DefaultRoute"

    def targets(self, req: Request) -> Sequence[Route]:
        return [HostRoute(h) for h in self.healthy()[:1]]


class LocalRoute(Route):
    """Answered by the router itself: version and mn (quit is the connection's)."""

    name = "LocalRoute"

    def dispatch(self, req: Request) -> None:
        if req.cmd == CMD_VERSION:
            req.finish(version_reply(), ST_OK)
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
