"""Named pools and route trees: what loads, and the one-line error for what does not."""
from __future__ import annotations

import textwrap

import pytest

from mcrouter.config import (ROUTE_TYPES, ConfigError, HashConfig, HostAddr, RouteConfig,
                             parse_config)
from mcrouter.protocol import COMMAND_IDS
from mcrouter.routes.service import COMMANDS

POOLS = """
pools:
  main:
    servers: [127.0.0.1:11211, 127.0.0.1:11212]
    hash: {function: fnv1a_64, distribution: ketama}
  other:
    servers: [127.0.0.1:11212, 127.0.0.1:11213]
    weights: [1, 3]
    hash: {function: md5, distribution: rendezvous, salt: v2, hash_tags: "{}"}
"""


def parse(text: str):
    return parse_config(textwrap.dedent(text), "r.yaml")


def test_crc32_with_ketama_is_warned_of_in_one_line(caplog):
    """twemproxy's crc32 is 15 bits against a 32-bit continuum: with ketama
    every key lands on one server.  It loads (a fleet may need twemproxy's
    exact placement), with one warning naming the line and the fix."""
    text = ("pools:\n  a: {servers: [h:1, h:2], hash: {function: crc32}}\n"
            "  b: {servers: [h:1, h:2], hash: {function: crc32, distribution: jump}}\n"
            "  c: {servers: [h:1, h:2], hash: {function: crc32a}}\n"
            "route: PoolRoute|a\n")
    with caplog.at_level("WARNING", logger="mcrouter.config"):
        cfg = parse(text)
    assert cfg.pools["a"].hash == HashConfig("crc32", "ketama")
    assert [r.getMessage() for r in caplog.records] == [
        "r.yaml:2:45: hash function crc32 is twemproxy's 15-bit crc32, so ketama puts every key "
        "on one server (as twemproxy does); use crc32a, the full CRC-32, unless the placement "
        "must match twemproxy's"]


def test_issue_form_and_shared_hosts():
    cfg = parse(POOLS + "route: PoolRoute|main\n")
    assert cfg.route == RouteConfig("PoolRoute", {"pool": "main"})
    assert cfg.pools["main"].hash == HashConfig("fnv1a_64", "ketama")
    assert cfg.pools["other"].weights == (1, 3)
    assert cfg.pools["other"].hash == HashConfig("md5", "rendezvous", "v2", "", "{}")
    # a server in two pools is one address
    assert cfg.hosts() == tuple(HostAddr("127.0.0.1", p) for p in (11211, 11212, 11213))


def test_nested_tree_short_and_long_forms():
    cfg = parse(POOLS + """
route:
  type: OperationSelectorRoute
  operation_policies:
    get:
      type: FailoverRoute
      children: [PoolRoute|main, {type: PoolRoute, pool: other}]
      failover_errors: [timeout, tko]
      max_tries: 2
    set: {type: AllSyncRoute, children: [PoolRoute|main, PoolRoute|other]}
    delete: {type: PrefixSelectorRoute, policies: {"a:": PoolRoute|main}, wildcard: NullRoute}
  default_policy: {type: ShadowRoute, child: PoolRoute|main, shadow: PoolRoute|other,
                   key_fraction_range: [0, 0.25]}
""")
    ops = cfg.route.options["operation_policies"]
    assert ops["get"].type == "FailoverRoute"
    assert ops["get"].options["children"][1] == RouteConfig("PoolRoute", {"pool": "other"})
    assert ops["get"].options["failover_errors"]["gets"] == frozenset({"timeout", "tko"})
    assert cfg.route.options["default_policy"].options["key_fraction_range"] == (0.0, 0.25)


def test_every_route_type_has_a_schema_and_every_command_a_probe():
    assert set(ROUTE_TYPES) >= {
        "PoolRoute", "HashRoute", "FailoverRoute", "AllSyncRoute", "AllAsyncRoute",
        "AllInitialRoute", "AllMajorityRoute", "PrefixSelectorRoute", "ShadowRoute",
        "WarmUpRoute", "RandomRoute", "LatestRoute", "NullRoute", "ErrorRoute"}
    assert set(COMMANDS) == set(COMMAND_IDS) - {"quit"}


# (text, line, column, words the message must contain)
INVALID = {
    "unknown-pool": (POOLS + "route: PoolRoute|nope\n", 10, 8, "unknown pool 'nope'"),
    "unknown-pool-key": ("pools:\n  a:\n    servers: [h:1]\n    replicas: 1\nroute: PoolRoute|a\n",
                         4, 5, "unknown pool 'a' key 'replicas'"),
    "no-servers": ("pools:\n  a: {hash: {function: md5}}\nroute: PoolRoute|a\n", 2, 6, "no servers"),
    "dup-server": ("pools:\n  a: {servers: [h:1, h:1]}\nroute: PoolRoute|a\n", 2, 22, "twice"),
    "weights-count": ("pools:\n  a: {servers: [h:1, h:2], weights: [1]}\nroute: PoolRoute|a\n",
                      2, 37, "2 servers but 1 weights"),
    "weight-zero": ("pools:\n  a: {servers: [h:1], weights: [0]}\nroute: PoolRoute|a\n", 2, 33,
                    "weight '0'"),
    "jump-weights": ("pools:\n  a: {servers: [h:1, h:2], weights: [1, 2], hash: {distribution: jump}}\n"
                     "route: PoolRoute|a\n", 2, 37, "jump"),
    "hash-function": ("pools:\n  a: {servers: [h:1], hash: {function: sha1}}\nroute: PoolRoute|a\n",
                      2, 40, "unknown hash function 'sha1'"),
    "hash-tags": ("pools:\n  a: {servers: [h:1], hash: {hash_tags: '{'}}\nroute: PoolRoute|a\n",
                  2, 41, "two characters"),
    "stop-and-tags": ("pools:\n  a: {servers: [h:1], hash: {hash_stop: x, hash_tags: '{}'}}\n"
                      "route: PoolRoute|a\n", 2, 44, "exclude"),
    "short-unknown-type": ("route: FancyRoute|x\n", 1, 8, "unknown route type 'FancyRoute'"),
    "short-no-arg": ("route: NullRoute|x\n", 1, 8, "takes no '|argument'"),
    "missing-children": ("route: {type: AllSyncRoute}\n", 1, 8, "AllSyncRoute needs children"),
    "empty-children": ("route: {type: AllSyncRoute, children: []}\n", 1, 39, "non-empty list"),
    "unknown-option": ("route: {type: NullRoute, children: [NullRoute]}\n", 1, 26,
                       "unknown NullRoute key 'children'"),
    "bad-error-class": ("route: {type: FailoverRoute, children: [NullRoute], "
                        "failover_errors: [oops]}\n", 1, 71, "unknown error class 'oops'"),
    "bad-group": ("route: {type: FailoverRoute, children: [NullRoute], "
                  "failover_errors: {reads: [tko]}}\n", 1, 71, "unknown operation group"),
    "max-tries": ("route: {type: FailoverRoute, children: [NullRoute], max_tries: 0}\n", 1, 64,
                  "a count '0'"),
    "fraction": ("route: {type: ShadowRoute, child: NullRoute, shadow: NullRoute, "
                 "request_fraction: 2}\n", 1, 83, "a fraction '2'"),
    "fraction-range": ("route: {type: ShadowRoute, child: NullRoute, shadow: NullRoute, "
                       "key_fraction_range: [0.5, 0.1]}\n", 1, 85, "starts after it ends"),
    "warmup-needs": ("route: {type: WarmUpRoute, cold: NullRoute}\n", 1, 8, "WarmUpRoute needs warm"),
    "prefix-needs": ("route: {type: PrefixSelectorRoute}\n", 1, 8, "policies or a wildcard"),
    "selector-default-needs-hosts": ("route: {type: OperationSelectorRoute, "
                                     "operation_policies: {get: NullRoute}}\n", 1, 8,
                                     "needs hosts but orderedPool is empty"),
    "both-policy-spellings": ("route: {type: OperationSelectorRoute, default_policy: NullRoute, "
                              "operationPolicies: {}, operation_policies: {}}\n", 1, 89, "twice"),
    "error-text-lines": ('route: {type: ErrorRoute, response: "a\\nb"}\n', 1, 37, "spans lines"),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_configs_are_one_line_with_position(name):
    text, line, col, words = INVALID[name]
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"r.yaml:{line}:{col}: "), msg
    assert words in msg, msg
    assert "; " in msg                   # what is wrong; how to fix it
