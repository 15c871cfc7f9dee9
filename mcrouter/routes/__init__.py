"""Route handles, built once per config load from a RouteConfig."""
from __future__ import annotations

from typing import Sequence

from mcrouter.config import RouteConfig
from mcrouter.protocol import COMMAND_IDS, META_TWIN
from mcrouter.routes.base import Route
from mcrouter.routes.failover import MissFailoverRoute
from mcrouter.routes.fanout import AllFastestRoute
from mcrouter.routes.selector import OperationSelectorRoute
from mcrouter.routes.simple import DefaultRoute, LocalRoute
from mcrouter.upstream import Host

__all__ = ["Route", "build_route"]


def _leaf(type_name: str, pool: Sequence[Host]) -> Route:
    if type_name == "LocalRoute":
        return LocalRoute()
    return {"DefaultRoute": DefaultRoute, "AllFastestRoute": AllFastestRoute,
            "MissFailoverRoute": MissFailoverRoute}[type_name](pool)


def build_route(cfg: RouteConfig, pool: Sequence[Host]) -> Route:
    if cfg.type != "OperationSelectorRoute":
        return _leaf(cfg.type, pool)
    leaves: dict[str, Route] = {}

    def leaf(type_name: str) -> Route:
        if type_name not in leaves:
            leaves[type_name] = _leaf(type_name, pool)
        return leaves[type_name]

    default = leaf("DefaultRoute")
    table: list[Route] = [default] * (max(COMMAND_IDS.values()) + 2)
    for name, cmd in COMMAND_IDS.items():
        policy = cfg.policies.get(name) or cfg.policies.get(META_TWIN.get(name, ""))
        if policy:
            table[cmd] = leaf(policy)
    return OperationSelectorRoute(table)
