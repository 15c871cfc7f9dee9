"""mcrouter.client in a few lines: the blocking and the asyncio client over
the same servers, placing keys exactly where a router's PoolRoute with the
same pool would.

    python examples/client.py 127.0.0.1:11211 [127.0.0.1:11212 ...]
"""
from __future__ import annotations

import asyncio
import sys

from mcrouter.client import AsyncClient, Client, MemcachePartialError, Mg, Ms

HASH = {"function": "md5", "distribution": "ketama"}    # a router.yaml pool's hash: mapping


def blocking(servers: list[str]) -> None:
    with Client(servers, hash=HASH, key_prefix="example:") as c:
        c.set("greeting", "hello")
        print("get:", c.get("greeting"))
        c.set_many({f"user:{i}": f"name {i}" for i in range(5)})
        try:
            users = c.get_many([f"user:{i}" for i in range(6)])
        except MemcachePartialError as e:           # a server down costs only its keys
            users = e.result
            print("failed keys:", sorted(e.errors))
        print("get_many:", dict(sorted(users.items())))
        print("incr:", c.incr("visits", 1), "(None: no such key)")
        c.set("visits", 10)
        print("incr:", c.incr("visits", 5))
        stored = c.meta(Ms("meta-key", b"value", ttl=60, return_cas=True))
        got = c.meta(Mg("meta-key", cas=True, ttl=True))
        print("meta:", got.status, got.value, "cas matches:", got.cas == stored.cas,
              "ttl<=60:", 0 < (got.ttl or 0) <= 60)


async def concurrent(servers: list[str]) -> None:
    async with AsyncClient(servers, hash=HASH, key_prefix="example:") as c:
        await c.set("greeting", "hello from asyncio")
        values = await asyncio.gather(*[c.get("greeting") for _ in range(3)])
        print("async get x3:", values)


if __name__ == "__main__":
    addrs = sys.argv[1:] or ["127.0.0.1:11211"]
    blocking(addrs)
    asyncio.run(concurrent(addrs))
