"""Routes that pick one child by the request itself.

* OperationSelectorRoute: by command, one table lookup.
* PrefixSelectorRoute: by the longest key prefix listed in ``policies``;
  keys matching none go to ``wildcard`` (NullRoute if there is none).  A
  multi-key get whose keys pick different children is split by child
  (``multiget.split``).
"""
from __future__ import annotations

from typing import Sequence

from mcrouter._parser import Request
from mcrouter.protocol import COMMAND_NAMES
from mcrouter.routes.base import Route, Trace
from mcrouter._routing import TableDispatch
from mcrouter.routes.multiget import split


class OperationSelectorRoute(TableDispatch, Route):
    """``dispatch`` is TableDispatch's (_routing.pyx): ``table[req.cmd]``."""

    name = "OperationSelectorRoute"

    def __init__(self, table: list[Route]) -> None:
        self.table = table          # indexed by command id

    def targets(self, req: Request) -> Sequence[Route]:
        return [self.table[req.cmd]]

    def explain(self, req: Request, trace: Trace) -> None:
        trace.node(f"{self.name} ({COMMAND_NAMES.get(req.cmd, '?')})", req, self.targets(req))


class PrefixSelectorRoute(Route):
    name = "PrefixSelectorRoute"

    def __init__(self, policies: dict[bytes, Route], wildcard: Route) -> None:
        self.policies = policies
        self.lengths = sorted({len(p) for p in policies}, reverse=True)
        self.wildcard = wildcard

    def pick(self, key: bytes) -> Route:
        policies = self.policies
        for n in self.lengths:
            route = policies.get(key[:n])
            if route is not None and len(key) >= n:
                return route
        return self.wildcard

    def dispatch(self, req: Request) -> None:
        if req.keys is None:
            self.pick(req.key).dispatch(req)
            return
        routes: list[Route] = []
        groups: dict[int, list[bytes]] = {}
        owners: list[int] | None = []
        seen: set[bytes] = set()
        for key in req.keys:
            if key in seen:
                owners = None                 # a repeated key: the general merge
                continue
            seen.add(key)
            route = self.pick(key)
            if route not in routes:
                routes.append(route)
            i = routes.index(route)
            groups.setdefault(i, []).append(key)
            if owners is not None:
                owners.append(i)
        split(req, routes, (groups, owners))

    def targets(self, req: Request) -> Sequence[Route]:
        keys = req.keys if req.keys is not None else [req.key]
        return list(dict.fromkeys(self.pick(k) for k in keys))
