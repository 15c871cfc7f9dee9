"""Routes that try destinations one after another.

* MissFailoverRoute (gomcrouter): healthy hosts in order until one
  succeeds; a miss or any failure moves on.  A multi-key get keeps each
  host's hits and asks the next host only for the keys still missing
  (gomcrouter stops at the first partial hit).
* FailoverRoute (mcrouter): children in order until a reply is not an
  error of a class listed in ``failover_errors`` for the operation; the
  last child's reply is returned whatever it is.  Misses are replies, not
  errors, and never fail over (MissFailoverRoute and WarmUpRoute do that).
* LatestRoute (mcrouter): a FailoverRoute over ``failover_count`` children
  picked pseudo-randomly, seeded by this machine's host name, so each
  router host sticks to its own few targets.
"""
from __future__ import annotations

import random
import socket
from typing import Sequence

from mcrouter._hash import hash_key
from mcrouter._metrics import R_FAILOVER, R_MISS_FAILOVER, local as local_counters
from mcrouter._parser import Owner, Request
from mcrouter._routing import MissFailoverDispatch
from mcrouter.config import ERROR_CLASSES, OPERATION_GROUPS
from mcrouter.protocol import (CMD_CAS, CMD_DECR, CMD_DELETE, CMD_GAT, CMD_GATS, CMD_GET,
                               CMD_GETS, CMD_INCR, CMD_MA, CMD_MD, CMD_MG, CMD_MS, CMD_SET,
                               CMD_TOUCH, COMMAND_NAMES, NO_HEALTHY_UPSTREAM, ST_ERROR, ST_OK,
                               UPSTREAM_QUEUE_FULL, UPSTREAM_TIMEOUT)
from mcrouter.routes.base import Attempts, HostListRoute, HostRoute, Route
from mcrouter.routes.multiget import MissChain

# command id → its operation group (failover_errors may differ per group)
_GROUP_OF: dict[int, str] = {cmd: "other" for cmd in COMMAND_NAMES}
_GROUP_OF.update({c: "gets" for c in (CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS, CMD_MG)})
_GROUP_OF.update({c: "deletes" for c in (CMD_DELETE, CMD_MD)})
_GROUP_OF.update({c: "updates" for c in range(CMD_SET, CMD_CAS + 1)})
_GROUP_OF.update({c: "updates" for c in (CMD_INCR, CMD_DECR, CMD_TOUCH, CMD_MS, CMD_MA)})


def error_class(sub: Request) -> str | None:
    """The failover class of a reply: None for a reply that is not an error
    (hits, misses, NOT_STORED, CLIENT_ERROR: the client's own mistake)."""
    reply = sub.reply or b""
    if sub.status == ST_ERROR:
        if reply == UPSTREAM_TIMEOUT:
            return "timeout"
        if reply == NO_HEALTHY_UPSTREAM or reply == UPSTREAM_QUEUE_FULL:
            return "tko"
        return "connect_error"
    if sub.status != ST_OK and (reply.startswith(b"SERVER_ERROR") or reply == b"ERROR\r\n"):
        return "remote_error"
    return None


class MissFailoverRoute(MissFailoverDispatch, HostListRoute):
    """``dispatch`` is MissFailoverDispatch's (_routing.pyx): a single-key
    request is tried there, in C; ``chain`` takes the rest."""

    name = "MissFailoverRoute"

    def chain(self, req: Request) -> None:
        """A multi-key get (MissChain), or any request over a pool too long
        for MissFailoverDispatch's bit set (_Chain)."""
        hosts = self.healthy()
        if not hosts:
            self.no_host(req)
        elif req.keys is not None:
            MissChain(req, [HostRoute(h) for h in hosts]).next()
        else:
            _Chain(req, hosts).next()


class _Chain(Attempts):
    """Single request: the first success, else the last failure, else the last
    error (as _routing.MissFailover, for pools longer than 64 hosts)."""

    __slots__ = ("hosts", "i")

    def __init__(self, parent: Request, hosts: list) -> None:
        super().__init__(parent)
        self.hosts = hosts
        self.i = 0

    def next(self) -> None:
        host = self.hosts[self.i]
        self.i += 1
        host.send(self.parent.child(self))

    def on_reply(self, sub: Request) -> None:
        reply = sub.reply or b""
        if sub.status == ST_OK or reply.startswith(b"CLIENT_ERROR "):
            # a CLIENT_ERROR is about the request: every host would say the same
            self.parent.finish(reply, sub.status)
            return
        self.note(sub)
        if self.i < len(self.hosts):
            local_counters().route(R_FAILOVER if sub.status == ST_ERROR else R_MISS_FAILOVER)
            self.next()
        else:
            self.give_up()


ALL_ERRORS = {g: frozenset(ERROR_CLASSES) for g in OPERATION_GROUPS}


class FailoverRoute(Route):
    name = "FailoverRoute"

    def __init__(self, children: Sequence[Route], errors: dict[str, frozenset[str]] | None = None,
                 max_tries: int = 0, order: str = "in_order") -> None:
        self.children = tuple(children)
        errors = errors or ALL_ERRORS
        # command id → the error classes that fail over for it
        self.errors = {cmd: errors[group] for cmd, group in _GROUP_OF.items()}
        self.tries = min(max_tries or len(self.children), len(self.children))
        self.by_key = order == "by_key"

    def order(self, req: Request) -> Sequence[Route]:
        """The children in the order ``req`` tries them: as listed, or (by_key)
        the first child first and the rest rotated by the key's hash, so the
        failover load of a lost first child spreads over the others."""
        kids = self.children
        if not self.by_key or len(kids) < 3:
            return kids[:self.tries]
        rest = kids[1:]
        r = hash_key("crc32a", req.key) % len(rest)
        return (kids[0],) + rest[r:] + rest[:r]

    def dispatch(self, req: Request) -> None:
        _Failover(req, self.order(req), self.errors.get(req.cmd, ALL_ERRORS["other"]),
                  self.tries).next()

    def targets(self, req: Request) -> Sequence[Route]:
        return self.order(req)[:self.tries]


class _Failover(Owner):
    __slots__ = ("parent", "children", "errors", "tries", "i")

    def __init__(self, parent: Request, children: Sequence[Route], errors: frozenset[str],
                 tries: int) -> None:
        self.parent = parent
        self.children = children
        self.errors = errors
        self.tries = tries
        self.i = 0

    def next(self) -> None:
        child = self.children[self.i]
        self.i += 1
        child.dispatch(self.parent.child(self))

    def on_reply(self, sub: Request) -> None:
        if self.i < self.tries and error_class(sub) in self.errors:
            local_counters().route(R_FAILOVER)
            self.next()
        else:
            self.parent.finish(sub.reply or b"", sub.status)


def latest_children(children: Sequence[Route], count: int, seed: str | None = None) -> list[Route]:
    """LatestRoute's pick: ``count`` children, pseudo-random per router host."""
    rng = random.Random(seed if seed is not None else socket.gethostname())
    picked = list(children)
    rng.shuffle(picked)
    return picked[:count]


class LatestRoute(FailoverRoute):
    name = "LatestRoute"

    def __init__(self, children: Sequence[Route], count: int = 5,
                 errors: dict[str, frozenset[str]] | None = None) -> None:
        super().__init__(latest_children(children, count), errors)
