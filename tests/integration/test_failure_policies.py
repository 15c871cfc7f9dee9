"""on_down, end to end: a pool of real memcached, one of them killed.

For each policy: what a client sees while the host is down, where the keys
written meanwhile live, and what happens when the host is back.
"""
from __future__ import annotations

import pytest

from mcrouter._hash import Hasher, ketama_name
from support import wait_until

NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
KEYS = [f"k{i}" for i in range(60)]


def config(servers, on_down: str, extra_pools: str = "") -> str:
    return ("health: {rise: 1, fail: 1}\npools:\n  main:\n"
            f"    servers: [{', '.join(m.addr for m in servers)}]\n"
            f"    hash: {{function: md5}}\n    on_down: {on_down}\n{extra_pools}"
            "route: PoolRoute|main\n")


def hasher(servers) -> Hasher:
    return Hasher([ketama_name("127.0.0.1", m.port) for m in servers], None, "md5")


def value_reply(key: str, value: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key.encode(), len(value), value)


def set_all(c, keys, tag: bytes) -> None:
    for k in keys:
        v = tag + k.encode()
        assert c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v), b"STORED\r\n") \
            == b"STORED\r\n", k


def where(servers, key: str) -> list[int]:
    """Indices of the servers that hold ``key`` (asked directly)."""
    return [i for i, m in enumerate(servers)
            if m.alive() and m.get_raw(key) != b"END\r\n"]


def read_reply(c, key: str) -> bytes:
    c.send(b"get %s\r\n" % key.encode())
    first = c.recv_until(b"\r\n")
    if first.startswith(b"VALUE"):
        return first + c.recv_until(b"END\r\n")
    return first


@pytest.fixture
def pool(memcached):
    return [memcached(), memcached(), memcached()]


def down_keys(servers, i: int) -> list[str]:
    h = hasher(servers)
    return [k for k in KEYS if h.index(k.encode()) == i]


def test_fail_answers_the_error_for_the_down_hosts_keys_only(pool, router):
    r = router(config(pool, "fail"), extra=["-H", "200ms"])
    dead = down_keys(pool, 1)
    live = [k for k in KEYS if k not in dead]
    with r.client() as c:
        set_all(c, KEYS, b"a-")
        pool[1].kill()
        assert wait_until(lambda: read_reply(c, dead[0]) == NO_HEALTHY, 10)
        for k in dead:
            assert read_reply(c, k) == NO_HEALTHY
            assert c.request(b"set %s 0 0 1\r\nx\r\n" % k.encode(), NO_HEALTHY) == NO_HEALTHY
        for k in live:
            assert read_reply(c, k) == value_reply(k, b"a-" + k.encode())
        pool[1].restart()
        assert wait_until(lambda: read_reply(c, dead[0]) == b"END\r\n", 10)
    # the keys written while it was down are nowhere; the rest never moved
    assert all(where(pool, k) == [] for k in dead)
    assert all(where(pool, k) == [hasher(pool).index(k.encode())] for k in live)


def test_rehash_moves_only_the_down_hosts_keys_and_brings_them_back(pool, router):
    r = router(config(pool, "rehash"), extra=["-H", "200ms"])
    h = hasher(pool)
    dead = down_keys(pool, 1)
    live = [k for k in KEYS if k not in dead]
    with r.client() as c:
        set_all(c, KEYS, b"a-")
        pool[1].kill()
        # its keys now go to the next live host on the continuum: a miss there
        assert wait_until(lambda: read_reply(c, dead[0]) == b"END\r\n", 10)
        for k in dead:
            assert read_reply(c, k) == b"END\r\n"
        set_all(c, dead, b"b-")
        for k in live:
            assert read_reply(c, k) == value_reply(k, b"a-" + k.encode())
        many = " ".join(dead[:3] + live[:3])
        c.send(f"get {many}\r\n".encode())
        want = b"".join(value_reply(k, b"b-" + k.encode())[:-5] for k in dead[:3]) + \
            b"".join(value_reply(k, b"a-" + k.encode())[:-5] for k in live[:3]) + b"END\r\n"
        assert c.recv_exact(len(want)) == want
        # written while down: on the next host on the continuum, nowhere else
        up = bytes([1, 0, 1])
        for k in dead:
            assert where(pool, k) == [h.index_up(k.encode(), up)]
            assert h.index_up(k.encode(), up) != 1
        pool[1].restart()
        # back: its keys go to it again (empty after its restart)
        assert wait_until(lambda: all(read_reply(c, k) == b"END\r\n" for k in dead), 10)
        for k in live:
            assert read_reply(c, k) == value_reply(k, b"a-" + k.encode())
    # the copies written while it was down stay where they were, unread until
    # they expire or are evicted (README: the consistency cost of rehash)
    assert all(where(pool, k) == [h.index_up(k.encode(), bytes([1, 0, 1]))] for k in dead)


def test_gutter_takes_the_down_hosts_requests_with_capped_expiry(memcached, router):
    main = [memcached(), memcached()]
    gutter = memcached()
    r = router(config(main, "{gutter: small, max_ttl: 3}",
                      f"  small:\n    servers: [{gutter.addr}]\n"), extra=["-H", "200ms"])
    dead = down_keys(main, 1)
    live = [k for k in KEYS if k not in dead]
    with r.client() as c:
        set_all(c, KEYS, b"a-")
        main[1].kill()
        # the down host's keys are read from the gutter: a miss there at first
        assert wait_until(lambda: read_reply(c, dead[0]) == b"END\r\n", 10)
        set_all(c, dead, b"g-")             # exptime 0: capped to 3 s in the gutter
        assert c.request(b"ms %s 2 T9999\r\nms\r\n" % dead[1].encode(), b"HD\r\n") == b"HD\r\n"
        assert c.request(b"touch %s 0\r\n" % dead[2].encode(), b"TOUCHED\r\n") == b"TOUCHED\r\n"
        for k in dead[3:]:
            assert read_reply(c, k) == value_reply(k, b"g-" + k.encode())
        for k in live:
            assert read_reply(c, k) == value_reply(k, b"a-" + k.encode())
        c.send(f"get {dead[3]} {live[0]} {dead[4]}\r\n".encode())      # split: gutter and host
        want = value_reply(dead[3], b"g-" + dead[3].encode())[:-5] + \
            value_reply(live[0], b"a-" + live[0].encode())[:-5] + \
            value_reply(dead[4], b"g-" + dead[4].encode())
        assert c.recv_exact(len(want)) == want
        with gutter.client() as g:
            for k in dead:
                reply = g.call(b"mg %s t\r\n" % k.encode())
                assert reply.startswith(b"HD t") and 0 < int(reply[4:-2]) <= 3, (k, reply)
        with main[0].client() as m0:         # a live host's keys never touch the gutter
            for k in live[:5]:
                assert m0.call(b"mg %s t\r\n" % k.encode()) == b"HD t-1\r\n"
        assert all(gutter.get_raw(k) == b"END\r\n" for k in live)
        main[1].restart()
        assert wait_until(lambda: read_reply(c, dead[3]) == b"END\r\n", 10)
    # back on its own host (empty after the restart); the gutter's copies expire
    assert wait_until(lambda: all(gutter.get_raw(k) == b"END\r\n" for k in dead), 8)
