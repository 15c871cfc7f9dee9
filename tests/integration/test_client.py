"""mcrouter.client.Client against real memcached 1.6.18 (and a fake one for
faults): every call's result, bulk calls over three servers, a server
killed before and during a bulk call, ejection and return, timeouts whose
late replies are dropped, a router in front, threads.  TLS and mTLS:
test_client_tls.py."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from mcrouter.client import (Client, Ma, Md, Me, MemcacheClientError, MemcacheConnectionError,
                             MemcacheError, MemcacheIllegalInputError, MemcachePartialError, MemcacheServerDownError,
                             MemcacheServerError, MemcacheTimeoutError,
                             MemcacheUnknownCommandError, Mg, Mn, Ms, PickleSerde)


def test_every_call_one_server(memcached):
    m = memcached()
    with Client([m.addr]) as c:
        assert c.get("a") is None and c.get("a", b"dflt") == b"dflt"
        assert c.set("a", b"hello") is True and c.get("a") == b"hello"
        assert c.add("a", b"x") is False and c.add("b", b"x") is True
        assert c.replace("nope", b"x") is False and c.replace("b", b"y") is True
        assert c.append("b", b"z") is True and c.prepend("b", b"w") is True
        assert c.get("b") == b"wyz"
        assert c.append("nope", b"z") is False
        value, cas = c.gets("b")
        assert value == b"wyz" and isinstance(cas, bytes) and cas.isdigit()   # pymemcache's bytes
        assert c.cas("b", b"new", cas) is True
        assert c.cas("b", b"newer", cas) is False           # changed since
        assert c.cas("nope", b"x", 1) is None               # gone
        assert c.gets("nope", 1, 2) == (1, 2)
        assert c.set("n", 10) is True
        assert c.incr("n", 5) == 15 and c.decr("n", 20) == 0 and c.incr("nope", 1) is None
        assert c.touch("n", 100) is True and c.touch("nope") is False
        # memcached decrements in place: "15" became "0 " (padded to its old length)
        assert c.gat("n", 50) == b"0 " and c.gats("n", 50)[0] == b"0 "
        assert c.delete("n") is True and c.delete("n") is False
        assert c.set("q", b"v", noreply=True) is True and c.get("q") == b"v"
        assert c.delete("q", noreply=True) is True and c.get("q") is None
        assert c.set_many({"k1": b"1", "k2": b"2"}) == []
        assert c.get_many(["k1", "k2", "k3"]) == {"k1": b"1", "k2": b"2"}
        assert c.gets_many(["k1"])["k1"][0] == b"1"
        assert c.delete_many(["k1", "k2"]) is True and c.get_many(["k1", "k2"]) == {}
        assert c.version() == b"1.6.18"
        assert c.stats()[b"version"] == b"1.6.18"
        st = c.stats("settings")                            # converted as pymemcache does
        assert (st[b"maxconns"], st[b"growth_factor"], st[b"cas_enabled"], st[b"umask"],
                st[b"evictions"]) == (1024, 1.25, b"yes", 0o700, b"on")
        assert c.set("x", b"1") and c.flush_all() is True and c.get("x") is None
        with pytest.raises(MemcacheServerError) as e:
            c.set("big", b"x" * (2 << 20))
        assert e.value.text == "object too large for cache" and e.value.server == m.addr
        assert c.set("a", b"again") and c.get("a") == b"again"   # the connection survived
        with pytest.raises(MemcacheClientError) as ce:
            c.incr("a", 1)
        assert ce.value.text == "cannot increment or decrement non-numeric value"
        with pytest.raises(MemcacheUnknownCommandError):
            c.stats("no_such_group")


def test_serde_and_key_prefix(memcached):
    m = memcached()
    with Client([m.addr], serde=PickleSerde(), key_prefix="app:") as c:
        assert c.set("obj", {"a": [1, 2]}) and c.get("obj") == {"a": [1, 2]}
        assert c.set("i", 42) and c.get("i") == 42 and c.incr("i", 1) == 43
        assert c.get_many(["obj", "i"]) == {"obj": {"a": [1, 2]}, "i": 43}
    with Client([m.addr]) as raw:
        assert raw.get("app:i") == b"43" and raw.get("i") is None


def test_meta_api(memcached):
    m = memcached()
    with Client([m.addr]) as c:
        r = c.meta(Ms("k", b"abc", ttl=100, client_flags=7, return_cas=True, opaque="o1"))
        assert (r.status, r.opaque) == ("HD", "o1") and r.cas > 0
        g = c.meta(Mg("k", cas=True, ttl=True, client_flags=True, size=True, return_key=True,
                      hit_before=True, last_access=True))
        assert (g.status, g.value, g.cas, g.client_flags, g.size, g.key, g.hit_before) == \
            ("VA", b"abc", r.cas, 7, 3, b"k", False)
        assert 0 < g.ttl <= 100
        assert c.meta(Ms("k", b"x", mode="add")).status == "NS"
        assert c.meta(Ms("k", b"x", cas=r.cas + 1000)).status == "EX"
        assert c.meta(Md("nokey", return_key=True, opaque="5")).flags == {"k": "nokey", "O": "5"}
        # base64: binary keys, echoed back and decoded
        key = b"\x00\xffbin key"
        assert c.meta(Ms(key, b"bin", base64=True)).ok
        b = c.meta(Mg(key, base64=True, return_key=True))
        assert (b.value, b.key) == (b"bin", key)
        # stale-while-revalidate: invalidate, then the first fetch wins the recache
        assert c.meta(Md("k", invalidate=True, ttl=30)).status == "HD"
        first = c.meta(Mg("k", cas=True))
        second = c.meta(Mg("k"))
        assert (first.stale, first.won, second.stale, second.win_sent) == (True, True, True, True)
        # vivify on miss: the first caller wins, an empty item exists now
        v = c.meta(Mg("fresh", vivify=30))
        assert (v.status, v.value, v.won) == ("VA", b"", True)
        assert c.meta(Mg("fresh")).win_sent
        # arithmetic
        assert c.meta(Ma("cnt", vivify=0, initial=10, return_ttl=True)).number == 10
        assert c.meta(Ma("cnt", delta=5)).number == 15
        assert c.meta(Ma("cnt", mode="decr", delta=100)).number == 0
        assert c.meta(Ma("none")).status == "NF"
        # quiet: suppressed codes come back as quiet results; errors still raise
        results = c.meta_many([Mg("nokey", quiet=True), Mg("cnt", quiet=True),
                               Ms("qk", b"1", quiet=True), Md("nokey", quiet=True), Mn()])
        assert [(r.status, r.quiet) for r in results] == \
            [("EN", True), ("VA", False), ("HD", True), ("NF", False), ("MN", False)]
        d = c.meta(Me("qk"))
        assert d.key == b"qk" and d.fields["size"].isdigit()
        assert c.meta(Me("nokey")) is None
        with pytest.raises(MemcacheClientError) as e:
            c.meta(Mg("k", extra=["E5"]))                   # 1.6.18 does not know E
        assert e.value.text == "invalid flag"
        with pytest.raises(MemcachePartialError) as pe:
            c.meta_many([Mg("k"), Mg("k", extra=["E5"])])
        assert pe.value.result[0].ok and list(pe.value.errors) == [1]


def three(memcached):
    return [memcached(), memcached(), memcached()]


KEYS = [f"key:{i}" for i in range(600)]
# twemproxy's fnv1a_64 (the default) keeps 32 bits and clusters keys that
# differ only at the end: md5 spreads these keys over the three servers
MD5 = {"function": "md5"}


def test_bulk_over_three_servers_and_one_killed(memcached):
    servers = three(memcached)
    with Client([m.addr for m in servers], hash=MD5, timeout=2.0) as c:
        assert c.set_many({k: k for k in KEYS}) == []
        owner = {k: c.names[c.slot(k.encode())] for k in KEYS}
        assert len(set(owner.values())) == 3
        assert c.get_many(KEYS) == {k: k.encode() for k in KEYS}
        dead = servers[1]
        dead.kill()
        lost = {k for k in KEYS if owner[k] == dead.addr}
        with pytest.raises(MemcachePartialError) as e:
            c.get_many(KEYS)
        assert e.value.result == {k: k.encode() for k in KEYS if k not in lost}
        assert set(e.value.errors) == lost
        assert all(isinstance(err, MemcacheConnectionError) and err.server == dead.addr
                   for err in e.value.errors.values())
        with pytest.raises(MemcachePartialError) as e2:
            c.set_many({k: b"2" for k in KEYS})
        assert e2.value.result == [] and set(e2.value.errors) == lost
    with Client([m.addr for m in servers], hash=MD5, ignore_exc=True, timeout=2.0) as quiet:
        got = quiet.get_many(KEYS)
        assert set(got) == set(KEYS) - lost
        assert sorted(quiet.set_many({k: b"3" for k in KEYS})) == sorted(lost)


def test_one_server_calls_name_their_server_when_there_are_several(memcached):
    """pymemcache's version()/stats() ask one server; with several, the
    client refuses to guess which instead of silently asking the first."""
    servers = three(memcached)
    addrs = [m.addr for m in servers]
    with Client(addrs, hash=MD5) as c:
        for call, every in ((c.version, "versions"), (c.stats, "stats_all")):
            with pytest.raises(MemcacheIllegalInputError) as e:
                call()
            assert str(e.value) == (f"{call.__name__}(): this client has 3 servers; "
                                    f"name one with server=, or call {every}()")
        assert c.version(server=addrs[1]) == b"1.6.18"
        assert c.versions() == {a: b"1.6.18" for a in addrs}
        assert c.stats(server=addrs[2])[b"pid"] == servers[2].pid
        assert {a: st[b"pid"] for a, st in c.stats_all().items()} == \
            {m.addr: m.pid for m in servers}
        with pytest.raises(MemcacheIllegalInputError):
            c.cas("k", b"v", "12x")                     # a cas unique is digits only


def test_server_killed_mid_bulk(memcached, fake):
    """One server stops answering a get_many already sent to it and then
    drops the connection: only its keys fail, the others' values arrive."""
    good = [memcached(), memcached()]
    bad = fake()
    addrs = [good[0].addr, bad.addr, good[1].addr]
    with Client(addrs, hash=MD5, timeout=5.0) as c:
        slots = {k: c.slot(k.encode()) for k in KEYS}
        for k in KEYS:
            if slots[k] == 1:
                bad.set(k.encode(), b"fake")
        assert c.set_many({k: k for k in KEYS if slots[k] != 1}) == []
        bad.behave("hang")
        out: list[BaseException | dict] = []
        t = threading.Thread(target=lambda: out.append(_catch(c.get_many, KEYS)))
        t.start()
        assert bad.wait_requests(1)
        time.sleep(0.1)
        bad.drop(True)                  # the server goes away mid-call
        t.join(10)
        (err,) = out
        assert isinstance(err, MemcachePartialError)
        assert set(err.errors) == {k for k in KEYS if slots[k] == 1}
        assert err.result == {k: k.encode() for k in KEYS if slots[k] != 1}
        assert "connection closed by the server" in str(next(iter(err.errors.values())))


def _catch(fn, *args):
    try:
        return fn(*args)
    except MemcacheError as e:
        return e


def test_ejection_fails_fast_then_rehash_or_return(memcached, monkeypatch):
    servers = three(memcached)
    real = socket.create_connection
    connects: list[tuple] = []

    def counted(address, *args, **kwargs):
        connects.append(address)
        return real(address, *args, **kwargs)
    monkeypatch.setattr(socket, "create_connection", counted)
    addrs = [m.addr for m in servers]
    with Client(addrs, hash=MD5, tko=2, retry_interval=0.5, backoff_initial=0.01) as c:
        k = next(k for k in KEYS if c.slot(k.encode()) == 1)
        assert c.set(k, b"v")
        servers[1].kill()
        before = len(connects)
        for _ in range(2):
            with pytest.raises(MemcacheConnectionError):
                c.get(k)
        tried = len(connects)
        assert tried > before                       # the failures above did try to connect
        with pytest.raises(MemcacheServerDownError):
            c.get(k)
        assert len(connects) == tried               # no connect attempt: fail fast
        servers[1].restart()
        time.sleep(0.6)
        assert c.get(k) is None                      # tried again, back (a fresh memcached)
    with Client(addrs, hash=MD5, tko=1, retry_interval=30, on_down="rehash") as r:
        k = next(k for k in KEYS if r.slot(k.encode()) == 2)
        servers[2].kill()
        with pytest.raises(MemcacheConnectionError):
            r.set(k, b"v")                           # the failure that ejects it
        assert r.slot(k.encode()) != 2
        assert r.set(k, b"v") and r.get(k) == b"v"   # on the next live server


def test_timeout_keeps_the_connection_and_drops_the_late_reply(fake):
    f = fake()
    f.set(b"a", b"A")
    f.set(b"b", b"B")
    with Client([f.addr], timeout=0.3, max_pool_size=1, tko=100) as c:
        f.behave("delay", count=1, delay=0.6)
        with pytest.raises(MemcacheTimeoutError) as e:
            c.get("a")
        assert e.value.server == f.addr
        time.sleep(0.8)                 # the late reply is in the socket now
        assert c.get("b") == b"B"       # read after the late reply, which is dropped
        assert c.get("a") == b"A"
        assert f.accepted == 1          # never reconnected


def test_protocol_garbage_drops_the_connection(fake):
    f = fake()
    with Client([f.addr], timeout=1.0) as c:
        f.behave("garbage", count=1)
        with pytest.raises(MemcacheConnectionError) as e:
            c.get("a")
        assert "protocol error" in str(e.value)
        f.set(b"a", b"ok")
        assert c.get("a") == b"ok"


def test_through_a_router(memcached, router):
    servers = three(memcached)
    r = router({"pools": {"main": {"servers": [m.addr for m in servers]}},
                "route": "PoolRoute|main"})
    with Client([f"127.0.0.1:{r.port}"]) as c:
        assert c.set_many({k: k for k in KEYS}) == []
        assert c.get_many(KEYS) == {k: k.encode() for k in KEYS}
        assert c.meta(Mg(KEYS[0], cas=True)).value == KEYS[0].encode()
        assert c.delete(KEYS[0]) and c.get(KEYS[0]) is None


def test_threads_share_a_pool(memcached):
    servers = three(memcached)
    errors: list[str] = []
    with Client([m.addr for m in servers], hash=MD5, max_pool_size=2, timeout=5.0) as c:
        def work(t: int) -> None:
            for i in range(150):
                k = f"t{t}:{i}"
                if not c.set(k, k) or c.get(k) != k.encode():
                    errors.append(k)
            if c.get_many([f"t{t}:{i}" for i in range(150)]) != \
                    {f"t{t}:{i}": f"t{t}:{i}".encode() for i in range(150)}:
                errors.append(f"get_many {t}")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert all(p.count <= 2 for p in c.pools)


EXAMPLE_OUTPUT = """get: b'hello'
get_many: {'user:0': b'name 0', 'user:1': b'name 1', 'user:2': b'name 2', 'user:3': b'name 3', 'user:4': b'name 4'}
incr: None (None: no such key)
incr: 15
meta: VA b'value' cas matches: True ttl<=60: True
async get x3: [b'hello from asyncio', b'hello from asyncio', b'hello from asyncio']
"""


def test_example_script_runs(memcached):
    """examples/client.py, as the README shows it, over two servers."""
    import subprocess
    import sys

    from support import REPO
    servers = [memcached(), memcached()]
    out = subprocess.run([sys.executable, str(REPO / "examples" / "client.py"),
                          *(m.addr for m in servers)], capture_output=True, text=True, timeout=60)
    assert (out.stdout, out.returncode) == (EXAMPLE_OUTPUT, 0), out.stderr
