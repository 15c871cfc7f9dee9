"""Multi-key gets: ask several destinations for parts of one request, answer once.

One mechanism serves every route that splits a ``get``/``gets``/``gat``/
``gats`` with many keys:

* ``split`` (PoolRoute, HashRoute, PrefixSelectorRoute): the keys are grouped
  by destination, one sub-request per destination goes out at once, and the
  client gets one reply: the hits in the order of its request keys, one END.
  A destination that fails costs only its keys (they read as misses); only
  when no destination gave a real get reply does the client see the error.
* ``MissChain`` (MissFailoverRoute, WarmUpRoute): destinations one after the
  other, each asked only for the keys still missing.

Both collect hits in a ``Gather``.  Values are forwarded verbatim (VALUE
line and data), so ``gets`` cas values and flags are the servers' own.
"""
from __future__ import annotations

from typing import Callable, Sequence

from mcrouter._parser import Request, split_values
from mcrouter.protocol import CMD_GAT, CMD_GATS, ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_ERROR
from mcrouter.routes.base import Route


def retrieval_prefix(req: Request) -> bytes:
    """``get``, ``gets``, ``gat <exptime>`` or ``gats <exptime>``: the request line before its keys."""
    words = req.wire.split(None, 2 if req.cmd in (CMD_GAT, CMD_GATS) else 1)
    return b" ".join(words[:-1])


def for_keys(parent: Request, owner: object, prefix: bytes, keys: list[bytes]) -> Request:
    """A sub-request of ``parent`` asking only for ``keys``."""
    sub = parent.child(owner)
    sub.wire = prefix + b" " + b" ".join(keys) + b"\r\n"
    sub.keys = keys if len(keys) > 1 else None
    sub.key = keys[0]
    return sub


class Gather:
    """The hits of a multi-key get, collected from the replies of its sub-requests."""

    __slots__ = ("parent", "keys", "found", "answered", "error", "error_status")

    def __init__(self, parent: Request) -> None:
        self.parent = parent
        self.keys: list[bytes] = parent.keys if parent.keys is not None else [parent.key]
        self.found: dict[bytes, bytes] = {}
        self.answered = False            # some destination gave a real get reply
        self.error: bytes | None = None
        self.error_status = ST_ERROR

    def take(self, sub: Request) -> list[tuple[bytes, bytes]]:
        """Merge one sub-reply; return its hits ([] for a miss or an error)."""
        reply = sub.reply or b""
        if sub.status == ST_ERROR or not reply.endswith(b"END\r\n"):
            self.error = reply           # an error: these keys stay missing
            self.error_status = sub.status
            return []
        self.answered = True
        hits = split_values(reply)
        for key, block in hits:
            self.found.setdefault(key, block)
        return hits

    def missing(self) -> list[bytes]:
        return [k for k in dict.fromkeys(self.keys) if k not in self.found]

    def finish(self) -> None:
        found = self.found
        if found or self.answered:
            body = b"".join([found[k] for k in self.keys if k in found])
            self.parent.finish(body + b"END\r\n", ST_OK if found else ST_FAIL)
        else:
            self.parent.finish(self.error or UPSTREAM_ERROR, self.error_status)


class _Shards(Gather):
    """Every destination asked at once; answer when the last one replies."""

    __slots__ = ("left",)

    def on_reply(self, sub: Request) -> None:
        self.take(sub)
        self.left -= 1
        if self.left == 0:
            self.finish()


def split(req: Request, groups: Sequence[tuple[Route, list[bytes]]]) -> None:
    """Send each group of ``req``'s keys to its route; one merged reply."""
    if len(groups) == 1:
        groups[0][0].dispatch(req)       # one destination: the request as it is
        return
    shards = _Shards(req)
    shards.left = len(groups)
    prefix = retrieval_prefix(req)
    for route, keys in groups:
        route.dispatch(for_keys(req, shards, prefix, keys))


class MissChain(Gather):
    """Destinations one at a time; each is asked only for the keys still
    missing.  ``on_hits(step, sub, hits)`` sees every step's hits (WarmUpRoute
    writes the warm hits back to the cold route)."""

    __slots__ = ("steps", "i", "prefix", "on_hits")

    def __init__(self, parent: Request, steps: Sequence[Route],
                 on_hits: Callable[[int, Request, list[tuple[bytes, bytes]]], None] | None = None) -> None:
        super().__init__(parent)
        self.steps = steps
        self.i = 0
        self.prefix = retrieval_prefix(parent)
        self.on_hits = on_hits

    def next(self) -> None:
        step = self.steps[self.i]
        self.i += 1
        if self.i == 1:
            step.dispatch(self.parent.child(self))
        else:
            step.dispatch(for_keys(self.parent, self, self.prefix, self.missing()))

    def on_reply(self, sub: Request) -> None:
        hits = self.take(sub)
        if hits and self.on_hits is not None:
            self.on_hits(self.i - 1, sub, hits)
        if self.i < len(self.steps) and self.missing():
            self.next()
        else:
            self.finish()
