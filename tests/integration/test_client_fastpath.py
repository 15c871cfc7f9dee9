"""The blocking bulk get's compiled fast path (``_fast.get_many``) against the
general path it stands in for (``Client._run(plan_get_many(...))``, what
get_many was before): the same results for the same calls, and each case the
fast path does not take (a server out, a pool with no idle connection, TLS, a
server owed more than MULTIGET_CHUNK keys, an error reply, stray bytes on an
idle connection) handed over with the general path's result.

``paths`` records which of the general path's entry points a call went
through: none for the fast path, so a test can tell the two apart."""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable, Iterator

import pytest

from mcrouter.client import (Client, MemcacheConnectionError, MemcachePartialError,
                             MemcacheTimeoutError, MemcacheProtocolError,
                             MemcacheServerDownError, MemcacheServerError, PickleSerde)
from mcrouter.client import blocking
from mcrouter.client._fast import MULTIGET_CHUNK

MD5 = {"function": "md5"}
ENTRIES = ("_run", "_run_many", "_after_send", "_get_chunked")


@pytest.fixture
def paths(monkeypatch) -> Iterator[list[str]]:
    """The general path's entry points each call went through, in order."""
    seen: list[str] = []
    depth = [0]
    for name in ENTRIES:
        real = getattr(blocking.Client, name)

        def spy(self, *a: Any, _real: Callable[..., Any] = real, _name: str = name,
                **kw: Any) -> Any:
            if not depth[0]:
                seen.append(_name)      # the way in, not the calls it makes
            depth[0] += 1
            try:
                return _real(self, *a, **kw)
            finally:
                depth[0] -= 1
        monkeypatch.setattr(blocking.Client, name, spy)
    yield seen


def general(c: Client, keys: Any, with_cas: bool = False) -> Any:
    """get_many / gets_many as the general path gives them."""
    return c._run(c.plan_get_many(keys, with_cas))


def outcome(call: Callable[[], Any]) -> Any:
    """A call's result, or its error as (type, result, {key: (type, str)})."""
    try:
        return call()
    except MemcachePartialError as e:
        return (type(e), e.result, {k: (type(v), str(v)) for k, v in e.errors.items()})
    except Exception as e:          # noqa: BLE001 - compared, not swallowed
        return (type(e), str(e))


def warm(c: Client, paths: list[str]) -> None:
    """An idle connection in every pool (a fresh client has none: the fast
    path hands its first call over); ``paths`` cleared."""
    for p in c.pools:
        p.release(p.acquire(time.monotonic() + 5))
    del paths[:]


CALLS: list[list[Any]] = [
    ["k0", "k1", "k2"],                                     # hits
    ["missing", "k5", "nope"],                              # hits and misses
    [f"k{i}" for i in range(60)] + ["k3", "k3", b"k3"],     # duplicates, str and bytes
    [b"k7", "k8", "\u00e9t\u00e9"],                         # bytes and non-ASCII keys
    ["k9"],                                                 # one key: one server
    [],
]


def seed(c: Client) -> dict[str, Any]:
    values: dict[str, Any] = {f"k{i}": f"v{i}".encode() * (i % 7) for i in range(60)}
    values["\u00e9t\u00e9"] = b"summer"
    assert c.set_many(values) == []
    return values


def expected(keys: list[Any], values: dict[str, Any]) -> dict[Any, Any]:
    """{key as first given: value} of the keys stored (b"k3" after "k3" is "k3")."""
    out: dict[Any, Any] = {}
    seen = set()
    for k in keys:
        text = k.decode() if isinstance(k, bytes) else k
        if text not in seen:
            seen.add(text)
            if text in values:
                out[k] = values[text]
    return out


@pytest.mark.parametrize("options", [
    {},
    {"key_prefix": "app:"},
    {"serde": PickleSerde()},
    {"key_prefix": b"p/", "serde": PickleSerde()},
], ids=["plain", "key_prefix", "serde", "prefix+serde"])
def test_fast_path_gives_what_the_general_path_gives(memcached, paths, options):
    ms = [memcached() for _ in range(3)]
    with Client([m.addr for m in ms], hash=MD5, **options) as c:
        values = seed(c)
        if "serde" in options:
            assert c.set("obj", {"a": [1, 2]}) and c.set("n", 42)
            values.update(obj={"a": [1, 2]}, n=42)
        warm(c, paths)
        for keys in CALLS + [["obj", "n", "k1"]]:
            del paths[:]
            fast = c.get_many(keys)
            fast_cas = c.gets_many(iter(keys))          # any iterable, once
            assert paths == []                          # neither handed over
            assert fast == general(c, keys)
            assert fast_cas == general(c, keys, True)
            want = expected(keys, values)
            assert fast == want
            assert {k: v for k, (v, _) in fast_cas.items()} == want
            assert all(cas.isdigit() for _, cas in fast_cas.values())
            assert list(fast) == list(general(c, keys))     # the same order
        assert c.get_multi(["k1", "k2"]) == {"k1": values["k1"], "k2": values["k2"]}
        assert c.health.fails == [0, 0, 0]
        assert all(len(p.idle) == p.count == 1 for p in c.pools)


def test_fast_path_errors_before_sending_are_the_general_paths(memcached, paths):
    m = memcached()
    with Client([m.addr, memcached().addr], hash=MD5) as c:
        warm(c, paths)
        for keys in (["ok", "bad key"], ["ok", "x" * 251], ["ok", 7], ["ok", "a\ud800"]):
            assert outcome(lambda: c.get_many(keys)) == outcome(lambda: general(c, keys))
        assert paths == []                              # raised before either sent


def test_a_fresh_pool_hands_over_and_connects(memcached, paths):
    ms = [memcached() for _ in range(3)]
    with Client([m.addr for m in ms], hash=MD5) as c:
        values = seed(c)                # one connection each, now idle
        c.pools[1].close()              # no idle connection there
        del paths[:]
        keys = list(values)
        assert c.get_many(keys) == values
        assert paths == ["_run_many"]
        del paths[:]
        assert c.get_many(keys) == values               # all idle again: fast
        assert paths == []
        c.close()
        assert c.get_many(["k1"]) == {"k1": values["k1"]}   # nothing taken: _run
        assert paths == ["_run"]


def test_a_busy_pool_hands_over_and_waits_its_turn(memcached, paths):
    ms = [memcached() for _ in range(2)]
    with Client([m.addr for m in ms], hash=MD5, max_pool_size=1, timeout=1.0, tko=5) as c:
        values = seed(c)
        keys = list(values)
        pool = c.pools[1]
        del paths[:]
        held = pool.acquire(1e18)       # another call's, in progress
        try:
            got = outcome(lambda: c.get_many(keys))
            assert paths == ["_run_many"]
            assert outcome(lambda: general(c, keys)) == got
        finally:
            pool.release(held)
        # the wait for server 1 used up the call's time: server 0's reply is late too
        assert got[0] is MemcachePartialError and got[1] == {}
        assert set(got[2].values()) == {
            (MemcacheTimeoutError, f"{ms[1].addr}: all 1 connections busy"),
            (MemcacheTimeoutError, f"{ms[0].addr}: no reply within 1.0s")}
        assert c.health.fails == [2, 0]                 # the pool's own congestion is not 1's
        assert c.get_many(keys) == values               # the late replies dropped, not taken


def test_a_server_out_goes_the_general_way(memcached, paths):
    ms = [memcached() for _ in range(2)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"       # bound, not listening: refused
        with Client([ms[0].addr, dead, ms[1].addr], hash=MD5, tko=1, retry_interval=60,
                    connect_timeout=0.5) as c:
            keys = [f"k{i}" for i in range(40)]
            up = [k for k in keys if c.slot(k.encode()) != 1]
            assert c.set_many({k: k for k in up}) == []
            down = next(k for k in keys if c.slot(k.encode()) == 1)
            assert outcome(lambda: c.get(down))[0] is MemcacheConnectionError
            assert c.health.all_up is False             # the set ejected the dead one
            del paths[:]
            fast = outcome(lambda: c.get_many(keys))
            assert paths[0] == "_run"                   # decided before anything was taken
            assert fast == outcome(lambda: general(c, keys))
            assert fast[1] == {k: k.encode() for k in up}
            assert {e[0] for e in fast[2].values()} == {MemcacheServerDownError}


def test_an_error_reply_is_handed_over_after_sending(fake, memcached, paths):
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=1.0, tko=100) as c:
        on_f = [k for k in (f"k{i}" for i in range(200)) if c.slot(k.encode()) == 0][:5]
        on_m = [k for k in (f"k{i}" for i in range(200)) if c.slot(k.encode()) == 1][:5]
        for k in on_f:
            f.set(k.encode(), k.encode())
        assert c.set_many({k: k for k in on_m}) == []
        warm(c, paths)
        del paths[:]
        assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}
        assert paths == []
        f.behave("garbage", count=1, garbage=b"SERVER_ERROR busy\r\n")
        got = outcome(lambda: c.get_many(on_f + on_m))
        assert paths == ["_after_send"]
        assert got == (MemcachePartialError, {k: k.encode() for k in on_m},
                       {k: (MemcacheServerError, f"{f.addr}: SERVER_ERROR busy") for k in on_f})
        f.behave("garbage", count=1, garbage=b"SERVER_ERROR busy\r\n")
        assert outcome(lambda: general(c, on_f + on_m)) == got
        del paths[:]
        assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}
        assert paths == []                              # the connection in step: fast again
        f.behave("garbage", count=1, garbage=b"NOT_FOUND\r\n")     # answers nothing asked
        got = outcome(lambda: c.get_many(on_f + on_m))
        assert paths == ["_after_send"]
        assert got[0] is MemcachePartialError and got[1] == {k: k.encode() for k in on_m}
        assert {e[0] for e in got[2].values()} == {MemcacheProtocolError}
        f.behave("garbage", count=1, garbage=b"NOT_FOUND\r\n")
        assert outcome(lambda: general(c, on_f + on_m)) == got
        assert c.health.fails == [2, 0]                 # both dropped the connection
        assert c.pools[0].count == 0 and not c.pools[0].idle
        assert c.get_many(on_f + on_m) == {k: k.encode() for k in on_f + on_m}


def test_stray_bytes_hand_over_before_sending(fake, memcached, paths):
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=1.0, tko=100, max_pool_size=1) as c:
        on_f = [k for k in (f"k{i}" for i in range(200)) if c.slot(k.encode()) == 0][:3]
        for k in on_f:
            f.set(k.encode(), b"F")
        assert c.set("m", b"M")
        warm(c, paths)
        assert c.get_many([*on_f, "m"]) == {**{k: b"F" for k in on_f}, "m": b"M"}
        assert paths == []
        f.conns[0].sendall(b"VALUE k0 0 5\r\nstale\r\nEND\r\n")    # a reply to nothing
        time.sleep(0.2)
        assert c.get_many([*on_f, "m"]) == {**{k: b"F" for k in on_f}, "m": b"M"}
        assert paths == ["_run_many"]                   # the general check found them
        assert f.accepted == 2                          # and took a fresh connection


def test_more_than_a_chunk_for_a_server_goes_the_general_way(memcached, paths):
    m = memcached()
    with Client([m.addr]) as c:
        keys = [f"k{i}" for i in range(MULTIGET_CHUNK + 5)]
        assert c.set_many({k: b"v" for k in keys[::50]}) == []
        warm(c, paths)
        del paths[:]
        assert c.get_many(keys) == {k: b"v" for k in keys[::50]}
        assert paths[0] == "_get_chunked"


def test_tls_goes_the_general_way(memcached, tmp_path, paths):
    from support.certs import make_certs
    certs = make_certs(tmp_path / "certs")
    ms = [memcached("-Z", "-o", f"ssl_chain_cert={certs.server.cert},ssl_key={certs.server.key}")
          for _ in range(2)]
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    with Client([m.addr for m in ms], hash=MD5, tls_context=ctx) as c:
        values = {f"k{i}": b"v" * i for i in range(20)}
        assert c.set_many(values) == []
        warm(c, paths)
        del paths[:]
        assert c.get_many([*values, "missing"]) == values
        assert paths[0] == "_run"


def test_the_fast_path_sends_the_general_paths_lines(fake, paths):
    """Its get lines are codec.get_request's, byte for byte (one key, many,
    a prefix, gets)."""
    f = fake()
    with Client([f.addr], key_prefix="p:") as c:
        f.set(b"p:a", b"A")
        warm(c, paths)
        assert c.get_many(["a"]) == {"a": b"A"}
        assert c.get_many(["a", b"b", "\u00e9", "a"]) == {"a": b"A"}
        assert c.gets_many(["b", "a"])["a"][0] == b"A"
        assert paths == []
        assert f.requests == [b"get p:a", b"get p:a p:b p:\xc3\xa9", b"gets p:b p:a"]


def test_replies_parsed_as_they_come_keep_the_general_paths_order(fake, memcached, paths):
    """Raw values are parsed while other servers still answer; a reply that
    comes before the replies of lower slots waits for them, so the result's
    key order is the general path's (slot order), whatever the arrival."""
    f, m = fake(), memcached()
    with Client([f.addr, m.addr], hash=MD5, timeout=2.0) as c:
        on_f = [k for k in (f"k{i}" for i in range(200)) if c.slot(k.encode()) == 0][:4]
        on_m = [k for k in (f"k{i}" for i in range(200)) if c.slot(k.encode()) == 1][:4]
        for k in on_f:
            f.set(k.encode(), b"F" + k.encode())
        assert c.set_many({k: b"M" + k.encode() for k in on_m}) == []
        warm(c, paths)
        keys = [k for pair in zip(on_m, on_f) for k in pair]    # interleaved as asked
        f.behave("delay", count=1, delay=0.2)   # slot 0 answers after slot 1
        got = c.get_many(keys)
        assert paths == []
        assert list(got) == on_f + on_m == list(general(c, keys))
        assert got == {**{k: b"F" + k.encode() for k in on_f},
                       **{k: b"M" + k.encode() for k in on_m}}
