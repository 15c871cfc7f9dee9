"""Closing a client closes everything it opened: every socket of every
server's pool (blocking) or every transport (asyncio, on both loops), counted
as this process's descriptors of TCP sockets connected to the servers; and
the client is usable again after."""
from __future__ import annotations

import asyncio
import os
import threading

from mcrouter.client import AsyncClient, Client

MD5 = {"function": "md5"}
KEYS = [f"close:{i}" for i in range(60)]


def server_sockets(servers) -> int:
    """This process's descriptors of sockets connected to ``servers`` (the
    socket inodes /proc/net/tcp lists with a server's port as remote end)."""
    ports = {m.port for m in servers}
    inodes = set()
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            if int(fields[2].split(":")[1], 16) in ports:
                inodes.add(f"socket:[{fields[9]}]")
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") in inodes
        except OSError:
            pass
    return n


def test_blocking_close_closes_every_pooled_socket(memcached):
    servers = [memcached(), memcached(), memcached()]
    c = Client([m.addr for m in servers], hash=MD5, max_pool_size=4)
    assert c.set_many({k: k for k in KEYS}) == []
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            start.wait(10)
            for _ in range(50):
                assert c.get_many(KEYS) == {k: k.encode() for k in KEYS}
        except BaseException as e:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert 3 < server_sockets(servers) <= 12    # more than one per server, at most the pools
    c.close()
    assert server_sockets(servers) == 0
    assert c.get("close:1") == b"close:1"       # usable again: it connects anew
    assert server_sockets(servers) == 1
    c.close()
    assert server_sockets(servers) == 0


def test_async_close_closes_every_transport(memcached, run):
    servers = [memcached(), memcached(), memcached()]

    async def main() -> None:
        c = AsyncClient([m.addr for m in servers], hash=MD5, pool_size=2)
        assert await c.set_many({k: k for k in KEYS}) == []
        got = await asyncio.gather(*(c.get_many(KEYS) for _ in range(20)))
        assert all(g == {k: k.encode() for k in KEYS} for g in got)
        assert 3 <= server_sockets(servers) <= 6     # at most pool_size per server
        await c.close()
        assert server_sockets(servers) == 0
        assert await c.get("close:2") == b"close:2"
        await c.close()
        assert server_sockets(servers) == 0

    run(main())
