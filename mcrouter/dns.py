"""Host names → addresses, kept fresh in the shared HostTable.

The master resolves every host once before it forks (blocking is fine
there); afterwards the sidecar re-resolves names every ``--dns-cache-ttl``
on a thread of its own, so no worker loop ever waits on DNS.  A worker that
sees a host's address generation move opens new connections to the new
address and lets the old ones finish what they carry.

A failed lookup keeps the last good address and is logged once, until the
name resolves again.  The resolver is a parameter so tests can inject one.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Callable, Iterable

from mcrouter.config import HostAddr
from mcrouter.hosttable import HostTable

log = logging.getLogger("mcrouter.dns")

Resolver = Callable[[str, int], tuple[int, str]]


def system_resolve(host: str, port: int) -> tuple[int, str]:
    """The first address getaddrinfo gives (IPv4 or IPv6, in the system's order)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, str(addr[0])


def literal(host: str) -> tuple[int, str] | None:
    """(family, ip) for an IP literal, None for a name that needs a lookup."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


class DnsCache:
    def __init__(self, table: HostTable, hosts: Iterable[tuple[int, HostAddr]],
                 resolve: Resolver = system_resolve) -> None:
        self.table = table
        self.hosts = list(hosts)          # (slot, address as configured)
        self.resolve = resolve
        self.failing: set[int] = set()

    def refresh(self) -> None:
        """One pass over every host: write addresses that are new or changed."""
        for slot, addr in self.hosts:
            found = literal(addr.host)
            if found is None:
                try:
                    found = self.resolve(addr.host, addr.port)
                except (OSError, UnicodeError) as e:
                    self._failed(slot, addr, getattr(e, "strerror", None) or str(e))
                    continue
            if slot in self.failing:
                self.failing.discard(slot)
                log.info("host %s: %s resolves again", addr, addr.host)
            old = self.table.address(slot)
            if old != found:
                self.table.set_address(slot, *found)
                if old is not None:
                    log.info("host %s: address %s -> %s", addr, old[1], found[1])

    def _failed(self, slot: int, addr: HostAddr, why: str) -> None:
        if slot not in self.failing:
            self.failing.add(slot)
            kept = self.table.address(slot)
            log.warning("host %s: cannot resolve %s (%s); %s", addr, addr.host, why,
                        f"keeping {kept[1]}" if kept else "no address yet, host stays unusable")
            self.table.note(slot, f"dns: {why}")

    def start(self, ttl: float) -> threading.Event:
        """Refresh every ``ttl`` seconds on a daemon thread; set the event to stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(ttl):
                self.refresh()

        threading.Thread(target=run, name="dns", daemon=True).start()
        return stop
