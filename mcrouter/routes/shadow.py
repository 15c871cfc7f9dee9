"""ShadowRoute: the request goes to ``child``, whose reply the client gets;
a copy goes to ``shadow`` and its reply is dropped.

Which requests are copied: those whose key falls in ``key_fraction_range``
(the key's CRC-32 as a fraction of 2**32, so the same keys are always
shadowed: a shadow cache sees a consistent slice) and/or a random
``request_fraction`` of requests; all requests when neither is set.  The
client's request is sent first and the copy never holds its reply back:
the copy's reply, late or lost, changes nothing.
"""
from __future__ import annotations

import random
from typing import Sequence

from mcrouter._hash import hash_key
from mcrouter._parser import Request
from mcrouter.routes.base import DISCARD, Route


class ShadowRoute(Route):
    name = "ShadowRoute"

    def __init__(self, child: Route, shadow: Route,
                 key_range: tuple[float, float] | None = None,
                 request_fraction: float | None = None) -> None:
        self.child = child
        self.shadow = shadow
        self.key_range = key_range
        self.request_fraction = request_fraction

    def shadows(self, req: Request) -> bool:
        if self.key_range is not None:
            lo, hi = self.key_range
            if not lo <= hash_key("crc32a", req.key) / 4294967296.0 < hi:
                return False
        return self.request_fraction is None or random.random() < self.request_fraction

    def dispatch(self, req: Request) -> None:
        copy = self.shadows(req)
        self.child.dispatch(req)
        if copy:
            self.shadow.dispatch(req.child(DISCARD))

    def targets(self, req: Request) -> Sequence[Route]:
        if self.request_fraction is None and not self.shadows(req):
            return [self.child]
        return [self.child, self.shadow]
