"""The event loop of one worker: epoll, end-of-turn flushes, and a timer.

Facts the design relies on (Linux, level-triggered epoll):

* A loop turn handles every ready descriptor, then flushes.  Requests read
  from many clients in one turn are coalesced into one ``send`` per upstream
  connection, and replies into one ``send`` per client: the batching that
  makes a Python router competitive with C proxies.
* ``select.epoll`` is used directly rather than ``selectors``: the latter
  allocates a key object per event, which shows on the hot path.
* Timeouts are enforced by the loop's own clock: while any request is in
  flight the poll timeout is ``TICK`` (10 ms), so a request expires within
  its deadline plus about one tick even when no byte arrives anywhere.
* Write interest (EPOLLOUT) is registered only while a socket has bytes the
  kernel refused; the common turn makes no epoll_ctl call at all.

Measured (strace -c on one worker, 50 clients without pipelining, gets and
sets to one memcached, 2-core VM, 2026-11): per ~39,700 requests, 39,656
sendto, 39,741 recvfrom and 1,582 epoll_wait: one read and one write per
request, about 25 requests per turn, upstream I/O amortised over them.
twemproxy under the same load made ~2.4 epoll_ctl, 1.2 writev and 1.2 read
calls per request.  What is left of the router's cost is interpreter time,
which is why the per-request path lives in the .pyx modules, and why the
turn itself (poll, dispatch, flush, timers) is ``_loop.Loop`` in Cython.
This module keeps the names the rest of the router imports.
"""
from __future__ import annotations

import select
from time import monotonic
from typing import Callable, Protocol

from mcrouter._loop import (IDLE_POLL, RECV_SIZE, TICK, Handler, Loop as _CompiledLoop,
                            SignatureWatch, TurnHook, guarded)

__all__ = ["EV_ERR", "EV_IN", "EV_OUT", "IDLE_POLL", "RECV_SIZE", "TICK", "Flushable", "Handler",
           "Loop", "SignatureWatch", "TurnHook", "guarded"]

EV_IN = select.EPOLLIN
EV_OUT = select.EPOLLOUT
EV_ERR = select.EPOLLERR | select.EPOLLHUP


# What the loop calls when a descriptor is ready: a ``Handler`` (_loop.pyx),
# whose ``on_event(mask)`` a Python handler defines; it may also have
# ``abort()``, called to drop it after an internal error.


class Flushable(Protocol):
    """What the dirty lists hold: a Handler (called in C), or any object
    with these (called through Python)."""
    dirty: bool

    def flush(self) -> None: ...


class Loop(_CompiledLoop):
    """The compiled loop, on this module's ``monotonic`` as its clock (read
    when the loop is made, so a test can put a fake clock here first)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__(monotonic if clock is None else clock)
