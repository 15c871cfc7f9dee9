"""mcrouter.client.AsyncClient against real memcached: the calls, bulk over
three servers, coalesced writes, a storm of random cancellations after
which every reply still belongs to its request, timeouts (TLS and mTLS:
test_client_tls.py).

Every test runs twice, on asyncio's own loop and on uvloop (the ``run``
fixture, tests/support/fixtures.py)."""
from __future__ import annotations

import asyncio
import random

import pytest

from mcrouter.client import (AsyncClient, MemcacheConnectionError, MemcachePartialError,
                             MemcacheTimeoutError, Mg, Ms)

MD5 = {"function": "md5"}


class WriteRecorder:
    """A connection's transport, recording each ``write``; the rest is the
    real one's.  (uvloop's transports are extension types: their ``write``
    cannot be replaced on the object, so the connection gets this instead.)"""

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_calls_and_bulk_over_three_servers(memcached, run):
    servers = [memcached(), memcached(), memcached()]

    async def main() -> None:
        async with AsyncClient([m.addr for m in servers], hash=MD5) as c:
            assert await c.set("a", b"1") and await c.get("a") == b"1"
            assert await c.add("a", b"2") is False
            v, cas = await c.gets("a")
            assert await c.cas("a", b"3", cas) is True and await c.get("a") == b"3"
            assert await c.incr("n", 1) is None
            keys = [f"k{i}" for i in range(500)]
            assert await c.set_many({k: k for k in keys}) == []
            assert await c.get_many(keys + ["missing"]) == {k: k.encode() for k in keys}
            assert await c.delete_many(keys[:10]) and await c.get_many(keys[:10]) == {}
            assert (await c.meta(Ms("m", b"v", return_cas=True))).ok
            assert (await c.meta(Mg("m", cas=True))).value == b"v"
            assert set(await c.versions()) == {m.addr for m in servers}
            servers[0].kill()
            with pytest.raises(MemcachePartialError) as e:
                await c.get_many(keys)
            lost = {k for k in keys if c.slot(k.encode()) == 0}
            assert set(e.value.errors) == lost and len(e.value.result) == len(keys) - 10 - \
                len(lost - set(keys[:10]))
            assert all(isinstance(x, MemcacheConnectionError) for x in e.value.errors.values())
    run(main())


def test_concurrent_callers_share_one_write_per_loop_turn(memcached, run):
    m = memcached()

    async def main() -> None:
        async with AsyncClient([m.addr]) as c:
            await c.set("k", b"v")
            conn = c.servers[0].conns[0]
            conn.transport = recorder = WriteRecorder(conn.transport)
            got = await asyncio.gather(*[c.get("k") for _ in range(100)])
            assert got == [b"v"] * 100
            assert recorder.writes == [b"get k\r\n" * 100]      # 100 callers, one write
    run(main())


def test_cancellation_storm_never_misaligns(memcached, monkeypatch, run):
    """Thousands of calls, a random third cancelled at random moments (before
    they are written, while in flight): every call that completes gets its
    own key's value, and so does every call afterwards."""
    from mcrouter.client import aio
    dropped = [0]            # replies that came for a call already cancelled
    real_hit = aio._Waiter.hit

    def hit(self) -> None:
        dropped[0] += self.fut.done()
        real_hit(self)
    monkeypatch.setattr(aio._Waiter, "hit", hit)
    servers = [memcached(), memcached()]
    rng = random.Random(7)

    async def main() -> None:
        async with AsyncClient([m.addr for m in servers], hash=MD5, timeout=10.0) as c:
            n = 3000
            values = {f"s{i}": (b"%d:" % i) * rng.randint(1, 300) for i in range(n)}
            assert await c.set_many(values) == []

            async def one(key: str):
                if rng.random() < 0.5:
                    return key, await c.get(key)
                many = await c.get_many([key, "nokey"])
                return key, many.get(key)
            checked = cancelled = 0
            for round_ in range(4):
                tasks = [asyncio.ensure_future(one(f"s{rng.randrange(n)}")) for _ in range(1000)]
                # in batches, at every stage: before the call starts, queued
                # and not yet written, written and awaiting its reply
                for _ in range(8):
                    for t in rng.sample(tasks, 50):
                        t.cancel()
                    await asyncio.sleep(0 if rng.random() < 0.6 else 0.0003)
                for t in tasks:
                    try:
                        key, value = await t
                    except asyncio.CancelledError:
                        cancelled += 1
                        continue
                    assert value == values[key], key
                    checked += 1
            assert cancelled > 500 and checked > 2000 and dropped[0] > 100
            # afterwards: every reply still matches its request
            keys = list(values)
            got = await asyncio.gather(*[c.get(k) for k in keys])
            assert got == [values[k] for k in keys]
            # and timeouts (asyncio.wait_for) are cancellations too
            for i in range(200):
                try:
                    await asyncio.wait_for(c.get(f"s{i}"), rng.choice([0, 0.0001, 1]))
                except TimeoutError:
                    pass
            assert await c.get_many(keys[:100]) == {k: values[k] for k in keys[:100]}
    run(main())


def test_timeout_then_late_reply_dropped(fake, run):
    f = fake()
    f.set(b"a", b"A")
    f.set(b"b", b"B")

    async def main() -> None:
        async with AsyncClient([f.addr], timeout=0.3, tko=100) as c:
            f.behave("delay", count=1, delay=0.6)
            with pytest.raises(MemcacheTimeoutError):
                await c.get("a")
            await asyncio.sleep(0.8)
            assert await c.get("b") == b"B"
            assert f.accepted == 1
    run(main())
