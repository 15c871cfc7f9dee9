"""Route handles, built once per config load from the RouteConfig tree.

``build_route(config, hosts)`` turns the validated tree into handles; the
hosts are given by address (one Host per distinct server, however many
pools list it), so routes never create hosts.  ``config.ROUTE_TYPES`` says
what each route type accepts; ``_ROWS`` here says which class builds it.  Routes over the same pool
share one PoolRoute (and one continuum).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from mcrouter._hash import Hasher, ketama_name
from mcrouter.config import (ROUTE_TYPES, HashConfig, HostAddr, PoolConfig, RouteConfig,
                             RouterConfig)
from mcrouter.protocol import CMD_LIMIT, COMMAND_IDS, META_TWIN
from mcrouter.routes.base import HostRoute, Route, Trace, Upstream
from mcrouter.routes.failover import FailoverRoute, LatestRoute, MissFailoverRoute
from mcrouter.routes.fanout import (AllAsyncRoute, AllFastestRoute, AllInitialRoute,
                                    AllMajorityRoute, AllSyncRoute)
from mcrouter.routes.gutter import GutterRoute
from mcrouter.routes.hashing import EmptyPoolRoute, HashRoute, PolicyPoolRoute, PoolRoute
from mcrouter.routes.selector import OperationSelectorRoute, PrefixSelectorRoute
from mcrouter.routes.service import RootRoute, trace
from mcrouter.routes.shadow import ShadowRoute
from mcrouter.routes.simple import DefaultRoute, ErrorRoute, LocalRoute, NullRoute, RandomRoute
from mcrouter.routes.warmup import WarmUpRoute

__all__ = ["Route", "RootRoute", "Trace", "build_route", "pool_hasher", "trace"]


def hasher(names: Sequence[str], weights: Sequence[int] | None, h: HashConfig) -> Hasher:
    return Hasher(list(names), list(weights) if weights else None, h.function, h.distribution,
                  h.salt.encode(), h.hash_stop.encode(), h.hash_tags.encode())


def pool_hasher(pool: PoolConfig) -> Hasher:
    """The continuum of a pool with servers: one slot per server, in order.
    The one placement both the router's PoolRoute and mcrouter.client use,
    so a key lands on the same server whichever of them stores it.  The
    continuum's names are host and port as written, or as DNS names them
    (an SRV target), never a resolved address: see discovery.py."""
    return hasher([ketama_name(a.host, a.port) for a in pool.servers], pool.weights, pool.hash)


class _Builder:
    """Turns RouteConfig nodes into handles; each recipe below builds route
    class ``cls`` from one node's validated options."""

    def __init__(self, config: RouterConfig, hosts: Mapping[HostAddr, Upstream]) -> None:
        self.config = config
        self.hosts = hosts
        self.pool_routes: dict[str, Route] = {}

    def build(self, cfg: RouteConfig) -> Route:
        cls, recipe = _RECIPES[cfg.type]
        return recipe(self, cls, cfg.options)

    def all(self, cfgs: Sequence[RouteConfig]) -> list[Route]:
        return [self.build(c) for c in cfgs]

    def host_list(self, options: dict) -> list[Upstream]:
        """The hosts of the route's pool, in order; gomcrouter's orderedPool by default."""
        pool = options.get("pool")
        addrs = self.config.pools[pool].servers if pool else self.config.ordered_pool
        return [self.hosts[a] for a in addrs]

    # recipes: (builder, route class, options) → route

    def bare(self, cls: type, options: dict) -> Route:
        return cls()

    def over_hosts(self, cls: type, options: dict) -> Route:
        return cls(self.host_list(options))

    def over_children(self, cls: type, options: dict) -> Route:
        return cls(self.all(options["children"]))

    def pool(self, cls: type, options: dict) -> Route:
        return self.pool_route(options["pool"])

    def failover(self, cls: type, o: dict) -> Route:
        return cls(self.all(o["children"]), o.get("failover_errors"), o.get("max_tries", 0),
                   o.get("order", "in_order"))

    def latest(self, cls: type, o: dict) -> Route:
        return cls(self.all(o["children"]), o.get("failover_count", 5), o.get("failover_errors"))

    def prefix_selector(self, cls: type, o: dict) -> Route:
        return cls({p.encode(): self.build(r) for p, r in o.get("policies", {}).items()},
                   self.build(o["wildcard"]) if "wildcard" in o else NullRoute())

    def shadow(self, cls: type, o: dict) -> Route:
        return cls(self.build(o["child"]), self.build(o["shadow"]), o.get("key_fraction_range"),
                   o.get("request_fraction"))

    def warm_up(self, cls: type, o: dict) -> Route:
        return cls(self.build(o["cold"]), self.build(o["warm"]), o.get("exptime", 0))

    def error(self, cls: type, o: dict) -> Route:
        return cls(o.get("response", ""))

    def pool_route(self, name: str) -> Route:
        """The one route of pool ``name``: consistent hashing over its hosts,
        with its on_down policy (a DNS pool with no servers yet: an error)."""
        if name not in self.pool_routes:
            pool = self.config.pools[name]
            title = f"PoolRoute|{name}"
            if not pool.servers:
                self.pool_routes[name] = EmptyPoolRoute(title)
                return self.pool_routes[name]
            children = [HostRoute(self.hosts[a]) for a in pool.servers]
            ring = pool_hasher(pool)
            down = pool.on_down
            if down.action == "fail":
                self.pool_routes[name] = PoolRoute(children, ring, title)
            else:
                gutter = (GutterRoute(self.pool_route(down.gutter), down.max_ttl)
                          if down.action == "gutter" else None)
                self.pool_routes[name] = PolicyPoolRoute(children, ring, title, gutter)
        return self.pool_routes[name]

    def hash_route(self, cls: type, options: dict) -> Route:
        cfgs = options["children"]
        labels = [c.label() for c in cfgs]
        names = [lab if labels.count(lab) == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]
        return cls(self.all(cfgs), hasher(names, None, options.get("hash", HashConfig())))

    def operation_selector(self, cls: type, options: dict) -> Route:
        policies: dict[str, RouteConfig] = options.get("operation_policies", {})
        built: dict[str, Route] = {}

        def route_for(name: str) -> Route | None:
            cfg = policies.get(name) or policies.get(META_TWIN.get(name, ""))
            if cfg is None:
                return None
            key = repr(cfg)                 # equal policies share one handle
            if key not in built:
                built[key] = self.build(cfg)
            return built[key]

        default_cfg = options.get("default_policy") or RouteConfig("DefaultRoute")
        default = self.build(default_cfg)
        table: list[Route] = [default] * CMD_LIMIT       # admin commands: the default
        for name, cmd in COMMAND_IDS.items():
            table[cmd] = route_for(name) or default
        return cls(table)


Recipe = Callable[[_Builder, type, dict], Route]
# One row per route type of config.ROUTE_TYPES (what it accepts): its class,
# whose ``name`` is the type, and how its options become the class's arguments.
_ROWS: tuple[tuple[type[Route], Recipe], ...] = (
    (OperationSelectorRoute, _Builder.operation_selector),
    (DefaultRoute, _Builder.over_hosts),
    (AllFastestRoute, _Builder.over_hosts),
    (MissFailoverRoute, _Builder.over_hosts),
    (LocalRoute, _Builder.bare),
    (PoolRoute, _Builder.pool),
    (HashRoute, _Builder.hash_route),
    (FailoverRoute, _Builder.failover),
    (AllSyncRoute, _Builder.over_children),
    (AllAsyncRoute, _Builder.over_children),
    (AllInitialRoute, _Builder.over_children),
    (AllMajorityRoute, _Builder.over_children),
    (RandomRoute, _Builder.over_children),
    (LatestRoute, _Builder.latest),
    (PrefixSelectorRoute, _Builder.prefix_selector),
    (ShadowRoute, _Builder.shadow),
    (WarmUpRoute, _Builder.warm_up),
    (NullRoute, _Builder.bare),
    (ErrorRoute, _Builder.error),
)
_RECIPES: dict[str, tuple[type[Route], Recipe]] = {cls.name: (cls, recipe) for cls, recipe in _ROWS}
if _RECIPES.keys() != ROUTE_TYPES.keys():     # the schema and the classes must name the same types
    raise ImportError("route types without a class: "
                      f"{sorted(ROUTE_TYPES.keys() - _RECIPES.keys())}; classes without a type: "
                      f"{sorted(_RECIPES.keys() - ROUTE_TYPES.keys())}")


def build_route(config: RouterConfig, hosts: Mapping[HostAddr, Upstream],
                stats_groups: Mapping[bytes, Callable[[], bytes]] | None = None) -> RootRoute:
    """The route tree of ``config`` over ``hosts`` (one per ``config.hosts()``),
    with the ``stats`` groups the router answers itself."""
    return RootRoute(_Builder(config, hosts).build(config.route), stats_groups, config.admin)
