"""Pools that follow DNS: a pool's servers from the records of a name.

``dns: NAME:PORT`` makes every A and AAAA address of NAME a server on PORT
(a Kubernetes headless service resolves to every ready pod).  ``srv: NAME``
makes every SRV record of NAME a server: its target, port and weight (a
headless service with a named port publishes
``_<port>._tcp.<service>.<namespace>.svc.<cluster domain>``, one record per
pod, whose target is the pod's stable name).  Only the records of the
lowest SRV priority are servers; the others are another pool's business.

What goes into the hash continuum is the member's host and port (as
``ketama_name``): for ``srv:`` the target name, which for a StatefulSet pod
stays the same across restarts and IP changes, so keys stay where they
were; for ``dns:`` the address itself, so a pod that comes back with a new
IP is a new server and its keys move.  Prefer ``srv:`` for a StatefulSet.

The master resolves every DNS pool once before it forks; afterwards the
sidecar resolves each one every ``-t`` or when the answer's TTL runs out,
whichever comes first, on a thread of its own (``Discovery``).  A TTL under
one second (Kubernetes' DNS may answer with TTL 0) counts as one second, so
that records nobody may cache do not make the sidecar ask without pause and
a new generation per flap; a shorter ``-t`` is the operator's choice and
is honoured (down to 100 ms).  A change of
membership goes to the master, which applies it as a config reload: a new
generation, the same hosts kept, ketama moving only the changed hosts'
keys.  A new address for a member that stays (an SRV target whose pod moved)
is written straight into the HostTable, like any re-resolved host name.
An empty or failed answer keeps the last good membership, logged once
until the name answers again.

A member whose ``host:port`` is also a listed server, or a member of
another pool, is the same upstream host, as a server listed in two pools
is: one HostTable slot, one set of connections, one health verdict.  While
a DNS pool names it, the address is the answer's (the sidecar keeps it out
of the host-name cache); once no pool names it, the host-name cache takes
it over, starting from that address.  Two slots for one ``host:port``
would mean two verdicts for one server and double the connections to it.

dnspython is the DNS client: the system resolver (getaddrinfo) can neither
read SRV records nor say how long an answer may be kept.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from mcrouter.config import DnsSource, HostAddr, Member
from mcrouter.dns import literal
from mcrouter.hosttable import MAX_HOSTS, HostTable

log = logging.getLogger("mcrouter.discovery")

LOOKUP_TIMEOUT = 2.0        # seconds one pool's lookups may take, all queries together
MIN_INTERVAL = 0.1          # never ask more often than this, whatever -t says
TTL_FLOOR = 1.0             # a TTL shorter than this (0: "do not cache") counts as this

Address = tuple[int, str]   # (family, ip), as the HostTable keeps it


class DiscoveryError(Exception):
    """No usable answer (failed, timed out or empty); the last membership stays."""


@dataclass(frozen=True)
class Answer:
    members: tuple[Member, ...]         # sorted, so equal answers compare equal
    addresses: dict[str, Address]       # str(HostAddr) → its address, where known
    ttl: float                          # seconds the answer may be kept


def make_resolver(source: DnsSource, timeout: float = LOOKUP_TIMEOUT) -> dns.resolver.Resolver:
    """A resolver for ``source``: its own server if it names one, else the system's."""
    if source.resolver is not None:
        res = dns.resolver.Resolver(configure=False)
        found = literal(source.resolver.host)
        try:
            ip = found[1] if found else socket.getaddrinfo(source.resolver.host, None)[0][4][0]
        except OSError as e:        # gaierror: a name that does not resolve
            raise DiscoveryError(f"resolver {source.resolver.host}: {e.strerror or e}") from None
        res.nameservers = [ip]
        res.port = source.resolver.port
    else:
        try:
            res = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration as e:
            raise DiscoveryError(f"no system DNS resolver configured ({e})") from None
    res.timeout = res.lifetime = timeout
    res.cache = None                     # we keep the answer; the TTL is ours to honour
    return res


def _query(res: dns.resolver.Resolver, name: str, rdtype: str,
           deadline: float) -> dns.resolver.Answer | None:
    """The answer, or None when the name has no records of that type; every
    query of one lookup shares ``deadline`` (time.monotonic)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DiscoveryError(f"{name} {rdtype}: no answer within {LOOKUP_TIMEOUT:g}s")
    res.timeout = res.lifetime = left
    try:
        return res.resolve(dns.name.from_text(name), rdtype, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return None
    except dns.resolver.NoNameservers as e:
        raise DiscoveryError(f"{name} {rdtype}: every server failed ({e.msg or e})") from None
    except dns.exception.Timeout:
        raise DiscoveryError(f"{name} {rdtype}: no answer within {LOOKUP_TIMEOUT:g}s") from None
    except dns.exception.DNSException as e:
        raise DiscoveryError(f"{name} {rdtype}: {e}") from None


FAMILIES = ((dns.rdatatype.A, socket.AF_INET), (dns.rdatatype.AAAA, socket.AF_INET6))
Sent = Mapping[tuple[dns.name.Name, int], dns.rrset.RRset]   # an answer's additional section


def _addresses(res: dns.resolver.Resolver, name: str, sent: Sent, deadline: float,
               one: bool = False) -> tuple[list[Address], float]:
    """The A and AAAA addresses of ``name`` (those the server ``sent`` along
    first), and the shortest TTL; with ``one``, no query once one is known
    (an SRV target needs one address: a thousand targets, not two thousand
    queries)."""
    found: list[Address] = []
    ttl = float("inf")
    target = dns.name.from_text(name)
    missing = []
    for rdtype, family in FAMILIES:
        rrset = sent.get((target, rdtype))
        if rrset is None:
            missing.append((rdtype, family))
        else:
            ttl = min(ttl, rrset.ttl)
            found.extend((family, r.address) for r in rrset)
    for rdtype, family in missing:
        if one and found:
            break
        answer = _query(res, name, dns.rdatatype.to_text(rdtype), deadline)
        if answer is not None:
            ttl = min(ttl, answer.rrset.ttl)
            found.extend((family, r.address) for r in answer.rrset)
    found.sort(key=lambda a: a[0] != socket.AF_INET)       # IPv4 first, as before
    return found, ttl


def resolve(source: DnsSource, timeout: float = LOOKUP_TIMEOUT) -> Answer:
    """The servers ``source`` names now; DiscoveryError when there are none."""
    res = make_resolver(source, timeout)
    deadline = time.monotonic() + timeout
    if source.kind == "dns":
        found, ttl = _addresses(res, source.name, {}, deadline)
        if not found:
            raise DiscoveryError(f"{source.name} has no A or AAAA records")
        addrs = sorted(set(found), key=lambda a: (a[0], a[1]))
        _bounded(len(addrs))
        members = tuple((ip, source.port, 1) for _, ip in addrs)
        return Answer(members, {str(HostAddr(ip, source.port)): (fam, ip) for fam, ip in addrs},
                      ttl)
    answer = _query(res, source.name, "SRV", deadline)
    # RFC 2782: a target of "." says there is no such service; port 0 is none
    records = [r for r in (answer.rrset if answer is not None else ())
               if r.target != dns.name.root and r.port]
    if not records:
        raise DiscoveryError(f"{source.name} has no SRV records")
    ttl = float(answer.rrset.ttl)
    first = min(r.priority for r in records)
    members: dict[tuple[str, int], int] = {}
    for r in records:
        target = r.target.to_text(omit_final_dot=True)
        if r.priority == first and target and (target, r.port) not in members:
            members[(target, r.port)] = r.weight
    _bounded(len(members))
    sent = {(rr.name, rr.rdtype): rr for rr in answer.response.additional}
    addresses: dict[str, Address] = {}
    for (target, port) in members:
        found, attl = _addresses(res, target, sent, deadline, one=True)
        ttl = min(ttl, attl)
        if found:
            addresses[str(HostAddr(target, port))] = found[0]
    return Answer(tuple(sorted((t, p, w) for (t, p), w in members.items())), addresses, ttl)


def _bounded(count: int) -> None:
    """An answer with more servers than the host table holds can never be
    applied: a failed answer, not a crash or a refused reload."""
    if count > MAX_HOSTS:
        raise DiscoveryError(f"{count} servers: more than {MAX_HOSTS}, the most a"
                             " router holds")


Report = Callable[[dict[str, tuple[Member, ...]], dict[str, Address]], None]


class Discovery:
    """The sidecar's side: each DNS pool re-resolved when due; a new
    membership reported to the master, a member's new address written to
    the HostTable."""

    def __init__(self, table: HostTable, sources: Mapping[str, DnsSource],
                 known: Mapping[str, tuple[Member, ...]], report: Report, interval: float,
                 resolver: Callable[[DnsSource], Answer] = resolve) -> None:
        self.table = table
        self.sources = dict(sources)
        self.known = {name: tuple(tuple(m) for m in known.get(name, ())) for name in sources}
        self.report = report
        self.interval = interval
        self.resolve = resolver
        self.failing: dict[str, str] = {}            # pool → the error last logged
        self.due = {name: 0.0 for name in sources}  # first pass at once

    def refresh(self, now: float) -> None:
        """Resolve every pool that is due; report what changed."""
        changed: dict[str, tuple[Member, ...]] = {}
        addresses: dict[str, Address] = {}
        for name, source in self.sources.items():
            if now < self.due[name]:
                continue
            self.due[name] = now + self.interval
            try:
                answer = self.resolve(source)
            except DiscoveryError as e:
                self._failed(name, source, str(e))
                continue
            self.due[name] = now + max(MIN_INTERVAL, min(self.interval, max(TTL_FLOOR, answer.ttl)))
            if name in self.failing:
                del self.failing[name]
                log.info("pool %s: %s answers again", name, source)
            if answer.members != self.known[name]:
                changed[name] = answer.members
                addresses.update(answer.addresses)
            else:
                self._readdress(answer.addresses)
        if changed:
            for name, members in changed.items():
                self.known[name] = members
            self.report(changed, addresses)

    def _readdress(self, addresses: Mapping[str, Address]) -> None:
        """Members that stay, at a new address (an SRV target's pod moved)."""
        for key, found in addresses.items():
            slot = self.table.slot_of(key)
            if slot < 0:
                continue
            old = self.table.address(slot)
            if old != tuple(found):
                self.table.set_address(slot, *found)
                log.info("host %s: address %s -> %s", key, old[1] if old else "none", found[1])

    def _failed(self, name: str, source: DnsSource, why: str) -> None:
        if self.failing.get(name) is None:
            log.warning("pool %s: %s: %s; keeping the last membership (%d server(s))",
                        name, source, why, len(self.known[name]))
        self.failing[name] = why

    def start(self) -> threading.Event:
        """Run on a daemon thread until the returned event is set."""
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    self.refresh(time.monotonic())
                except Exception:       # noqa: BLE001 - the thread must outlive one bad answer
                    log.exception("discovery failed; trying again")
                wait = min(self.due.values(), default=time.monotonic() + self.interval)
                stop.wait(max(MIN_INTERVAL, wait - time.monotonic()))

        threading.Thread(target=run, name="discovery", daemon=True).start()
        return stop


def resolve_all(sources: Mapping[str, DnsSource]) -> tuple[dict[str, tuple[Member, ...]],
                                                           dict[str, Address]]:
    """Every pool resolved once, blocking (the master before it forks, or at
    a reload that brings a new source); a pool that fails starts empty."""
    members: dict[str, tuple[Member, ...]] = {}
    addresses: dict[str, Address] = {}
    for name, source in sources.items():
        try:
            answer = resolve(source)
        except DiscoveryError as e:
            log.warning("pool %s: %s: %s; the pool has no servers until it answers",
                        name, source, e)
            members[name] = ()
            continue
        members[name] = answer.members
        addresses.update(answer.addresses)
        log.info("pool %s: %s: %d server(s)", name, source, len(answer.members))
    return members, addresses
