"""Ask a real twemproxy (nutcracker) where it puts keys.

Shared by ``tests/integration/test_pool_route.py`` (live comparison,
``test_same_servers_as_twemproxy``) and ``tests/unit/vectors/make_ketama_vectors.py`` (which
records the answers in a vector file for the offline unit test).

The method measures, it does not compute: store every key through
nutcracker, then ask each memcached server directly which of the keys it
holds.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, Sequence

from .client import HOST
from .processes import free_port, wait_port

NUTCRACKER = shutil.which("nutcracker") or (os.path.exists("/usr/sbin/nutcracker")
                                             and "/usr/sbin/nutcracker") or None
FUNCTIONS = ("fnv1a_64", "md5", "crc32", "murmur", "one_at_a_time", "fnv1_64", "fnv1a_32",
             "fnv1_32", "crc32a", "crc16")


def probe_keys(n: int) -> list[bytes]:
    """``n`` keys: mostly ASCII, every tenth with bytes >= 0x80 (twemproxy
    reads keys as signed chars in several hashes, so those must match too)."""
    return [(f"k\u00e9y:{i}" if i % 10 == 0 else f"user:{i}:profile").encode() for i in range(n)]


@contextlib.contextmanager
def nutcracker(servers: Sequence[str], function: str, weights: Sequence[int] | None = None,
               hash_tag: str = "") -> Iterator[int]:
    """Run nutcracker with ``distribution: ketama`` over ``servers``
    (``host:port``, no names, so it names them as it does by default);
    yield its port; kill it (by pid) afterwards."""
    assert NUTCRACKER, "nutcracker is not installed"
    weights = list(weights or [1] * len(servers))
    with tempfile.TemporaryDirectory() as tmp:
        for _attempt in range(3):
            port, stats = free_port(), free_port()
            lines = ["probe:", f"  listen: {HOST}:{port}", f"  hash: {function}",
                     "  distribution: ketama", "  auto_eject_hosts: false", "  timeout: 2000"]
            if hash_tag:
                lines.append(f'  hash_tag: "{hash_tag}"')
            lines.append("  servers:")
            lines += [f"   - {s}:{w}" for s, w in zip(servers, weights)]
            conf = os.path.join(tmp, "nutcracker.yml")
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            proc = subprocess.Popen([NUTCRACKER, "-c", conf, "-s", str(stats), "-a", HOST,
                                     "-o", os.path.join(tmp, "log")],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                if wait_port(port, proc):
                    yield port
                    return
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        raise RuntimeError("nutcracker did not start")


def _exchange(port: int, payload: bytes, terminator: bytes, count: int,
              timeout: float = 20.0) -> bytes:
    """Send ``payload`` and read until ``terminator`` was seen ``count`` times."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while buf.count(terminator) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port}: {buf.count(terminator)} of {count} replies")
            data = s.recv(1 << 20)
            if not data:
                raise ConnectionError(f"port {port} closed")
            buf += data
        return bytes(buf)


def store_through(port: int, keys: Sequence[bytes], batch: int = 500) -> None:
    """``set`` every key (value = key) through the proxy on ``port``."""
    for i in range(0, len(keys), batch):
        chunk = keys[i:i + batch]
        payload = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k) for k in chunk)
        reply = _exchange(port, payload, b"\r\n", len(chunk))
        assert reply == b"STORED\r\n" * len(chunk), reply[:200]


def held_by(ports: Sequence[int], keys: Sequence[bytes], batch: int = 200) -> list[int]:
    """For each key, the index (into ``ports``) of the one server holding it;
    -1 if none, -2 if several."""
    where = {k: -1 for k in keys}
    for idx, port in enumerate(ports):
        for i in range(0, len(keys), batch):
            chunk = keys[i:i + batch]
            reply = _exchange(port, b"get " + b" ".join(chunk) + b"\r\n", b"END\r\n", 1)
            for line in reply.split(b"\r\n"):
                if line.startswith(b"VALUE "):
                    k = line.split(b" ")[1]
                    where[k] = idx if where[k] == -1 else -2
    return [where[k] for k in keys]


def twemproxy_placement(servers: Sequence[str], ports: Sequence[int], function: str,
                        keys: Sequence[bytes], weights: Sequence[int] | None = None,
                        flush: bool = True) -> list[int]:
    """Where nutcracker (ketama, ``function``) puts each key among ``servers``."""
    if flush:
        for p in ports:
            assert _exchange(p, b"flush_all\r\n", b"\r\n", 1) == b"OK\r\n"
    with nutcracker(servers, function, weights) as port:
        store_through(port, keys)
    return held_by(ports, keys)
