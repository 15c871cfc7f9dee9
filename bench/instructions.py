#!/usr/bin/env python3
"""What counting metrics costs a worker, in instructions per request.

Throughput on a shared 2-core machine moves by 10% between rounds, too much
to see a cost of 1-3%.  Instruction counts do not depend on what else runs:
this runs the router (``-n 1``) under valgrind's callgrind twice per mode,
once for ``--small`` and once for ``--large`` requests from loadgen, and
reports ``(Ir(large) - Ir(small)) / (large - small)`` for the worker
process, so start-up and everything else that does not scale with the
requests cancels out.  Modes: ``on`` (as deployed) and ``off``
(``MCROUTER_METRICS=off -L off``).  About 2 minutes per run.

Usage: python3 bench/instructions.py [--small 3000] [--large 23000]
       [--workload get90|multiget10|set1k] [--depth N] [--modes on,off]
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
from run import REPO_DIR, build_loadgen, free_port, wait_ready  # noqa: E402


def worker_ir(out_dir: str, mode: str) -> int:
    """The worker's callgrind total: of the master's children (every file but
    the lowest pid's), the one that ran the most instructions."""
    files = sorted(glob.glob(os.path.join(out_dir, f"cg.{mode}.*")),
                   key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for path in files[1:]:
        with open(path) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M)
        totals.append(int(m.group(1)) if m else 0)
    return max(totals)


def one_run(loadgen: str, mode: str, requests: int, tmp: str, workload: str = "get90",
            depth: int = 1) -> int:
    out_dir = tempfile.mkdtemp(dir=tmp)
    mc_port, port = free_port(), free_port()
    mc = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(mc_port),
                           "-U", "0", "-t", "1"])
    cfg = os.path.join(out_dir, "router.yaml")
    with open(cfg, "w") as f:
        f.write(f"orderedPool: [127.0.0.1:{mc_port}]\nroute: {{type: DefaultRoute}}\n")
    metrics = "off" if mode == "off" else f"127.0.0.1:{free_port()}"
    env = {**os.environ, **({"MCROUTER_METRICS": "off"} if mode == "off" else {})}
    router = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.{mode}.%p",
         os.path.realpath(sys.executable), "-m", "mcrouter", "run", "-f", cfg,
         "-l", f"127.0.0.1:{port}", "-n", "1", "-L", metrics],
        cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    args = ap.parse_args()
    modes = args.modes.split(",")
    tmp = tempfile.mkdtemp(prefix="mcinstr-")
    loadgen = build_loadgen(tmp)
    per_request = {}
    for mode in modes:
        small = one_run(loadgen, mode, args.small, tmp, args.workload, args.depth)
        large = one_run(loadgen, mode, args.large, tmp, args.workload, args.depth)
        per_request[mode] = (large - small) / (args.large - args.small)
        print(f"metrics {mode:<3} {per_request[mode]:9.0f} instructions per request "
              f"(worker: {small:,} at {args.small}, {large:,} at {args.large})", flush=True)
    if len(per_request) == 2:
        print(f"metrics on/off: {per_request['on'] / per_request['off']:.4f}x "
              "instructions per request")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
