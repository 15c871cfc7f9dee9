"""Where would this key go?  The route tree's own answer, without sending anything.

Asked two ways, with one answer:

* ``mcrouter route -f router.yaml <command> <key>`` (cli.py), without a
  running router;
* a running router, through reserved keys, as Facebook mcrouter does:
  ``get __mcrouter__.route(<command>,<key>)`` → the servers, one per line;
  ``get __mcrouter__.route_handles(<command>,<key>)`` → the route path.

The reserved keys are answered at the root of the tree (``RootRoute``), the
one place every request enters.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from mcrouter._parser import Request, RequestParser
from mcrouter._routing import ServiceDispatch
from mcrouter.config import AdminPolicy
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK, UNKNOWN_SERVICE_KEY
from mcrouter.routes.admin_policy import AdminGate
from mcrouter.routes.base import Route, Trace

_SERVICE_RE = re.compile(rb"^__mcrouter__\.(route|route_handles)\(([a-z_]+),(.*)\)$")

# a request line for each command, to be parsed into the Request a client would send
_PROBES = {
    "get": b"get {k}\r\n", "gets": b"gets {k}\r\n", "gat": b"gat 0 {k}\r\n",
    "gats": b"gats 0 {k}\r\n", "cas": b"cas {k} 0 0 0 1\r\n\r\n", "delete": b"delete {k}\r\n",
    "incr": b"incr {k} 1\r\n", "decr": b"decr {k} 1\r\n", "touch": b"touch {k} 0\r\n",
    "flush_all": b"flush_all\r\n", "version": b"version\r\n", "verbosity": b"verbosity 1\r\n",
    "stats": b"stats\r\n", "mg": b"mg {k} v\r\n", "ms": b"ms {k} 0\r\n\r\n", "md": b"md {k}\r\n",
    "ma": b"ma {k}\r\n", "mn": b"mn\r\n", "me": b"me {k}\r\n",
    **{c: c.encode() + b" {k} 0 0 0\r\n\r\n" for c in ("set", "add", "replace", "append", "prepend")},
}
COMMANDS = tuple(_PROBES)


def probe_request(command: str, key: bytes) -> Request:
    """The Request a client sending ``command`` for ``key`` would make."""
    if command not in _PROBES:
        raise ValueError(f"unknown command {command!r}; valid: {', '.join(COMMANDS)}")
    if b"{k}" in _PROBES[command] and (not key or any(c <= 32 or c == 127 for c in key)):
        raise ValueError(f"{key!r} is not a valid memcached key (1 to 250 bytes, no spaces "
                         "or control characters)")
    reqs = RequestParser().feed(_PROBES[command].replace(b"{k}", key))
    if len(reqs) != 1 or reqs[0].reply is not None:
        raise ValueError(f"{key!r} is not a valid memcached key")
    return reqs[0]


def trace(root: Route, command: str, key: bytes) -> Trace:
    """The route path and servers of ``command`` for ``key``."""
    t = Trace()
    root.explain(probe_request(command, key), t)
    return t


class RootRoute(ServiceDispatch, Route):
    """The entry of the tree: reserved ``__mcrouter__.`` keys (``serve``),
    the router's own ``stats`` groups (``serve_stats``), the admin policy
    (``serve_admin``, routes/admin_policy.py), then the tree (``dispatch`` is
    ServiceDispatch's, in _routing.pyx)."""

    name = "RootRoute"

    def __init__(self, tree: Route, stats_groups: Mapping[bytes, Callable[[], bytes]] | None = None,
                 admin: AdminPolicy = AdminPolicy()) -> None:
        self.tree = tree
        # ``stats <group>`` the router answers itself (mcrouter/stats.py); other stats go to the tree
        self.stats_groups = dict(stats_groups or {})
        self.gate = AdminGate(admin)
        self.gated = self.gate.gated()

    def serve_admin(self, req: Request) -> None:
        refusal = self.gate.refusal(req)
        if refusal is None:
            self.tree.dispatch(req)
        else:
            req.finish(refusal, ST_ERROR)

    def serve_stats(self, req: Request) -> None:
        refusal = self.gate.refusal(req)
        if refusal is not None:
            req.finish(refusal, ST_ERROR)
            return
        words = req.wire.split()
        group = self.stats_groups.get(words[1]) if len(words) == 2 else None
        if group is not None:
            req.finish(group(), ST_OK)
        else:
            self.tree.dispatch(req)

    def serve(self, req: Request) -> None:
        m = _SERVICE_RE.match(req.key)
        try:
            t = trace(self.tree, m.group(2).decode(), m.group(3)) if m else None
        except ValueError:
            t = None
        if m is None or t is None:
            req.finish(UNKNOWN_SERVICE_KEY, ST_FAIL)
            return
        data = "\r\n".join(t.hosts if m.group(1) == b"route" else t.lines).encode()
        req.finish(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (req.key, len(data), data), ST_OK)

    def explain(self, req: Request, trace: Trace) -> None:
        self.tree.explain(req, trace)

