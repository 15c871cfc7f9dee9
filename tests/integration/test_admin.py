"""The admin policy (README "Admin commands"; issue 10): commands that change
or expose a backend reach memcached only if the config's ``admin: allow:``
lists them.  Every check is on exact bytes, and what memcached itself says
(its settings and counters, read directly) proves a refused command never
reached it."""
from __future__ import annotations

import re
import signal

import pytest
import yaml

from support import pool_config

NOT_SUPPORTED = b"SERVER_ERROR mcrouter: command not supported\r\n"
HIT = b"VALUE k 0 1\r\nv\r\nEND\r\n"

# refused by default: every one (and mn after it still answers: nothing was misframed)
REFUSED_BY_DEFAULT = [
    b"stats detail on\r\n", b"stats detail off\r\n", b"stats detail dump\r\n", b"stats detail\r\n",
    b"stats reset\r\n", b"stats  reset\r\n", b"stats reset\x00\r\n", b"stats cachedump 1 1\r\n",
    b"me k\r\n", b"cache_memlimit 8\r\n", b"cache_memlimit 100 2 noreply\r\n", b"shutdown\r\n",
    b"shutdown graceful\r\n", b"slabs reassign 1 2\r\n", b"slabs automove 0\r\n", b"lru mode flat\r\n",
    b"lru tune 10 10 0.1 2\r\n", b"lru_crawler crawl all\r\n", b"lru_crawler metadump all\r\n",
    b"lru_crawler disable\r\n", b"watch\r\n", b"watch fetchers\r\n", b"misbehave\r\n",
    b"debugtime 1\r\n", b"extstore free_memchunks 0 0\r\n", b"refresh_certs\r\n",
    b"stats sizes_enable\r\n", b"stats sizes_disable\r\n",
]
# refused even when every admin command the schema knows is allowed
NEVER = [b"shutdown\r\n", b"shutdown graceful\r\n", b"watch\r\n", b"misbehave\r\n",
         b"lru_crawler metadump all\r\n", b"lru_crawler mgdump 1\r\n", b"stats sizes_enable\r\n",
         b"stats sizes_disable\r\n"]
ALLOW_ALL = ["flush_all", "verbosity", "stats_detail", "stats_reset", "stats_cachedump", "me",
             "cache_memlimit", "slabs", "lru", "lru_crawler", "extstore", "refresh_certs",
             "debugtime"]


def stat(m, name: str, group: bytes = b"") -> bytes:
    """One value of memcached's own ``stats`` (or ``stats <group>``), read directly."""
    with m.client() as c:
        reply = c.call(b"stats" + (b" " + group if group else b"") + b"\r\n", b"END\r\n")
    found = re.search(rb"^STAT " + name.encode() + rb" (\S+)\r$", reply, re.M)
    assert found, (name, reply)
    return found.group(1)


def direct(m, request: bytes) -> bytes:
    """memcached's own reply to ``request`` (one line)."""
    with m.client() as c:
        return c.call(request)


def with_admin(config: dict, allow: list[str]) -> dict:
    return {**config, "admin": {"allow": allow}}


def test_admin_commands_are_refused_by_default(memcached, router):
    m = memcached()
    r = router(pool_config([m]))
    with r.client() as c:
        for req in REFUSED_BY_DEFAULT:
            assert c.request(req + b"mn\r\n", NOT_SUPPORTED + b"MN\r\n") \
                == NOT_SUPPORTED + b"MN\r\n", req
        # pipelined, in order, between commands that do reach memcached
        stream = b"set k 0 0 1\r\nv\r\n" + b"".join(REFUSED_BY_DEFAULT) + b"get k\r\n"
        expect = b"STORED\r\n" + NOT_SUPPORTED * len(REFUSED_BY_DEFAULT) + HIT
        assert c.request(stream, expect) == expect


def test_a_refused_command_never_reaches_memcached(memcached, router):
    m = memcached()
    r = router(pool_config([m]))
    limit = stat(m, "limit_maxbytes")
    with r.client() as c:
        for _ in range(3):
            assert c.request(b"get nope\r\n", b"END\r\n") == b"END\r\n"
        misses = int(stat(m, "get_misses"))
        assert misses >= 3
        assert c.request(b"stats reset\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"stats reset\x00x\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"cache_memlimit 8\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        # noreply: refused as silently as memcached would have answered
        assert c.request(b"cache_memlimit 9 noreply\r\nmn\r\n", b"MN\r\n") == b"MN\r\n"
        assert c.request(b"stats detail on\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"lru mode flat\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"slabs automove 0 noreply\r\nmn\r\n", b"MN\r\n") == b"MN\r\n"
        assert c.request(b"shutdown\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
    assert int(stat(m, "get_misses")) == misses                 # not reset
    assert stat(m, "limit_maxbytes") == limit == b"67108864"     # not 8 MiB
    assert stat(m, "maxbytes", b"settings") == b"67108864"
    assert stat(m, "detail_enabled", b"settings") == b"no"
    assert stat(m, "lru_segmented", b"settings") == b"yes"
    assert stat(m, "slab_automove", b"settings") == b"1"
    assert m.alive()


def test_flush_all_and_verbosity_are_allowed_by_default(memcached, router):
    m = memcached()
    m.set("k", b"v")
    r = router(pool_config([m]))
    with r.client() as c:
        assert c.request(b"verbosity 1\r\n", b"OK\r\n") == b"OK\r\n"
        assert c.request(b"verbosity 0 noreply\r\nmn\r\n", b"MN\r\n") == b"MN\r\n"
        assert c.request(b"get k\r\n", HIT) == HIT
        assert c.request(b"flush_all\r\n", b"OK\r\n") == b"OK\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
    assert m.get_raw("k") == b"END\r\n"


def test_an_empty_allow_list_refuses_flush_all_and_verbosity(memcached, router):
    m = memcached()
    m.set("k", b"v")
    r = router(with_admin(pool_config([m]), []))
    with r.client() as c:
        assert c.request(b"flush_all\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"flush_all 0 noreply\r\nmn\r\n", b"MN\r\n") == b"MN\r\n"
        assert c.request(b"verbosity 1\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        assert c.request(b"get k\r\n", HIT) == HIT
    assert m.get_raw("k") == HIT


def test_each_admin_command_passes_when_listed(memcached, router):
    m, twin = memcached(), memcached()      # twin: memcached's own replies, for comparison
    r = router(with_admin(pool_config([m]), ALLOW_ALL))
    with r.client() as c:
        assert c.request(b"get nope\r\n", b"END\r\n") == b"END\r\n"
        assert stat(m, "get_misses") == b"1"
        assert c.request(b"stats reset\r\n", b"RESET\r\n") == b"RESET\r\n"
        assert stat(m, "get_misses") == b"0"
        assert c.request(b"stats detail on\r\n", b"OK\r\n") == b"OK\r\n"
        assert stat(m, "detail_enabled", b"settings") == b"yes"
        assert c.request(b"get user:1\r\n", b"END\r\n") == b"END\r\n"
        dump = b"PREFIX user get 1 hit 0 set 0 del 0\r\nEND\r\n"
        assert c.request(b"stats detail dump\r\n", dump) == dump
        assert c.request(b"stats detail off\r\n", b"OK\r\n") == b"OK\r\n"
        assert c.request(b"cache_memlimit 100\r\n", b"OK\r\n") == b"OK\r\n"
        assert stat(m, "limit_maxbytes") == b"104857600"
        assert c.request(b"cache_memlimit 8 noreply\r\nmn\r\n", b"MN\r\n") == b"MN\r\n"
        assert stat(m, "limit_maxbytes") == b"8388608"
        assert c.request(b"lru mode flat\r\n", b"OK\r\n") == b"OK\r\n"
        assert stat(m, "lru_segmented", b"settings") == b"no"
        assert c.request(b"slabs automove 0\r\n", b"OK\r\n") == b"OK\r\n"
        assert stat(m, "slab_automove", b"settings") == b"0"
        assert c.request(b"set k 0 0 1\r\nv\r\n", b"STORED\r\n") == b"STORED\r\n"
        item = b"ITEM k [1 b; 0 s]\r\nEND\r\n"
        cls = re.search(rb"STAT items:(\d+):number 1", stat_block(m, b"items")).group(1)
        got = c.call(b"stats cachedump " + cls + b" 10\r\n", b"END\r\n")
        assert re.fullmatch(rb"ITEM k \[1 b; \d+ s\]\r\nEND\r\n", got), got
        assert len(got) == len(item) or got.startswith(b"ITEM k [1 b; ")
        me = c.call(b"me k\r\n")
        assert re.fullmatch(rb"ME k exp=-1 la=\d+ cas=\d+ fetch=no cls=\d+ size=\d+\r\n", me), me
        # replies that depend on how memcached was built: exactly what it says itself
        for req in (b"slabs reassign 1 2\r\n", b"lru_crawler sleep 100\r\n",
                    b"lru_crawler tocrawl 0\r\n", b"debugtime 1\r\n",
                    b"extstore free_memchunks 0 0\r\n", b"refresh_certs\r\n", b"lru tune 1\r\n"):
            own = direct(twin, req)
            assert own.endswith(b"\r\n") and c.request(req, own) == own, req
        for req in NEVER:                     # whatever the config says
            assert c.request(req, NOT_SUPPORTED) == NOT_SUPPORTED, req
        assert c.request(b"mn\r\n", b"MN\r\n") == b"MN\r\n"
    assert m.alive()


def stat_block(m, group: bytes) -> bytes:
    with m.client() as c:
        return c.call(b"stats " + group + b"\r\n", b"END\r\n")


def test_only_the_listed_commands_pass(memcached, router):
    m = memcached()
    r = router(with_admin(pool_config([m]), ["stats_reset"]))
    with r.client() as c:
        assert c.request(b"stats reset\r\n", b"RESET\r\n") == b"RESET\r\n"
        for req in (b"flush_all\r\n", b"verbosity 1\r\n", b"stats detail on\r\n", b"me k\r\n",
                    b"cache_memlimit 100\r\n"):
            assert c.request(req, NOT_SUPPORTED) == NOT_SUPPORTED, req
    assert stat(m, "limit_maxbytes") == b"67108864"


def test_the_policy_holds_for_every_route(memcached, router):
    """PoolRoute (keyless admin commands go to every server, one reply),
    an OperationSelectorRoute with LocalRoute, and AllFastestRoute."""
    m1, m2 = memcached(), memcached()
    pool = {"pools": {"p": {"servers": [m1.addr, m2.addr]}}, "route": "PoolRoute|p"}
    r = router(pool)
    with r.client() as c:
        for req in (b"cache_memlimit 8\r\n", b"stats reset\r\n", b"me k\r\n", b"lru mode flat\r\n"):
            assert c.request(req, NOT_SUPPORTED) == NOT_SUPPORTED, req
    assert stat(m1, "limit_maxbytes") == stat(m2, "limit_maxbytes") == b"67108864"
    r2 = router(with_admin(pool, ["cache_memlimit"]))
    with r2.client() as c:
        assert c.request(b"cache_memlimit 100\r\n", b"OK\r\n") == b"OK\r\n"
        assert c.request(b"stats reset\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
    assert stat(m1, "limit_maxbytes") == stat(m2, "limit_maxbytes") == b"104857600"
    r3 = router(pool_config([m1, m2], "OperationSelectorRoute", set="AllFastestRoute",
                            version="LocalRoute", stats="LocalRoute", me="AllFastestRoute"))
    with r3.client() as c:
        for req in (b"stats reset\r\n", b"me k\r\n", b"cache_memlimit 8\r\n", b"shutdown\r\n"):
            assert c.request(req, NOT_SUPPORTED) == NOT_SUPPORTED, req


def test_a_reload_swaps_the_policy(memcached, router):
    m = memcached()
    r = router(pool_config([m]))
    with r.client() as c:
        assert c.request(b"stats reset\r\n", NOT_SUPPORTED) == NOT_SUPPORTED
        r.config_path.write_text(yaml.safe_dump(with_admin(pool_config([m]), ["stats_reset"])))
        r.signal(signal.SIGHUP)
        assert r.wait_log("reload 2: all 1 worker(s) run config generation 2")
        assert c.request(b"stats reset\r\n", b"RESET\r\n") == b"RESET\r\n"   # same connection


NOREPLY_LINES = [
    b"cache_memlimit 100 noreply\r\n", b"cache_memlimit noreply\r\n",
    b"cache_memlimit 100 2 noreply\r\n", b"lru mode flat noreply\r\n", b"lru noreply\r\n",
    b"slabs automove 1 noreply\r\n", b"slabs automove noreply\r\n",
    b"slabs reassign 1 2 noreply\r\n", b"lru_crawler crawl all noreply\r\n",
    b"extstore a b noreply\r\n", b"refresh_certs noreply\r\n", b"debugtime 1 noreply\r\n",
    b"shutdown noreply\r\n", b"stats reset noreply\r\n", b"stats detail on noreply\r\n",
    b"cache_memlimit 100 noreply\x00\r\n", b"cache_memlimit 100 noreply \r\n",
]


@pytest.mark.parametrize("line", NOREPLY_LINES)
def test_a_refused_noreply_line_is_silent_exactly_when_memcached_would_be(memcached, router,
                                                                            line):
    """Refusing a noreply line with an error memcached would not have sent
    would shift every later reply on the client's connection, and vice versa."""
    twin = memcached()
    with twin.client() as c:
        own = c.call(line + b"mn\r\n", b"MN\r\n")
    m = memcached()
    r = router(pool_config([m]))
    expect = b"MN\r\n" if own == b"MN\r\n" else NOT_SUPPORTED + b"MN\r\n"
    with r.client() as c:
        assert c.request(line + b"mn\r\n", expect) == expect, own
