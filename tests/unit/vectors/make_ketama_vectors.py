#!/usr/bin/env python3
"""Record where a real twemproxy puts 10,000 keys: ketama_twemproxy.json.

Run from the repository root, with tests/ on the path for the ``support``
package: ``PYTHONPATH=tests python3 tests/unit/vectors/make_ketama_vectors.py``.
Needs memcached and nutcracker, and the fixed ports below free (11211
included: twemproxy names a server on 11211 by its host alone, and the
vectors must cover that rule).  The unit test ``tests/unit/test_hash.py``
checks our placement against the file without nutcracker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from support.twemproxy_probe import FUNCTIONS, HOST, probe_keys, twemproxy_placement

HERE = os.path.dirname(os.path.abspath(__file__))

PORTS = (11211, 22122, 22123, 22124)
KEYS = 10000


def main() -> None:
    memcached = shutil.which("memcached")
    procs = [subprocess.Popen([memcached, "-u", "root", "-l", HOST, "-p", str(p), "-U", "0",
                               "-t", "1"]) for p in PORTS]
    time.sleep(0.5)
    keys = probe_keys(KEYS)
    servers = [f"{HOST}:{p}" for p in PORTS]
    cases = []
    try:
        for fn in FUNCTIONS:
            cases.append({"function": fn, "servers": servers, "weights": [1] * 4})
        cases.append({"function": "fnv1a_64", "servers": servers, "weights": [1, 2, 3, 5]})
        cases.append({"function": "fnv1a_64", "servers": servers[:3], "weights": [1] * 3})
        for case in cases:
            n = len(case["servers"])
            where = twemproxy_placement(case["servers"], list(PORTS[:n]), case["function"], keys,
                                        case["weights"])
            assert min(where) >= 0, "a key was lost or stored twice"
            case["placement"] = "".join(map(str, where))
    finally:
        for p in procs:
            p.kill()
    out = {"about": "twemproxy (nutcracker 0.5.0) ketama placement of probe_keys(10000) from "
                    "tests/support/twemproxy_probe.py; placement[i] is the index of the server holding "
                    "key i", "keys": KEYS, "cases": cases}
    with open(os.path.join(HERE, "ketama_twemproxy.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
