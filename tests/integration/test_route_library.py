"""mcrouter's route handles end to end, over real memcached servers.

Each server is its own one-server pool (``p0``, ``p1``, ...), so every
assertion says exactly which server a request reached.  "Killed" is a real
``kill -9`` of a memcached process the test started.
"""
from __future__ import annotations

import zlib

import yaml

from support import show, wait_until
from support.polling import poll, wait_value

UPSTREAM_ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
DOWN = (UPSTREAM_ERROR, NO_HEALTHY)


def config(servers, route) -> str:
    pools = {f"p{i}": {"servers": [m.addr]} for i, m in enumerate(servers)}
    return yaml.safe_dump({"pools": pools, "route": route}, sort_keys=False)


def pools(n: int) -> list[str]:
    return [f"PoolRoute|p{i}" for i in range(n)]


def hit(key: str, data: bytes, flags: int = 0) -> bytes:
    return f"VALUE {key} {flags} {len(data)}\r\n".encode() + data + b"\r\nEND\r\n"


def set_req(key: str, data: bytes, flags: int = 0, extra: str = "") -> bytes:
    return f"set {key} {flags} 0 {len(data)}{extra}\r\n".encode() + data + b"\r\n"


# ---------------------------------------------------------------------------
# FailoverRoute

def test_failover_moves_on_errors_not_misses(memcached, router):
    m0, m1 = memcached(), memcached()
    m1.set("only1", b"one")
    r = router(config([m0, m1], {"type": "FailoverRoute", "children": pools(2)}), timeout_ms=500)
    with r.client() as c:
        assert c.request(b"get only1\r\n", b"END\r\n") == b"END\r\n"        # a miss is a reply
        assert c.request(set_req("k", b"v"), b"STORED\r\n") == b"STORED\r\n"
    wait_value(m0, "k", hit("k", b"v"))
    assert m1.get_raw("k") == b"END\r\n"
    m0.kill()
    with r.client() as c:                  # errors (refused, then down) move to the backup
        for i in range(3):
            assert c.request(set_req(f"f{i}", b"x"), b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"get only1\r\n", hit("only1", b"one")) == hit("only1", b"one")
    for i in range(3):
        wait_value(m1, f"f{i}", hit(f"f{i}", b"x"))


def test_failover_errors_per_operation_and_max_tries(memcached, router):
    m0, m1, m2 = memcached(), memcached(), memcached()
    m2.set("k", b"two")
    route = {"type": "FailoverRoute", "children": pools(3), "max_tries": 2,
             "failover_errors": {"gets": ["connect_error", "tko"], "updates": ["timeout"]}}
    r = router(config([m0, m1, m2], route), timeout_ms=500)
    m0.kill()
    m1.kill()
    with r.client() as c:
        # gets fail over, but only twice: the second dead server's error is the reply
        assert c.call(b"get k\r\n") in DOWN
        # updates fail over only on timeouts: the first dead server's error is the reply
        assert c.call(set_req("s", b"v")) in DOWN
        # deletes use the default (every error class) but still at most 2 tries
        assert c.call(b"delete k\r\n") in DOWN
    assert m2.get_raw("k") == hit("k", b"two")


def test_failover_last_reply_whatever_it_is(memcached, router):
    m0, m1 = memcached(), memcached()
    r = router(config([m0, m1], {"type": "FailoverRoute", "children": pools(2)}), timeout_ms=500)
    m0.kill()
    m1.kill()
    poll(r.port, b"get k\r\n", NO_HEALTHY, (UPSTREAM_ERROR,))


# ---------------------------------------------------------------------------
# All*Route

def test_all_sync_waits_for_all_and_returns_the_worst(memcached, router):
    m0, m1, m2 = memcached(), memcached(), memcached()
    m1.set("k", b"one")
    r = router(config([m0, m1, m2], {"type": "AllSyncRoute", "children": pools(3)}), timeout_ms=500)
    with r.client() as c:
        assert c.request(set_req("a", b"v"), b"STORED\r\n") == b"STORED\r\n"
        for m in (m0, m1, m2):                     # all written before the reply
            assert m.get_raw("a") == hit("a", b"v")
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"          # a miss is worse than a hit
        assert c.request(b"add k 0 0 1\r\nx\r\n", b"NOT_STORED\r\n") == b"NOT_STORED\r\n"
        c.send(set_req("q", b"quiet", extra=" noreply"))                   # quiet: nothing back
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
    for m in (m0, m1, m2):
        assert m.get_raw("q") == hit("q", b"quiet")
    m2.kill()
    with r.client() as c:
        assert c.call(set_req("b", b"v")) in DOWN                          # the error is the worst
    assert m0.get_raw("b") == hit("b", b"v")


def test_all_async_answers_at_once_and_writes_everywhere(memcached, router):
    m0, m1 = memcached(), memcached()
    r = router(config([m0, m1], {"type": "AllAsyncRoute", "children": pools(2)}))
    with r.client() as c:
        assert c.request(set_req("k", b"v"), b"NOT_STORED\r\n") == b"NOT_STORED\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        c.send(set_req("n", b"w", extra=" noreply"))
        assert c.request(b"delete zz\r\n", b"NOT_FOUND\r\n") == b"NOT_FOUND\r\n"
    for m in (m0, m1):
        wait_value(m, "k", hit("k", b"v"))
        wait_value(m, "n", hit("n", b"w"))
    m1.kill()
    with r.client() as c:                      # a dead child changes nothing for the client
        assert c.request(set_req("j", b"v"), b"NOT_STORED\r\n") == b"NOT_STORED\r\n"
    wait_value(m0, "j", hit("j", b"v"))


def test_all_initial_returns_the_first_childs_reply(memcached, router):
    m0, m1 = memcached(), memcached()
    m1.set("k", b"one")
    r = router(config([m0, m1], {"type": "AllInitialRoute", "children": pools(2)}), timeout_ms=500)
    with r.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(set_req("w", b"v"), b"STORED\r\n") == b"STORED\r\n"
    wait_value(m1, "w", hit("w", b"v"))
    m0.kill()
    with r.client() as c:
        assert c.call(set_req("x", b"v")) in DOWN
    wait_value(m1, "x", hit("x", b"v"))


def test_all_majority_needs_half_plus_one(memcached, router):
    ms = [memcached() for _ in range(3)]
    ms[0].set("two", b"v")
    ms[1].set("two", b"v")
    ms[2].set("one", b"v")
    r = router(config(ms, {"type": "AllMajorityRoute", "children": pools(3)}), timeout_ms=500)
    with r.client() as c:
        assert c.request(b"get two\r\n", hit("two", b"v")) == hit("two", b"v")
        assert c.request(b"get one\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(set_req("s", b"v"), b"STORED\r\n") == b"STORED\r\n"
    ms[2].kill()
    with r.client() as c:
        assert c.request(set_req("t", b"v"), b"STORED\r\n") == b"STORED\r\n"   # 2 of 3 agree
    ms[1].kill()
    with r.client() as c:                   # 1 success, 2 errors: the errors are the majority
        assert c.call(set_req("u", b"v")) in DOWN


# ---------------------------------------------------------------------------
# selectors, hashing over routes, random, latest

def test_prefix_selector_longest_prefix_and_wildcard(memcached, router):
    ms = [memcached() for _ in range(3)]
    route = {"type": "PrefixSelectorRoute",
             "policies": {"a:": "PoolRoute|p0", "a:b:": "PoolRoute|p1"}, "wildcard": "PoolRoute|p2"}
    r = router(config(ms, route))
    with r.client() as c:
        for key in ("a:1", "a:b:1", "zz", "a", "a:b"):
            assert c.request(set_req(key, key.encode()), b"STORED\r\n") == b"STORED\r\n"
        # one multi-key get across the three children, merged in request order
        got = c.call(b"get zz a:b:1 nope a:1\r\n", b"END\r\n")
        assert got == b"".join(hit(k, k.encode())[:-5] for k in ("zz", "a:b:1", "a:1")) + b"END\r\n"
    assert ms[0].get_raw("a:1") == hit("a:1", b"a:1")
    assert ms[0].get_raw("a:b") == hit("a:b", b"a:b")
    assert ms[1].get_raw("a:b:1") == hit("a:b:1", b"a:b:1")
    assert ms[2].get_raw("zz") == hit("zz", b"zz")
    assert ms[2].get_raw("a") == hit("a", b"a")


def test_prefix_selector_without_wildcard_is_null(memcached, router):
    m0 = memcached()
    r = router(config([m0], {"type": "PrefixSelectorRoute", "policies": {"x": "PoolRoute|p0"}}))
    with r.client() as c:
        assert c.request(set_req("other", b"v"), b"NOT_STORED\r\n") == b"NOT_STORED\r\n"
        assert c.request(set_req("xy", b"v"), b"STORED\r\n") == b"STORED\r\n"


def test_hash_route_spreads_keys_over_child_routes(memcached, router):
    ms = [memcached() for _ in range(3)]
    route = {"type": "HashRoute", "children": pools(3), "hash": {"function": "md5"}}
    r = router(config(ms, route))
    keys = [f"h{i}" for i in range(60)]
    with r.client() as c:
        for k in keys:
            assert c.request(set_req(k, b"v"), b"STORED\r\n") == b"STORED\r\n"
        got = c.call(("get " + " ".join(keys) + "\r\n").encode(), b"END\r\n")
        assert got == b"".join(hit(k, b"v")[:-5] for k in keys) + b"END\r\n"
    counts = [sum(m.get_raw(k) != b"END\r\n" for k in keys) for m in ms]
    assert sum(counts) == 60 and all(counts), counts


def test_random_route_uses_every_child(memcached, router):
    m0, m1 = memcached(), memcached()
    r = router(config([m0, m1], {"type": "RandomRoute", "children": pools(2)}))
    with r.client() as c:
        for i in range(60):
            assert c.request(set_req(f"r{i}", b"v"), b"STORED\r\n") == b"STORED\r\n"
    on0 = sum(m0.get_raw(f"r{i}") != b"END\r\n" for i in range(60))
    on1 = sum(m1.get_raw(f"r{i}") != b"END\r\n" for i in range(60))
    assert on0 + on1 == 60 and on0 and on1


def test_latest_route_sticks_to_its_pick_and_fails_over(memcached, router):
    ms = [memcached() for _ in range(3)]
    r = router(config(ms, {"type": "LatestRoute", "children": pools(3), "failover_count": 2}),
               timeout_ms=500)
    with r.client() as c:
        for i in range(10):
            assert c.request(set_req(f"l{i}", b"v"), b"STORED\r\n") == b"STORED\r\n"
    holders = [m for m in ms if m.get_raw("l0") != b"END\r\n"]
    assert len(holders) == 1
    assert all(holders[0].get_raw(f"l{i}") != b"END\r\n" for i in range(10))
    holders[0].kill()
    with r.client() as c:
        for i in range(3):
            assert c.request(set_req(f"n{i}", b"v"), b"STORED\r\n") == b"STORED\r\n"
    assert sum(m.get_raw("n0") != b"END\r\n" for m in ms if m.alive()) == 1


# ---------------------------------------------------------------------------
# shadow and warm-up

def test_shadow_copies_without_changing_the_reply(memcached, router):
    main, shadow = memcached(), memcached()
    shadow.set("k", b"shadow-value")
    r = router(config([main, shadow], {"type": "ShadowRoute", "child": "PoolRoute|p0",
                                       "shadow": "PoolRoute|p1"}))
    with r.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"      # the shadow's hit is dropped
        assert c.request(set_req("s", b"v"), b"STORED\r\n") == b"STORED\r\n"
    wait_value(shadow, "s", hit("s", b"v"))
    shadow.kill()
    with r.client() as c:                   # a dead shadow changes nothing
        for i in range(5):
            assert c.request(set_req(f"t{i}", b"v"), b"STORED\r\n") == b"STORED\r\n"
            assert c.request(f"get t{i}\r\n".encode(), hit(f"t{i}", b"v")) == hit(f"t{i}", b"v")


def test_shadow_key_fraction_is_a_fixed_slice_of_keys(memcached, router):
    main, shadow = memcached(), memcached()
    r = router(config([main, shadow], {"type": "ShadowRoute", "child": "PoolRoute|p0",
                                       "shadow": "PoolRoute|p1", "key_fraction_range": [0.0, 0.5]}))
    keys = [f"f{i}" for i in range(40)]
    with r.client() as c:
        for k in keys:
            assert c.request(set_req(k, b"v"), b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
    expected = {k for k in keys if zlib.crc32(k.encode()) < 2**31}

    def copied() -> set[str]:
        return {k for k in keys if shadow.get_raw(k) != b"END\r\n"}
    wait_until(lambda: copied() == expected, 5)      # shadow copies are sent in the background
    # then one more key of the slice, set after them: once it is on the shadow,
    # a copy of a key outside the slice would have landed too
    sentinel = next(f"s{i}" for i in range(100) if zlib.crc32(f"s{i}".encode()) < 2**31)
    with r.client() as c:
        assert c.request(set_req(sentinel, b"v"), b"STORED\r\n") == b"STORED\r\n"
    assert wait_until(lambda: shadow.get_raw(sentinel) != b"END\r\n", 5)
    assert copied() == expected and 0 < len(expected) < 40


def test_warm_up_fills_cold_from_warm(memcached, router):
    cold, warm = memcached(), memcached()
    warm.set("w1", b"warm-one", flags=5)
    warm.set("w2", b"warm-two", flags=6)
    cold.set("c1", b"cold-one")
    r = router(config([cold, warm], {"type": "WarmUpRoute", "cold": "PoolRoute|p0",
                                     "warm": "PoolRoute|p1", "exptime": 100}))
    with r.client() as c:
        assert c.request(b"get w1\r\n", hit("w1", b"warm-one", 5)) == hit("w1", b"warm-one", 5)
        got = c.call(b"get c1 w2 none\r\n", b"END\r\n")
        assert got == hit("c1", b"cold-one")[:-5] + hit("w2", b"warm-two", 6), show(got)
        assert c.request(set_req("new", b"v"), b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"mg w1 v\r\n", b"VA 8\r\nwarm-one\r\n") == b"VA 8\r\nwarm-one\r\n"
    wait_value(cold, "w1", hit("w1", b"warm-one", 5))
    wait_value(cold, "w2", hit("w2", b"warm-two", 6))
    assert cold.get_raw("new") == hit("new", b"v")
    assert warm.get_raw("new") == b"END\r\n"                  # writes go to cold only
    with cold.client() as c:                                  # written with the exptime
        ttl = c.call(b"mg w1 t\r\n")
        assert ttl.startswith(b"HD t") and 90 <= int(ttl.split(b"t")[1]) <= 100, ttl
    warm.kill()
    with r.client() as c:                   # cold hits need nothing from warm
        assert c.request(b"get w1\r\n", hit("w1", b"warm-one", 5)) == hit("w1", b"warm-one", 5)
        # cold's miss stands when warm fails
        assert c.request(b"get absent\r\n", b"END\r\n") == b"END\r\n"


# ---------------------------------------------------------------------------
# null and error

def test_null_route_replies(router):
    r = router("route: NullRoute\n")
    with r.client() as c:
        for req, exp in [(b"get a b\r\n", b"END\r\n"), (set_req("k", b"v"), b"NOT_STORED\r\n"),
                         (b"delete k\r\n", b"NOT_FOUND\r\n"), (b"incr k 1\r\n", b"NOT_FOUND\r\n"),
                         (b"mg k v\r\n", b"EN\r\n"), (b"ms k 1\r\nv\r\n", b"NS\r\n"),
                         (b"md k\r\n", b"NF\r\n"), (b"flush_all\r\n", b"OK\r\n")]:
            assert c.request(req, exp) == exp
        c.send(set_req("k", b"v", extra=" noreply") + b"mg k v q\r\n")
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
        assert c.call(b"version\r\n") == b"VERSION 1.6.18\r\n"


def test_error_route_replies(router):
    r = router("route: ErrorRoute|under maintenance\n")
    err = b"SERVER_ERROR mcrouter: under maintenance\r\n"
    with r.client() as c:
        assert c.request(b"get k\r\n", err) == err
        assert c.request(set_req("k", b"v"), err) == err
    r2 = router("route: {type: ErrorRoute}\n")
    with r2.client() as c:
        exp = b"SERVER_ERROR mcrouter: error route\r\n"
        assert c.request(b"get k\r\n", exp) == exp


# ---------------------------------------------------------------------------
# where would this key go?

def test_reserved_route_key_answers_from_the_running_router(memcached, router):
    ms = [memcached() for _ in range(2)]
    route = {"type": "FailoverRoute", "children": pools(2)}
    r = router(config(ms, route))
    with r.client() as c:
        got = c.call(b"get __mcrouter__.route(set,foo)\r\n", b"END\r\n")
        data = f"{ms[0].addr}\r\n{ms[1].addr}".encode()
        assert got == b"VALUE __mcrouter__.route(set,foo) 0 %d\r\n%s\r\nEND\r\n" % (len(data), data)
        got = c.call(b"get __mcrouter__.route_handles(get,foo)\r\n", b"END\r\n")
        assert b"FailoverRoute\r\n  PoolRoute|p0\r\n    " + ms[0].addr.encode() in got
        bad = b"SERVER_ERROR mcrouter: unknown __mcrouter__ key\r\n"
        assert c.request(b"get __mcrouter__.nothing\r\n", bad) == bad


def test_failover_by_key_spreads_a_lost_childs_load(memcached, router):
    ms = [memcached() for _ in range(4)]
    route = {"type": "FailoverRoute", "children": pools(4), "order": "by_key"}
    r = router(config(ms, route), timeout_ms=500)
    ms[0].kill()
    keys = [f"b{i}" for i in range(40)]
    with r.client() as c:
        for k in keys:
            assert c.request(set_req(k, b"v"), b"STORED\r\n") == b"STORED\r\n"
    holders = {}
    for k in keys:
        on = [i for i in (1, 2, 3) if ms[i].get_raw(k) != b"END\r\n"]
        assert len(on) == 1
        holders[k] = on[0]
        # the rotation of the other children is the key's CRC-32 modulo their number
        assert on[0] == 1 + zlib.crc32(k.encode()) % 3
    assert len(set(holders.values())) == 3


def test_ordered_routes_over_a_named_pool(memcached, router):
    m0, m1, other = memcached(), memcached(), memcached()
    text = yaml.safe_dump({"orderedPool": [other.addr],
                           "pools": {"pair": {"servers": [m0.addr, m1.addr]}},
                           "route": {"type": "OperationSelectorRoute",
                                     "operation_policies": {"set": "AllFastestRoute|pair",
                                                            "get": "MissFailoverRoute|pair"}}})
    r = router(text)
    m1.set("only1", b"x")
    with r.client() as c:
        assert c.request(set_req("k", b"v"), b"STORED\r\n") == b"STORED\r\n"
        assert c.request(b"get only1\r\n", hit("only1", b"x")) == hit("only1", b"x")
        assert c.request(b"delete k\r\n", b"NOT_FOUND\r\n") == b"NOT_FOUND\r\n"   # orderedPool
    wait_value(m0, "k", hit("k", b"v"))
    wait_value(m1, "k", hit("k", b"v"))


def test_pool_stats_fail_over_to_a_live_server(memcached, router):
    m0, m1 = memcached(), memcached()
    r = router(yaml.safe_dump({"pools": {"both": {"servers": [m0.addr, m1.addr]}},
                               "route": "PoolRoute|both"}), timeout_ms=500)
    m0.kill()
    with r.client() as c:
        stats = c.call(b"stats\r\n", b"END\r\n")
    assert f"STAT pid {m1.pid}\r\n".encode() in stats
