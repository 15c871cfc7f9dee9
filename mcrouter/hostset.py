"""The upstream hosts of one worker, kept across config reloads.

A reload asks for the hosts of the new pool.  A host whose address stays is
the same ``Host`` object, connections and all: nothing reconnects and
nothing in flight on it notices.  A new address gets a new host, connected
at once.  A host that leaves is *retired*: it stays open until no request
can still reach it, then closes.

Which requests can still reach a retired host?  Any request a client had
read before the swap: it was routed by the old tree, and failover can send
it to another old host long after it started.  So a retirement records, per
client, the number of answered requests that covers everything that client
had read (``ClientConnection.reply_mark``), and completes once every such
client has reached its mark (or closed) and the retired hosts have nothing
queued or in flight (copies that finish in the background, such as
AllFastestRoute's losers, are waited for too).  Requests in flight keep
their route objects alive by reference, so the old tree needs no bookkeeping
of its own.  Every request ends within its timeouts, so every retirement
ends.

A retirement remembers the config generation its hosts came from, so the
worker can tell the master the oldest generation whose hosts it still holds
(``oldest``): the master frees a host's shared slot only once no process
holds a generation that names it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, Sequence

from mcrouter.config import HostAddr
from mcrouter.upstream import Host


class Client(Protocol):
    """What a retirement needs of a client connection (see _downstream.pyx)."""
    closed: bool
    answered: int

    def reply_mark(self) -> int: ...


class _Retirement:
    __slots__ = ("generation", "hosts", "marks")

    def __init__(self, hosts: list[Host], marks: list[tuple[Client, int]],
                 generation: int) -> None:
        self.hosts = hosts
        self.marks = marks          # (client, answered count it must reach)
        self.generation = generation    # the config generation these hosts were live in

    def done(self) -> bool:
        self.marks = [(c, m) for c, m in self.marks if not c.closed and c.answered < m]
        return not self.marks and all(
            conn.ring.inflight == 0 for h in self.hosts for conn in h.conns)


class HostSet:
    def __init__(self, make: Callable[[HostAddr], Host]) -> None:
        self.make = make
        self.live: dict[HostAddr, Host] = {}
        self.retiring: list[_Retirement] = []

    def use(self, pool: Sequence[HostAddr], clients: Iterable[Client],
            generation: int = 0) -> list[Host]:
        """The hosts for ``pool``, in its order: kept, revived from retirement or new.
        Hosts no longer in the pool are retired (see the module docstring);
        ``generation``: the one they were live in until now."""
        wanted = dict.fromkeys(pool)
        hosts: dict[HostAddr, Host] = {}
        for addr in wanted:
            host = self.live.get(addr) or self._revive(addr)
            if host is None:
                host = self.make(addr)
                host.start()
            hosts[addr] = host
        leaving = [h for a, h in self.live.items() if a not in wanted]
        self.live = hosts
        if leaving:
            owing = [(c, c.reply_mark()) for c in clients]
            self.retiring.append(_Retirement(leaving, [(c, m) for c, m in owing if m > c.answered],
                                             generation))
        return [hosts[a] for a in pool]

    def oldest(self, current: int) -> int:
        """The oldest generation whose hosts this set still holds open."""
        return min((r.generation for r in self.retiring), default=current)

    def all(self) -> Iterator[Host]:
        """Every open host, live or retiring."""
        yield from self.live.values()
        for r in self.retiring:
            yield from r.hosts

    def _revive(self, addr: HostAddr) -> Host | None:
        for r in self.retiring:
            for h in r.hosts:
                if h.addr == addr:
                    r.hosts.remove(h)
                    return h
        return None

    def close_retired(self) -> int:
        """Close the hosts whose retirement is complete; how many closed."""
        closed = 0
        keep = []
        for r in self.retiring:
            if r.done():
                for h in r.hosts:
                    h.close()
                closed += len(r.hosts)
            else:
                keep.append(r)
        self.retiring = keep
        return closed

    def close(self) -> None:
        for r in self.retiring:
            for h in r.hosts:
                h.close()
        for h in self.live.values():
            h.close()
        self.retiring = []
        self.live = {}
