"""PoolRoute and HashRoute: consistent hashing over a pool's hosts or over child routes.

A keyed request goes to the one destination its key hashes to (see
``_hash.pyx`` for the placement, twemproxy-compatible ketama by default).
By default (``on_down: fail``) there is no rehashing when that destination
is down: the request gets its error, and a FailoverRoute above decides what
happens next, so a key never lands on a server that will not have it once
its own server is back.  A pool with ``on_down: rehash`` or a gutter is a
``PolicyPoolRoute``: see PolicyDispatch in _routing.pyx.

Requests without a key: ``flush_all``, ``verbosity`` and the admin
commands a config allows (``cache_memlimit``, ``lru``, ...) go to every
destination and get one reply (the worst, as AllSyncRoute); ``stats`` goes
to the first destination that answers (FailoverRoute); ``version`` and
``mn`` are answered by the router.  A multi-key get is split by
destination (``_routing.split``).
"""
from __future__ import annotations

from typing import Sequence

from mcrouter._hash import Hasher
from mcrouter._parser import Request
from mcrouter.protocol import (CMD_ADMIN, CMD_FLUSH_ALL, CMD_LIMIT, CMD_STATS, CMD_VERBOSITY,
                               NO_HEALTHY_UPSTREAM, ST_ERROR)
from mcrouter.routes.base import Route
from mcrouter.routes.failover import FailoverRoute
from mcrouter.routes.fanout import AllSyncRoute
from mcrouter._routing import HashDispatch, PolicyDispatch, group_keys
from mcrouter.routes.simple import LocalRoute


class HashRoute(HashDispatch, Route):
    """``dispatch`` is HashDispatch's (_routing.pyx): per request, no Python frame."""

    name = "HashRoute"

    def __init__(self, children: Sequence[Route], hasher: Hasher, title: str = "") -> None:
        if hasher.size != len(children):
            raise ValueError("one hash slot per child")
        self.children = list(children)
        self.hasher = hasher
        self.title = title or self.name
        local = LocalRoute()
        keyless: list[Route] = [local] * CMD_LIMIT
        # a setting of the pool's servers: every one of them, one reply (the worst)
        keyless[CMD_FLUSH_ALL] = keyless[CMD_VERBOSITY] = keyless[CMD_ADMIN] = \
            AllSyncRoute(self.children)
        keyless[CMD_STATS] = FailoverRoute(self.children)
        self.keyless = keyless

    def label(self) -> str:
        return self.title

    def targets(self, req: Request) -> Sequence[Route]:
        if req.keys is not None:
            return [self.children[i] for i in group_keys(req, self.hasher, None)[0]]
        if req.key:
            return [self.children[self.hasher.index(req.key)]]
        return [self.keyless[req.cmd]]


class PoolRoute(HashRoute):
    """HashRoute over the hosts of a named pool (its children are HostRoutes)."""

    name = "PoolRoute"


class PolicyPoolRoute(PolicyDispatch, PoolRoute):
    """A PoolRoute whose down hosts' keys go elsewhere while they are down:
    the next live host on the continuum (``rehash``), or ``gutter``."""

    def __init__(self, children: Sequence[Route], hasher: Hasher, title: str,
                 gutter: Route | None) -> None:
        super().__init__(children, hasher, title)
        self.rehash = gutter is None
        self.routes = self.children + ([gutter] if gutter is not None else [])

    def targets(self, req: Request) -> Sequence[Route]:
        up = self.up_mask()
        if req.keys is not None:
            return [self.routes[i] for i in dict.fromkeys(self.destination(k, up) for k in req.keys)]
        if req.key:
            return [self.routes[self.destination(req.key, up)]]
        return [self.keyless[req.cmd]]


class EmptyPoolRoute(Route):
    """A DNS pool that has had no good answer yet: no server to ask."""

    name = "PoolRoute"

    def __init__(self, title: str) -> None:
        self.title = title

    def label(self) -> str:
        return f"{self.title} (no servers yet)"

    def dispatch(self, req: Request) -> None:
        req.finish(NO_HEALTHY_UPSTREAM, ST_ERROR)
