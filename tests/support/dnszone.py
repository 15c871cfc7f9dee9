"""A tiny authoritative DNS server for the tests, on a loopback UDP port.

It answers A, AAAA and SRV queries from a zone the test changes while the
router runs (``set``), with SRV answers carrying their targets' addresses in
the additional section, as Kubernetes' DNS does.  ``mode`` makes it fail on
purpose: ``servfail`` answers SERVFAIL, ``empty`` answers NOERROR with no
records, ``drop`` answers nothing (a timeout).  Built on dnspython's message
codec: the same library the router resolves with, but none of its
resolving code.
"""
from __future__ import annotations

import socket
import threading
from typing import Iterable

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

HOST = "127.0.0.1"


class DnsZone:
    def __init__(self, ttl: int = 1) -> None:
        self.ttl = ttl
        self.records: dict[tuple[str, str], list[str]] = {}   # (name, type) → rdata texts
        self.mode = "ok"
        self.queries = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, name="dnszone", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    # -- the zone ----------------------------------------------------------

    def set(self, name: str, rdtype: str, rdatas: Iterable[str]) -> None:
        """Replace the records of one name and type (an empty list removes them)."""
        with self.lock:
            key = (name.rstrip(".").lower(), rdtype)
            values = list(rdatas)
            if values:
                self.records[key] = values
            else:
                self.records.pop(key, None)

    def set_srv(self, name: str, targets: Iterable[tuple[str, int, int]],
                addresses: dict[str, str] | None = None, priority: int = 0) -> None:
        """SRV records of ``name``: (target, port, weight) each, and the A
        record of every target in ``addresses``."""
        self.set(name, "SRV", [f"{priority} {w} {p} {t}." for t, p, w in targets])
        for target, ip in (addresses or {}).items():
            self.set(target, "A", [ip])

    # -- serving -----------------------------------------------------------

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        with self.lock:
            mode = self.mode
            records = dict(self.records)
        if mode == "drop":
            return None
        if mode == "servfail":
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp
        for q in query.question:
            name = q.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(q.rdtype)
            values = [] if mode == "empty" else records.get((name, rdtype), [])
            if not values:
                if mode != "empty" and not any(k[0] == name for k in records):
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                continue
            resp.answer.append(dns.rrset.from_text_list(q.name, self.ttl, dns.rdataclass.IN,
                                                        rdtype, values))
            if rdtype == "SRV":
                for v in values:
                    target = v.split()[3].rstrip(".").lower()
                    for t in ("A", "AAAA"):
                        if (target, t) in records:
                            resp.additional.append(dns.rrset.from_text_list(
                                target + ".", self.ttl, dns.rdataclass.IN, t, records[(target, t)]))
        return resp

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:       # noqa: BLE001 - not a DNS message: ignore it
                continue
            with self.lock:
                self.queries += 1
            resp = self._answer(query)
            if resp is not None:
                try:
                    self.sock.sendto(resp.to_wire(), peer)
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()
