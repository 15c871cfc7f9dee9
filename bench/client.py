#!/usr/bin/env python3
"""Benchmark mcrouter.client against the Python memcached clients people use.

One run, one Python process pinned to core 0 (``sched_setaffinity``); three
memcached servers (``-t 1``) pinned to core 1.  For each client that can be
imported: sequential ``get`` of one key, a 100-key multiget on one server
and on three servers, and ``get`` from 50 asyncio tasks on one server.
Clients that cannot be imported are listed and skipped: peers belong in the
bench's own environment, never in the package's dependencies (see
bench/README.md).  Every loop is bounded by ``--duration`` and ``--max-ops``.

    python3 bench/client.py [--duration 2] [--rounds 3] [--only mcrouter] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

CLIENT_CORE, SERVER_CORE = 0, "1"
NKEYS = 100
VALUE = b"v" * 100
KEYS = [b"bench:key:%d" % i for i in range(NKEYS)]
COLUMNS = ("get ops/s", "mget1 keys/s", "mget3 keys/s", "aio50 ops/s")
TASKS = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_memcached(memcached: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [memcached, "-U", "0", "-t", "1", "-m", "256", "-l", "127.0.0.1", "-p", str(port)]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]         # memcached refuses to run as root without -u
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", SERVER_CORE] + cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"bench/client.py: memcached on port {port} did not start; "
                     f"try `{' '.join(cmd)}` by hand")


def timed(duration: float, max_ops: int, step: Callable[[], int]) -> float:
    """Calls ``step`` (which returns how many it did) until ``duration`` or
    ``max_ops``; the rate per second."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while n < max_ops:
        n += step()
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def timed_async(duration: float, max_ops: int, get: Callable[[bytes], Any]) -> float:
    """``TASKS`` tasks each awaiting ``get(key)`` in a loop; total ops/s."""
    async def run() -> float:
        count = [0]
        end = time.perf_counter() + duration

        async def task(i: int) -> None:
            key = KEYS[i % NKEYS]
            while count[0] < max_ops and time.perf_counter() < end:
                await get(key)
                count[0] += 1
        for i in range(TASKS):          # warm-up: connect, and check a hit
            if await get(KEYS[i % NKEYS]) is None:
                raise RuntimeError("asyncio get missed a key it had set")
        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(TASKS)))
        return count[0] / (time.perf_counter() - t0)
    return asyncio.run(run())


# -- one function per client: {column: rate}, each column optional -------------------

def check_mget(result: Any, what: str) -> None:
    if len(result) != NKEYS:
        raise RuntimeError(f"{what}: multiget found {len(result)} of {NKEYS} keys")


def blocking_figures(make: Callable[[list[int]], Any], mget: Callable[[Any], Any],
                     ports: list[int], a: argparse.Namespace, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    c1 = make(ports[:1])
    for k in KEYS:
        c1.set(k, VALUE)
    if c1.get(KEYS[0]) is None:
        raise RuntimeError(f"{name}: get missed a key it had set")
    out["get ops/s"] = timed(a.duration, a.max_ops, lambda: (c1.get(KEYS[0]), 1)[1])
    check_mget(mget(c1), name)
    out["mget1 keys/s"] = timed(a.duration, a.max_ops, lambda: len(mget(c1)))
    c3 = make(ports)
    for k in KEYS:
        c3.set(k, VALUE)
    check_mget(mget(c3), name)
    out["mget3 keys/s"] = timed(a.duration, a.max_ops, lambda: len(mget(c3)))
    return out


def bench_mcrouter(ports: list[int], a: argparse.Namespace) -> dict[str, float]:
    from mcrouter.client import AsyncClient, Client

    def make(ps: list[int]) -> Any:
        # md5 ketama, as pylibmc's ketama: the 100 keys spread 34/34/32 over the
        # three servers (the default fnv1a_64 puts 90 of these keys on one)
        return Client([f"127.0.0.1:{p}" for p in ps],
                      hash={"function": "md5", "distribution": "ketama"})
    out = blocking_figures(make, lambda c: c.get_many(KEYS), ports, a, "mcrouter")

    holder: dict[str, Any] = {}

    async def get(key: bytes) -> Any:
        c = holder.get("c")
        if c is None:
            c = holder["c"] = AsyncClient([f"127.0.0.1:{ports[0]}"])
        return await c.get(key)
    out["aio50 ops/s"] = timed_async(a.duration, a.max_ops, get)
    return out


def bench_pylibmc(ports: list[int], a: argparse.Namespace) -> dict[str, float]:
    import pylibmc  # type: ignore[import-not-found]

    def make(ps: list[int]) -> Any:
        return pylibmc.Client([f"127.0.0.1:{p}" for p in ps], binary=False,
                              behaviors={"tcp_nodelay": True, "ketama": True})
    return blocking_figures(make, lambda c: c.get_multi(KEYS), ports, a, "pylibmc")


def bench_pymemcache(ports: list[int], a: argparse.Namespace) -> dict[str, float]:
    from pymemcache.client.base import Client  # type: ignore[import-not-found]
    from pymemcache.client.hash import HashClient  # type: ignore[import-not-found]

    def make(ps: list[int]) -> Any:
        if len(ps) == 1:
            return Client(("127.0.0.1", ps[0]))
        return HashClient([("127.0.0.1", p) for p in ps])
    return blocking_figures(make, lambda c: c.get_many(KEYS), ports, a, "pymemcache")


def bench_emcache(ports: list[int], a: argparse.Namespace) -> dict[str, float]:
    import emcache  # type: ignore[import-not-found]
    out: dict[str, float] = {}

    async def client(ps: list[int]) -> Any:
        # a 10 s timeout: its default 1 s fails on a loaded machine
        return await emcache.create_client([emcache.MemcachedHostAddress("127.0.0.1", p)
                                            for p in ps], timeout=10.0)

    async def blocking_like() -> None:
        for label, ps in (("mget1 keys/s", ports[:1]), ("mget3 keys/s", ports)):
            c = await client(ps)
            for k in KEYS:
                await c.set(k, VALUE)
            check_mget(await c.get_many(KEYS), "emcache")
            if label == "mget1 keys/s":
                n, t0 = 0, time.perf_counter()
                while n < a.max_ops and time.perf_counter() - t0 < a.duration:
                    await c.get(KEYS[0])
                    n += 1
                out["get ops/s"] = n / (time.perf_counter() - t0)
            n, t0 = 0, time.perf_counter()
            while n < a.max_ops and time.perf_counter() - t0 < a.duration:
                n += len(await c.get_many(KEYS))
            out[label] = n / (time.perf_counter() - t0)
            await c.close()
    asyncio.run(blocking_like())
    holder: dict[str, Any] = {}

    async def get(key: bytes) -> Any:
        if "c" not in holder:
            holder["c"] = await client(ports[:1])
        return await holder["c"].get(key)
    out["aio50 ops/s"] = timed_async(a.duration, a.max_ops, get)
    return out


def bench_aiomcache(ports: list[int], a: argparse.Namespace) -> dict[str, float]:
    import aiomcache  # type: ignore[import-not-found]
    out: dict[str, float] = {}

    async def mget() -> None:
        c = aiomcache.Client("127.0.0.1", ports[0])
        for k in KEYS:
            await c.set(k, VALUE)
        n, t0 = 0, time.perf_counter()
        while n < a.max_ops and time.perf_counter() - t0 < a.duration:
            await c.get(KEYS[0])
            n += 1
        out["get ops/s"] = n / (time.perf_counter() - t0)
        check_mget([v for v in await c.multi_get(*KEYS) if v is not None], "aiomcache")
        n, t0 = 0, time.perf_counter()
        while n < a.max_ops and time.perf_counter() - t0 < a.duration:
            n += len(await c.multi_get(*KEYS))
        out["mget1 keys/s"] = n / (time.perf_counter() - t0)
        await c.close()
    asyncio.run(mget())
    holder: dict[str, Any] = {}

    async def get(key: bytes) -> Any:
        if "c" not in holder:
            holder["c"] = aiomcache.Client("127.0.0.1", ports[0])
        return await holder["c"].get(key)
    out["aio50 ops/s"] = timed_async(a.duration, a.max_ops, get)
    return out


CLIENTS: dict[str, tuple[str, Callable[[list[int], argparse.Namespace], dict[str, float]]]] = {
    "mcrouter": ("mcrouter.client", bench_mcrouter),
    "pylibmc": ("pylibmc", bench_pylibmc),
    "pymemcache": ("pymemcache", bench_pymemcache),
    "emcache": ("emcache", bench_emcache),
    "aiomcache": ("aiomcache", bench_aiomcache),
}


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=2.0, help="seconds per figure (2)")
    p.add_argument("--max-ops", type=int, default=5_000_000, help="bound per figure")
    p.add_argument("--only", default="", help="comma-separated clients (default: all importable)")
    p.add_argument("--memcached", default=shutil.which("memcached") or "memcached")
    p.add_argument("--json", default="", help="also write the figures here")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every client this many times, in alternating order, "
                        "and report each figure's median (1)")
    a = p.parse_args()
    names = [n for n in (a.only.split(",") if a.only else CLIENTS) if n]
    for n in names:
        if n not in CLIENTS:
            p.error(f"--only: unknown client {n!r}; known: {', '.join(CLIENTS)}")
    try:
        os.sched_setaffinity(0, {CLIENT_CORE})
    except (AttributeError, OSError) as e:
        print(f"note: could not pin to core {CLIENT_CORE}: {e}", file=sys.stderr)
    missing = [n for n in names if not importable(CLIENTS[n][0])]
    if missing:
        print(f"not importable, skipped: {', '.join(missing)} (install them in a venv: "
              "see bench/README.md)", file=sys.stderr)
    procs: list[subprocess.Popen[bytes]] = []
    rounds: dict[str, list[dict[str, float]]] = {}
    try:
        ports = []
        for _ in range(3):
            proc, port = start_memcached(a.memcached)
            procs.append(proc)
            ports.append(port)
        present = [n for n in names if n not in missing]
        for r in range(max(1, a.rounds)):
            # alternate the order, so no client is always measured first or last
            for n in (present if r % 2 == 0 else present[::-1]):
                try:
                    got = CLIENTS[n][1](ports, a)
                except Exception as e:  # noqa: BLE001 -- one peer failing must not lose the others' figures
                    print(f"{n}: failed: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                rounds.setdefault(n, []).append(got)
                print(f"{n:<11}" + "".join(f"{got.get(c, 0):>14,.0f}" for c in COLUMNS),
                      file=sys.stderr)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    results = {n: {c: statistics.median(g[c] for g in got) for c in COLUMNS if c in got[0]}
               for n, got in rounds.items()}
    print(f"{'client':<11}" + "".join(f"{c:>14}" for c in COLUMNS))
    for n, r in results.items():
        print(f"{n:<11}" + "".join(f"{r[c]:>14,.0f}" if c in r else f"{'-':>14}"
                                   for c in COLUMNS))
    mc = results.get("mcrouter", {})
    if "pylibmc" in results and "mget3 keys/s" in mc:
        print(f"floor mget3: mcrouter/pylibmc = "
              f"{mc['mget3 keys/s'] / results['pylibmc']['mget3 keys/s']:.2f} (>= 1.00)")
    if "emcache" in results and "aio50 ops/s" in mc:
        print(f"floor aio50: mcrouter/emcache = "
              f"{mc['aio50 ops/s'] / results['emcache']['aio50 ops/s']:.2f} (>= 1.20)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
