"""AllFastestRoute: every healthy host at once, the first success wins."""
from __future__ import annotations

from mcrouter._metrics import R_FANOUT, local as local_counters
from mcrouter._parser import Request
from mcrouter.protocol import ST_OK
from mcrouter.routes.base import Attempts, PoolRoute


class AllFastestRoute(PoolRoute):
    name = "AllFastestRoute"

    def dispatch(self, req: Request) -> None:
        hosts = self.healthy()
        if not hosts:
            self.no_host(req)
        elif len(hosts) == 1:
            hosts[0].send(req)
        else:
            local_counters().route(R_FANOUT)
            race = _Race(req, len(hosts))
            for host in hosts:
                host.send(req.child(race))


class _Race(Attempts):
    """Collects the copies' replies: forwards the first success at once; if
    none succeeds, the last failure reply, else the last router error."""

    __slots__ = ("left",)

    def __init__(self, parent: Request, count: int) -> None:
        super().__init__(parent)
        self.left = count

    def on_reply(self, sub: Request) -> None:
        self.left -= 1
        if self.parent.reply is not None:
            return                      # already answered: the rest finish in the background
        if sub.status == ST_OK:
            self.parent.finish(sub.reply or b"", ST_OK)
            return
        self.note(sub)
        if self.left == 0:
            self.give_up()
