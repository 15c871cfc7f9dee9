"""Stream-level differential fuzzer: the same mutated command streams go to
memcached directly and through the router, and the reply bytes must agree.

Each case is a short stream of valid text and meta commands on keys of its
own, mutated (flipped bytes, truncation, CR/LF/NUL/space runs, numbers at
and past every type's limit, base64 keys, opaques, duplicate and surplus
flags, 250/251-byte keys), then closed by ``mn`` and a marker ``mg`` whose
reply is unique to the case.  A smuggled command or an extra reply shows as
a difference before the marker; a reply owed but never sent shows as a
missing marker.

Known, intended differences (the only ones the comparison allows):

======================================  =====================================================
difference                              why
======================================  =====================================================
CAS uniques (``gets``, mg/ma ``c``)      each memcached numbers its own stores; compared as
                                        ``*`` (PoolRoute: two servers, two counters)
remaining TTLs (meta ``t<n>``, n >= 0)   the wall clock may tick between the two sides
a line starting with byte 0x80          the router closes at once (binary protocol, which it
                                        does not speak); memcached would parse text.  The
                                        generator writes 0x81 for every 0x80 byte
admin commands, ``me`` and ``stats``   refused by the router's default admin policy (README
                                        "Admin commands"), ``stats`` values differ: never
                                        generated, and a case a mutation turned into one is
                                        counted, not compared
a get-family line with a key over 250   memcached answers CLIENT_ERROR and also drops every
bytes, after other requests in the      reply it had queued for earlier requests in the same
same read                               read (proto_text.c: conn_release_items), so a client
                                        waits for replies that never come; the router answers
                                        every request.  Such a case is counted, not compared
======================================  =====================================================

Run longer than CI does: ``python3 tests/streamfuzz.py --cases 1000000 --seed 1``
(starts its own memcached servers and router; prints a divergence and exits 1).
"""
from __future__ import annotations

import base64
import random
import re
import socket
import time
from dataclasses import dataclass

LIMITS = [b"0", b"1", b"2147483647", b"2147483648", b"2147483649", b"4294967295",
          b"4294967296", b"4294967297", b"9223372036854775807", b"9223372036854775808",
          b"9223372036854775809", b"18446744073709551615", b"18446744073709551616",
          b"18446744073709551617", b"-1", b"-2147483648", b"-2147483649",
          b"-9223372036854775808", b"-9223372036854775809", b"-18446744073709551615",
          b"-18446744073709551616", b"123456789012345678901234567890", b"+5", b"-0", b"00",
          b"5x", b"x", b""]
META_NUMERIC = b"TNRCFJDE"
NOISE = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"  ", b"\t", b"\x7f", b"\xff", b"noreply",
         b"q", b"b", b"v", b"get ", b"mn\r\n", b"k" * 251]
CAS_FIELD = re.compile(rb"^(VALUE \S+ \d+ \d+) \d+\r$", re.M)
META_CAS = re.compile(rb"^((?:HD|VA \d+|EN|NF|NS|EX)(?: [^\r\n]*)?) c\d+(?=[ \r])", re.M)
REFUSED = re.compile(rb"(?:^|\n)(?:me|stats|cache_memlimit|shutdown|slabs|lru|lru_crawler|watch|"
                     rb"extstore|refresh_certs|debugtime|misbehave)(?:[ \r\n]|$)")
LONG_KEY_GET = re.compile(rb"(?:^|\n)(?:get|gets|bget|gat|gats) [^\n]*?[^ \r\n]{251}")
META_TTL = re.compile(rb"^((?:HD|VA \d+|EN|NF|NS|EX)(?: [^\r\n]*)?) t\d+(?=[ \r])", re.M)


def normalise(data: bytes) -> bytes:
    """Blank out exactly the fields of the table above."""
    data = CAS_FIELD.sub(rb"\1 *\r", data)
    for _ in range(2):              # a line may carry both c and t
        data = META_CAS.sub(rb"\1 c*", data)
        data = META_TTL.sub(rb"\1 t*", data)
    return data


class Generator:
    """Streams of valid commands on the case's own keys, then mutated."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def key(self, case: int, i: int) -> bytes:
        return b"fz%dk%d" % (case, i)

    def value(self) -> bytes:
        r = self.rng
        return bytes(r.choice(b"abcdefxyz0123456789\r\n") for _ in range(r.choice((0, 1, 3, 10, 100))))

    def number(self) -> bytes:
        return self.rng.choice(LIMITS)

    def command(self, case: int) -> bytes:
        r = self.rng
        k = self.key(case, r.randrange(3))
        k2 = self.key(case, r.randrange(3))
        v = self.value()
        num = self.number if r.random() < 0.3 else (lambda: b"%d" % r.choice((0, 1, 5, 100)))
        kind = r.randrange(22)
        nr = b" noreply" if r.random() < 0.2 else b""
        if kind <= 4:
            cmd = (b"set", b"add", b"replace", b"append", b"prepend")[kind]
            return b"%s %s %s %s %d%s\r\n%s\r\n" % (cmd, k, num(), num(), len(v), nr, v)
        if kind == 5:
            return b"cas %s %s %s %d %s%s\r\n%s\r\n" % (k, num(), num(), len(v), num(), nr, v)
        if kind == 6:
            return b"%s %s %s\r\n" % (r.choice((b"get", b"gets")), k, k2)
        if kind == 7:
            return b"%s %s %s %s\r\n" % (r.choice((b"gat", b"gats")), num(), k, k2)
        if kind == 8:
            return b"delete %s%s\r\n" % (k, r.choice((b"", b" 0", b" noreply", b" 1")))
        if kind == 9:
            return b"%s %s %s%s\r\n" % (r.choice((b"incr", b"decr")), k, num(), nr)
        if kind == 10:
            return b"touch %s %s%s\r\n" % (k, num(), nr)
        if kind == 11:
            return b"version\r\n" if r.random() < 0.5 else b"verbosity %s%s\r\n" % (num(), nr)
        if kind in (12, 13):
            return b"mg %s%s\r\n" % (self.meta_key(k), self.flags(b"vcfkstqhlOTNR"))
        if kind in (14, 15, 16):
            return b"ms %s %d%s\r\n%s\r\n" % (self.meta_key(k), len(v), self.flags(b"cCFIkOqsTMb"), v)
        if kind == 17:
            return b"md %s%s\r\n" % (self.meta_key(k), self.flags(b"qCkOTI"))
        if kind == 18:
            return b"ma %s%s\r\n" % (self.meta_key(k), self.flags(b"qNJDTMOtcvk"))
        if kind == 19:
            return b"mn\r\n"
        if kind == 20:
            return b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (k, len(b"1"), b"1", k)
        return b"ms %s %s T0\r\n%s\r\n" % (k, num(), v)

    def meta_key(self, k: bytes) -> bytes:
        if self.rng.random() < 0.2:
            return base64.b64encode(k) + b" b"
        return k

    def flags(self, alphabet: bytes) -> bytes:
        r = self.rng
        out = []
        for _ in range(r.choice((0, 1, 2, 3, 5, 18))):
            f = r.choice(alphabet)
            tok = bytes([f])
            if f in META_NUMERIC:
                tok += self.number() if r.random() < 0.6 else b"%d" % r.randrange(100)
            elif f == ord("O"):
                tok += b"o" * r.choice((0, 5, 31, 32, 40))
            elif f == ord("M"):
                tok += r.choice((b"S", b"E", b"A", b"P", b"R", b"I", b"D", b"+", b"-", b"X", b"", b"SS"))
            out.append(tok)
        return b"".join(b" " + t for t in out)

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        b = bytearray(data)
        for _ in range(r.choice((0, 0, 1, 1, 2, 4))):
            if not b:
                break
            i = r.randrange(len(b))
            op = r.randrange(5)
            if op == 0:
                b[i] ^= 1 << r.randrange(8)
            elif op == 1:
                del b[i:]
            elif op == 2:
                b[i:i] = r.choice(NOISE)
            elif op == 3:
                b[i:i] = self.number()
            else:
                b[i:i + r.randrange(1, 4)] = b""
        return bytes(b)

    def case(self, n: int) -> bytes:
        data = b"".join(self.command(n) for _ in range(self.rng.randint(1, 4)))
        data = self.mutate(data)
        # no line may start with the binary magic byte (the table above); where a
        # line starts depends on framing, so the byte is kept out altogether
        return data.replace(b"\x80", b"\x81")


def marker(n: int) -> tuple[bytes, bytes]:
    return b"mn\r\nmg __fzmark__ O%d\r\n" % n, b"EN O%d\r\n" % n


class Side:
    """One connection that reconnects after the peer closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def exchange(self, data: bytes, end: bytes, timeout: float) -> tuple[bytes, bool]:
        """Send, read until the output ends with ``end``, EOF or timeout;
        return (output, closed)."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = self.sock
        out = bytearray()
        closed = False
        try:
            if data:
                s.sendall(data)
        except OSError:
            closed = True
        deadline = time.monotonic() + timeout
        while not closed and not out.endswith(end):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                break
            except OSError:
                chunk = b""
            if not chunk:
                closed = True
                break
            out += chunk
        if closed:
            self.reset()
        return bytes(out), closed

    def reset(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# Sent to both sides when both stall inside a data block (a length field the
# mutation made larger than the bytes that follow): memcached holds earlier
# replies back until the block is complete, the router does not, so the two
# are compared only once the block is filled.  Empty lines cost one ERROR each.
FILLER = b"\r\n" * 1100


def first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class Divergence:
    seed: int
    case: int
    stream: bytes
    direct: bytes
    routed: bytes

    def __str__(self) -> str:
        return (f"seed {self.seed} case {self.case}\n stream: {self.stream!r}\n"
                f" memcached: {self.direct[:800]!r}\n router:    {self.routed[:800]!r}\n"
                f" first difference at byte {first_difference(self.direct, self.routed)}")


def run(direct_port: int, router_port: int, seed: int, cases: int, seconds: float,
        timeout: float = 0.03, patience: float = 3.0) -> tuple[int, list[Divergence], dict]:
    """Play up to ``cases`` cases within ``seconds``: (cases played, divergences,
    counts of the cases not compared in full)."""
    gen = Generator(seed)
    a, b = Side(direct_port), Side(router_port)
    found: list[Divergence] = []
    swallowed = known = 0
    stop = time.monotonic() + seconds
    n = 0
    while n < cases and time.monotonic() < stop and len(found) < 10:
        stream = gen.case(seed * 10_000_000 + n)
        tail, end = marker(n)
        got_a, closed_a = a.exchange(stream + tail, end, timeout)
        got_b, closed_b = b.exchange(stream + tail, end, timeout)
        # one side finished: give the other ample time before judging
        if got_a.endswith(end) and not got_b.endswith(end) and not closed_b:
            more, closed_b = b.exchange(b"", end, patience)
            got_b += more
        elif got_b.endswith(end) and not got_a.endswith(end) and not closed_a:
            more, closed_a = a.exchange(b"", end, patience)
            got_a += more
        stalled = not closed_a and not closed_b and not got_a.endswith(end) \
            and not got_b.endswith(end)
        if stalled:
            more_a, closed_a = a.exchange(FILLER + tail, end, patience)
            more_b, closed_b = b.exchange(FILLER + tail, end, patience if more_a.endswith(end)
                                          else timeout)
            got_a, got_b = got_a + more_a, got_b + more_b
            if not got_a.endswith(end) and not got_b.endswith(end):
                swallowed += 1      # a huge block on both sides: memcached sends
                got_b = got_b[:len(got_a)]      # nothing more; the router's must start alike
        if LONG_KEY_GET.search(stream) or REFUSED.search(stream):
            known += 1
        elif normalise(got_a) != normalise(got_b) or closed_a != closed_b:
            found.append(Divergence(seed, n, stream, got_a, got_b))
        if not got_a.endswith(end) or not got_b.endswith(end):
            a.reset()
            b.reset()
        n += 1
    return n, found, {"known": known, "swallowed": swallowed}


def main() -> int:
    """Long runs outside pytest: starts two memcached and one router per route."""
    import argparse
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--route", choices=("default", "pool"), default="default")
    args = p.parse_args()
    procs = []

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def wait(port: int) -> None:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"nothing listens on {port}")
    try:
        ports: list[int] = []
        while len(ports) < 3:        # the kernel may hand out one free port twice
            port = free()
            if port not in ports:
                ports.append(port)
        for port in ports:
            procs.append(subprocess.Popen(["memcached", "-U", "0", "-l", "127.0.0.1",
                                           "-p", str(port), "-u", "root", "-t", "1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait(port)
        cfg = Path(tempfile.mkdtemp()) / "router.yaml"
        servers = ports[1:] if args.route == "pool" else ports[1:2]
        pool = ", ".join(f"127.0.0.1:{x}" for x in servers)
        cfg.write_text(f"pools:\n  main:\n    servers: [{pool}]\nroute: PoolRoute|main\n"
                       if args.route == "pool" else f"orderedPool: [{pool}]\nroute: {{type: DefaultRoute}}\n")
        rport = free()
        procs.append(subprocess.Popen([sys.executable, "-m", "mcrouter", "run", "-f", str(cfg),
                                       "-l", f"127.0.0.1:{rport}", "-n", "1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parent.parent)))
        wait(rport)
        t0 = time.monotonic()
        n, found, skipped = run(ports[0], rport, args.seed, args.cases, args.seconds)
        dt = time.monotonic() - t0
        print(f"{n} cases in {dt:.0f} s ({n / dt:.0f}/s), route {args.route}, seed {args.seed}: "
              f"{len(found)} divergence(s); {skipped}", flush=True)
        for d in found:
            print(d)
        return 1 if found else 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
