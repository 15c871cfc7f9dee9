"""The sidecar process: active health probes, the DNS cache and ``/metrics``.

Forked and supervised by the master.  It runs one ``probes.Probe`` per host
on a loop of its own, so each host is probed once per router, not once per
worker, and the verdicts reach every worker through the shared HostTable.

The DNS pools are re-resolved on a thread too (``discovery.py``); a new
membership goes to the master over the sidecar's control channel, and the
master applies it as a reload.

``/metrics`` is served from a thread (``exposition.py``) on the socket the
master bound, so a scrape never delays a probe and a restarted sidecar
serves again as soon as it is forked.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable

from mcrouter._metrics import Counters, install
from mcrouter.config import ConfigError, DnsSource, HealthPolicy, HostAddr, Member, TlsSettings
from mcrouter.control import Channel, ChannelClosed
from mcrouter.discovery import Address, Discovery
from mcrouter.dns import DnsCache
from mcrouter.exposition import serve_metrics
from mcrouter.hosttable import HostTable
from mcrouter.loop import Loop
from mcrouter.metrics import MetricsBlock
from mcrouter.probes import Probe
from mcrouter.upstream import tls_context


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
                discovered: set[HostAddr] | None = None,
                tls: dict[HostAddr, TlsSettings] | None = None) -> int:
    """Entry point in the forked child; returns the process exit code.
    ``sources`` are the DNS pools (``members`` what the master knows of
    them); ``discovered`` the hosts whose addresses the discovery keeps, not
    the host-name cache; ``tls`` the settings of the hosts reached over TLS,
    whose probes use them too (the files read now, once per sidecar)."""
    install(Counters())                 # the sidecar reads the block; it never writes

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)             # nothing here is owed to a client: leave at once

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loop = Loop()
    contexts: dict[TlsSettings, Any] = {}
    for settings in dict.fromkeys((tls or {}).values()):
        try:
            contexts[settings] = tls_context(settings)
        except ConfigError as e:        # changed since the master read them: probes fail
            contexts[settings] = e
    for i, (slot, addr, policy) in enumerate(hosts):
        wanted = (tls or {}).get(addr)
        probe = Probe(loop, table, slot, addr, policy, interval,
                      contexts[wanted] if wanted else None,
                      (wanted.server_name or addr.host) if wanted else "")
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
