"""router.yaml → validated, typed configuration.

The schema is gomcrouter's, accepted verbatim::

    orderedPool: [memcache1:11211, memcache2:11211]
    route:
      type: OperationSelectorRoute
      operationPolicies: {get: MissFailoverRoute, set: AllFastestRoute}

plus an optional ``health:`` mapping (fail, rise, tko, probe_timeout_ms).

Unlike gomcrouter, anything unknown is refused.  Every error is one line,
``file:line:column: what is wrong; how to fix it``, raised as ConfigError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from mcrouter.protocol import COMMAND_IDS

ROUTE_TYPES = ("OperationSelectorRoute", "DefaultRoute", "AllFastestRoute",
               "MissFailoverRoute", "LocalRoute")
POLICY_TYPES = ("DefaultRoute", "AllFastestRoute", "MissFailoverRoute", "LocalRoute")
# quit is answered by the client connection itself and is never routed.
POLICY_COMMANDS = tuple(name for name in COMMAND_IDS if name != "quit")
TOP_KEYS = ("orderedPool", "route", "health")
HEALTH_KEYS = ("fail", "rise", "tko", "probe_timeout_ms")
MAX_CONFIG_BYTES = 1 << 20     # well under what the control channel carries (control.py)


class ConfigError(Exception):
    """A configuration mistake, already phrased as one line for the operator."""


@dataclass(frozen=True)
class HostAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RouteConfig:
    type: str
    policies: dict[str, str] = field(default_factory=dict)   # command name → route type

    def needs_hosts(self) -> bool:
        if self.type == "OperationSelectorRoute":
            return True      # unlisted commands go to DefaultRoute
        return self.type != "LocalRoute"


@dataclass(frozen=True)
class HealthPolicy:
    """When a host is marked down and up again (ROUTES.md, README "Health")."""
    fail: int = 2                  # consecutive failed probes → down
    rise: int = 2                  # consecutive good probes → up again
    tko: int = 3                   # consecutive timeouts/errors on the data path → down at once
    probe_timeout_ms: int = 1000   # a probe's version round trip must finish within this


@dataclass(frozen=True)
class RouterConfig:
    path: str
    ordered_pool: tuple[HostAddr, ...]
    route: RouteConfig
    health: HealthPolicy = HealthPolicy()

    def hosts(self) -> tuple[HostAddr, ...]:
        """Every distinct upstream address, in config order."""
        return tuple(dict.fromkeys(self.ordered_pool))


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


class _Checker:
    """Walks the YAML node tree so every error can name its line and column."""

    def __init__(self, path: str) -> None:
        self.path = path

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

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value", "remove the nesting")
        return str(node.value)

    def choice(self, node: yaml.Node, what: str, valid: tuple[str, ...]) -> str:
        value = self.scalar(node, what)
        if value not in valid:
            raise self.fail(node, f"unknown {what} {value!r}", "valid: " + ", ".join(valid))
        return value

    def pool(self, node: yaml.Node) -> tuple[HostAddr, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "orderedPool must be a list of host:port",
                            "write it as [host1:11211, host2:11211]")
        hosts = []
        for item in node.value:
            text = self.scalar(item, "an orderedPool entry")
            addr = parse_host_port(text)
            if addr is None:
                raise self.fail(item, f"malformed host:port {text!r}",
                                "write host:port or [ipv6]:port with a port from 1 to 65535")
            hosts.append(addr)
        return tuple(hosts)

    def health(self, node: yaml.Node) -> HealthPolicy:
        values: dict[str, int] = {}
        for k, v in self.mapping(node, "health"):
            key = self.choice(k, "health key", HEALTH_KEYS)
            text = self.scalar(v, f"health.{key}")
            if not text.isdigit() or int(text) < 1:
                raise self.fail(v, f"health.{key} must be a whole number of at least 1 (got {text!r})",
                                "write e.g. 2")
            values[key] = int(text)
        return HealthPolicy(**values)

    def route(self, node: yaml.Node) -> RouteConfig:
        items = dict((self.scalar(k, "a route key"), (k, v)) for k, v in self.mapping(node, "route"))
        for name, (k, _) in items.items():
            if name not in ("type", "operationPolicies"):
                raise self.fail(k, f"unknown route key {name!r}", "valid: type, operationPolicies")
        if "type" not in items:
            raise self.fail(node, "route has no type", "valid types: " + ", ".join(ROUTE_TYPES))
        rtype = self.choice(items["type"][1], "route type", ROUTE_TYPES)
        policies: dict[str, str] = {}
        if "operationPolicies" in items:
            k, pnode = items["operationPolicies"]
            if rtype != "OperationSelectorRoute":
                raise self.fail(k, f"operationPolicies does not apply to {rtype}",
                                "use type: OperationSelectorRoute or remove operationPolicies")
            if not (isinstance(pnode, yaml.ScalarNode) and pnode.value in ("", "~", "null")):
                for ck, cv in self.mapping(pnode, "operationPolicies"):
                    cmd = self.choice(ck, "command", POLICY_COMMANDS)
                    policies[cmd] = self.choice(cv, "policy", POLICY_TYPES)
        return RouteConfig(rtype, policies)


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
        raise check.fail(None, "the config is empty", "it needs orderedPool and route")
    pool: tuple[HostAddr, ...] = ()
    pool_node: Any = None
    route: RouteConfig | None = None
    health = HealthPolicy()
    for k, v in check.mapping(root, "the config"):
        key = check.scalar(k, "a top-level key")
        if key == "orderedPool":
            pool, pool_node = check.pool(v), v
        elif key == "route":
            route = check.route(v)
        elif key == "health":
            health = check.health(v)
        else:
            raise check.fail(k, f"unknown key {key!r}", "valid keys: " + ", ".join(TOP_KEYS))
    if route is None:
        raise check.fail(root, "the config has no route",
                         "add 'route: {type: DefaultRoute}' or another route type")
    if route.needs_hosts() and not pool:
        raise check.fail(pool_node if pool_node is not None else root,
                         f"{route.type} needs hosts but orderedPool is empty",
                         "list at least one host:port in orderedPool")
    return RouterConfig(path, pool, route, health)
