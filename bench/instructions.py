#!/usr/bin/env python3
"""Instructions per request: the router's worker, and twemproxy on the same load.

Throughput on a shared 2-core machine moves by 10% between rounds, too much
to see a cost of 1-3%.  Instruction counts do not depend on what else runs:
this runs the router (``-n 1``) under valgrind's callgrind twice per mode,
once for ``--small`` and once for ``--large`` requests from loadgen, and
reports ``(Ir(large) - Ir(small)) / (large - small)`` for the worker
process, so start-up and everything else that does not scale with the
requests cancels out.  Modes: ``on`` (as deployed) and ``off``
(``MCROUTER_METRICS=off -L off``).  About 2 minutes per run.

``--config default``: DefaultRoute over one memcached; ``bundled``: the
repo's router.yaml (MissFailoverRoute gets, AllFastestRoute sets) over two;
``pool``: PoolRoute over two (ketama, as bench/run.py's sharded workloads;
twemproxy then shards over both too).
``--twemproxy``: also nutcracker under callgrind on the same load, in front of
the first memcached (one pool, ketama, two server connections as the router's
``-C 2``), and the router/twemproxy ratio.

Usage: python3 bench/instructions.py [--small 3000] [--large 23000]
       [--workload get90|multiget10|set1k] [--depth N] [--modes on,off]
       [--config default|bundled|pool] [--twemproxy] [--no-router] [--keep]
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (REPO_DIR, build_loadgen, free_port, router_conf, twemproxy_conf,  # noqa: E402
                 wait_ready)


def worker_ir(out_dir: str, mode: str) -> int:
    """The worker's callgrind total: of the master's children (every file but
    the lowest pid's), the one that ran the most instructions.  twemproxy
    (mode ``twemproxy``) is one process: its only file."""
    files = sorted(glob.glob(os.path.join(out_dir, f"cg.{mode}.*")),
                   key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for path in files if mode == "twemproxy" else files[1:]:
        with open(path) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M)
        totals.append(int(m.group(1)) if m else 0)
    return max(totals)


def one_run(loadgen: str, mode: str, requests: int, tmp: str, workload: str = "get90",
            depth: int = 1, config: str = "default") -> int:
    """One callgrind run of ``requests`` requests; mode on, off or twemproxy."""
    out_dir = tempfile.mkdtemp(dir=tmp)
    port = free_port()
    mc_ports = [free_port() for _ in range(1 if config == "default" else 2)]
    mcs = [subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(p),
                             "-U", "0", "-t", "1"]) for p in mc_ports]
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.{mode}.%p"]
    if mode == "twemproxy":
        cfg = os.path.join(out_dir, "nutcracker.yml")
        twemproxy_conf(cfg, port, mc_ports if config == "pool" else mc_ports[:1], 2)
        argv = callgrind + ["nutcracker", "-c", cfg, "-o", os.path.join(out_dir, "nc.log"),
                            "-a", "127.0.0.1", "-s", str(free_port())]
        env = dict(os.environ)
    else:
        cfg = os.path.join(out_dir, "router.yaml")
        router_conf(cfg, mc_ports, config)
        metrics = "off" if mode == "off" else f"127.0.0.1:{free_port()}"
        env = {**os.environ, **({"MCROUTER_METRICS": "off"} if mode == "off" else {})}
        argv = callgrind + [os.path.realpath(sys.executable), "-m", "mcrouter", "run", "-f", cfg,
                            "-l", f"127.0.0.1:{port}", "-n", "1", "-L", metrics]
    router = subprocess.Popen(argv, cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        if not wait_ready(port, router, timeout=300):
            sys.exit(f"the router did not start under valgrind ({mode})")
        time.sleep(2)
        subprocess.run([loadgen, "-p", str(port), "-c", "10", "-w", workload, "-k", "1000",
                        "-d", str(depth), "-t", "600", "-W", "0", "-s", "7",
                        "-n", str(requests)],
                       check=True, stdout=subprocess.DEVNULL)
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(120)
        for mc in mcs:
            mc.kill()
            mc.wait()
    return worker_ir(out_dir, mode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=3000)
    ap.add_argument("--large", type=int, default=23000)
    ap.add_argument("--workload", default="get90", help="loadgen workload (get90, multiget10, set1k)")
    ap.add_argument("--depth", type=int, default=1, help="pipeline depth per connection")
    ap.add_argument("--modes", default="on,off", help="on (as deployed), off (no metrics), or both")
    ap.add_argument("--config", default="default", choices=("default", "bundled", "pool"),
                    help="the router's config: DefaultRoute, the bundled router.yaml, or a 2-server PoolRoute")
    ap.add_argument("--twemproxy", action="store_true", help="also measure twemproxy")
    ap.add_argument("--no-router", action="store_true", help="measure twemproxy only")
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind files (for callgrind_annotate) and print where")
    args = ap.parse_args()
    modes = [] if args.no_router else args.modes.split(",")
    if args.twemproxy or args.no_router:
        modes.append("twemproxy")
    tmp = tempfile.mkdtemp(prefix="mcinstr-")
    loadgen = build_loadgen(tmp)
    per_request = {}
    for mode in modes:
        small = one_run(loadgen, mode, args.small, tmp, args.workload, args.depth, args.config)
        large = one_run(loadgen, mode, args.large, tmp, args.workload, args.depth, args.config)
        per_request[mode] = (large - small) / (args.large - args.small)
        what = "twemproxy  " if mode == "twemproxy" else f"metrics {mode:<3}"
        who = "nutcracker" if mode == "twemproxy" else f"worker, {args.config}"
        print(f"{what} {per_request[mode]:9.0f} instructions per request "
              f"({who}: {small:,} at {args.small}, {large:,} at {args.large})", flush=True)
    if "on" in per_request and "off" in per_request:
        print(f"metrics on/off: {per_request['on'] / per_request['off']:.4f}x "
              "instructions per request")
    if "twemproxy" in per_request:
        for mode in ("on", "off"):
            if mode in per_request:
                print(f"router (metrics {mode}, {args.config}) / twemproxy: "
                      f"{per_request[mode] / per_request['twemproxy']:.3f}x instructions per request")
    if args.keep:
        print(f"callgrind files kept under {tmp}: cg.<mode>.<pid>, the largest of a run "
              "is the worker")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
