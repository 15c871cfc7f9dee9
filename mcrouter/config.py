"""router.yaml → validated, typed configuration.

Two forms, freely mixed.  gomcrouter's schema, accepted verbatim::

    orderedPool: [memcache1:11211, memcache2:11211]
    route:
      type: OperationSelectorRoute
      operationPolicies: {get: MissFailoverRoute, set: AllFastestRoute}

and named pools with a tree of routes, each a mapping with ``type`` plus
its options, or the short string ``"Type|argument"``::

    pools:
      main:
        servers: [127.0.0.1:11211, 127.0.0.1:11212]
        hash: {function: fnv1a_64, distribution: ketama}
    route: PoolRoute|main

A pool may follow DNS instead of listing servers (``dns: name:port``, the
A/AAAA records of a name; ``srv: name``, its SRV records), and may say what
happens to a down host's keys (``on_down``: fail, rehash, or a gutter pool);
see ``DnsSource`` and ``DownPolicy``.  A DNS pool has no servers until the
discovery (``discovery.py``) fills them in (``RouterConfig.with_members``).

A pool's hosts may be reached over TLS (``tls:`` in the pool, or at the top
level for ``orderedPool``; see ``TlsSettings``).  A host is one set of
connections however many pools list it, so an address listed with two
different ``tls:`` settings is refused.

plus an optional ``health:`` mapping (fail, rise, tko, probe_timeout_ms) and
an optional ``admin:`` mapping (``allow:``, the commands that change or
expose a backend which clients may send; see ``ADMIN_COMMANDS``).

What each route accepts is one table, ``ROUTE_TYPES``.  Unlike
gomcrouter, anything unknown is refused.  Every error is one line,
``file:line:column: what is wrong; how to fix it``, raised as ConfigError.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import yaml

from mcrouter._hash import DISTRIBUTIONS, FUNCTIONS
from mcrouter.protocol import COMMAND_IDS

log = logging.getLogger("mcrouter.config")


@dataclass(frozen=True)
class RouteType:
    """What one route type accepts in router.yaml.  ``routes/__init__.py``
    builds each type from its class of the same ``name``."""
    options: Mapping[str, str]          # option → kind, parsed by _Checker.<kind>
    required: tuple[str, ...] = ()
    short: str = ""                     # the option the short form "Type|argument" sets
    ordered_pool: bool = False          # without a pool: over gomcrouter's orderedPool


_POOL = {"pool": "pool_name"}
_CHILDREN = {"children": "routes"}
# One row per route type: everything the config knows about it.
ROUTE_TYPES: dict[str, RouteType] = {
    "OperationSelectorRoute": RouteType({"operationPolicies": "operations",
                                         "operation_policies": "operations",
                                         "default_policy": "route"}),
    "DefaultRoute": RouteType(_POOL, short="pool", ordered_pool=True),
    "AllFastestRoute": RouteType(_POOL, short="pool", ordered_pool=True),
    "MissFailoverRoute": RouteType(_POOL, short="pool", ordered_pool=True),
    "LocalRoute": RouteType({}),
    "PoolRoute": RouteType(_POOL, required=("pool",), short="pool"),
    "HashRoute": RouteType({**_CHILDREN, "hash": "hash"}, required=("children",)),
    "FailoverRoute": RouteType({**_CHILDREN, "failover_errors": "errors", "max_tries": "count",
                                "order": "order"}, required=("children",)),
    "AllSyncRoute": RouteType(_CHILDREN, required=("children",)),
    "AllAsyncRoute": RouteType(_CHILDREN, required=("children",)),
    "AllInitialRoute": RouteType(_CHILDREN, required=("children",)),
    "AllMajorityRoute": RouteType(_CHILDREN, required=("children",)),
    "RandomRoute": RouteType(_CHILDREN, required=("children",)),
    "LatestRoute": RouteType({**_CHILDREN, "failover_count": "count", "failover_errors": "errors"},
                             required=("children",)),
    "PrefixSelectorRoute": RouteType({"policies": "prefixes", "wildcard": "route"}),
    "ShadowRoute": RouteType({"child": "route", "shadow": "route",
                              "key_fraction_range": "fraction_range", "request_fraction": "fraction"},
                             required=("child", "shadow")),
    "WarmUpRoute": RouteType({"cold": "route", "warm": "route", "exptime": "exptime"},
                             required=("cold", "warm")),
    "NullRoute": RouteType({}),
    "ErrorRoute": RouteType({"response": "text"}, short="response"),
}

# Every command a client may send; quit only as gomcrouter's README writes it
# (``quit: LocalRoute``): the client connection answers it by closing, so any
# other route for it would be a promise the router cannot keep.
POLICY_COMMANDS = tuple(COMMAND_IDS)
ERROR_CLASSES = ("timeout", "connect_error", "tko", "remote_error")
OPERATION_GROUPS = ("gets", "updates", "deletes", "other")
FAILOVER_ORDERS = ("in_order", "by_key")
TOP_KEYS = ("orderedPool", "pools", "route", "health", "admin", "tls")
HEALTH_KEYS = ("fail", "rise", "tko", "probe_timeout_ms")
POOL_KEYS = ("servers", "dns", "srv", "resolver", "hash", "weights", "health", "on_down", "tls")
TLS_KEYS = ("ca", "cert", "key", "server_name", "verify")
ON_DOWN_ACTIONS = ("fail", "rehash")            # or a mapping {gutter: POOL, max_ttl: N}
GUTTER_KEYS = ("gutter", "max_ttl")
GUTTER_MAX_TTL = 60         # seconds: as mcrouter's failover_exptime; memcached's own 30-day
                            # boundary is the upper bound of what may be configured
MAX_RELATIVE_EXPTIME = 60 * 60 * 24 * 30
_DNS_NAME_RE = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62})"
                          r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62}))*\.?$")
HASH_KEYS = ("function", "distribution", "salt", "hash_stop", "hash_tags")
MAX_CONFIG_BYTES = 1 << 20     # well under what the control channel carries (control.py)

# Commands that change a backend or show what other clients stored, by the
# name ``admin: allow:`` lists them under (issue 10).  A client may send one
# only if the config allows it (like mcrouter's --enable-flush-cmd); the rest
# get ``SERVER_ERROR mcrouter: command not supported``.  Each of these has a
# reply the router can frame: one line, or STAT/ITEM/PREFIX lines and END.
ADMIN_COMMANDS = (
    "flush_all", "verbosity",                               # allowed unless a list says otherwise
    "stats_detail", "stats_reset", "stats_cachedump", "me",
    "cache_memlimit", "slabs", "lru", "lru_crawler", "extstore", "refresh_certs", "debugtime",
)
ADMIN_DEFAULT = frozenset(("flush_all", "verbosity"))      # client libraries' own tests use them
# Never allowed, whatever the config says: the router cannot frame the reply,
# so one client's reply would be matched to another's request.
ADMIN_NEVER = {
    "watch": "it streams the backend's log on that connection with no end",
    "lru_crawler_metadump": "it streams a line per item from a side thread, not one reply",
    "stats_sizes_enable": "memcached answers it with one STAT line and no END",
    "stats_sizes_disable": "memcached answers it with one STAT line and no END",
    "shutdown": "the backend's only reply is to close the connection and stop",
    "misbehave": "it exists to make a debug build break its own sandbox",
}


class ConfigError(Exception):
    """A configuration mistake, already phrased as one line for the operator."""


@dataclass(frozen=True)
class HostAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HashConfig:
    function: str = "fnv1a_64"          # twemproxy's default
    distribution: str = "ketama"
    salt: str = ""
    hash_stop: str = ""                 # hash only what comes before it, e.g. "|#|"
    hash_tags: str = ""                 # hash only what is between, e.g. "{}"


@dataclass(frozen=True)
class DnsSource:
    """Where a pool's servers come from: the A/AAAA records of ``name`` (each
    address a server on ``port``), or its SRV records (``kind == "srv"``: the
    target, port and weight of each).  ``resolver`` is the DNS server to ask,
    None for the system's (/etc/resolv.conf)."""
    kind: str                       # "dns" or "srv"
    name: str
    port: int = 0                   # dns: every server's port; srv: 0 (from the records)
    resolver: HostAddr | None = None

    def __str__(self) -> str:
        what = f"{self.kind}: {self.name}" + (f":{self.port}" if self.kind == "dns" else "")
        return what + (f" via {self.resolver}" if self.resolver else "")


@dataclass(frozen=True)
class DownPolicy:
    """What a pool does with the keys of a host that is down (README "Failure
    policies"): ``fail`` answers the router's error; ``rehash`` sends them to
    the next healthy host on the continuum; ``gutter`` sends them to the pool
    named ``gutter``, with every expiry written there capped at ``max_ttl``."""
    action: str = "fail"            # fail, rehash or gutter
    gutter: str = ""
    max_ttl: int = GUTTER_MAX_TTL


@dataclass(frozen=True)
class TlsSettings:
    """How the hosts of a pool are reached over TLS (README "TLS").  Paths
    are absolute (a relative one is relative to the config file).  ``ca``
    empty: the system's trust store; ``cert`` (and ``key``, when not in the
    cert file): the router's client certificate; ``server_name`` empty: each
    host's own name or address is checked and sent (SNI); ``verify`` False
    accepts any server certificate.  ``where`` (file:line:col of the
    ``tls:`` mapping) is for messages only and does not make two settings
    differ."""
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""
    verify: bool = True
    where: str = field(default="", compare=False)

    def files(self) -> tuple[tuple[str, str], ...]:
        """(key, path) of each file these settings read."""
        return tuple((k, getattr(self, k)) for k in ("ca", "cert", "key") if getattr(self, k))


# one member of a DNS pool, as the discovery reports it: host (an SRV target
# name or an address), port, weight; JSON-friendly for the control channel
Member = tuple[str, int, int]


@dataclass(frozen=True)
class PoolConfig:
    name: str
    servers: tuple[HostAddr, ...]
    weights: tuple[int, ...]
    hash: HashConfig
    health: dict[str, int] = field(default_factory=dict)    # overrides of the top-level health
    source: DnsSource | None = None                          # servers from DNS (filled in later)
    on_down: DownPolicy = DownPolicy()
    tls: TlsSettings | None = None                           # None: plain TCP


@dataclass(frozen=True)
class RouteConfig:
    """One node of the route tree: its type and its validated options
    (child routes are RouteConfig too; see ROUTE_TYPES)."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        row = ROUTE_TYPES.get(self.type)
        arg = self.options.get(row.short) if row and row.short else None
        return f"{self.type}|{arg}" if arg else self.type


@dataclass(frozen=True)
class HealthPolicy:
    """When a host is marked down and up again (ROUTES.md, README "Health")."""
    fail: int = 2                  # consecutive failed probes → down
    rise: int = 2                  # consecutive good probes → up again
    tko: int = 3                   # consecutive timeouts/errors on the data path → down at once
    probe_timeout_ms: int = 1000   # a probe's version round trip must finish within this


@dataclass(frozen=True)
class AdminPolicy:
    """Which of ADMIN_COMMANDS clients may send (README "Admin commands")."""
    allow: frozenset[str] = ADMIN_DEFAULT


@dataclass(frozen=True)
class RouterConfig:
    path: str
    ordered_pool: tuple[HostAddr, ...]
    route: RouteConfig
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    health: HealthPolicy = HealthPolicy()
    admin: AdminPolicy = AdminPolicy()
    tls: TlsSettings | None = None          # the top-level tls:, for orderedPool

    def policy(self, addr: HostAddr) -> HealthPolicy:
        """The health settings of one host: the top-level ``health:`` with the
        overrides of the first pool (in config order) that lists the host
        and has a ``health:`` of its own."""
        for pool in self.pools.values():
            if pool.health and addr in pool.servers:
                return replace(self.health, **pool.health)
        return self.health

    def dns_pools(self) -> dict[str, DnsSource]:
        """The pools whose servers come from DNS, and their sources."""
        return {name: p.source for name, p in self.pools.items() if p.source is not None}

    def with_members(self, members: Mapping[str, Sequence[Member]]) -> "RouterConfig":
        """This config with the servers (and weights) of its DNS pools as
        ``members`` gives them; a DNS pool not in ``members`` stays as it is."""
        pools = dict(self.pools)
        for name, found in members.items():
            pool = pools.get(name)
            if pool is None or pool.source is None:
                continue
            pools[name] = replace(pool, servers=tuple(HostAddr(h, int(p)) for h, p, _ in found),
                                  weights=tuple(max(1, int(w)) for _, _, w in found))
        return replace(self, pools=pools)

    def policies(self) -> dict[HostAddr, HealthPolicy]:
        return {addr: self.policy(addr) for addr in self.hosts()}

    def tls_of(self, addr: HostAddr) -> TlsSettings | None:
        """How ``addr`` is reached: the ``tls:`` of orderedPool or of the
        first pool listing it (they agree for listed servers, parse_config
        checks; for DNS members the first pool in config order wins)."""
        if addr in self.ordered_pool:
            return self.tls
        for pool in self.pools.values():
            if addr in pool.servers:
                return pool.tls
        return None

    def tls_settings(self) -> tuple[TlsSettings, ...]:
        """Every distinct TLS setting in use, in config order."""
        found = [self.tls] if self.tls is not None and self.ordered_pool else []
        found += [p.tls for p in self.pools.values() if p.tls is not None]
        return tuple(dict.fromkeys(found))

    def hosts(self) -> tuple[HostAddr, ...]:
        """Every distinct upstream address, in config order: one Host each,
        however many pools list it."""
        seen = dict.fromkeys(self.ordered_pool)
        for pool in self.pools.values():
            seen.update(dict.fromkeys(pool.servers))
        return tuple(seen)


_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.\-]+)):(?P<port>[0-9]{1,5})$")


def parse_host_port(text: str) -> HostAddr | None:
    """``host:port`` or ``[v6]:port`` → HostAddr, or None when malformed."""
    m = _HOST_RE.match(text)
    if not m:
        return None
    port = int(m.group("port"))
    if not 0 < port < 65536:
        return None
    return HostAddr(m.group("v6") or m.group("name"), port)


_NULL = ("", "~", "null")


class _Checker:
    """Walks the YAML node tree so every error can name its line and column."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pool_refs: list[tuple[yaml.Node, str]] = []       # checked once pools are known
        self.ordered_users: list[tuple[yaml.Node, str]] = []   # routes over orderedPool
        self.gutter_refs: list[tuple[yaml.Node, str, str]] = []  # (node, pool, its gutter)

    def fail(self, node: yaml.Node | None, what: str, fix: str) -> ConfigError:
        if node is None:
            return ConfigError(f"{self.path}: {what}; {fix}")
        m = node.start_mark
        return ConfigError(f"{self.path}:{m.line + 1}:{m.column + 1}: {what}; {fix}")

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping", "write it as 'key: value' lines")
        seen: set[str] = set()
        for k, _ in node.value:
            key = self.scalar(k, f"a key of {what}")
            if key in seen:
                raise self.fail(k, f"duplicate key {key!r} in {what}", "keep only one of them")
            seen.add(key)
        return node.value

    def keyed(self, node: yaml.Node, what: str, valid: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping whose keys must be among ``valid``: {key: (key node, value node)}."""
        items = {self.scalar(k, f"a key of {what}"): (k, v) for k, v in self.mapping(node, what)}
        for name, (k, _) in items.items():
            if name not in valid:
                raise self.fail(k, f"unknown {what} key {name!r}",
                                "valid: " + (", ".join(valid) or "none"))
        return items

    def sequence(self, node: yaml.Node, what: str, example: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty list", f"write it as {example}")
        return node.value

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value", "remove the nesting")
        return str(node.value)

    def choice(self, node: yaml.Node, what: str, valid: tuple[str, ...]) -> str:
        value = self.scalar(node, what)
        if value not in valid:
            raise self.fail(node, f"unknown {what} {value!r}", "valid: " + ", ".join(valid))
        return value

    def number(self, node: yaml.Node, what: str, kind: Callable[[str], Any], lo: float,
               hi: float | None = None) -> Any:
        text = self.scalar(node, what)
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            raise self.fail(node, f"{what} {text!r} is not valid", f"write a number {bound}")
        return value

    def host(self, node: yaml.Node, what: str) -> HostAddr:
        text = self.scalar(node, what)
        addr = parse_host_port(text)
        if addr is None:
            raise self.fail(node, f"malformed host:port {text!r}",
                            "write host:port or [ipv6]:port with a port from 1 to 65535")
        return addr

    # -- pools -------------------------------------------------------------

    def ordered_pool(self, node: yaml.Node) -> tuple[HostAddr, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "orderedPool must be a list of host:port",
                            "write it as [host1:11211, host2:11211]")
        return tuple(self.host(item, "an orderedPool entry") for item in node.value)

    def pools(self, node: yaml.Node) -> dict[str, PoolConfig]:
        return {self.scalar(k, "a pool name"): self.pool(self.scalar(k, "a pool name"), v)
                for k, v in self.mapping(node, "pools")}

    def pool(self, name: str, node: yaml.Node) -> PoolConfig:
        """Every option of one pool is parsed here (and only here)."""
        items = self.keyed(node, f"pool {name!r}", POOL_KEYS)
        given = [k for k in ("servers", "dns", "srv") if k in items]
        if not given:
            raise self.fail(node, f"pool {name!r} has no servers",
                            "add servers: [host:port, ...], dns: name:port or srv: name")
        if len(given) > 1:
            raise self.fail(items[given[1]][0], f"pool {name!r} has both {given[0]} and {given[1]}",
                            "keep one source of servers")
        on_down = self.on_down(name, items["on_down"][1]) if "on_down" in items else DownPolicy()
        hconf = self.hash(items["hash"][1]) if "hash" in items else HashConfig()
        health = self.health_values(items["health"][1]) if "health" in items else {}
        tls = self.tls(items["tls"][1]) if "tls" in items else None
        if on_down.action == "rehash" and hconf.distribution == "jump":
            raise self.fail(items["on_down"][1], "jump hashing has no next host to rehash to",
                            "use distribution: ketama or rendezvous with on_down: rehash")
        if given[0] != "servers":
            if "weights" in items:
                raise self.fail(items["weights"][0], f"pool {name!r} takes its servers from DNS",
                                "remove weights (srv: records carry their own)")
            source = self.dns_source(given[0], items[given[0]][1],
                                     items["resolver"][1] if "resolver" in items else None)
            return PoolConfig(name, (), (), hconf, health, source, on_down, tls)
        if "resolver" in items:
            raise self.fail(items["resolver"][0], "resolver is only for a pool with dns: or srv:",
                            "remove it, or replace servers: with dns: name:port or srv: name")
        snodes = self.sequence(items["servers"][1], f"the servers of pool {name!r}",
                               "[host1:11211, host2:11211]")
        servers = []
        for s in snodes:
            addr = self.host(s, f"a server of pool {name!r}")
            if addr in servers:
                raise self.fail(s, f"server {addr} is listed twice in pool {name!r}",
                                "list each server once (use weights to give it more keys)")
            servers.append(addr)
        weights = tuple([1] * len(servers))
        if "weights" in items:
            wnode = items["weights"][1]
            wnodes = self.sequence(wnode, f"the weights of pool {name!r}", "[1, 1, 2]")
            if len(wnodes) != len(servers):
                raise self.fail(wnode, f"pool {name!r} has {len(servers)} servers but "
                                f"{len(wnodes)} weights", "give one weight per server, in order")
            weights = tuple(self.number(w, "a weight", int, 1, 1_000_000) for w in wnodes)
        if hconf.distribution == "jump" and len(set(weights)) > 1:
            raise self.fail(items["weights"][1], "jump hashing cannot weigh servers",
                            "use distribution: ketama or rendezvous, or drop weights")
        return PoolConfig(name, tuple(servers), weights, hconf, health, None, on_down, tls)

    def tls(self, node: yaml.Node) -> TlsSettings:
        """``tls: {ca: FILE, cert: FILE, key: FILE, server_name: NAME, verify: true}``;
        every file must be readable now (its contents are checked when the
        contexts are built: ``upstream_tls.contexts``)."""
        if isinstance(node, yaml.ScalarNode) and node.value in ("true", "on", "yes"):
            raise self.fail(node, "tls: takes its settings, not true",
                            "write e.g. tls: {ca: ca.pem} (or tls: {} for the system's CAs)")
        items = self.keyed(node, "tls", TLS_KEYS)
        opts: dict[str, Any] = {}
        for key, (_, v) in items.items():
            if key == "verify":
                text = self.scalar(v, "tls.verify")
                if text not in ("true", "false"):
                    raise self.fail(v, f"tls.verify must be true or false (got {text!r})",
                                    "write verify: true (or false to accept any server certificate)")
                opts[key] = text == "true"
            elif key == "server_name":
                name = self.scalar(v, "tls.server_name")
                if not _DNS_NAME_RE.match(name):
                    raise self.fail(v, f"tls.server_name {name!r} is not a host name",
                                    "write the name in the servers' certificates, e.g. "
                                    "server_name: memcached.internal")
                opts[key] = name.rstrip(".")
            else:
                opts[key] = self.readable(v, f"tls.{key}")
        if "key" in opts and "cert" not in opts:
            raise self.fail(items["key"][0], "tls.key without tls.cert",
                            "add cert: FILE (the client certificate the key belongs to)")
        if opts.get("verify") is False and "server_name" in opts:
            raise self.fail(items["server_name"][0], "tls.server_name with verify: false is "
                            "never checked", "remove server_name, or set verify: true")
        m = node.start_mark
        return TlsSettings(**opts, where=f"{self.path}:{m.line + 1}:{m.column + 1}")

    def readable(self, node: yaml.Node, what: str) -> str:
        """A file path, relative to the config file's directory, that can be read now."""
        text = self.scalar(node, what)
        if not text or text in _NULL:
            raise self.fail(node, f"{what} is empty", f"write a file path, or remove {what}")
        base = os.path.dirname(os.path.abspath(self.path)) if self.path != "<config>" else os.getcwd()
        path = os.path.normpath(os.path.join(base, os.path.expanduser(text)))
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise self.fail(node, f"{what} {path}: cannot read it ({e.strerror})",
                            "give a readable PEM file (a relative path is relative to the "
                            "config file)") from None
        return path

    def dns_source(self, kind: str, node: yaml.Node, resolver: yaml.Node | None) -> DnsSource:
        """``dns: name:port`` or ``srv: name``, and the optional ``resolver: host:port``."""
        text = self.scalar(node, kind)
        if kind == "dns":
            addr = parse_host_port(text)
            if addr is None or not _DNS_NAME_RE.match(addr.host) or addr.host.replace(".", "").isdigit():
                raise self.fail(node, f"dns: {text!r} is not a name:port",
                                "write e.g. dns: memcached.cache.svc.cluster.local:11211")
            name, port = addr.host, addr.port
        else:
            if not _DNS_NAME_RE.match(text):
                raise self.fail(node, f"srv: {text!r} is not a DNS name",
                                "write e.g. srv: _memcache._tcp.memcached.cache.svc.cluster.local")
            name, port = text, 0
        where = None
        if resolver is not None:
            where = parse_host_port(self.scalar(resolver, "resolver"))
            if where is None:
                raise self.fail(resolver, f"resolver {resolver.value!r} is not host:port",
                                "write the DNS server's address, e.g. resolver: 10.96.0.10:53")
        return DnsSource(kind, name.rstrip("."), port, where)

    def on_down(self, pool: str, node: yaml.Node) -> DownPolicy:
        """``on_down: fail``, ``on_down: rehash`` or ``on_down: {gutter: POOL, max_ttl: 60}``."""
        if isinstance(node, yaml.ScalarNode):
            action = self.scalar(node, "on_down")
            if action not in ON_DOWN_ACTIONS:
                raise self.fail(node, f"unknown on_down {action!r}",
                                "valid: fail, rehash, or {gutter: POOL, max_ttl: SECONDS}")
            return DownPolicy(action)
        items = self.keyed(node, "on_down", GUTTER_KEYS)
        if "gutter" not in items:
            raise self.fail(node, "on_down as a mapping needs gutter", "write {gutter: POOL}")
        gnode = items["gutter"][1]
        gutter = self.scalar(gnode, "a gutter pool")
        if gutter == pool:
            raise self.fail(gnode, f"pool {pool!r} cannot be its own gutter", "name another pool")
        self.gutter_refs.append((gnode, pool, gutter))
        max_ttl = GUTTER_MAX_TTL
        if "max_ttl" in items:
            max_ttl = self.number(items["max_ttl"][1], "on_down.max_ttl", int, 1, MAX_RELATIVE_EXPTIME)
        return DownPolicy("gutter", gutter, max_ttl)

    def hash(self, node: yaml.Node) -> HashConfig:
        items = self.keyed(node, "hash", HASH_KEYS)
        opts: dict[str, str] = {}
        for key, (_, v) in items.items():
            if key == "function":
                opts[key] = self.choice(v, "hash function", FUNCTIONS)
            elif key == "distribution":
                opts[key] = self.choice(v, "hash distribution", DISTRIBUTIONS)
            else:
                opts[key] = self.scalar(v, key)
        if "hash_stop" in opts and "hash_tags" in opts:
            raise self.fail(items["hash_tags"][0], "hash_stop and hash_tags exclude each other",
                            "keep one of them")
        if "hash_tags" in opts and len(opts["hash_tags"]) != 2:
            raise self.fail(items["hash_tags"][1], "hash_tags must be two characters",
                            'write e.g. hash_tags: "{}"')
        if opts.get("hash_stop") == "":
            raise self.fail(items["hash_stop"][1], "hash_stop is empty", 'write e.g. hash_stop: "|#|"')
        if opts.get("function") == "crc32" and opts.get("distribution", "ketama") == "ketama":
            m = items["function"][1].start_mark
            log.warning("%s:%d:%d: hash function crc32 is twemproxy's 15-bit crc32, so ketama "
                        "puts every key on one server (as twemproxy does); use crc32a, the full "
                        "CRC-32, unless the placement must match twemproxy's",
                        self.path, m.line + 1, m.column + 1)
        return HashConfig(**opts)

    # -- routes ------------------------------------------------------------

    def health_values(self, node: yaml.Node) -> dict[str, int]:
        """The keys a ``health:`` mapping sets (top level or in a pool)."""
        values: dict[str, int] = {}
        for k, v in self.mapping(node, "health"):
            key = self.choice(k, "health key", HEALTH_KEYS)
            text = self.scalar(v, f"health.{key}")
            if not text.isdigit() or int(text) < 1:
                raise self.fail(v, f"health.{key} must be a whole number of at least 1 (got {text!r})",
                                "write e.g. 2")
            values[key] = int(text)
        return values

    def admin(self, node: yaml.Node) -> AdminPolicy:
        """``admin: {allow: [flush_all, verbosity, stats_reset, ...]}``; the list
        replaces the default (``allow: []`` refuses flush_all and verbosity too)."""
        items = self.keyed(node, "admin", ("allow",))
        if "allow" not in items:
            return AdminPolicy()
        lnode = items["allow"][1]
        if not isinstance(lnode, yaml.SequenceNode):
            raise self.fail(lnode, "admin.allow must be a list of command names",
                            "write e.g. allow: [flush_all, verbosity, stats_reset]")
        allow: set[str] = set()
        for item in lnode.value:
            name = self.scalar(item, "an admin command")
            if name in ADMIN_NEVER:
                raise self.fail(item, f"{name} can never be allowed: {ADMIN_NEVER[name]}",
                                "remove it from admin.allow")
            if name not in ADMIN_COMMANDS:
                raise self.fail(item, f"unknown admin command {name!r}",
                                "valid: " + ", ".join(ADMIN_COMMANDS))
            if name in allow:
                raise self.fail(item, f"{name} is listed twice in admin.allow", "list it once")
            allow.add(name)
        return AdminPolicy(frozenset(allow))

    def route(self, node: yaml.Node) -> RouteConfig:
        if isinstance(node, yaml.ScalarNode):
            return self.short_route(node)
        items = self.mapping(node, "route")
        types = [v for k, v in items if self.scalar(k, "a route key") == "type"]
        if not types:
            raise self.fail(node, "route has no type", "valid types: " + ", ".join(ROUTE_TYPES))
        rtype = self.choice(types[0], "route type", tuple(ROUTE_TYPES))
        kinds = ROUTE_TYPES[rtype].options
        options: dict[str, Any] = {}
        for k, v in items:
            key = self.scalar(k, "a route key")
            if key == "type":
                continue
            if key not in kinds:
                raise self.fail(k, f"unknown {rtype} key {key!r}",
                                "valid: " + ", ".join(("type",) + tuple(kinds)))
            kind = kinds[key]
            key = "operation_policies" if kind == "operations" else key
            if key in options:
                raise self.fail(k, f"{rtype} has operation policies twice",
                                "keep one of operationPolicies and operation_policies")
            options[key] = getattr(self, kind)(v)
        return self.finish_route(node, rtype, options)

    def short_route(self, node: yaml.Node) -> RouteConfig:
        """``Type`` or ``Type|argument``, e.g. ``PoolRoute|main``."""
        text = self.scalar(node, "a route")
        rtype, bar, arg = text.partition("|")
        if rtype not in ROUTE_TYPES:
            raise self.fail(node, f"unknown route type {rtype!r}", "valid: " + ", ".join(ROUTE_TYPES))
        options: dict[str, Any] = {}
        short = ROUTE_TYPES[rtype].short
        if bar:
            if not short or not arg:
                raise self.fail(node, f"{rtype} takes no '|argument'",
                                "short forms with an argument: " + ", ".join(
                                    f"{t}|{r.short}" for t, r in ROUTE_TYPES.items() if r.short))
            options[short] = arg if short != "pool" else self.pool_ref(node, arg)
        return self.finish_route(node, rtype, options)

    def finish_route(self, node: yaml.Node, rtype: str, options: dict[str, Any]) -> RouteConfig:
        row = ROUTE_TYPES[rtype]
        for need in row.required:
            if need not in options:
                raise self.fail(node, f"{rtype} needs {need}",
                                f"add {need}: ... (see the route reference in README.md)")
        if rtype == "PrefixSelectorRoute" and "policies" not in options and "wildcard" not in options:
            raise self.fail(node, "PrefixSelectorRoute needs policies or a wildcard",
                            "add policies: {prefix: route} and/or wildcard: route")
        if row.ordered_pool and "pool" not in options:
            self.ordered_users.append((node, rtype))
        if rtype == "OperationSelectorRoute" and "default_policy" not in options:
            self.ordered_users.append((node, rtype))      # unlisted commands → DefaultRoute
        return RouteConfig(rtype, options)

    def pool_ref(self, node: yaml.Node, name: str) -> str:
        self.pool_refs.append((node, name))
        return name

    # option kinds (RouteType.options values)

    def pool_name(self, node: yaml.Node) -> str:
        return self.pool_ref(node, self.scalar(node, "a pool name"))

    def routes(self, node: yaml.Node) -> tuple[RouteConfig, ...]:
        return tuple(self.route(n) for n in self.sequence(node, "children", "[PoolRoute|a, PoolRoute|b]"))

    def operations(self, node: yaml.Node) -> dict[str, RouteConfig]:
        if isinstance(node, yaml.ScalarNode) and node.value in _NULL:
            return {}
        policies: dict[str, RouteConfig] = {}
        for k, v in self.mapping(node, "operationPolicies"):
            command = self.choice(k, "command", POLICY_COMMANDS)
            policies[command] = self.route(v)
            if command == "quit" and policies[command].type != "LocalRoute":
                raise self.fail(v, "quit is answered by closing the client connection, never "
                                "routed", "map it to LocalRoute (as gomcrouter does) or remove it")
        return policies

    def prefixes(self, node: yaml.Node) -> dict[str, RouteConfig]:
        return {self.scalar(k, "a key prefix"): self.route(v)
                for k, v in self.mapping(node, "policies")}

    def errors(self, node: yaml.Node) -> dict[str, frozenset[str]]:
        """A list of error classes for every operation, or one list per
        operation group (gets, updates, deletes, other)."""
        def classes(n: yaml.Node) -> frozenset[str]:
            if isinstance(n, yaml.SequenceNode):
                return frozenset(self.choice(c, "error class", ERROR_CLASSES) for c in n.value)
            raise self.fail(n, "failover_errors must list error classes",
                            "write e.g. [timeout, connect_error, tko, remote_error]")
        if isinstance(node, yaml.MappingNode):
            per = {self.choice(k, "operation group", OPERATION_GROUPS): classes(v)
                   for k, v in self.mapping(node, "failover_errors")}
            return {g: per.get(g, frozenset(ERROR_CLASSES)) for g in OPERATION_GROUPS}
        every = classes(node)
        return {g: every for g in OPERATION_GROUPS}

    def count(self, node: yaml.Node) -> int:
        return self.number(node, "a count", int, 1, 1000)

    def exptime(self, node: yaml.Node) -> int:
        return self.number(node, "exptime", int, 0, 2**31 - 1)

    def fraction(self, node: yaml.Node) -> float:
        return self.number(node, "a fraction", float, 0.0, 1.0)

    def fraction_range(self, node: yaml.Node) -> tuple[float, float]:
        items = self.sequence(node, "key_fraction_range", "[0.0, 0.1]")
        if len(items) != 2:
            raise self.fail(node, "key_fraction_range needs two numbers", "write e.g. [0.0, 0.1]")
        lo, hi = (self.fraction(n) for n in items)
        if lo > hi:
            raise self.fail(node, "key_fraction_range starts after it ends", "write [low, high]")
        return (lo, hi)

    def order(self, node: yaml.Node) -> str:
        return self.choice(node, "failover order", FAILOVER_ORDERS)

    def text(self, node: yaml.Node) -> str:
        value = self.scalar(node, "a text")
        if "\r" in value or "\n" in value:
            raise self.fail(node, "the text spans lines", "write it on one line")
        return value


def read_config_text(path: str) -> str:
    """The text of ``path``, at most MAX_CONFIG_BYTES; ConfigError otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the router config ({e.strerror}); "
                          "pass an existing file with -f") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                          "save the file as UTF-8") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                          "a router config is a few lines")
    return text


class _ValuesChecker(_Checker):
    """A _Checker over YAML made from Python values: its errors name the
    call (``where``), since line and column would point into text nobody wrote."""

    def fail(self, node: yaml.Node | None, what: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {what}; {fix}")


def _plain(value: Any) -> Any:
    """Tuples as lists, so that yaml.safe_dump takes them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pool_from_values(name: str, options: Mapping[str, Any], where: str) -> PoolConfig:
    """A pool given as Python values under a router.yaml pool's keys
    (``servers``, ``hash``, ``weights``, ``on_down``), as mcrouter.client's
    ``Client(servers, hash=...)`` takes it: checked by the very code that
    checks a router.yaml pool, so the two cannot disagree on what a setting
    means.  A gutter needs a second pool, which only a router.yaml has."""
    check = _ValuesChecker(where)
    node = yaml.compose(yaml.safe_dump({name: _plain(options)}), Loader=yaml.SafeLoader)
    if node is None:
        raise check.fail(None, "the pool is empty", "give it servers")
    pools = check.pools(node)
    if check.gutter_refs:
        raise check.fail(None, "on_down: gutter needs a gutter pool of a router.yaml",
                         "use on_down: fail or rehash, or Client.from_config")
    return pools[name]


def load_config(path: str) -> RouterConfig:
    """Read and validate ``path``; raise ConfigError with one line on any mistake."""
    return parse_config(read_config_text(path), path)


def parse_config(text: str, path: str = "<config>") -> RouterConfig:
    check = _Checker(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark
        where = f"{path}:{m.line + 1}:{m.column + 1}" if m else path
        raise ConfigError(f"{where}: YAML syntax error: {e.problem}; fix the syntax there") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {e}; fix the file") from None
    if root is None:
        raise check.fail(None, "the config is empty", "it needs a route (and orderedPool or pools)")
    ordered: tuple[HostAddr, ...] = ()
    ordered_node: Any = None
    pools: dict[str, PoolConfig] = {}
    pools_node: Any = None
    route: RouteConfig | None = None
    health = HealthPolicy()
    admin = AdminPolicy()
    tls: TlsSettings | None = None
    tls_node: Any = None
    for k, v in check.mapping(root, "the config"):
        key = check.scalar(k, "a top-level key")
        if key == "orderedPool":
            ordered, ordered_node = check.ordered_pool(v), v
        elif key == "pools":
            pools, pools_node = check.pools(v), v
        elif key == "route":
            route = check.route(v)
        elif key == "health":
            health = HealthPolicy(**check.health_values(v))
        elif key == "admin":
            admin = check.admin(v)
        elif key == "tls":
            tls, tls_node = check.tls(v), k
        else:
            raise check.fail(k, f"unknown key {key!r}", "valid keys: " + ", ".join(TOP_KEYS))
    if route is None:
        raise check.fail(root, "the config has no route",
                         "add 'route: PoolRoute|<pool>' or 'route: {type: DefaultRoute}'")
    for ref_node, name in check.pool_refs:
        if name not in pools:
            raise check.fail(ref_node, f"unknown pool {name!r}",
                             "defined pools: " + (", ".join(pools) or "none (add a pools: section)"))
    for ref_node, pool, gutter in check.gutter_refs:
        if gutter not in pools:
            raise check.fail(ref_node, f"unknown gutter pool {gutter!r} for pool {pool!r}",
                             "defined pools: " + ", ".join(pools))
        if pools[gutter].on_down.action == "gutter":
            raise check.fail(ref_node, f"gutter pool {gutter!r} has a gutter of its own",
                             "give the gutter pool on_down: fail or rehash")
    if check.ordered_users and not ordered:
        user_node, rtype = check.ordered_users[0]
        raise check.fail(ordered_node if ordered_node is not None else user_node,
                         f"{rtype} needs hosts but orderedPool is empty",
                         "list at least one host:port in orderedPool"
                         + (" or give the route a pool" if pools_node is not None else ""))
    if tls is not None and not ordered:
        raise check.fail(tls_node, "the top-level tls: is for orderedPool, which is empty",
                         "move it into the pools that need it (pools: NAME: tls:)")
    check_tls_agreement(check, ordered, tls, ordered_node, pools, pools_node)
    return RouterConfig(path, ordered, route, pools, health, admin, tls)


def check_tls_agreement(check: _Checker, ordered: tuple[HostAddr, ...], tls: TlsSettings | None,
                        ordered_node: Any, pools: dict[str, PoolConfig], pools_node: Any) -> None:
    """A host is one set of connections, whichever pools list it: refuse an
    address that two of them would reach with different TLS settings."""
    seen: dict[HostAddr, tuple[str, TlsSettings | None]] = dict.fromkeys(ordered, ("orderedPool", tls))
    for name, pool in pools.items():
        for addr in pool.servers:
            where, first = seen.setdefault(addr, (f"pool {name!r}", pool.tls))
            if first == pool.tls:
                continue
            if first is not None and pool.tls is not None:
                what = f"server {addr} has different tls settings in {where} and pool {name!r}"
            else:
                what = (f"server {addr} is listed {'with' if first else 'without'} tls in {where} "
                        f"and {'with' if pool.tls else 'without'} in pool {name!r}")
            raise check.fail(_pool_node(pools_node, name) or ordered_node, what,
                             "a host is one set of connections: give every pool that lists "
                             "it the same tls: settings")


def _pool_node(pools_node: Any, name: str) -> yaml.Node | None:
    """The YAML node of pool ``name``, to point an error at it."""
    if isinstance(pools_node, yaml.MappingNode):
        for k, v in pools_node.value:
            if getattr(k, "value", None) == name:
                return v
    return None
