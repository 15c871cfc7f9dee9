"""Routes that send one request to several destinations at once.

* AllFastestRoute (gomcrouter): every healthy host; the first success wins.
* AllSyncRoute: every child; wait for all; the worst reply (an error before
  a failure before a success; among equals, the earliest child's).
* AllAsyncRoute: every child in the background; the client gets NullRoute's
  reply at once.
* AllInitialRoute: every child; the first child's reply is returned, the
  others complete in the background.
* AllMajorityRoute: every child; as soon as half + 1 replies agree (same
  status and first word), that reply; else, once all are in, the most
  common one, ties broken as AllSyncRoute breaks them.
"""
from __future__ import annotations

from typing import Sequence

from mcrouter._metrics import R_FANOUT, local as local_counters
from mcrouter._parser import Owner, Request
from mcrouter._routing import AllFastestDispatch
from mcrouter.routes.base import DISCARD, SEVERITY, HostListRoute, Route
from mcrouter.routes.simple import null_reply


class AllFastestRoute(AllFastestDispatch, HostListRoute):
    """``dispatch`` and the race of the copies are AllFastestDispatch's and
    Race's (_routing.pyx)."""

    name = "AllFastestRoute"


class FanoutRoute(Route):
    """Base of the All*Routes: the same request to every child."""

    def __init__(self, children: Sequence[Route]) -> None:
        self.children = tuple(children)

    def targets(self, req: Request) -> Sequence[Route]:
        return self.children

    def fan_out(self) -> tuple[Route, ...]:
        """The children a request is copied to, counted as one fan-out."""
        if len(self.children) > 1:
            local_counters().route(R_FANOUT)
        return self.children


class _Collect(Owner):
    """Every child's reply, in child order; ``decide`` answers the parent."""

    __slots__ = ("parent", "subs", "left", "need")

    def __init__(self, parent: Request, children: Sequence[Route], need: int) -> None:
        self.parent = parent
        self.left = len(children)
        self.need = need                  # AllMajorityRoute: agreeing replies that decide
        self.subs = [parent.child(self) for _ in children]
        for child, sub in zip(children, self.subs):
            child.dispatch(sub)

    def on_reply(self, sub: Request) -> None:
        self.left -= 1
        if self.parent.reply is not None:
            if self.left == 0:
                self.subs = []                    # no cycle left for the garbage collector
            return
        if self.need:
            same = [s for s in self.subs if s.reply is not None and _verdict(s) == _verdict(sub)]
            if len(same) >= self.need:
                self.parent.finish(sub.reply or b"", sub.status)
                return
        if self.left == 0:
            done, self.subs = self.subs, []       # no cycle left for the garbage collector
            if self.need:                 # the most common verdict, ties by severity
                count = {v: sum(_verdict(s) == v for s in done) for v in map(_verdict, done)}
                top = max(count.values())
                done = [s for s in done if count[_verdict(s)] == top]
            worst = max(done, key=lambda s: SEVERITY.get(s.status, 2))
            self.parent.finish(worst.reply or b"", worst.status)


def _verdict(sub: Request) -> tuple[int, bytes]:
    """What AllMajorityRoute compares: the status and the reply's first word."""
    reply = sub.reply or b""
    return (sub.status, reply.split(b" ", 1)[0].split(b"\r\n", 1)[0])


class AllSyncRoute(FanoutRoute):
    name = "AllSyncRoute"

    def dispatch(self, req: Request) -> None:
        _Collect(req, self.fan_out(), 0)


class AllMajorityRoute(FanoutRoute):
    name = "AllMajorityRoute"

    def dispatch(self, req: Request) -> None:
        _Collect(req, self.fan_out(), len(self.children) // 2 + 1)


class AllInitialRoute(FanoutRoute):
    name = "AllInitialRoute"

    def dispatch(self, req: Request) -> None:
        first, *rest = self.fan_out()
        for child in rest:
            child.dispatch(req.child(DISCARD))
        first.dispatch(req)


class AllAsyncRoute(FanoutRoute):
    name = "AllAsyncRoute"

    def dispatch(self, req: Request) -> None:
        for child in self.fan_out():
            child.dispatch(req.child(DISCARD))
        req.finish(*null_reply(req))
