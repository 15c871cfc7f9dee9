#!/usr/bin/env python3
"""The same calls through pymemcache and mcrouter.client: do they answer alike?

pymemcache's results are what the README promises (``gets`` gives the cas as
bytes, ``cas`` gives None for a gone key, ``stats`` converts values...).
Each client gets its own fresh memcached and the same sequence of calls, so
even the cas uniques must agree.  ``stats`` is compared by names and value
types (pids and times differ); pymemcache runs with ``default_noreply=False``,
the only default in which its store results mean anything and ours.

Needs pymemcache in the bench's environment (bench/README.md), never in the
package's dependencies.  Prints every difference; exits 1 if there is one.

    PYTHONPATH=$PWD /tmp/benchenv/bin/python bench/client_parity.py
"""
from __future__ import annotations

import os
import sys
from typing import Any

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from client import start_memcached  # noqa: E402  (bench/client.py, beside this file)

CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("set", ("k", b"v")), ("get", ("k",)), ("get", ("missing",)), ("get", ("missing", b"d")),
    ("gets", ("k",)), ("gets", ("missing",)), ("gets", ("missing", 1, 2)),
    ("cas", ("k", b"v2", b"999")), ("cas", ("gone", b"x", b"1")),
    ("add", ("k", b"x")), ("add", ("new", b"x")), ("replace", ("zz", b"x")),
    ("replace", ("new", b"y")), ("append", ("new", b"a")), ("prepend", ("new", b"p")),
    ("append", ("none", b"a")), ("get", ("new",)),
    ("delete", ("new",)), ("delete", ("new",)), ("delete", ("new", True)),
    ("set", ("n", b"10")), ("incr", ("n", 5)), ("decr", ("n", 20)), ("get", ("n",)),
    ("incr", ("nn", 1)), ("incr", ("n", 1, True)), ("touch", ("n", 10)), ("touch", ("zz", 10)),
    ("set_many", ({"a": b"1", "b": b"2"},)), ("get_many", (["a", "b", "c"],)),
    ("gets_many", (["a", "b", "c"],)), ("get_many", ([],)), ("delete_many", (["a", "zz"],)),
    ("set", ("k", b"v", 0, True)), ("add", ("k", b"v", 0, True)),
    ("set", ("s", "str")), ("get", ("s",)), ("set", ("i", 5)), ("get", ("i",)),
    ("set", ("k", b"v")), ("gets", ("k",)), ("cas", ("k", b"w", b"0")),
    ("incr", ("k", 1)), ("set", ("big", b"x" * (2 << 20))), ("get", ("big",)),
    ("flush_all", ()), ("get", ("k",)), ("version", ()),
    ("stats", ()), ("stats", ("settings",)), ("stats", ("slabs",)), ("stats", ("nosuch",)),
]


def call(client: Any, name: str, args: tuple[Any, ...]) -> Any:
    try:
        return getattr(client, name)(*args)
    except Exception as e:  # noqa: BLE001 - the exception's class is the result compared
        return ("raises", type(e).__name__)


def comparable(name: str, result: Any) -> Any:
    if name == "stats" and isinstance(result, dict):
        return {k: type(v).__name__ for k, v in result.items()}
    return result


def main() -> int:
    try:
        from pymemcache.client.base import Client as PymemcacheClient
    except ImportError:
        print("bench/client_parity.py: pymemcache is not installed here; "
              "run it with the bench's environment (bench/README.md)")
        return 2
    from mcrouter.client import Client
    (p1, port1), (p2, port2) = start_memcached("memcached"), start_memcached("memcached")
    try:
        theirs = PymemcacheClient(("127.0.0.1", port1), default_noreply=False)
        ours = Client([f"127.0.0.1:{port2}"])
        diffs = 0
        for name, args in CALLS:
            a = comparable(name, call(theirs, name, args))
            b = comparable(name, call(ours, name, args))
            if a != b:
                diffs += 1
                print(f"{name}{args!r:.60}\n  pymemcache:      {a!r:.300}\n"
                      f"  mcrouter.client: {b!r:.300}")
        print(f"{len(CALLS)} calls, {diffs} differences")
        return 1 if diffs else 0
    finally:
        for p in (p1, p2):
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
