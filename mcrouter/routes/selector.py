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
from mcrouter.routes.multiget import split


class OperationSelectorRoute(Route):
    name = "OperationSelectorRoute"

    def __init__(self, table: list[Route]) -> None:
        self.table = table          # indexed by command id

    def dispatch(self, req: Request) -> None:
        self.table[req.cmd].dispatch(req)

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
        groups: dict[Route, list[bytes]] = {}
        for key in dict.fromkeys(req.keys):
            groups.setdefault(self.pick(key), []).append(key)
        split(req, list(groups.items()))

    def targets(self, req: Request) -> Sequence[Route]:
        keys = req.keys if req.keys is not None else [req.key]
        return list(dict.fromkeys(self.pick(k) for k in keys))
