"""PoolRoute end to end: placement, multi-key splitting, broadcast, local replies.

Every assertion about placement asks the memcached servers themselves
where a key landed.
"""
from __future__ import annotations

import os
import re
import signal

import pytest

from support import show

from support.twemproxy_probe import NUTCRACKER, held_by, nutcracker, store_through

from mcrouter._hash import Hasher, ketama_name

VERSION = b"VERSION 1.6.18\r\n"
UPSTREAM_ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"


# twemproxy's fnv1a_64 keeps 32 bits of state and clusters keys that differ
# only at the end (k1, k2, ...): md5 spreads the small key sets used here.
FUNCTION = "md5"


def pool_yaml(servers, function=FUNCTION, distribution="ketama", extra="") -> str:
    """The issue's config form, as written there."""
    return (f"pools:\n  main:\n    servers: [{', '.join(m.addr for m in servers)}]\n"
            f"    hash: {{function: {function}, distribution: {distribution}}}\n{extra}"
            f"route: PoolRoute|main\n")


def placement(servers, keys, function=FUNCTION) -> list[int]:
    h = Hasher([ketama_name("127.0.0.1", m.port) for m in servers], function=function)
    return [h.index(k) for k in keys]


def value(key: bytes, data: bytes, flags: int = 0) -> bytes:
    return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)


def test_issue_config_works_as_written(memcached, router):
    m1, m2 = memcached(), memcached()
    text = (f"pools:\n  main:\n    servers: [{m1.addr}, {m2.addr}]\n"
            f"    hash: {{function: fnv1a_64, distribution: ketama}}\nroute: PoolRoute|main\n")
    r = router(text)
    keys = [b"%d:key" % i for i in range(300)]
    with r.client() as c:
        payload = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k) for k in keys)
        assert c.pipeline(payload, b"STORED\r\n" * len(keys)) == b"STORED\r\n" * len(keys)
        assert c.request(b"version\r\n", VERSION) == VERSION            # answered locally
    where = held_by([m1.port, m2.port], keys)
    assert where == placement([m1, m2], keys, "fnv1a_64")
    assert 50 < where.count(0) < 250                                   # both servers used


@pytest.mark.skipif(NUTCRACKER is None, reason="nutcracker (twemproxy) is not installed")
@pytest.mark.parametrize("function", ["fnv1a_64", "md5", "crc32", "murmur", "one_at_a_time"])
def test_same_servers_as_twemproxy(memcached, router, function):
    """Keys stored through a real nutcracker and through the router land on the same servers."""
    servers = [memcached() for _ in range(4)]
    ports = [m.port for m in servers]
    keys = [(f"k\u00e9y:{i}" if i % 10 == 0 else f"user:{i}").encode() for i in range(10000)]
    with nutcracker([m.addr for m in servers], function) as port:
        store_through(port, keys)
    theirs = held_by(ports, keys)
    for m in servers:
        with m.client() as c:
            assert c.request(b"flush_all\r\n", b"OK\r\n") == b"OK\r\n"
    r = router(pool_yaml(servers, function))
    store_through(r.port, keys)
    ours = held_by(ports, keys)
    assert min(theirs) >= 0 and min(ours) >= 0
    diff = [k for k, a, b in zip(keys, theirs, ours) if a != b]
    assert not diff, f"{len(diff)} keys on other servers than twemproxy's, e.g. {diff[:3]}"
    assert ours == placement(servers, keys, function=function)


def test_200_key_get_across_3_shards_in_request_order(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers))
    keys = [b"item:%03d" % i for i in range(200)]
    stored = keys[::2]                                 # every other key is a hit
    with r.client() as c:
        for i, k in enumerate(stored):
            assert c.request(b"set %s %d 0 %d\r\n%s\r\n" % (k, i, len(k) + 1, k + b"!"),
                             b"STORED\r\n") == b"STORED\r\n"
        shuffled = keys[100:] + keys[:100] + [keys[0]]            # and one duplicate
        expect = b"".join(value(k, k + b"!", stored.index(k)) for k in shuffled if k in stored)
        expect += b"END\r\n"
        got = c.call(b"get " + b" ".join(shuffled) + b"\r\n", b"END\r\n")
        assert got == expect, show(got)
    assert len(set(placement(servers, stored))) == 3


def test_gets_cas_values_are_each_servers_own(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers))
    keys = [b"c%d" % i for i in range(30)]
    with r.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 1\r\nx\r\n" % k, b"STORED\r\n") == b"STORED\r\n"
        got = c.call(b"gets " + b" ".join(keys) + b"\r\n", b"END\r\n")
    direct = {}
    for m in servers:
        reply = m.get_raw(*[k.decode() for k in keys], cmd="gets")
        for line in reply.split(b"\r\n"):
            if line.startswith(b"VALUE"):
                direct[line.split()[1]] = line
    lines = [ln for ln in got.split(b"\r\n") if ln.startswith(b"VALUE")]
    assert [ln.split()[1] for ln in lines] == keys
    assert lines == [direct[k] for k in keys]
    # the cas value works through the router
    first = lines[0].split()
    with r.client() as c:
        assert c.request(b"cas %s 0 0 1 %s\r\ny\r\n" % (first[1], first[4]),
                         b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"cas %s 0 0 1 %s\r\nz\r\n" % (first[1], first[4]),
                         b"EXISTS\r\n") == b"EXISTS\r\n"


def test_down_shard_leaves_only_its_keys_missing(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers), timeout_ms=500)
    keys = [b"d%d" % i for i in range(60)]
    where = placement(servers, keys)
    with r.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 1\r\nv\r\n" % k, b"STORED\r\n") == b"STORED\r\n"
    servers[1].kill()
    alive = [k for k, w in zip(keys, where) if w != 1]
    dead = [k for k, w in zip(keys, where) if w == 1]
    assert alive and dead
    expect = b"".join(value(k, b"v") for k in alive) + b"END\r\n"
    with r.client() as c:
        for _ in range(3):                 # while the router notices, and after
            assert c.call(b"get " + b" ".join(keys) + b"\r\n", b"END\r\n") == expect
        # a key of the dead shard alone gets the router's error
        reply = c.call(b"get %s\r\n" % dead[0])
        assert reply in (UPSTREAM_ERROR, NO_HEALTHY)
        # only errors: the error, not an empty hit list
        reply = c.call(b"get " + b" ".join(dead[:3]) + b"\r\n")
        assert reply in (UPSTREAM_ERROR, NO_HEALTHY)


def test_meta_pipeline_goes_to_each_keys_server_in_order(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers))
    keys = [b"m%d" % i for i in range(30)]
    with r.client() as c:
        req = b"".join(b"ms %s 2 T0\r\n%s\r\n" % (k, k[-2:].rjust(2, b"_")) for k in keys) + b"mn\r\n"
        assert c.call(req, b"MN\r\n") == b"HD\r\n" * 30 + b"MN\r\n"
        req = b"".join(b"mg %s v k q\r\n" % k for k in keys + [b"nope"]) + b"mn\r\n"
        expect = b"".join(b"VA 2 k%s\r\n%s\r\n" % (k, k[-2:].rjust(2, b"_")) for k in keys)
        assert c.call(req, b"MN\r\n") == expect + b"MN\r\n"
    where = held_by([m.port for m in servers], keys)
    assert where == placement(servers, keys)


def test_flush_all_reaches_every_server_once(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers))
    for m in servers:
        m.set("x", b"1")
    with r.client() as c:
        assert c.request(b"flush_all\r\n", b"OK\r\n") == b"OK\r\n"
        assert all(m.get_raw("x") == b"END\r\n" for m in servers)
        for m in servers:
            m.set("y", b"1")
        # noreply: nothing back, and the next reply is the next request's
        c.send(b"flush_all noreply\r\n")
        assert c.request(b"version\r\n", VERSION) == VERSION
        assert all(m.get_raw("y") == b"END\r\n" for m in servers)
        for m in servers:
            m.set("z", b"1")
        # delayed: memcached applies it at a clock tick, so a delay of 2 could land within
        # milliseconds; 30 cannot before the check below
        assert c.request(b"flush_all 30\r\n", b"OK\r\n") == b"OK\r\n"
        assert all(m.get_raw("z") != b"END\r\n" for m in servers)
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"              # local
        assert c.request(b"verbosity 1\r\n", b"OK\r\n") == b"OK\r\n"
        stats = c.call(b"stats\r\n", b"END\r\n")
        assert re.search(rb"STAT pid (\d+)\r\n", stats)


def test_flush_all_with_a_dead_server_reports_the_error(memcached, router):
    m1, m2 = memcached(), memcached()
    r = router(pool_yaml([m1, m2]), timeout_ms=500)
    m2.kill()
    with r.client() as c:
        assert c.call(b"flush_all\r\n") in (UPSTREAM_ERROR, NO_HEALTHY)


def test_hash_stop_keeps_related_keys_together(memcached, router):
    servers = [memcached() for _ in range(3)]
    text = (f"pools:\n  main:\n    servers: [{', '.join(m.addr for m in servers)}]\n"
            f"    hash: {{function: md5, hash_stop: '|#|'}}\nroute: PoolRoute|main\n")
    r = router(text)
    with r.client() as c:
        for i in range(20):
            for part in (b"a", b"b", b"c"):
                k = b"user%d|#|%s" % (i, part)
                assert c.request(b"set %s 0 0 1\r\nv\r\n" % k, b"STORED\r\n") == b"STORED\r\n"
    for i in range(20):
        keys = [b"user%d|#|%s" % (i, p) for p in (b"a", b"b", b"c")]
        where = held_by([m.port for m in servers], keys)
        assert len(set(where)) == 1 and where[0] == placement(servers, [b"user%d" % i])[0]


def test_a_reload_that_adds_a_server_moves_only_the_keys_ketama_moves(memcached, router):
    servers = [memcached() for _ in range(4)]
    r = router(pool_yaml(servers[:3]))
    keys = [b"grow:%d" % i for i in range(400)]
    with r.client() as c:
        payload = b"".join(b"set %s 0 0 1\r\nv\r\n" % k for k in keys)
        assert c.pipeline(payload, b"STORED\r\n" * len(keys)) == b"STORED\r\n" * len(keys)
    write_config(r.config_path, pool_yaml(servers))
    r.signal(signal.SIGHUP)
    assert r.wait_log("reload 2: all ")
    before, after = placement(servers[:3], keys), placement(servers, keys)
    stay = [k for k, a, b in zip(keys, before, after) if a == b]
    moved = [k for k, a, b in zip(keys, before, after) if a != b]
    assert all(after[keys.index(k)] == 3 for k in moved)       # only to the new server
    assert 0.08 < len(moved) / len(keys) < 0.45     # about a quarter (varies with the ports)
    with r.client() as c:
        got = c.call(b"get " + b" ".join(keys) + b"\r\n", b"END\r\n")
    assert got == b"".join(value(k, b"v") for k in stay) + b"END\r\n"


def test_weighted_rendezvous_through_the_router(memcached, router):
    servers = [memcached() for _ in range(3)]
    text = (f"pools:\n  main:\n    servers: [{', '.join(m.addr for m in servers)}]\n"
            f"    weights: [1, 1, 4]\n    hash: {{distribution: rendezvous, salt: v2}}\n"
            f"route: PoolRoute|main\n")
    r = router(text)
    keys = [b"w%d" % i for i in range(600)]
    store_through(r.port, keys)
    where = held_by([m.port for m in servers], keys)
    h = Hasher([ketama_name("127.0.0.1", m.port) for m in servers], [1, 1, 4],
               distribution="rendezvous", salt=b"v2")
    assert where == [h.index(k) for k in keys]
    assert 0.55 < where.count(2) / len(keys) < 0.78            # 4/6 expected


def write_config(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_gat_across_shards_touches_every_key(memcached, router):
    servers = [memcached() for _ in range(3)]
    r = router(pool_yaml(servers))
    keys = [b"t%d" % i for i in range(90)]
    store_through(r.port, keys)
    assert len(set(placement(servers, keys))) == 3
    with r.client() as c:
        got = c.call(b"gat 500 " + b" ".join(keys) + b" none\r\n", b"END\r\n")
        assert got == b"".join(value(k, k) for k in keys) + b"END\r\n"
        got = c.call(b"gats 600 " + b" ".join(keys) + b"\r\n", b"END\r\n")
        assert [ln.split()[1] for ln in got.split(b"\r\n") if ln.startswith(b"VALUE")] == keys
    for m, k in ((servers[i], k) for k, i in zip(keys, placement(servers, keys))):
        with m.client() as c:
            ttl = c.call(b"mg %s t\r\n" % k)
            assert ttl.startswith(b"HD t") and 550 < int(ttl.split(b"t")[1]) <= 600, ttl


def test_base64_keys_go_where_their_decoded_key_lives(memcached, router):
    """ms/mg/md/ma with ``b`` hash the key memcached stores, not its encoding,
    so text and meta commands on one key meet on one server (issue 10)."""
    import base64
    servers = [memcached() for _ in range(2)]
    r = router(pool_yaml(servers))
    keys = [b"b64key%d" % i for i in range(50)]
    enc = [base64.b64encode(k) for k in keys]
    assert len(set(placement(servers, keys))) == 2
    with r.client() as c:
        req = b"".join(b"ms %s 2 b\r\nv%d\r\n" % (e, i % 10) for i, e in enumerate(enc)) + b"mn\r\n"
        assert c.call(req, b"MN\r\n") == b"HD\r\n" * 50 + b"MN\r\n"
    assert held_by([m.port for m in servers], keys) == placement(servers, keys)
    with r.client() as c:
        got = c.call(b"get " + b" ".join(keys) + b"\r\n", b"END\r\n")
        assert got == b"".join(value(k, b"v%d" % (i % 10)) for i, k in enumerate(keys)) + b"END\r\n"
        req = b"".join(b"mg %s b v\r\n" % e for e in enc[:5]) + b"mn\r\n"
        assert c.call(req, b"MN\r\n") == b"".join(b"VA 2\r\nv%d\r\n" % i for i in range(5)) + b"MN\r\n"
        req = b"".join(b"ma %s b N0 J5 v\r\n" % base64.b64encode(b"ctr%d" % i) for i in range(10))
        assert c.call(req + b"mn\r\n", b"MN\r\n") == b"VA 1\r\n5\r\n" * 10 + b"MN\r\n"
        assert c.call(b"".join(b"incr ctr%d 1\r\n" % i for i in range(10)) + b"mn\r\n",
                      b"MN\r\n") == b"6\r\n" * 10 + b"MN\r\n"
        req = b"".join(b"md %s b q\r\n" % e for e in enc) + b"mn\r\n"
        assert c.call(req, b"MN\r\n") == b"MN\r\n"        # every delete found its key
        assert c.call(b"get " + b" ".join(keys) + b"\r\n", b"END\r\n") == b"END\r\n"
        # memcached's own decoding rules: characters outside the alphabet are skipped
        assert c.call(b"ms Zm9v!YmFy 3 b\r\nabc\r\nget foobar\r\n", b"END\r\n") == \
            b"HD\r\n" + value(b"foobar", b"abc") + b"END\r\n"
    assert held_by([m.port for m in servers], keys) == [-1] * 50


def test_gat_with_no_key_is_an_empty_hit_list(memcached, router):
    servers = [memcached() for _ in range(2)]
    r = router(pool_yaml(servers))
    with r.client() as c:
        assert c.call(b"gat 10\r\ngats 5\r\nmn\r\n", b"MN\r\n") == b"END\r\nEND\r\nMN\r\n"
        assert c.call(b"gat v\r\ngat v k\r\nmn\r\n", b"MN\r\n") == \
            b"CLIENT_ERROR invalid exptime argument\r\n" * 2 + b"MN\r\n"
