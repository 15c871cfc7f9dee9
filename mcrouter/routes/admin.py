"""Commands the router answers about itself, whatever the route tree says.

``stats servers`` (as in Facebook mcrouter) lists every upstream host with
its shared health state, in memcached's ``STAT name value`` format, so that
``mcrouter hosts`` and memcached tools can read it from any worker.  Other
``stats`` requests go where the config sends them.
"""
from __future__ import annotations

from mcrouter._parser import Request
from mcrouter.health import HostTable
from mcrouter.protocol import CMD_STATS, COMMAND_IDS, ST_OK
from mcrouter.routes.base import Route
from mcrouter.routes.selector import OperationSelectorRoute


def servers_reply(table: HostTable) -> bytes:
    """One line per host: ``STAT <host> <state> <address|-> <changes> <changed_at> <reason>``."""
    lines = [f"STAT {h.key} {h.state} {h.address or '-'} {h.changes} {h.changed_at:.3f} "
             f"{h.reason or '-'}\r\n" for h in table.statuses()]
    return ("".join(lines) + "END\r\n").encode()


class RouterStatsRoute(Route):
    name = "RouterStatsRoute"

    def __init__(self, fallback: Route, table: HostTable) -> None:
        self.fallback = fallback
        self.table = table

    def dispatch(self, req: Request) -> None:
        if req.wire.split() == [b"stats", b"servers"]:
            req.finish(servers_reply(self.table), ST_OK)
        else:
            self.fallback.dispatch(req)


def with_router_commands(route: Route, table: HostTable) -> Route:
    """``route`` with the router's own commands in front of its stats entry."""
    if isinstance(route, OperationSelectorRoute):
        commands = list(route.table)
    else:
        commands = [route] * (max(COMMAND_IDS.values()) + 2)
    commands[CMD_STATS] = RouterStatsRoute(commands[CMD_STATS], table)
    return OperationSelectorRoute(commands)
