"""mcrouter.client places every key where a router with the same pool looks for it.

10,000 keys are set through the client over three memcached servers, then
read back through a router whose PoolRoute has the same pool: a key the
client had put on another server than the router's choice would be a miss
(each key is on one server only).  Each server's item count must also be
exactly the number of keys the client's placement gave it.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from mcrouter.client import Client
from support import show

N = 10_000
KEYS = [f"user:{i}:{'{'}t{i % 97}{'}'}|#|x{i}" for i in range(N)]

POOLS = {
    "ketama-default": {},
    "ketama-md5": {"hash": {"function": "md5"}},        # keys hashed 8 at a time (_md5x.h)
    "jump-crc32-hash_stop": {"hash": {"function": "crc32", "distribution": "jump",
                                      "hash_stop": "|#|"}},
    "rendezvous-weights-salt-tags": {"hash": {"function": "md5", "distribution": "rendezvous",
                                              "salt": "s1", "hash_tags": "{}"},
                                     "weights": [1, 2, 3]},
    "ketama-murmur-weights": {"hash": {"function": "murmur", "distribution": "ketama"},
                              "weights": [3, 1, 2]},
}


def items(m) -> int:
    with Client([m.addr]) as c:
        return c.stats()[b"curr_items"]


@pytest.mark.parametrize("name", POOLS)
def test_client_places_keys_where_the_router_reads_them(name, memcached, router, tmp_path):
    servers = [memcached(), memcached(), memcached()]
    pool = {"servers": [m.addr for m in servers], **POOLS[name]}
    r = router({"pools": {"main": pool}, "route": "PoolRoute|main"})
    with Client([m.addr for m in servers], hash=pool.get("hash"),
                weights=pool.get("weights")) as c:
        assert c.set_many({k: k.encode() for k in KEYS}) == []
        slots = [c.slot(k.encode()) for k in KEYS]
        got = c.get_many(KEYS)          # placed in bulk (index_many), set one by one (index)
    assert got == {k: k.encode() for k in KEYS}
    assert [items(m) for m in servers] == [slots.count(i) for i in range(3)]
    # every server holds keys.  The ports (so the placement) differ each run, and the
    # tags pool has only 97 tags: its weight-1 server expects 1/6 of them (about 16)
    # and can get 9, so the bound is two tags' worth (chance of failing: about 4e-7).
    assert min(slots.count(i) for i in range(3)) > N // 50
    # every key, read through the router: all hits, each its own value
    with Client([f"127.0.0.1:{r.port}"], timeout=10.0) as via_router:
        got = via_router.get_many(KEYS)
    assert len(got) == N
    assert all(got[k] == k.encode() for k in KEYS)
    # and the exact bytes a plain client gets from the router for one key
    with r.client() as raw:
        k = KEYS[1234].encode()
        want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(k), k)
        assert raw.request(b"get %s\r\n" % k, want) == want, show(want)
    # from_config: the same pool read from the router's own file
    cfg = tmp_path / "same.yaml"
    cfg.write_text(yaml.safe_dump({"pools": {"main": pool}, "route": "PoolRoute|main"}))
    with Client.from_config(str(cfg), "main") as c2:
        assert [c2.slot(k.encode()) for k in KEYS] == slots


def test_route_command_agrees(memcached, tmp_path):
    """``mcrouter route`` (the router's own answer for a key) names the server the client picks."""
    servers = [memcached(), memcached(), memcached()]
    pool = {"servers": [m.addr for m in servers], "hash": {"function": "md5"}}
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"pools": {"main": pool}, "route": "PoolRoute|main"}))
    c = Client.from_config(str(cfg), "main")
    for key in ["a", "user:42", "x" * 200]:
        out = subprocess.run([sys.executable, "-m", "mcrouter", "route", "-f", str(cfg), "get", key],
                             capture_output=True, text=True, timeout=30)
        named = [n for n in c.names if re.search(re.escape(n) + r"\b", out.stdout)]
        assert named == [c.names[c.slot(key.encode())]], out.stdout + out.stderr
