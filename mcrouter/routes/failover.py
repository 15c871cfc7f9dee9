"""MissFailoverRoute: healthy hosts one at a time until one succeeds.

A multi-key get keeps the hits of each host and asks the next host only for
the keys still missing; the client gets one reply with the hits in the order
of its request and one END (gomcrouter stops at the first partial hit).
"""
from __future__ import annotations

from mcrouter._metrics import R_FAILOVER, R_MISS_FAILOVER, local as local_counters
from mcrouter._parser import Request, split_values
from mcrouter.protocol import CMD_GAT, CMD_GATS, ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_ERROR
from mcrouter.routes.base import Attempts, PoolRoute
from mcrouter.upstream import Host


class MissFailoverRoute(PoolRoute):
    name = "MissFailoverRoute"

    def dispatch(self, req: Request) -> None:
        hosts = self.healthy()
        if not hosts:
            self.no_host(req)
        elif req.keys is not None:
            _MultiGet(req, hosts).next()
        else:
            _Chain(req, hosts).next()


class _Chain(Attempts):
    """Single request: the first success, else the last failure, else the last error."""

    __slots__ = ("hosts", "i")

    def __init__(self, parent: Request, hosts: list[Host]) -> None:
        super().__init__(parent)
        self.hosts = hosts
        self.i = 0

    def next(self) -> None:
        host = self.hosts[self.i]
        self.i += 1
        host.send(self.parent.child(self))

    def on_reply(self, sub: Request) -> None:
        if sub.status == ST_OK:
            self.parent.finish(sub.reply or b"", ST_OK)
            return
        self.note(sub)
        if self.i < len(self.hosts):
            local_counters().route(R_MISS_FAILOVER if sub.status == ST_FAIL else R_FAILOVER)
            self.next()
        else:
            self.give_up()


class _MultiGet:
    """Multi-key get: collect hits host by host, ask only for what is missing."""

    __slots__ = ("parent", "keys", "hosts", "i", "prefix", "found", "missing", "answered",
                 "error")

    def __init__(self, parent: Request, hosts: list[Host]) -> None:
        self.parent = parent
        self.keys: list[bytes] = parent.keys or []
        self.hosts = hosts
        self.i = 0
        words = parent.wire.split(None, 2 if parent.cmd in (CMD_GAT, CMD_GATS) else 1)
        self.prefix = b" ".join(words[:-1])      # "get" or "gat <exptime>"
        self.found: dict[bytes, bytes] = {}
        self.missing = list(dict.fromkeys(self.keys))
        self.answered = False                    # some host gave a real get reply
        self.error: bytes | None = None

    def next(self) -> None:
        host = self.hosts[self.i]
        self.i += 1
        sub = self.parent.child(self)
        if self.i > 1:
            sub.wire = self.prefix + b" " + b" ".join(self.missing) + b"\r\n"
            sub.keys = self.missing
            sub.key = self.missing[0]
        host.send(sub)

    def on_reply(self, sub: Request) -> None:
        reply = sub.reply or b""
        failed = sub.status == ST_ERROR or not reply.endswith(b"END\r\n")
        if failed:
            self.error = reply                   # an error: these keys stay missing
        else:
            self.answered = True
            for key, block in split_values(reply):
                self.found.setdefault(key, block)
            self.missing = [k for k in self.missing if k not in self.found]
        if self.missing and self.i < len(self.hosts):
            local_counters().route(R_FAILOVER if failed else R_MISS_FAILOVER)
            self.next()
            return
        if self.found or self.answered:
            found = self.found
            body = b"".join([found[k] for k in self.keys if k in found])
            self.parent.finish(body + b"END\r\n", ST_OK if found else ST_FAIL)
        else:
            self.parent.finish(self.error or UPSTREAM_ERROR,
                               ST_FAIL if sub.status == ST_FAIL else ST_ERROR)
