"""The parts of issue 16 that need no process: DNS pool and on_down config,
``Hasher.index_up``, the gutter's expiry cap and the discovery's bookkeeping."""
from __future__ import annotations

import logging
import socket

import pytest

from mcrouter._hash import Hasher
from mcrouter.config import ConfigError, DnsSource, DownPolicy, HostAddr, parse_config
from mcrouter.discovery import Answer, Discovery, DiscoveryError
from mcrouter.hosttable import HostTable
from mcrouter.protocol import (CMD_APPEND, CMD_CAS, CMD_DELETE, CMD_GAT, CMD_MA, CMD_MG, CMD_MS,
                               CMD_SET, CMD_TOUCH)
from mcrouter.routes.gutter import cap_wire, capped


def test_dns_pools_and_policies_parse():
    c = parse_config("pools:\n"
                     "  a: {srv: _memcache._tcp.mc.cache.svc.cluster.local., resolver: '10.0.0.10:53',"
                     " on_down: {gutter: g}}\n"
                     "  b: {dns: 'mc.cache.svc:11211', on_down: rehash}\n"
                     "  g: {servers: ['g1:11211']}\n"
                     "route: PoolRoute|a\n")
    assert c.pools["a"].source == DnsSource("srv", "_memcache._tcp.mc.cache.svc.cluster.local", 0,
                                            HostAddr("10.0.0.10", 53))
    assert c.pools["a"].on_down == DownPolicy("gutter", "g", 60)
    assert c.pools["b"].source == DnsSource("dns", "mc.cache.svc", 11211)
    assert c.pools["b"].on_down == DownPolicy("rehash")
    assert c.pools["g"].on_down == DownPolicy("fail")
    assert c.hosts() == (HostAddr("g1", 11211),)        # DNS pools: empty until answered
    full = c.with_members({"a": [("mc-0.x", 11211, 0), ("mc-1.x", 11300, 5)], "g": [("no", 1, 1)]})
    assert full.pools["a"].servers == (HostAddr("mc-0.x", 11211), HostAddr("mc-1.x", 11300))
    assert full.pools["a"].weights == (1, 5)             # SRV weight 0 counts as 1
    assert full.pools["g"] == c.pools["g"]               # not a DNS pool: untouched
    assert full.dns_pools() == c.dns_pools()


@pytest.mark.parametrize("pool, error", [
    ("{servers: [a:1], srv: x.y}", "2:23: pool 'p' has both servers and srv; keep one source"),
    ("{dns: x.y}", "2:12: dns: 'x.y' is not a name:port; write e.g. dns: "),
    ("{dns: '10.0.0.1:11211'}", "2:12: dns: '10.0.0.1:11211' is not a name:port"),
    ("{srv: 'bad name'}", "2:12: srv: 'bad name' is not a DNS name"),
    ("{srv: x.y, weights: [1]}", "2:17: pool 'p' takes its servers from DNS; remove weights (srv: records carry their own)"),
    ("{servers: [a:1], resolver: '1.1.1.1:53'}", "2:23: resolver is only for a pool with dns:"),
    ("{srv: x.y, resolver: nowhere}", "2:27: resolver 'nowhere' is not host:port"),
    ("{servers: [a:1], on_down: eject}", "2:32: unknown on_down 'eject'; valid: fail, rehash, or"),
    ("{servers: [a:1], on_down: {gutter: p}}", "2:41: pool 'p' cannot be its own gutter"),
    ("{servers: [a:1], on_down: {gutter: q}}", "2:41: unknown gutter pool 'q' for pool 'p'"),
    ("{servers: [a:1], on_down: {gutter: g, max_ttl: 0}}", "2:53: on_down.max_ttl '0' is not valid"),
    ("{servers: [a:1], on_down: {max_ttl: 5}}", "2:32: on_down as a mapping needs gutter"),
    ("{servers: [a:1], on_down: rehash, hash: {distribution: jump}}",
     "2:32: jump hashing has no next host to rehash to"),
])
def test_dns_and_policy_mistakes_are_one_line(pool, error):
    text = f"pools:\n  p: {pool}\n  g: {{servers: [g:1], on_down: rehash}}\nroute: PoolRoute|p\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    assert str(e.value).startswith("r.yaml:" + error), str(e.value)
    assert "\n" not in str(e.value)


def test_a_gutter_cannot_have_a_gutter():
    with pytest.raises(ConfigError, match="gutter pool 'g' has a gutter of its own"):
        parse_config("pools:\n  p: {servers: [a:1], on_down: {gutter: g}}\n"
                     "  g: {servers: [b:1], on_down: {gutter: h}}\n  h: {servers: [c:1]}\n"
                     "route: PoolRoute|p\n")


KEYS = [b"key:%d" % i for i in range(2000)]


@pytest.mark.parametrize("distribution", ["ketama", "rendezvous"])
def test_index_up_moves_only_the_down_servers_keys(distribution):
    names = [f"10.0.0.{i}:11211" for i in range(5)]
    h = Hasher(names, None, "md5", distribution)
    up = bytes([1, 1, 0, 1, 1])
    for k in KEYS:
        own = h.index(k)
        if own != 2:
            assert h.index_up(k, up) == own
        else:
            assert h.index_up(k, up) not in (2, -1)
    # with equal weights this is twemproxy's eject: the continuum of the live servers
    live = Hasher(names[:2] + names[3:], None, "md5", distribution)
    assert [h.index_up(k, up) for k in KEYS] == [[0, 1, 3, 4][live.index(k)] for k in KEYS]
    assert h.index_up(KEYS[0], bytes(5)) == -1
    with pytest.raises(ValueError):
        h.index_up(KEYS[0], b"\x01")


def test_index_up_of_a_jump_pool_or_one_server():
    h = Hasher(["a", "b", "c"], None, "md5", "jump")
    assert all(h.index_up(k, b"\x01\x01\x01") == h.index(k) for k in KEYS[:50])
    assert all(h.index_up(k, b"\x00\x00\x00") == -1 for k in KEYS[:50])
    one = Hasher(["a"])
    assert one.index_up(b"k", b"\x01") == 0 and one.index_up(b"k", b"\x00") == -1


NOW = 1_700_000_000


@pytest.mark.parametrize("exptime, want", [
    (0, 60), (30, 30), (60, 60), (61, 60), (2592000, 60), (-1, -1),
    (NOW + 10, NOW + 10), (NOW + 61, 60), (NOW - 5, NOW - 5),
])
def test_capped(exptime, want):
    assert capped(exptime, 60, NOW) == want


@pytest.mark.parametrize("cmd, wire, want", [
    (CMD_SET, b"set k 5 0 1\r\nx\r\n", b"set k 5 60 1\r\nx\r\n"),
    (CMD_SET, b"set k 5 10 1 noreply\r\nx\r\n", None),
    (CMD_SET, b"set k 5 999 1 noreply\r\nx\r\n", b"set k 5 60 1 noreply\r\nx\r\n"),
    (CMD_CAS, b"cas k 0 0 1 77\r\nx\r\n", b"cas k 0 60 1 77\r\nx\r\n"),
    (CMD_TOUCH, b"touch k 0\r\n", b"touch k 60\r\n"),
    (CMD_GAT, b"gat 0 a b c\r\n", b"gat 60 a b c\r\n"),
    (CMD_MS, b"ms k 1\r\nx\r\n", b"ms k 1 T60\r\nx\r\n"),
    (CMD_MS, b"ms k 1 T0 q\r\nx\r\nmn\r\n", b"ms k 1 T60 q\r\nx\r\nmn\r\n"),
    (CMD_MS, b"ms k 1 T5 F3\r\nx\r\n", None),
    (CMD_MG, b"mg k v\r\n", None),
    (CMD_MG, b"mg k v T100\r\n", b"mg k v T60\r\n"),
    (CMD_MA, b"ma k N0 J5\r\n", b"ma k N60 J5\r\n"),
    (CMD_APPEND, b"append k 0 0 1\r\nx\r\n", None),
    (CMD_DELETE, b"delete k\r\n", None),
    (CMD_SET, b"set k 0 abc 1\r\nx\r\n", None),          # memcached's own error, unchanged
    (CMD_SET, b"set k 0 0 1\nx\r\n", b"set k 0 60 1\nx\r\n"),
])
def test_cap_wire(cmd, wire, want):
    got = cap_wire(cmd, wire, 60, NOW)
    assert got == (wire if want is None else want)
    if want is None:
        assert got is wire


class FakeDns:
    def __init__(self) -> None:
        self.answers: list = []

    def __call__(self, source: DnsSource) -> Answer:
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def answer(*hosts: tuple[str, str], ttl: float = 30.0) -> Answer:
    return Answer(tuple((h, 11211, 1) for h, _ in hosts),
                  {f"{h}:11211": (socket.AF_INET, ip) for h, ip in hosts}, ttl)


def test_discovery_reports_changes_once_and_keeps_the_last_membership(caplog):
    table = HostTable(16)
    slot = table.assign("mc-0:11211")
    table.set_address(slot, socket.AF_INET, "10.0.0.1")
    reports: list = []
    dns = FakeDns()
    src = DnsSource("srv", "_mc._tcp.x")
    d = Discovery(table, {"p": src}, {"p": (("mc-0", 11211, 1),)},
                  lambda m, a: reports.append((m, a)), interval=10.0, resolver=dns)
    caplog.set_level(logging.INFO, "mcrouter.discovery")
    dns.answers = [answer(("mc-0", "10.0.0.1"), ttl=2.0),            # the same: nothing
                   answer(("mc-0", "10.0.0.9")),                      # moved: the table only
                   DiscoveryError("SERVFAIL"), DiscoveryError("no SRV records"),
                   answer(("mc-0", "10.0.0.9"), ("mc-1", "10.0.0.2"))]
    d.refresh(0.0)
    assert reports == [] and d.due["p"] == 2.0                         # the TTL, under -t
    d.refresh(1.0)
    assert dns.answers and len(dns.answers) == 4                       # not due yet
    d.refresh(2.0)
    assert reports == [] and table.address(slot) == (socket.AF_INET, "10.0.0.9")
    d.refresh(40.0)
    d.refresh(50.0)
    assert reports == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "pool p: srv: _mc._tcp.x: SERVFAIL; keeping the last membership (1 server(s))"]
    d.refresh(60.0)
    assert reports == [({"p": (("mc-0", 11211, 1), ("mc-1", 11211, 1))},
                        {"mc-0:11211": (socket.AF_INET, "10.0.0.9"),
                         "mc-1:11211": (socket.AF_INET, "10.0.0.2")})]
    assert "pool p: srv: _mc._tcp.x answers again" in caplog.text


def test_long_host_names_get_slots_of_their_own():
    table = HostTable(8)
    base = "memcached-1.memcached-headless.a-long-namespace-name.svc.cluster.local"
    a, b = table.assign(base + ":11211"), table.assign(base + ":11212")
    short = table.assign("10.0.0.1:11211")
    assert len({a, b, short}) == 3
    assert table.slot_of(base + ":11212") == b and table.slot_of(base + ":11211") == a
    assert table.status(short).key == "10.0.0.1:11211"
    key = table.status(a).key
    assert len(key) == 64 and key.startswith(base[:40]) and key[47] == "~"


def test_a_ttl_under_one_second_counts_as_one_second():
    """TTL 0 ("do not cache") made the sidecar ask every 100 ms, and each
    flap of the records a generation; -t under a second is still honoured."""
    table = HostTable(4)
    src = DnsSource("srv", "_mc._tcp.x")
    for interval, ttl, due in ((30.0, 0.0, 1.0), (30.0, 0.4, 1.0), (30.0, 5.0, 5.0),
                               (0.2, 0.0, 0.2), (0.01, 0.0, 0.1)):
        dns = FakeDns()
        dns.answers = [answer(("mc-0", "10.0.0.1"), ttl=ttl)]
        d = Discovery(table, {"p": src}, {}, lambda m, a: None, interval=interval, resolver=dns)
        d.refresh(100.0)
        assert d.due["p"] == pytest.approx(100.0 + due), (interval, ttl)
