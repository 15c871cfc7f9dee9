"""Cross-client isolation (issue 10): no client ever receives another's reply.

20 clients pipeline sets and gets of their own keys and values through the
router while one attacker sends the smuggling lines of issue 10 (numeric
overflow in flags, exptime, bytes, cas unique and meta tokens, with data
blocks that look like commands).  Every reply each honest client gets must
be exactly its own expected bytes; afterwards the backends' memory limit is
unchanged and the victims' keys are intact.  Bounded in rounds and time.

The payloads are never ``flush_all``: where memcached rejects the header,
the would-be data block *is* a command in memcached's framing, so the
router (which frames exactly as memcached) must run it too; a flush there
would be the attacker's own, allowed request, not a smuggled one.
"""
from __future__ import annotations

import threading
import time

import pytest

from support import Client, first_difference, pool_config

CLIENTS = 20
ROUNDS = 30
KEYS_PER_ROUND = 10
DEADLINE = 60.0

VICTIM = b"victim:0:key0"
ATTACKS = [
    b"set x 0 99999999999999999999 16 noreply\r\ncache_memlimit 8\r\nmn\r\n",
    b"set x 0 99999999999999999999 16\r\ncache_memlimit 8\r\nmn\r\n",
    b"set x 4294967296 0 16\r\nget " + VICTIM + b"\r\r\nmn\r\n",
    b"set x 18446744073709551616 0 10\r\nshutdown\r\n\r\nmn\r\n",
    b"cas x 0 0 9 18446744073709551616\r\nversion\r\n\r\nmn\r\n",
    b"cas x 0 9223372036854775808 17 1 noreply\r\nget " + VICTIM + b"\r\nmn\r\n",
    b"add x 0 0 -1\r\nlru_crawler metadump all\r\nmn\r\n",
    b"set x 0 0 4294967311\r\ncache_memlimit 8\r\nmn\r\n",
    b"incr x 18446744073709551616\r\nmn\r\n",
    b"ms x 16 T18446744073709551616\r\ncache_memlimit 8\r\nmn\r\n",
    b"ms x 16 F4294967296 q\r\nget " + VICTIM + b"\r\r\nmn\r\n",
    b"ms x 15 C18446744073709551616\r\nstats detail on\r\n\r\nmn\r\n",
    b"ma x N99999999999999999999 J1 D1\r\nmn\r\n",
    b"mg x T-99999999999999999999 v\r\nmn\r\n",
    b"gat 99999999999999999999 " + VICTIM + b"\r\nmn\r\n",
    b"touch x 99999999999999999999\r\nmn\r\n",
    b"ms ZmxhZ3M= 9 b\r\nversion\r\n\r\nmn\r\n",
]


def own_traffic(c: int, r: int) -> tuple[bytes, bytes]:
    """One round of client ``c``: sets then gets of its own keys, and the exact replies."""
    req, rep = [], []
    for k in range(KEYS_PER_ROUND):
        key = b"victim:%d:key%d" % (c, k)
        val = b"value-of-%d-%d-%d" % (c, k, r)
        req.append(b"set %s %d 0 %d\r\n%s\r\n" % (key, c, len(val), val))
        rep.append(b"STORED\r\n")
    for k in range(KEYS_PER_ROUND):
        key = b"victim:%d:key%d" % (c, k)
        val = b"value-of-%d-%d-%d" % (c, k, r)
        req.append(b"get %s\r\nmg %s v f k\r\n" % (key, key))
        rep.append(b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, c, len(val), val))
        rep.append(b"VA %d f%d k%s\r\n%s\r\n" % (len(val), c, key, val))
    return b"".join(req), b"".join(rep)


def limit_maxbytes(m) -> bytes:
    with m.client() as cl:
        stats = cl.call(b"stats\r\n", b"END\r\n")
    return next(line for line in stats.split(b"\r\n") if line.startswith(b"STAT limit_maxbytes "))


@pytest.mark.parametrize("kind", ["default", "pool"])
def test_every_client_gets_only_its_own_replies(memcached, router, kind):
    if kind == "default":
        servers = [memcached()]
        r = router(pool_config(servers, "DefaultRoute"))
    else:
        servers = [memcached(), memcached()]
        r = router(f"pools:\n  main:\n    servers: [{servers[0].addr}, {servers[1].addr}]\n"
                   f"    hash: {{function: md5, distribution: ketama}}\nroute: PoolRoute|main\n")
    before = [limit_maxbytes(m) for m in servers]
    wrong: list[str] = []
    stop = threading.Event()
    deadline = time.monotonic() + DEADLINE

    def honest(c: int) -> None:
        with Client(r.port, timeout=20) as cl:
            for rnd in range(ROUNDS):
                if time.monotonic() > deadline:
                    break
                req, rep = own_traffic(c, rnd)
                got = cl.pipeline(req, rep[-200:], timeout=20)
                if got != rep:
                    wrong.append(f"client {c} round {rnd}: {first_difference(rep, got)}")
                    return

    def attacker() -> None:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < 2000:
            line = ATTACKS[n % len(ATTACKS)]
            n += 1
            with Client(r.port, timeout=5) as cl:
                cl.send(line)
                cl.recv_until_end(b"MN\r\n", timeout=2)     # whatever it gets is its own

    threads = [threading.Thread(target=honest, args=(c,)) for c in range(CLIENTS)]
    bad = threading.Thread(target=attacker)
    bad.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 30)
    stop.set()
    bad.join(30)
    assert not wrong, "\n".join(wrong[:5])
    assert [limit_maxbytes(m) for m in servers] == before
    # the victims' keys are intact (the last round written survives any smuggled flush)
    with r.client() as cl:
        for c in range(CLIENTS):
            key = b"victim:%d:key0" % c
            val = b"value-of-%d-0-%d" % (c, ROUNDS - 1)
            want = b"VA %d k%s\r\n%s\r\n" % (len(val), key, val)
            got = cl.request(b"mg %s v k\r\n" % key, want)
            assert got == want, (key, got)
