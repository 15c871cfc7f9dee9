#!/usr/bin/env python3
"""Benchmark the router against direct memcached and twemproxy.

Starts one memcached, twemproxy (nutcracker) and the router in front of it
(twice: with metrics, as deployed, and as ``router-off`` with counting
turned off, to measure what metrics cost), all pinned to core 1; the C load generator (bench/loadgen.c) runs pinned to
core 0. For each workload the three targets are measured interleaved for
several rounds (rotating the order) and the medians are reported.

Usage: python3 bench/run.py [--quick] [--workloads get90,get90-d16] [--json out.json]
See bench/README.md for what the columns mean.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
SERVER_CORE, LOADGEN_CORE = "1", "0"

# name -> (loadgen workload, pipeline depth, memcached shards, router config)
# router config: "default" (DefaultRoute over one server), "pool" (PoolRoute,
# ketama as twemproxy's, over the shards), "bundled" (the repo's router.yaml:
# MissFailoverRoute gets and AllFastestRoute sets over two servers; twemproxy
# and direct then use the first server only, as a user without replication would)
WORKLOADS = {
    "get90": ("get90", 1, 1, "default"),
    "get90-d16": ("get90", 16, 1, "default"),
    "multiget10": ("multiget10", 1, 1, "default"),
    "set1k": ("set1k", 1, 1, "default"),
    # one 10-key get split over 2 or 4 servers: router PoolRoute vs twemproxy ketama
    "mget10-2sh": ("multiget10", 1, 2, "pool"),
    "mget10-4sh": ("multiget10", 1, 4, "pool"),
    "get90-bundled": ("get90", 1, 2, "bundled"),
    # TLS on both sides (memcached -Z, a tls:// listener, a tls: pool) beside plain,
    # all against one memcached listening both ways
    "get90-tls": ("get90", 1, 1, "tls"),
}
SHARD_HASH = "fnv1a_64"     # twemproxy's default, and the router's
TARGETS = ("direct", "twemproxy", "router", "router-off", "direct-tls", "router-tls")
RATIOS = (("router/twemproxy", "router", "twemproxy"), ("router/direct", "router", "direct"),
          ("metrics on/off", "router", "router-off"),
          ("router-tls/direct-tls", "router-tls", "direct-tls"),
          ("router tls/plain", "router-tls", "router"), ("direct tls/plain", "direct-tls", "direct"))
TLS_NAME = "bench.test"     # in the server certificate, checked by loadgen and the router


# ---------------------------------------------------------------- processes

def proc_starttime(pid):
    """Start time (field 22 of /proc/<pid>/stat) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid):
    """All live descendants of pid, found by scanning /proc for ppid."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Procs:
    """Every process this script starts; stop_all() kills them by pid."""

    def __init__(self):
        self.started = []   # (name, Popen)
        self.extra = {}     # pid -> starttime, for remembered descendants

    def start(self, name, argv, log_path, env=None):
        log = open(log_path, "wb")
        # New session: Ctrl-C in the terminal reaches only this script,
        # which then shuts the children down in order.
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=REPO_DIR, start_new_session=True,
                             env=None if env is None else {**os.environ, **env})
        log.close()
        self.started.append((name, p))
        return p

    def remember_children(self, p):
        """Record p's descendants so they are killed even if p dies first."""
        kids = descendants(p.pid)
        for pid in kids:
            self.extra[pid] = proc_starttime(pid)
        return kids

    def stop(self, p, timeout=3.0):
        pids = [p.pid] + descendants(p.pid)
        for pid in pids:
            _kill(pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(proc_starttime(x) is not None for x in pids[1:]):
            time.sleep(0.05)
        for pid in pids + descendants(p.pid):
            _kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.wait()

    def stop_all(self):
        for _, p in reversed(self.started):
            self.stop(p)
        for pid, st in self.extra.items():   # orphaned workers, if any
            if st is not None and proc_starttime(pid) == st:
                _kill(pid, signal.SIGKILL)
        self.started.clear()
        self.extra.clear()


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=10.0):
    """Wait until a set+get round trip works on port; False on failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"set bench:probe 0 0 2\r\nok\r\nget bench:probe\r\n")
                want = b"STORED\r\nVALUE bench:probe 0 2\r\nok\r\nEND\r\n"
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                if got == want:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- targets

def start_memcached(procs, tmp, tls=None):
    """memcached on a free port: (port, Popen).  With ``tls`` (make_cert's
    (cert, key)) it speaks TLS there (-Z, no client certificate asked) and
    plain TCP on another port: (port, Popen, tls_port)."""
    port = free_port()
    listen = "127.0.0.1"
    if tls:
        tls_port = free_port()
        listen = f"127.0.0.1:{tls_port},notls:127.0.0.1:{port}"
    argv = ["taskset", "-c", SERVER_CORE, "memcached", "-l", listen, "-p", str(port),
            "-U", "0", "-t", "1", "-m", "256", "-c", "4096"]
    if tls:
        argv += ["-Z", "-o", f"ssl_chain_cert={tls[0]},ssl_key={tls[1]}"]
    if os.geteuid() == 0:
        argv[4:4] = ["-u", "root"]  # memcached refuses to run as root without -u
    log = os.path.join(tmp, f"memcached-{port}.log")
    p = procs.start("memcached", argv, log)
    if not wait_ready(port, p):
        sys.exit("memcached did not start:\n" + tail(log))
    return (port, p, tls_port) if tls else (port, p)


def make_cert(tmp):
    """A self-signed certificate (its own CA) for 127.0.0.1 and TLS_NAME:
    (cert, key) paths; made by the openssl command, P-256."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", f"/CN={TLS_NAME}", "-addext",
                    f"subjectAltName=DNS:{TLS_NAME},IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def twemproxy_conf(path, port, mc_ports, server_conns):
    """nutcracker's config: one pool over mc_ports, ketama as the router's PoolRoute."""
    servers = "".join(f"   - 127.0.0.1:{p}:1\n" for p in mc_ports)
    with open(path, "w") as f:
        f.write(f"""bench:
  listen: 127.0.0.1:{port}
  hash: {SHARD_HASH}
  distribution: ketama
  server_connections: {server_conns}
  auto_eject_hosts: false
  servers:
{servers}""")


def router_conf(path, mc_ports, kind, ca=None):
    """The router's config over mc_ports: kind is default, pool or bundled
    (the repo's router.yaml policies with these servers as orderedPool);
    ``ca``: the pool speaks TLS to them, trusting this certificate."""
    servers = ", ".join(f"127.0.0.1:{p}" for p in mc_ports)
    with open(path, "w") as f:
        if kind == "default":
            f.write(f"orderedPool: [{servers}]\nroute:\n  type: DefaultRoute\n")
            if ca:
                f.write(f"tls: {{ca: {ca}, server_name: {TLS_NAME}}}\n")
        elif kind == "pool":
            f.write(f"pools:\n  main:\n    servers: [{servers}]\n"
                    f"    hash: {{function: {SHARD_HASH}, distribution: ketama}}\n"
                    f"route: PoolRoute|main\n")
        elif kind == "bundled":
            with open(os.path.join(REPO_DIR, "router.yaml")) as src:
                text = src.read()
            pool = "".join(f"  - 127.0.0.1:{p}\n" for p in mc_ports)
            text, n = re.subn(r"^orderedPool:\n(?:  - .*\n)+", f"orderedPool:\n{pool}", text,
                              flags=re.M)
            if n != 1:
                sys.exit("bench: router.yaml has no orderedPool list to replace")
            f.write(text)
        else:
            raise ValueError(kind)


def start_twemproxy(procs, tmp, mc_ports, server_conns):
    port, stats_port = free_port(), free_port()
    conf = os.path.join(tmp, f"nutcracker-{len(mc_ports)}.yml")
    twemproxy_conf(conf, port, mc_ports, server_conns)
    log = os.path.join(tmp, f"nutcracker-{len(mc_ports)}.log")
    argv = ["taskset", "-c", SERVER_CORE, "nutcracker", "-c", conf, "-o", log,
            "-a", "127.0.0.1", "-s", str(stats_port)]
    p = procs.start("twemproxy", argv, os.path.join(tmp, "nutcracker.out"))
    if not wait_ready(port, p):
        sys.exit("twemproxy did not start:\n" + tail(log))
    return port, p


def router_argv(args, cfg, port, metrics):
    if args.router_cmd:
        cmd = args.router_cmd.format(cfg=cfg, port=port, workers=args.workers, metrics=metrics)
        return shlex.split(cmd)
    # the package next to this script (cwd is the repo), not whatever is installed
    return [sys.executable, "-m", "mcrouter", "run", "-f", cfg, "-l", f"127.0.0.1:{port}",
            "-n", str(args.workers), "-L", metrics]


def start_router(procs, tmp, mc_ports, args, name="router", kind="default", tls=None):
    """Start the router; return (port, Popen) or None with a message printed.
    ``kind``: the config (router_conf).
    ``router-off``: no /metrics and no counting (MCROUTER_METRICS=off).
    ``tls`` (cert, key): TLS to mc_ports, and a tls:// listener beside the
    plain one: (port, Popen, tls_port)."""
    port = free_port()
    off = name == "router-off"
    metrics = "off" if off else f"127.0.0.1:{free_port()}"
    cfg = os.path.join(tmp, f"{name}-{kind}-{len(mc_ports)}.yaml")
    router_conf(cfg, mc_ports, kind, ca=tls[0] if tls else None)
    argv = ["taskset", "-c", SERVER_CORE] + router_argv(args, cfg, port, metrics)
    if tls:
        tls_port = free_port()
        argv += ["-l", f"tls://127.0.0.1:{tls_port}", "--tls-cert", tls[0], "--tls-key", tls[1]]
    log = os.path.join(tmp, f"{name}-{kind}-{len(mc_ports)}.log")
    try:
        p = procs.start(name, argv, log, env={"MCROUTER_METRICS": "off"} if off else None)
    except OSError as e:
        print(f"SKIP {name}: cannot execute {argv}: {e}", file=sys.stderr)
        return None
    if not wait_ready(port, p, timeout=args.router_timeout):
        why = (f"exited with status {p.returncode}" if p.poll() is not None else
               f"did not serve set/get on port {port} within {args.router_timeout:.0f} s")
        print(f"SKIP {name}: `{shlex.join(argv)}` {why}. Last output:\n{tail(log)}", file=sys.stderr)
        procs.stop(p)
        return None
    time.sleep(0.3)  # let worker processes finish starting
    return (port, p, tls_port) if tls else (port, p)


# ---------------------------------------------------------------- measuring

def build_loadgen(tmp):
    exe = os.path.join(tmp, "loadgen")
    if subprocess.run(["cc", "-O2", "-o", exe, os.path.join(BENCH_DIR, "loadgen.c"),
                       "-lssl", "-lcrypto"]).returncode:
        sys.exit("bench: cannot build bench/loadgen.c (OpenSSL's headers and libraries: "
                 "apt-get install libssl-dev)")
    return exe


def start_tls_targets(procs, tmp, args, cert):
    """get90-tls: one memcached listening in TLS and in plain TCP, each
    reached directly and through the router (TLS both sides, or plain)."""
    port, mc, tls_port = start_memcached(procs, tmp, tls=cert)
    lg_tls = ["--tls-ca", cert[0], "--tls-name", TLS_NAME]
    targets, skipped = [], {}
    if "direct" in args.targets:
        targets.append({"name": "direct", "port": port, "proc": mc})
    if "direct-tls" in args.targets:
        targets.append({"name": "direct-tls", "port": tls_port, "proc": mc, "loadgen_args": lg_tls})
    for name in ("router", "router-tls"):
        if name not in args.targets:
            continue
        tls = name == "router-tls"
        r = start_router(procs, tmp, [tls_port if tls else port], args, name, "default",
                         tls=cert if tls else None)
        if r:
            targets.append({"name": name, "port": r[2] if tls else r[0], "proc": r[1],
                            "loadgen_args": lg_tls if tls else []})
            print(f"{name} pids: {[r[1].pid] + descendants(r[1].pid)}", file=sys.stderr)
        else:
            skipped[name] = "could not be started (see message above)"
    for t in targets:
        t["mc_pids"] = [mc.pid]
    return targets, skipped


def start_targets(procs, tmp, mcs, args, kind="default"):
    """The targets over these memcached servers: ([target], {name: why skipped}).
    Direct memcached only with one server (a client cannot shard by itself here);
    with the bundled config, direct and twemproxy use the first server only."""
    ports = [port for port, _ in mcs]
    router_ports = ports
    if kind == "bundled":
        ports = ports[:1]
    targets, skipped = [], {}
    if "direct" in args.targets:
        if len(ports) == 1:
            targets.append({"name": "direct", "port": ports[0], "proc": mcs[0][1]})
        else:
            skipped["direct"] = "not applicable to several shards"
    if "twemproxy" in args.targets:
        port, p = start_twemproxy(procs, tmp, ports, args.twem_conns)
        targets.append({"name": "twemproxy", "port": port, "proc": p})
    for name in ("router", "router-off"):
        if name not in args.targets:
            continue
        r = start_router(procs, tmp, router_ports, args, name, kind)
        if r:
            targets.append({"name": name, "port": r[0], "proc": r[1]})
            print(f"{name} pids: {[r[1].pid] + descendants(r[1].pid)}", file=sys.stderr)
        else:
            skipped[name] = "could not be started (see message above)"
    for t in targets:
        t["mc_pids"] = [p.pid for _, p in mcs]
    return targets, skipped


def run_loadgen(args, exe, port, workload, depth, pids, procs, extra=()):
    """One measured run; returns loadgen's JSON result (or {'failed': msg})."""
    argv = ["taskset", "-c", LOADGEN_CORE, exe, "-p", str(port), "-w", workload,
            "-d", str(depth), "-c", str(args.conns), "-k", str(args.keyspace),
            "-t", str(args.duration), "-W", str(args.warmup),
            "-C", ",".join(map(str, pids)), *extra]
    if args.max_requests:
        argv += ["-n", str(args.max_requests)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    procs.started.append(("loadgen", p))
    try:
        out, err = p.communicate(timeout=args.duration + args.warmup + 60)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        return {"failed": "loadgen timed out"}
    finally:
        procs.started = [x for x in procs.started if x[1] is not p]
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if p.returncode not in (0, 3) or not lines:
        return {"failed": f"loadgen exit {p.returncode}: {err.strip()[-500:]}"}
    res = json.loads(lines[-1])
    if res["errors"]:
        print(f"    !! {res['errors']} error replies: {err.strip()[:300]}", file=sys.stderr)
    return res


def measure(args, exe, target, port, workload, depth, procs):
    """Run once against target; adds per-request CPU for target and memcached."""
    tpid = target["proc"].pid
    if target["name"].startswith("router"):
        # master + workers; the pid list is re-read each run in case it changed
        target_pids = [tpid] + procs.remember_children(target["proc"])
    else:
        target_pids = [tpid]
    mc_pids = target["mc_pids"]
    direct = target["name"].startswith("direct")
    pids = target_pids if direct else target_pids + mc_pids
    res = run_loadgen(args, exe, port, workload, depth, pids, procs, target.get("loadgen_args", ()))
    if "failed" in res:
        return res
    cpu = res.pop("cpu_s")
    reqs = max(res["requests"], 1)
    tcpu = sum(c for c in cpu[:len(target_pids)] if c >= 0)
    res["cpu_us_per_req"] = tcpu / reqs * 1e6
    mc_cpu = cpu[0] if direct else sum(cpu[len(target_pids):])
    res["mc_cpu_us_per_req"] = mc_cpu / reqs * 1e6
    res["target_pids"] = target_pids
    return res


def median_of(runs, key):
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def summarize(runs):
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return None
    s = {k: median_of(ok, k) for k in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_req",
                                       "mc_cpu_us_per_req", "loadgen_cpu", "hit_ratio")}
    ops = [r["ops_per_s"] for r in ok]
    s["spread_pct"] = (max(ops) - min(ops)) / s["ops_per_s"] * 100 if s["ops_per_s"] else 0
    s["errors"] = sum(r["errors"] for r in ok)
    s["runs"] = len(ok)
    s["failed_runs"] = len(runs) - len(ok)
    return s


def paired_ratio(runs_a, runs_b, key):
    """Median over rounds of a/b, pairing runs from the same round: runs of
    one round are adjacent in time, so this cancels most machine drift."""
    b_by_round = {r["round"]: r for r in runs_b if "failed" not in r}
    vals = [a[key] / b_by_round[a["round"]][key] for a in runs_a
            if "failed" not in a and a["round"] in b_by_round and b_by_round[a["round"]][key]]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- output

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(results, args):
    print()
    print(f"rounds={args.rounds} duration={args.duration}s warmup={args.warmup}s conns={args.conns} "
          f"keyspace={args.keyspace} router workers={args.workers} twemproxy "
          f"server_connections={args.twem_conns}; servers on core {SERVER_CORE}, "
          f"loadgen on core {LOADGEN_CORE}; values are medians over rounds, ratios are medians "
          f"of per-round ratios")
    hdr = (f"{'workload':<12} {'target':<10} {'ops/s':>9} {'spread':>7} {'p50us':>7} {'p99us':>7} "
           f"{'cpu/req':>8} {'mc/req':>7} {'lg cpu':>6} {'errors':>6}")
    print(hdr)
    print("-" * len(hdr))
    for wl, per in results.items():
        for t in [t for t in TARGETS if t in args.targets
                  and (t in per["summary"] or t in per["skipped"])]:
            s = per["summary"].get(t)
            if s is None:
                why = per["skipped"].get(t, "no successful run")
                print(f"{wl:<12} {t:<10} skipped: {why}")
                continue
            print(f"{wl:<12} {t:<10} {fmt(s['ops_per_s'], '9.0f')} {fmt(s['spread_pct'], '6.1f')}% "
                  f"{fmt(s['p50_us'], '7.0f')} {fmt(s['p99_us'], '7.0f')} "
                  f"{fmt(s['cpu_us_per_req'], '8.2f')} {fmt(s['mc_cpu_us_per_req'], '7.2f')} "
                  f"{fmt(s['loadgen_cpu'], '6.2f')} {s['errors']:>6}")
        r = per["ratios"]
        for name, _, _ in RATIOS:
            x = r.get(name, {})
            if all(v is None for v in x.values()):
                continue            # a target not measured in this workload
            print(f"{'':<12} {name:<21} ops {fmt(x.get('ops_per_s'), '.3f')}x  "
                  f"p50 {fmt(x.get('p50_us'), '.3f')}x  p99 {fmt(x.get('p99_us'), '.3f')}x  "
                  f"cpu/req {fmt(x.get('cpu_us_per_req'), '.3f')}x")
        print()


# ---------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="defaults of 1 round, 2 s per run, 0.5 s warm-up")
    ap.add_argument("--rounds", type=int, help="rounds per workload (3)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (4)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds per run (1)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of targets")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--keyspace", type=int, default=10000)
    ap.add_argument("--max-requests", type=int, default=0, help="per-run cap (0 = none)")
    ap.add_argument("--workers", type=int, default=1, help="router worker processes (-n)")
    ap.add_argument("--twem-conns", type=int, default=2,
                    help="twemproxy server_connections (2 = the router's default -C)")
    ap.add_argument("--router-cmd", help="router command template; {cfg}, {port}, {workers}, "
                    "{metrics} (the -L value) are substituted, e.g. 'python -m mcrouter run -f {cfg} "
                    "-l 127.0.0.1:{port} -n {workers} -L {metrics}'")
    ap.add_argument("--router-timeout", type=float, default=15.0, help="seconds to wait for the router")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    args = ap.parse_args()
    # explicit --rounds/--duration/--warmup win over --quick
    for name, normal, quick in (("rounds", 3, 1), ("duration", 4.0, 2.0), ("warmup", 1.0, 0.5)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.targets = [t for t in args.targets.split(",") if t]
    bad = [w for w in args.workloads if w not in WORKLOADS] + [t for t in args.targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown workload/target: {', '.join(bad)}")
    if not (1 <= args.rounds <= 20 and 0 < args.duration <= 60 and 0 <= args.warmup <= 30):
        ap.error("need 1 <= rounds <= 20, 0 < duration <= 60, 0 <= warmup <= 30")
    return args


def main():
    args = parse_args()
    tls = any(WORKLOADS[wl][3] == "tls" for wl in args.workloads)
    for tool in (("memcached", "taskset", "cc") + (("nutcracker",) if "twemproxy" in args.targets else ())
                 + (("openssl",) if tls else ())):
        if not shutil.which(tool):
            sys.exit(f"missing required tool: {tool}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("need at least 2 cores (servers on core 1, loadgen on core 0)")

    # SIGINT/SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally below always
    # runs (SIGINT explicitly too: it is ignored when started in background).
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="mcbench-")
    try:
        exe = build_loadgen(tmp)
        setups = sorted({WORKLOADS[wl][2:] for wl in args.workloads})
        mcs = [start_memcached(procs, tmp)
               for _ in range(max((n for n, kind in setups if kind != "tls"), default=0))]
        cert = make_cert(tmp) if any(kind == "tls" for _, kind in setups) else None
        topologies = {(n, kind): start_tls_targets(procs, tmp, args, cert) if kind == "tls"
                      else start_targets(procs, tmp, mcs[:n], args, kind) for n, kind in setups}

        results = {}
        for wl in args.workloads:
            workload, depth, shards, kind = WORKLOADS[wl]
            targets, skipped = topologies[(shards, kind)]
            runs = {t["name"]: [] for t in targets}
            wl_skipped = dict(skipped)
            if not targets:
                print(f"  {wl}: no target could be started", file=sys.stderr)
            for rnd in range(args.rounds if targets else 0):
                k = rnd % len(targets)   # rotate the order each round
                for t in targets[k:] + targets[:k]:
                    name = t["name"]
                    if name in wl_skipped:
                        continue
                    if t["proc"].poll() is not None:
                        wl_skipped[name] = skipped[name] = f"process exited ({t['proc'].returncode})"
                        print(f"  {name} exited with {t['proc'].returncode}; skipping it from now on",
                              file=sys.stderr)
                        continue
                    res = measure(args, exe, t, t["port"], workload, depth, procs)
                    res["round"] = rnd + 1
                    runs[name].append(res)
                    if "failed" in res:
                        print(f"  {wl} round {rnd + 1} {name}: FAILED {res['failed']}", file=sys.stderr)
                    else:
                        print(f"  {wl} round {rnd + 1} {name:<9} {res['ops_per_s']:9.0f} ops/s  "
                              f"p50 {res['p50_us']} us  p99 {res['p99_us']} us  "
                              f"cpu/req {res['cpu_us_per_req']:.2f} us  errors {res['errors']}",
                              file=sys.stderr)
            summary = {name: summarize(rs) for name, rs in runs.items()}
            ratios = {}
            for name, top, base in RATIOS:
                a, b = runs.get(top, []), runs.get(base, [])
                ratios[name] = {k: paired_ratio(a, b, k) for k in ("ops_per_s", "p50_us", "p99_us",
                                                                    "cpu_us_per_req")}
            results[wl] = {"workload": workload, "depth": depth, "shards": shards, "runs": runs,
                           "summary": summary, "ratios": ratios, "skipped": wl_skipped}

        print_table(results, args)
        # Direct memcached is the upper bound and may saturate core 0 too; what
        # matters is that the load generator has headroom against the proxies.
        worst = max((s["loadgen_cpu"] for per in results.values()
                     for name, s in per["summary"].items() if s and name != "direct"), default=0)
        if worst > 0.9:
            print(f"WARNING: loadgen used {worst:.0%} of core {LOADGEN_CORE} against a proxy; "
                  "it may be the bottleneck there", file=sys.stderr)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=1)
            print(f"JSON written to {args.json}", file=sys.stderr)
        bad = any(s is None or s["errors"] or s["failed_runs"]
                  for per in results.values() for s in per["summary"].values())
        return 1 if bad else 0
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # don't interrupt the cleanup
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
