"""Health under faults memcached cannot produce: a flapping host, and a host
name whose address changes (resolution controlled through dns_shim.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support import MEMCACHED, REPO, Client, free_ipv6_port, free_port, wait_port, wait_until

SHIM = REPO / "tests" / "support" / "dns_shim.py"
ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"


def value(key: bytes, data: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(data), data)


def set_dns(path, table: dict) -> None:
    """Rewrite the shim's table atomically: the router's resolver thread may
    be reading it at that moment (a torn read would fail its lookup)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)


@contextlib.contextmanager
def process(args: list[str], **kw):
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_flapping_host_changes_state_at_a_bounded_rate(fake, router):
    """A host that comes and goes every 250 ms for 4 s: the state changes no
    faster than rise x interval allows, and connections stay few (no storm)."""
    f = fake()
    f.set(b"k", b"V")
    cfg = {"orderedPool": [f.addr], "route": {"type": "DefaultRoute"},
           "health": {"fail": 2, "rise": 2, "tko": 3, "probe_timeout_ms": 100}}
    interval = 0.2
    r = router(cfg, timeout_ms=200, conns=2, extra=["-H", "200ms"])
    duration, period = 4.0, 0.25
    start_accepts = f.accepted
    t_end = time.monotonic() + duration
    replies = 0
    with Client(r.port, timeout=10) as c:
        phase_end, dropping = time.monotonic() + period, False
        while time.monotonic() < t_end:
            if time.monotonic() >= phase_end:
                dropping = not dropping
                f.drop(dropping)
                phase_end = time.monotonic() + period
            c.send(b"get k\r\n")
            got = c.recv_one_of((value(b"k", b"V"), ERROR, NO_HEALTHY,
                                 b"SERVER_ERROR mcrouter: upstream timeout\r\n"))
            assert got, "a request went unanswered"
            replies += 1
            time.sleep(0.01)
    f.drop(False)
    accepted = f.accepted - start_accepts
    log = r.stderr()
    changes = log.count(f"host {f.addr}: up -> down") + log.count(f"host {f.addr}: down -> up")
    # up again needs `rise` good probes: at most one up per rise*interval, and
    # each down follows an up
    max_changes = 2 * (duration / (2 * interval)) + 2
    # at least one change shows the flapping was seen; a loaded machine may
    # not see the host come back within the 4 s (CI failed once with 1)
    assert 1 <= changes <= max_changes, (changes, log[-2000:])
    # probes: about one connect per interval while failing; data path: the
    # -C connections at each recovery plus at most `tko` retries before down
    max_accepts = duration / interval + (changes / 2 + 1) * (2 + 3) + 10
    assert accepted <= max_accepts, f"{accepted} connections in {duration}s (bound {max_accepts})"
    assert replies > 50
    print(f"flapping: {changes} state changes (bound {max_changes:.0f}), "
          f"{accepted} connections (bound {max_accepts:.0f})")
    # and it settles: up again and serving
    assert wait_until(lambda: _get(r.port) == value(b"k", b"V"), 10)


def _get(port: int) -> bytes:
    with Client(port, timeout=5) as c:
        c.send(b"get k\r\n")
        data = c.recv_until(b"\r\n")
        return data + c.recv_until(b"END\r\n") if data.startswith(b"VALUE ") else data


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")
def test_dns_change_moves_new_connections_and_lets_old_ones_finish(fake, tmp_path):
    """The name first resolves to a fake upstream on 127.0.0.1, then to a real
    memcached on [::1] at the same port: a request in flight on the old
    address completes with its own reply; new requests reach the new address;
    a failed lookup afterwards keeps the last good address, logged once."""
    free_ipv6_port()                    # skips the test where there is no IPv6 loopback
    f = fake()
    f.set(b"k", b"old")
    port = f.port
    hosts = tmp_path / "hosts.json"
    set_dns(hosts, {"cachebox": "127.0.0.1"})
    mc_args = [MEMCACHED, "-u", "root", "-l", "::1", "-p", str(port), "-U", "0", "-t", "1"]
    with process(mc_args) as mc:
        assert wait_port_v6(port, mc), "memcached on [::1] did not start"
        with socket_v6(port) as s:
            s.sendall(b"set k 0 0 3\r\nnew\r\n")
            assert s.recv(100) == b"STORED\r\n"
        cfg = tmp_path / "router.yaml"
        cfg.write_text(f"orderedPool: [cachebox:{port}]\nroute: {{type: DefaultRoute}}\n")
        rport = free_port()
        err = tmp_path / "router.stderr"
        with open(err, "wb") as errf, process(
                [sys.executable, str(SHIM), "run", "-f", str(cfg), "-l", f"127.0.0.1:{rport}",
                 "-C", "1", "-r", "5000", "-t", "200ms", "-H", "60s", "-L", "off"],
                stdout=errf, stderr=errf, cwd=str(REPO),
                env={"MCROUTER_TEST_HOSTS": str(hosts), "PATH": "/usr/bin:/bin",
                     "PYTHONPATH": str(REPO)}) as router:
            assert wait_port(rport, router), err.read_text()
            with Client(rport) as a:
                assert a.request(b"get k\r\n", value(b"k", b"old")) == value(b"k", b"old")
                f.behave("delay", count=1, delay=1.5)
                a.send(b"get k\r\n")                    # in flight on the old address
                assert f.wait_requests(2)
                set_dns(hosts, {"cachebox": "::1"})
                assert wait_until(lambda: _get(rport) == value(b"k", b"new"), 5), err.read_text()
                # the request sent before the change got the old host's reply
                assert a.recv_exact(len(value(b"k", b"old")), timeout=5) == value(b"k", b"old")
                # this client's next request goes to the new address too
                assert a.request(b"get k\r\n", value(b"k", b"new")) == value(b"k", b"new")
            assert wait_until(lambda: f.closed_by_peer >= 1, 5), "old connection not closed"
            set_dns(hosts, {"cachebox": None})
            time.sleep(1.0)                             # about five failed lookups
            assert _get(rport) == value(b"k", b"new")
            log = err.read_text()
            assert "address 127.0.0.1 -> ::1" in log, log
            assert log.count("cannot resolve cachebox") == 1, log
            assert "keeping ::1" in log


def wait_port_v6(port: int, proc, timeout: float = 10.0) -> bool:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("::1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def socket_v6(port: int):
    import socket
    s = socket.create_connection(("::1", port), timeout=5)
    return s
