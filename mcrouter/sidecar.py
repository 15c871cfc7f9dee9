"""The sidecar process: active health probes, the DNS cache and ``/metrics``.

Forked and supervised by the master, so each host is probed once per
router, not once per worker, and the verdict reaches every worker through
the shared HostTable.  A probe is a memcached round trip (``version`` →
``VERSION ...``) over a kept connection, not a bare connect: a host that
accepts connections but never answers (SIGSTOP, a wedged process) fails it.
The version a good probe reads goes into the HostTable too: it is what the
router answers to ``version`` itself (LocalRoute), so clients see the
backends' version, the lowest when they differ.

A host is marked down after ``fail`` failed probes in a row and up after
``rise`` good ones; a worker's TKO (down at once) restarts the count, so
only ``rise`` probes after the TKO bring the host back.

The DNS pools are re-resolved on a thread too (``discovery.py``); a new
membership goes to the master over the sidecar's control channel, and the
master applies it as a reload.

``/metrics`` is served from a thread (``exposition.py``) on the socket the
master bound, so a scrape never delays a probe and a restarted sidecar
serves again as soon as it is forked.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from mcrouter._metrics import Counters, install
from mcrouter.config import DnsSource, HealthPolicy, HostAddr, Member
from mcrouter.control import Channel, ChannelClosed
from mcrouter.discovery import Address, Discovery
from mcrouter.dns import DnsCache
from mcrouter.exposition import serve_metrics
from mcrouter.hosttable import DOWN, UP, HostTable, sockaddr
from mcrouter.loop import EV_IN, EV_OUT, Loop
from mcrouter.metrics import MetricsBlock

log = logging.getLogger("mcrouter.sidecar")

PROBE = b"version\r\n"
MAX_PROBE_REPLY = 1024


class Probe:
    """One host's probe: connect if needed, send ``version``, judge the reply."""

    def __init__(self, loop: Loop, table: HostTable, slot: int, addr: HostAddr,
                 policy: HealthPolicy, interval: float) -> None:
        self.loop = loop
        self.table = table
        self.slot = slot
        self.addr = addr
        self.policy = policy
        self.interval = interval
        self.sock: Any = None
        self.generation = -1           # address generation the socket was made for
        self.buf = b""
        self.token = 0                 # which probe a timeout belongs to
        self.running = False
        self.good = self.bad = 0
        self.seen = table.state(slot)

    def begin(self) -> None:
        self.loop.call_later(self.interval, self.begin)
        if self.running:
            return                      # the previous probe has not ended yet
        self.running = True
        self.token += 1
        token = self.token
        self.loop.call_later(self.policy.probe_timeout_ms / 1000.0, lambda: self._expire(token))
        gen = self.table.generation(self.slot)
        if self.sock is not None and gen != self.generation:
            self._close()               # the name moved: probe the new address
        if self.sock is not None:
            self._send()
            return
        found = self.table.address(self.slot)
        if found is None:
            self.end(False, "probe: no address for the host name")
            return
        self.generation = gen
        self.sock = socket.socket(found[0], socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex(sockaddr(found[0], found[1], self.addr.port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.end(False, f"probe: connect: {errno.errorcode.get(err, err)}")
            return
        self.loop.add(self.sock.fileno(), EV_OUT, self)

    def _expire(self, token: int) -> None:
        if self.token == token and self.running:
            self.end(False, f"probe: no reply within {self.policy.probe_timeout_ms} ms")

    def _send(self) -> None:
        self.buf = b""
        try:
            self.sock.send(PROBE)
        except OSError as e:
            self.end(False, f"probe: send: {e.strerror or e}")

    def on_event(self, mask: int) -> None:
        if not self.running:
            self.end(False, "probe: unexpected bytes or close")
            return
        if mask & EV_OUT:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.end(False, f"probe: connect: {errno.errorcode.get(err, err)}")
                return
            self.loop.modify(self.sock.fileno(), EV_IN)
            self._send()
            return
        try:
            data = self.sock.recv(MAX_PROBE_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.end(False, f"probe: recv: {e.strerror or e}")
            return
        if not data:
            self.end(False, "probe: connection closed by server")
            return
        self.buf += data
        if b"\r\n" in self.buf:
            line = self.buf.split(b"\r\n", 1)[0]
            if line.startswith(b"VERSION ") and self.buf.endswith(b"\r\n"):
                self.table.set_version(self.slot, line[8:])     # only a strict x.y.z is kept
                self.end(True, "probe ok")
            else:
                self.end(False, "probe: unexpected reply " + line[:60].decode("ascii", "replace"))
        elif len(self.buf) > MAX_PROBE_REPLY:
            self.end(False, "probe: reply too long")

    def end(self, ok: bool, reason: str) -> None:
        """One verdict: count it, and flip the shared state when the count says so."""
        self.running = False
        if not ok:
            self._close()
        state = self.table.state(self.slot)
        if state != self.seen:          # a worker marked it down (TKO): count afresh
            self.good = self.bad = 0
        if ok:
            self.good, self.bad = self.good + 1, 0
        else:
            self.good, self.bad = 0, self.bad + 1
        if state == DOWN and self.good >= self.policy.rise:
            self._set(UP, f"{self.good} good probes in a row")
        elif state == UP and self.bad >= self.policy.fail:
            self._set(DOWN, f"{self.bad} failed probes in a row, last: {reason}")
        self.seen = self.table.state(self.slot)

    def _set(self, state: int, why: str) -> None:
        if self.table.set_state(self.slot, state, why):
            log.warning("host %s: %s -> %s (%s)", self.addr, "down" if state == UP else "up",
                        "up" if state == UP else "down", why)

    def _close(self) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def abort(self) -> None:
        self.running = False
        self._close()


def report_to(channel: Channel) -> Callable[[dict[str, tuple[Member, ...]], dict[str, Address]], None]:
    """How the discovery thread (the channel's only writer) tells the master
    of a new membership."""

    def report(members: dict[str, tuple[Member, ...]], addresses: dict[str, Address]) -> None:
        try:
            channel.send({"members": {k: list(v) for k, v in members.items()},
                          "addresses": addresses})
            for _ in range(100):            # a small frame: the socket takes it at once
                if not channel.outbox:
                    break
                time.sleep(0.01)
                channel.flush()
        except ChannelClosed:
            pass                            # the master is gone; so are we, soon
    return report


def run_sidecar(table: HostTable, hosts: list[tuple[int, HostAddr, HealthPolicy]],
                interval: float, dns_ttl: float, master_pid: int,
                metrics: MetricsBlock, metrics_sock: socket.socket | None,
                channel: Channel | None = None, sources: dict[str, DnsSource] | None = None,
                members: dict[str, tuple[Member, ...]] | None = None,
                discovered: set[HostAddr] | None = None) -> int:
    """Entry point in the forked child; returns the process exit code.
    ``sources`` are the DNS pools (``members`` what the master knows of
    them); ``discovered`` the hosts whose addresses the discovery keeps, not
    the host-name cache."""
    install(Counters())                 # the sidecar reads the block; it never writes

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)             # nothing here is owed to a client: leave at once

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loop = Loop()
    for i, (slot, addr, policy) in enumerate(hosts):
        probe = Probe(loop, table, slot, addr, policy, interval)
        # spread the first probes over one interval rather than all at once
        loop.call_later(interval * (i + 1) / (len(hosts) + 1), probe.begin)
    named = [(slot, addr) for slot, addr, _ in hosts if addr not in (discovered or set())]
    stops = [DnsCache(table, named).start(dns_ttl)]
    if sources and channel is not None:
        stops.append(Discovery(table, sources, members or {}, report_to(channel), dns_ttl).start())
    if metrics_sock is not None:
        serve_metrics(metrics_sock, metrics, table)
    try:
        while os.getppid() == master_pid:
            loop.run_once()
    finally:
        for event in stops:
            event.set()
    return 0
