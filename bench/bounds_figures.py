#!/usr/bin/env python3
"""Worker RSS under hostile and heavy clients (issue 11), next to memcached's.

Runs each scenario twice, once through the router and once against
memcached directly, on fresh processes, and prints one markdown row per run:
RSS before, peak (sampled every 10 ms) and 2 s after, in MiB, plus what the
clients saw.  Sizes are scaled down from the issue's (a shared 2-core box):
see SCENARIOS.

    python3 bench/bounds_figures.py                    # this checkout
    python3 bench/bounds_figures.py --repo /work/main  # another checkout, to compare
    python3 bench/bounds_figures.py --only never-reads,slow-bodies --out figures.md
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
VALUE = 500_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


class Peak:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def __enter__(self) -> "Peak":
        def run() -> None:
            while not self.stop.wait(0.01):
                with contextlib.suppress(OSError):
                    self.peak = max(self.peak, rss_mib(self.pid))
        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.t.join(2)
        self.peak = max(self.peak, rss_mib(self.pid))


class Target:
    """memcached, and optionally the router in front of it."""

    def __init__(self, repo: Path | None, extra: list[str], tmp: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.mc_port = free_port()
        self.mc = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p",
                                    str(self.mc_port), "-U", "0", "-t", "1", "-m", "1024"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.mc)
        wait_port(self.mc_port)
        self.port, self.pid = self.mc_port, self.mc.pid
        self.log = tmp / "router.log"
        if repo is not None:
            cfg = tmp / "router.yaml"
            cfg.write_text(f'orderedPool: ["127.0.0.1:{self.mc_port}"]\n'
                           'route: {type: DefaultRoute}\n')
            self.port = free_port()
            with open(self.log, "wb") as log:
                r = subprocess.Popen([sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                                      "-l", f"127.0.0.1:{self.port}", "-L", "off", *extra],
                                     cwd=str(repo), stdout=log, stderr=log)
            self.procs.append(r)
            wait_port(self.port)
            deadline = time.monotonic() + 10
            while not children(r.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            workers = [c for c in children(r.pid)
                       if open(f"/proc/{c}/comm").read().strip() == "mcr-worker"]
            self.pid = workers[0]
        self.set("big", b"v" * VALUE)

    def set(self, key: str, value: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.mc_port)) as s:
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))
            assert s.recv(100) == b"STORED\r\n"

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def pipeline_unread(port: int, data: bytes, seconds: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent:sent + (1 << 20)])
        except BlockingIOError:
            time.sleep(0.02)
    return s


def drain(s: socket.socket, seconds: float = 60.0) -> bytes:
    s.setblocking(True)
    s.settimeout(5.0)
    got, deadline = bytearray(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def summary(data: bytes) -> str:
    values = data.count(b"VALUE big ")
    errors = {}
    for line in data.split(b"\r\n"):
        if line.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")):
            errors[line.decode()] = errors.get(line.decode(), 0) + 1
    parts = [f"{values} values"] + [f"{n} x `{e}`" for e, n in errors.items()]
    return ", ".join(parts)


# -- scenarios: each returns what the clients saw --------------------------

def never_reads(t: Target, n: int) -> str:
    s = pipeline_unread(t.port, b"get big\r\n" * n, 5.0)
    time.sleep(3.0)
    seen = summary(drain(s))
    s.close()
    return f"{n} x `get big` pipelined, read after 3 s: {seen}"


def amplification(t: Target, n: int) -> str:
    s = socket.create_connection(("127.0.0.1", t.port))
    s.sendall(b"get" + b" big" * n + b"\r\n")
    seen = summary(drain(s, 60))
    s.close()
    return f"one `get` naming `big` {n} times: {seen}"


def slow_bodies(t: Target, n: int) -> str:
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", t.port))
        s.sendall(b"set slow%d 0 0 1048576\r\n" % i + b"s" * 500_000)
        socks.append(s)
    time.sleep(2.0)
    refused = 0
    for s in socks:
        s.settimeout(0.01)
        with contextlib.suppress(OSError):
            if s.recv(100).startswith(b"SERVER_ERROR out of memory"):
                refused += 1
    for s in socks:
        s.close()
    return f"{n} clients, 1 MiB `set` header + 500 KB of body each, then silence: {refused} refused"


def three_clients(t: Target, n: int) -> str:
    socks = [pipeline_unread(t.port, b"get big\r\n" * n, 5.0) for _ in range(3)]
    time.sleep(2.0)
    out: list[bytes] = [b""] * 3
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, drain(socks[i])))
               for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    for s in socks:
        s.close()
    return f"3 clients x {n} `get big`, read after 2 s: " + "; ".join(summary(o) for o in out)


def window_overshoot(t: Target, n: int) -> str:
    """``n`` clients whose windows small replies opened (32 keys in flight),
    each then pipelining 40 `get big` without reading: what the router
    already asked for when their output filled is the reply budget's."""
    t.set("small", b"s")
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", t.port))
        s.sendall(b"get small\r\n" * 200)
        want = len(b"VALUE small 0 1\r\ns\r\nEND\r\n") * 200
        got = 0
        while got < want:
            got += len(s.recv(65536))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        socks.append(s)
    for s in socks:
        s.sendall(b"get big\r\n" * 40)
    time.sleep(3.0)
    out = [drain(s) for s in socks]
    for s in socks:
        s.close()
    seen = summary(b"".join(out))
    return f"{n} clients x 40 `get big` after 200 small gets, read after 3 s: {seen}"


SCENARIOS = {
    "never-reads": (never_reads, 300, []),
    "window-overshoot": (window_overshoot, 20, []),
    "amplification": (amplification, 400, []),
    "slow-bodies": (slow_bodies, 200, []),
    "three-clients": (three_clients, 300, ["-r", "1000"]),
}


def fd_limit(repo: Path | None, tmp: Path) -> str:
    """Out of descriptors: CPU and log lines over 5 s with clients waiting."""
    knows_c = "--max-conns" in (repo / "mcrouter" / "cli.py").read_text()
    t = Target(repo, ["-c", "100000"] if knows_c else [], tmp)
    try:
        if repo is not None:
            limit = len(os.listdir(f"/proc/{t.pid}/fd")) + 8
            resource.prlimit(t.pid, resource.RLIMIT_NOFILE, (limit, limit))
        socks = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(40)]
        time.sleep(1.0)
        log0 = t.log.stat().st_size if repo is not None else 0
        cpu0, t0 = cpu_seconds(t.pid), time.monotonic()
        time.sleep(5.0)
        cpu = (cpu_seconds(t.pid) - cpu0) / (time.monotonic() - t0) * 100
        told = 0
        for s in socks:
            s.settimeout(0.2)
            with contextlib.suppress(OSError):
                if s.recv(100) == b"ERROR Too many open connections\r\n":
                    told += 1
            s.close()
        text = t.log.read_bytes()
        lines = text[log0:].count(b"\n")
        refusals = text.count(b"refused ") + text.count(b"accept failed")
        return (f"| fd-limit | router worker | CPU {cpu:.0f}% over 5 s | "
                f"{lines} log lines in those 5 s | {refusals} refusal/accept-failed line(s) in all | "
                f"40 clients past the limit: {told} told `ERROR Too many open connections` |")
    finally:
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(HERE), help="checkout whose router is measured")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--out", default="", help="also append the table to this file")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or [*SCENARIOS, "fd-limit"]
    rows = ["| scenario | process | RSS before (MiB) | peak | after 2 s | clients saw |",
            "|---|---|---|---|---|---|"]
    for name in names:
        for repo in (Path(args.repo), None):
            with tempfile.TemporaryDirectory() as tmp:
                if name == "fd-limit":
                    if repo is None:
                        continue        # memcached's own limit is -c, not measured here
                    rows.append(fd_limit(repo, Path(tmp)))
                    print(rows[-1], flush=True)
                    continue
                run, n, extra = SCENARIOS[name]
                t = Target(repo, extra, Path(tmp))
                try:
                    before = rss_mib(t.pid)
                    with Peak(t.pid) as peak:
                        seen = run(t, n)
                    time.sleep(2.0)
                    after = rss_mib(t.pid)
                finally:
                    t.close()
                who = "router worker" if repo else "memcached"
                rows.append(f"| {name} | {who} | {before:.0f} | {peak.peak:.0f} | {after:.0f} "
                            f"| {seen} |")
                print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\nRouter from {args.repo}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
                    f", values of {VALUE} bytes:\n\n" + text)


if __name__ == "__main__":
    main()
