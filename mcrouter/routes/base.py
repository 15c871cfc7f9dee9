"""What every route handle is: given a request, produce exactly one reply."""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from mcrouter._parser import Owner, Request
from mcrouter._routing import HostDispatch, HostListDispatch, Node
from mcrouter.config import HostAddr
from mcrouter.protocol import NO_HEALTHY_UPSTREAM, ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_ERROR


class Upstream(Protocol):
    """What routes need of a host (upstream.Host; a stand-in for ``mcrouter route``)."""

    addr: HostAddr
    healthy: bool

    def send(self, req: Request) -> None: ...


class Trace:
    """Where a request would go, as ``mcrouter route`` and the reserved key
    ``__mcrouter__.route(...)`` report it: an indented path and the hosts."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.hosts: list[str] = []
        self.depth = 0

    def node(self, label: str, req: Request, children: Sequence["Route"] = ()) -> None:
        self.lines.append("  " * self.depth + label)
        self.depth += 1
        for child in children:
            child.explain(req, self)
        self.depth -= 1

    def host(self, host: Upstream) -> None:
        state = "" if host.healthy else " (down)"
        self.lines.append("  " * self.depth + f"{host.addr}{state}")
        if str(host.addr) not in self.hosts:
            self.hosts.append(str(host.addr))


class Route(Node):
    """A node of the route tree.  ``dispatch`` must lead to exactly one
    ``req.finish(...)``, now or later, whatever happens upstream.  Node
    (_routing.pyx) lets a compiled parent call it through the C vtable."""

    name = "Route"

    def dispatch(self, req: Request) -> None:
        raise NotImplementedError

    def label(self) -> str:
        return self.name

    def explain(self, req: Request, trace: Trace) -> None:
        """Record where ``req`` would go; never sends anything."""
        trace.node(self.label(), req, self.targets(req))

    def targets(self, req: Request) -> Sequence["Route"]:
        """The children ``req`` would visit (for explain)."""
        return ()


class HostRoute(HostDispatch, Route):
    """A leaf: one host.  A host that is down answers at once with the
    router's error, so that the routes above can fail over (``dispatch`` is
    HostDispatch's, in _routing.pyx)."""

    name = "HostRoute"

    def __init__(self, host: Upstream) -> None:
        self.host = host

    def label(self) -> str:
        return str(self.host.addr)

    def explain(self, req: Request, trace: Trace) -> None:
        trace.host(self.host)


class HostListRoute(HostListDispatch, Route):
    """A route over a list of hosts in priority order (gomcrouter's
    orderedPool, or a named pool); hosts that are down are skipped.  The
    pool is HostListDispatch's (_routing.pyx): the hosts are
    ``upstream.HostBase`` objects, read and called from C."""

    def __init__(self, pool: Sequence[Upstream]) -> None:
        self.pool = tuple(pool)

    def healthy(self) -> list[Upstream]:
        return [h for h in self.pool if h.healthy]

    @staticmethod
    def no_host(req: Request) -> None:
        req.finish(NO_HEALTHY_UPSTREAM, ST_ERROR)

    def targets(self, req: Request) -> Sequence[Route]:
        return [HostRoute(h) for h in self.healthy()]


class _Discard(Owner):
    """Owner of background copies (shadows, async fan-out): replies are dropped."""

    __slots__ = ()

    def on_reply(self, sub: Request) -> None:
        pass


DISCARD: Any = _Discard()

# How bad a reply is, for routes that must pick the "worst" of several.
SEVERITY = {ST_OK: 0, ST_FAIL: 1, ST_ERROR: 2}


class Attempts(Owner):
    """Base of a request's tries over several hosts: remembers the last
    failure reply and the last error, and answers with the failure if there
    was one (a real memcached reply beats the router's own error)."""

    __slots__ = ("parent", "failure", "error")

    def __init__(self, parent: Request) -> None:
        self.parent = parent
        self.failure: bytes | None = None
        self.error: bytes | None = None

    def note(self, sub: Request) -> None:
        if sub.status == ST_FAIL:
            self.failure = sub.reply
        else:
            self.error = sub.reply

    def give_up(self) -> None:
        if self.failure is not None:
            self.parent.finish(self.failure, ST_FAIL)
        else:
            self.parent.finish(self.error or UPSTREAM_ERROR, ST_ERROR)
