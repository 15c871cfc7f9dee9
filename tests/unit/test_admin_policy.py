"""The admin policy without processes: the admin: section of the config, and
how RootRoute's gate names and judges each request (routes/admin_policy.py)."""
from __future__ import annotations

import pytest

from mcrouter import protocol
from mcrouter._parser import Owner, RequestParser
from mcrouter.config import (ADMIN_COMMANDS, ADMIN_NEVER, AdminPolicy, ConfigError,
                             parse_config)
from mcrouter.routes.admin_policy import AdminGate, admin_name, memcached_words
from mcrouter.routes.service import RootRoute

NOT_SUPPORTED = protocol.NOT_SUPPORTED
BASE = "orderedPool: [127.0.0.1:11211]\nroute: DefaultRoute\n"


def request(line: bytes):
    [req] = RequestParser().feed(line)
    assert req.cmd != protocol.CMD_LOCAL, req
    return req


def test_the_default_allows_flush_all_and_verbosity_only():
    assert parse_config(BASE).admin == AdminPolicy(frozenset({"flush_all", "verbosity"}))
    assert parse_config(BASE + "admin: {}\n").admin == AdminPolicy()
    assert parse_config(BASE + "admin: {allow: []}\n").admin.allow == frozenset()
    every = parse_config(BASE + f"admin: {{allow: [{', '.join(ADMIN_COMMANDS)}]}}\n").admin
    assert every.allow == frozenset(ADMIN_COMMANDS)
    assert not set(ADMIN_NEVER) & set(ADMIN_COMMANDS)


@pytest.mark.parametrize("allow, line, col, what", [
    ("[shutdown]", 3, 17, "shutdown can never be allowed: the backend's only reply is"),
    ("[watch]", 3, 17, "watch can never be allowed"),
    ("[lru_crawler_metadump]", 3, 17, "lru_crawler_metadump can never be allowed"),
    ("[stats_sizes_enable]", 3, 17, "stats_sizes_enable can never be allowed"),
    ("[flush_all, stats]", 3, 28, "unknown admin command 'stats'; valid: flush_all, verbosity"),
    ("[me, me]", 3, 21, "me is listed twice in admin.allow"),
    ("flush_all", 3, 16, "admin.allow must be a list of command names"),
    ("{me: 1}", 3, 16, "admin.allow must be a list of command names"),
])
def test_admin_section_errors_name_file_line_column(allow, line, col, what):
    text = BASE + f"admin: {{allow: {allow}}}\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    assert str(e.value).startswith(f"r.yaml:{line}:{col}: {what}"), str(e.value)


def test_admin_section_unknown_key_and_shape():
    with pytest.raises(ConfigError, match=r"^r\.yaml:3:9: unknown admin key 'deny'; valid: allow$"):
        parse_config(BASE + "admin: {deny: []}\n", "r.yaml")
    with pytest.raises(ConfigError, match=r"^r\.yaml:3:8: admin must be a mapping"):
        parse_config(BASE + "admin: [me]\n", "r.yaml")


@pytest.mark.parametrize("line, name", [
    (b"flush_all\r\n", "flush_all"), (b"flush_all 10 noreply\r\n", "flush_all"),
    (b"verbosity 1\r\n", "verbosity"), (b"me k\r\n", "me"),
    (b"stats reset\r\n", "stats_reset"), (b"stats   reset  \r\n", "stats_reset"),
    (b"stats reset\x00junk\r\n", "stats_reset"), (b"stats detail on\r\n", "stats_detail"),
    (b"stats detail\n", "stats_detail"), (b"stats cachedump 1 2\r\n", "stats_cachedump"),
    (b"stats sizes_enable\r\n", "stats_sizes_enable"),
    (b"stats sizes_disable\r\n", "stats_sizes_disable"),
    (b"stats\r\n", None), (b"stats items\r\n", None), (b"stats sizes\r\n", None),
    (b"stats resetx\r\n", None), (b"stats settings\r\n", None),
    (b"cache_memlimit 8\r\n", "cache_memlimit"), (b"shutdown graceful\r\n", "shutdown"),
    (b"lru_crawler crawl all\r\n", "lru_crawler"),
    (b"lru_crawler metadump all\r\n", "lru_crawler_metadump"),
    (b"lru_crawler  mgdump 1\r\n", "lru_crawler_metadump"),
    (b"watch fetchers\r\n", "watch"), (b"extstore a b\r\n", "extstore"),
    (b"get k\r\n", None), (b"version\r\n", None), (b"mg k v\r\n", None),
])
def test_each_request_is_named_as_memcached_reads_it(line, name):
    assert admin_name(request(line)) == name


def test_memcached_words():
    assert memcached_words(b"stats  reset \r\n") == [b"stats", b"reset"]
    assert memcached_words(b"stats reset\r\r\n") == [b"stats", b"reset\r"]   # one CR only
    assert memcached_words(b"a b\x00c d\r\nmn\r\n") == [b"a", b"b"]
    assert memcached_words(b"stats\treset\n") == [b"stats\treset"]            # spaces only


@pytest.mark.parametrize("line, refusal", [
    (b"stats reset\r\n", NOT_SUPPORTED), (b"me k\r\n", NOT_SUPPORTED),
    (b"cache_memlimit 8\r\n", NOT_SUPPORTED),
    (b"cache_memlimit 8 noreply\r\n", b""), (b"cache_memlimit noreply\r\n", b""),
    (b"cache_memlimit 8 9 noreply\r\n", NOT_SUPPORTED),     # memcached: ERROR, noreply unseen
    (b"lru mode flat noreply\r\n", b""), (b"slabs automove 1 noreply\r\n", b""),
    (b"slabs reassign 1 2 noreply\r\n", NOT_SUPPORTED), (b"lru_crawler crawl 1 noreply\r\n",
                                                         NOT_SUPPORTED),
    (b"refresh_certs noreply\r\n", NOT_SUPPORTED), (b"shutdown noreply\r\n", NOT_SUPPORTED),
    (b"stats items\r\n", None), (b"flush_all\r\n", None), (b"verbosity 1 noreply\r\n", None),
    (b"get k\r\n", None),
])
def test_the_default_gate(line, refusal):
    assert AdminGate(AdminPolicy()).refusal(request(line)) == refusal


def test_a_listed_command_passes_and_never_ones_do_not():
    gate = AdminGate(AdminPolicy(frozenset(ADMIN_COMMANDS)))
    for line in (b"stats reset\r\n", b"me k\r\n", b"cache_memlimit 8\r\n", b"lru_crawler crawl 1\r\n",
                 b"stats detail dump\r\n", b"debugtime 1\r\n"):
        assert gate.refusal(request(line)) is None, line
    for line in (b"shutdown\r\n", b"watch\r\n", b"misbehave\r\n", b"lru_crawler metadump 1\r\n",
                 b"stats sizes_enable\r\n"):
        assert gate.refusal(request(line)) == NOT_SUPPORTED, line
    quiet = AdminGate(AdminPolicy(frozenset()))
    assert quiet.refusal(request(b"flush_all 0 noreply\r\n")) == b""
    assert quiet.refusal(request(b"flush_all\r\n")) == NOT_SUPPORTED


def test_only_gated_commands_leave_the_fast_path():
    bits = AdminGate(AdminPolicy()).gated()
    assert bits == 1 << protocol.CMD_ADMIN | 1 << protocol.CMD_ME
    assert AdminGate(AdminPolicy(frozenset())).gated() == (
        1 << protocol.CMD_ADMIN | 1 << protocol.CMD_ME | 1 << protocol.CMD_FLUSH_ALL
        | 1 << protocol.CMD_VERBOSITY)
    assert AdminGate(AdminPolicy(frozenset(ADMIN_COMMANDS))).gated() == 1 << protocol.CMD_ADMIN
    assert protocol.CMD_LIMIT <= 64 and max(protocol.COMMAND_NAMES) < protocol.CMD_LIMIT


class Tree:
    """Records what reaches the tree."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def dispatch(self, req) -> None:
        self.got.append(req.wire)
        req.finish(b"OK\r\n", protocol.ST_OK)


class Client(Owner):
    def __init__(self) -> None:
        self.replies: list[bytes] = []

    def on_reply(self, req) -> None:
        self.replies.append(req.reply)


def test_root_route_refuses_before_the_tree():
    tree = Tree()
    root = RootRoute(tree, {b"servers": lambda: b"END\r\n"}, AdminPolicy())
    client = Client()
    for line in (b"cache_memlimit 8\r\n", b"stats reset\r\n", b"me k\r\n", b"flush_all\r\n",
                 b"stats servers\r\n", b"stats\r\n", b"get k\r\n", b"cache_memlimit 8 noreply\r\n"):
        req = request(line)
        req.owner = client
        root.dispatch(req)
    assert client.replies == [NOT_SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED, b"OK\r\n", b"END\r\n",
                              b"OK\r\n", b"OK\r\n", b""]
    assert tree.got == [b"flush_all\r\n", b"stats\r\n", b"get k\r\n"]
