"""Routes that pick one child by the request itself.

* OperationSelectorRoute: by command, one table lookup.
* PrefixSelectorRoute: by the longest key prefix listed in ``policies``;
  keys matching none go to ``wildcard`` (NullRoute if there is none).  A
  multi-key get whose keys pick different children is split by child
  (``_routing.split``).
"""
from __future__ import annotations

from typing import Sequence

from mcrouter._parser import Request
from mcrouter.protocol import COMMAND_NAMES
from mcrouter.routes.base import Route, Trace
from mcrouter._routing import TableDispatch, group_keys, split


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
        self.routes = list(dict.fromkeys([*policies.values(), wildcard]))
        # prefix → index into routes, looked up longest prefix first
        self.policies = {p: self.routes.index(r) for p, r in policies.items()}
        self.lengths = sorted({len(p) for p in policies}, reverse=True)
        self.wildcard = self.routes.index(wildcard)

    def pick(self, key: bytes) -> int:
        policies = self.policies
        for n in self.lengths:
            i = policies.get(key[:n])
            if i is not None and len(key) >= n:
                return i
        return self.wildcard

    def dispatch(self, req: Request) -> None:
        if req.keys is None:
            self.routes[self.pick(req.key)].dispatch(req)
        else:
            split(req, self.routes, group_keys(req, None, self.pick))

    def targets(self, req: Request) -> Sequence[Route]:
        keys = req.keys if req.keys is not None else [req.key]
        return [self.routes[i] for i in dict.fromkeys(self.pick(k) for k in keys)]
