"""Pools from DNS: the router follows a zone the test changes under load.

A DNS server of the test's own (tests/support/dnszone.py) answers on a loopback
port; the pools name it as their resolver.  Membership changes are applied
as reloads: the clients must see no error and no closed connection, and the
keys whose server stayed must still be hits.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from mcrouter._hash import Hasher, ketama_name
from support import REPO, wait_until
from support.dnszone import DnsZone
from support.srv import KEYS, SRV, Load, publish, target

NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"


@pytest.fixture
def zone():
    z = DnsZone(ttl=1)
    yield z
    z.close()


def srv_config(zone: DnsZone, extra: str = "") -> str:
    return (f"pools:\n  main:\n    srv: {SRV}\n    resolver: {zone.addr}\n"
            f"    hash: {{function: md5}}\n{extra}route: PoolRoute|main\n")


def owner(servers: dict[int, "object"], key: str) -> int:
    """Where ketama puts ``key`` over ``servers``: the names the router hashes."""
    order = sorted(servers, key=lambda i: (target(i), servers[i].port))
    names = [ketama_name(target(i), servers[i].port) for i in order]
    return order[Hasher(names, None, "md5").index(key.encode())]


def value(key: str) -> bytes:
    return f"v-{key}".encode()


def get_reply(key: str) -> bytes:
    v = value(key)
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key.encode(), len(v), v)


def fill(r, servers: dict) -> None:
    """Every key written through the router, so it sits where ketama puts it."""
    with r.client() as c:
        c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(value(k)), value(k))
                        for k in KEYS))
        got = b""
        while got.count(b"\r\n") < len(KEYS):
            more = c.recv_until(b"\r\n")
            assert more, got[-200:]
            got += more
        assert got == b"STORED\r\n" * len(KEYS)


def check_placement(r, servers: dict, lost: set[str]) -> None:
    """Keys in ``lost`` miss; every other key is a hit on its owner."""
    with r.client() as c:
        for k in KEYS:
            want = b"END\r\n" if k in lost else get_reply(k)
            assert c.request(b"get %s\r\n" % k.encode(), want) == want, k


def confirmed(r, generation: int) -> bool:
    return r.wait_log(f"all {r.workers} worker(s) run config generation {generation}")


def test_srv_pool_follows_added_removed_and_renumbered_servers_under_load(memcached, router, zone):
    ms = {0: memcached(), 1: memcached(), 2: memcached("-l", "::1")}
    servers = {0: ms[0], 1: ms[1]}
    publish(zone, servers)
    r = router(srv_config(zone), workers=2, extra=["-t", "200ms", "-H", "200ms"])
    assert r.wait_log("pool main: srv: _memcache._tcp.mc.test")
    fill(r, servers)
    load = Load(r.port)
    try:
        # added: only the keys the new server takes move (they miss there)
        servers = {0: ms[0], 1: ms[1], 2: ms[2]}
        publish(zone, servers)
        assert r.wait_log("DNS: pool main: 3 server(s) (+mc-2.mc.test:")
        assert confirmed(r, 2)
        moved = {k for k in KEYS if owner(servers, k) == 2}
        assert 0 < len(moved) < len(KEYS) * 0.6
        check_placement(r, servers, moved)
        # renumbered: server 2's pod comes back at another address, same name:
        # no generation, no key moves, its connections follow the name
        publish(zone, servers, v6=frozenset({2}))
        assert r.wait_log(f"host {target(2)}:{ms[2].port}: address 127.0.0.1 -> ::1")
        time.sleep(0.5)
        assert "generation 3" not in r.stderr()
        with r.client() as c:       # what server 2 has is still read (now over IPv6)
            c.request(b"set moved:probe 0 0 1\r\nx\r\n", b"STORED\r\n")
        check_placement(r, servers, moved)
        # removed: server 0's keys go elsewhere (misses); the rest still hit
        lost = moved | {k for k in KEYS if owner(servers, k) == 0}
        del servers[0]
        publish(zone, servers, v6=frozenset({2}))
        assert r.wait_log("DNS: pool main: 2 server(s) (+0 -mc-0.mc.test:")
        assert confirmed(r, 3)
        assert {k for k in KEYS if owner(servers, k) != owner({**servers, 0: ms[0]}, k)} <= lost
        check_placement(r, servers, lost)
    finally:
        load.finish()
    assert load.errors == [] and load.closed == 0
    assert load.batches > 10
    log = r.stderr()
    assert "generation 4" not in log
    assert "-> 127.0.0.1" not in log                  # server 2 stayed at its new address


def test_failed_or_empty_answers_keep_the_last_membership(memcached, router, zone):
    servers = {0: memcached(), 1: memcached()}
    publish(zone, servers)
    r = router(srv_config(zone), extra=["-t", "200ms"])
    fill(r, servers)
    load = Load(r.port, clients=2)
    try:
        for mode in ("servfail", "empty", "drop"):
            seen = zone.queries
            zone.mode = mode
            assert wait_until(lambda: zone.queries >= seen + 3, 15)
        zone.mode = "ok"
        publish(zone, {})                 # NOERROR with no SRV records at all
        seen = zone.queries
        assert wait_until(lambda: zone.queries >= seen + 3, 15)
        check_placement(r, servers, set())
    finally:
        load.finish()
    assert load.errors == [] and load.closed == 0
    log = r.stderr()
    # one line for the whole failing spell (SERVFAIL, empty, timeouts, no
    # records), one when it answers again, and no reload in between
    assert log.count("keeping the last membership (2 server(s))") == 1, log
    assert "answered SERVFAIL" in log
    assert "generation 2" not in log
    publish(zone, servers)
    assert r.wait_log(f"pool main: srv: {SRV} via {zone.addr} answers again")
    time.sleep(0.5)
    assert "generation 2" not in r.stderr()
    check_placement(r, servers, set())
    # a reload of the file keeps the members of a source it did not change
    r.signal(signal.SIGHUP)
    assert confirmed(r, 2)
    assert f"reloading {r.config_path}: generation 2: PoolRoute, 2 host(s) (0 added, 0 removed)" \
        in r.stderr()
    check_placement(r, servers, set())


def test_a_pool_that_never_answered_serves_once_it_does(memcached, router, zone):
    m = memcached("-l", "::1")
    zone.mode = "servfail"
    r = router(f"pools:\n  main:\n    dns: mc.test:{m.port}\n    resolver: {zone.addr}\n"
               "route: PoolRoute|main\n", extra=["-t", "200ms"])
    assert r.wait_log("the pool has no servers until it answers")
    with r.client() as c:
        assert c.request(b"get a\r\n", NO_HEALTHY) == NO_HEALTHY
    zone.set("mc.test", "A", ["127.0.0.1"])
    zone.set("mc.test", "AAAA", ["::1"])
    zone.mode = "ok"
    assert r.wait_log("DNS: pool main: 2 server(s)")
    assert confirmed(r, 2)
    with r.client() as c:
        assert c.request(b"set a 0 0 1\r\nx\r\n", b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n") == \
            b"VALUE a 0 1\r\nx\r\nEND\r\n"
        stats = c.call(b"stats servers\r\n", b"END\r\n").decode()
    assert f"127.0.0.1:{m.port}" in stats and f"[::1]:{m.port}" in stats


def test_route_command_asks_dns_for_a_dns_pool(zone, tmp_path):
    servers = {0: SimpleNamespace(port=11300), 1: SimpleNamespace(port=11301)}   # never contacted
    publish(zone, servers)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(srv_config(zone))
    key = KEYS[7]
    proc = subprocess.run([sys.executable, "-m", "mcrouter", "route", "get", key, "-f", str(cfg)],
                          capture_output=True, timeout=30, cwd=str(REPO))
    want = f"{target(owner(servers, key))}:{servers[owner(servers, key)].port}"
    assert proc.stdout.decode().splitlines()[-1] == f"servers: {want}", proc.stderr
