"""OperationSelectorRoute: a child route per command, one table lookup."""
from __future__ import annotations

from mcrouter._parser import Request
from mcrouter.routes.base import Route


class OperationSelectorRoute(Route):
    name = "OperationSelectorRoute"

    def __init__(self, table: list[Route]) -> None:
        self.table = table          # indexed by command id

    def dispatch(self, req: Request) -> None:
        self.table[req.cmd].dispatch(req)
