"""Route handles, built once per config load from the RouteConfig tree.

``build_route(config, hosts)`` turns the validated tree into handles; the
hosts are given by address (one Host per distinct server, however many
pools list it), so routes never create hosts.  Routes over the same pool
share one PoolRoute (and one continuum).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from mcrouter._hash import Hasher, ketama_name
from mcrouter.config import HashConfig, HostAddr, RouteConfig, RouterConfig
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

__all__ = ["Route", "RootRoute", "Trace", "build_route", "trace"]


def hasher(names: Sequence[str], weights: Sequence[int] | None, h: HashConfig) -> Hasher:
    return Hasher(list(names), list(weights) if weights else None, h.function, h.distribution,
                  h.salt.encode(), h.hash_stop.encode(), h.hash_tags.encode())


class _Builder:
    def __init__(self, config: RouterConfig, hosts: Mapping[HostAddr, Upstream]) -> None:
        self.config = config
        self.hosts = hosts
        self.pool_routes: dict[str, Route] = {}
        self.kinds: dict[str, Callable[[dict], Route]] = {
            "OperationSelectorRoute": self.operation_selector,
            "DefaultRoute": lambda o: DefaultRoute(self.host_list(o)),
            "AllFastestRoute": lambda o: AllFastestRoute(self.host_list(o)),
            "MissFailoverRoute": lambda o: MissFailoverRoute(self.host_list(o)),
            "LocalRoute": lambda o: LocalRoute(),
            "PoolRoute": lambda o: self.pool_route(o["pool"]),
            "HashRoute": self.hash_route,
            "FailoverRoute": lambda o: FailoverRoute(
                self.all(o["children"]), o.get("failover_errors"), o.get("max_tries", 0),
                o.get("order", "in_order")),
            "LatestRoute": lambda o: LatestRoute(
                self.all(o["children"]), o.get("failover_count", 5), o.get("failover_errors")),
            "AllSyncRoute": lambda o: AllSyncRoute(self.all(o["children"])),
            "AllAsyncRoute": lambda o: AllAsyncRoute(self.all(o["children"])),
            "AllInitialRoute": lambda o: AllInitialRoute(self.all(o["children"])),
            "AllMajorityRoute": lambda o: AllMajorityRoute(self.all(o["children"])),
            "RandomRoute": lambda o: RandomRoute(self.all(o["children"])),
            "PrefixSelectorRoute": lambda o: PrefixSelectorRoute(
                {p.encode(): self.build(r) for p, r in o.get("policies", {}).items()},
                self.build(o["wildcard"]) if "wildcard" in o else NullRoute()),
            "ShadowRoute": lambda o: ShadowRoute(
                self.build(o["child"]), self.build(o["shadow"]), o.get("key_fraction_range"),
                o.get("request_fraction")),
            "WarmUpRoute": lambda o: WarmUpRoute(
                self.build(o["cold"]), self.build(o["warm"]), o.get("exptime", 0)),
            "NullRoute": lambda o: NullRoute(),
            "ErrorRoute": lambda o: ErrorRoute(o.get("response", "")),
        }

    def build(self, cfg: RouteConfig) -> Route:
        return self.kinds[cfg.type](cfg.options)

    def all(self, cfgs: Sequence[RouteConfig]) -> list[Route]:
        return [self.build(c) for c in cfgs]

    def host_list(self, options: dict) -> list[Upstream]:
        """The hosts of the route's pool, in order; gomcrouter's orderedPool by default."""
        pool = options.get("pool")
        addrs = self.config.pools[pool].servers if pool else self.config.ordered_pool
        return [self.hosts[a] for a in addrs]

    def pool_route(self, name: str) -> Route:
        """The one route of pool ``name``: consistent hashing over its hosts,
        with its on_down policy (a DNS pool with no servers yet: an error)."""
        if name not in self.pool_routes:
            pool = self.config.pools[name]
            title = f"PoolRoute|{name}"
            if not pool.servers:
                self.pool_routes[name] = EmptyPoolRoute(title)
                return self.pool_routes[name]
            # the continuum's names: host and port as written, or as DNS names
            # them (an SRV target), never a resolved address: see discovery.py
            names = [ketama_name(a.host, a.port) for a in pool.servers]
            children = [HostRoute(self.hosts[a]) for a in pool.servers]
            ring = hasher(names, pool.weights, pool.hash)
            down = pool.on_down
            if down.action == "fail":
                self.pool_routes[name] = PoolRoute(children, ring, title)
            else:
                gutter = (GutterRoute(self.pool_route(down.gutter), down.max_ttl)
                          if down.action == "gutter" else None)
                self.pool_routes[name] = PolicyPoolRoute(children, ring, title, gutter)
        return self.pool_routes[name]

    def hash_route(self, options: dict) -> Route:
        cfgs = options["children"]
        labels = [c.label() for c in cfgs]
        names = [lab if labels.count(lab) == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]
        return HashRoute(self.all(cfgs), hasher(names, None, options.get("hash", HashConfig())))

    def operation_selector(self, options: dict) -> Route:
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
        return OperationSelectorRoute(table)


def build_route(config: RouterConfig, hosts: Mapping[HostAddr, Upstream],
                stats_groups: Mapping[bytes, Callable[[], bytes]] | None = None) -> RootRoute:
    """The route tree of ``config`` over ``hosts`` (one per ``config.hosts()``),
    with the ``stats`` groups the router answers itself."""
    return RootRoute(_Builder(config, hosts).build(config.route), stats_groups, config.admin)
