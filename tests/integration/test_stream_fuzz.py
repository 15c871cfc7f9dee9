"""The stream-level differential fuzzer (tests/streamfuzz.py) against real
memcached, through DefaultRoute and a 2-server PoolRoute.

CI runs each route for about 25 s with fixed seeds; MCROUTER_FUZZ_SECONDS and
MCROUTER_FUZZ_CASES run longer (the module's main() does the same outside
pytest).  Known, intended differences are listed once, in streamfuzz.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import pool_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import streamfuzz  # noqa: E402

SECONDS = float(os.environ.get("MCROUTER_FUZZ_SECONDS", "25"))
CASES = int(os.environ.get("MCROUTER_FUZZ_CASES", "1000000"))


@pytest.mark.parametrize("route,seed", [("DefaultRoute", 11), ("PoolRoute", 12)])
def test_mutated_streams_get_memcacheds_replies(memcached, router, route, seed):
    ref, m1, m2 = memcached(), memcached(), memcached()
    if route == "PoolRoute":
        r = router(f"pools:\n  main:\n    servers: [{m1.addr}, {m2.addr}]\nroute: PoolRoute|main\n")
    else:
        r = router(pool_config([m1]))
    played, found, skipped = streamfuzz.run(ref.port, r.port, seed, CASES, SECONDS)
    print(f"{route}: {played} cases, {skipped}")
    assert played >= min(CASES, 500)            # the run really ran
    assert not found, "\n".join(str(d) for d in found)
