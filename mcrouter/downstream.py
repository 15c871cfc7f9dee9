"""One client connection: read requests, route them, reply in order.

Every request a client sends takes a slot in ``pending`` in the order it was
read, whether the router answers it itself or a host does; a reply is written
only when every earlier slot has been written.  Replies from different hosts
may complete in any order; the client sees them in its own order.

Bounded: reading pauses while more than ``MAX_PENDING`` requests are owed a
reply or more than ``buffer_size`` bytes wait to be written, so a client that
never reads cannot grow the router.
"""
from __future__ import annotations

import socket
from collections import deque
from typing import TYPE_CHECKING

from mcrouter._parser import Request, RequestParser
from mcrouter.loop import EV_ERR, EV_IN, EV_OUT
from mcrouter.protocol import CMD_QUIT

if TYPE_CHECKING:
    from mcrouter.worker import Worker

MAX_PENDING = 4096


class ClientConnection:
    __slots__ = ("worker", "loop", "sock", "fd", "parser", "pending", "out", "dirty",
                 "closed", "quitting", "reading", "want_write", "recv_size", "out_limit")

    def __init__(self, worker: "Worker", sock: socket.socket) -> None:
        s = worker.settings
        self.worker = worker
        self.loop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = RequestParser(s.max_item_size, s.buffer_size, worker.next_channel())
        self.pending: deque[Request] = deque()
        self.out = bytearray()
        self.dirty = False
        self.closed = False
        self.quitting = False
        self.reading = True
        self.want_write = False
        self.recv_size = min(s.buffer_size, 256 * 1024)
        self.out_limit = max(s.buffer_size, 64 * 1024)
        self.loop.add(self.fd, EV_IN, self)

    # -- events ------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if mask & EV_IN:
            self.read()
        elif mask & EV_ERR and not mask & EV_OUT:
            self.close()
            return
        if mask & EV_OUT and not self.closed:
            self.flush()

    def read(self) -> None:
        try:
            data = self.sock.recv(self.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        reqs = self.parser.feed(data)
        if not reqs:
            return
        pending = self.pending
        route = self.worker.route
        for req in reqs:
            req.owner = self
            pending.append(req)
            if req.reply is None:
                route.dispatch(req)
        if pending and pending[0].reply is not None:
            self.on_reply(pending[0])
        if self.parser.closing or len(pending) > MAX_PENDING:
            self._set_reading(False)

    def on_reply(self, req: Request) -> None:
        """A request was answered: write every answered slot at the head."""
        if self.closed:
            return
        pending = self.pending
        out = self.out
        while pending:
            r = pending[0]
            reply = r.reply
            if reply is None:
                break
            pending.popleft()
            if r.cmd == CMD_QUIT:
                self.quitting = True
                pending.clear()
                break
            out += reply
        if not self.dirty:
            self.dirty = True
            self.loop.dirty_clients.append(self)

    def flush(self) -> None:
        if self.closed:
            return
        out = self.out
        if out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            del out[:sent]
        if self.quitting and not out:
            self.close()
            return
        if not self.reading and not self.parser.closing and len(out) <= self.out_limit \
                and len(self.pending) <= MAX_PENDING:
            self._set_reading(True)
        elif self.reading and len(out) > self.out_limit:
            self._set_reading(False)
        self._set_want_write(bool(out))

    # -- state -------------------------------------------------------------

    def _register(self) -> None:
        mask = (EV_IN if self.reading else 0) | (EV_OUT if self.want_write else 0)
        self.loop.modify(self.fd, mask)

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            self._register()

    def _set_want_write(self, on: bool) -> None:
        if on != self.want_write:
            self.want_write = on
            self._register()

    def stop_reading(self) -> None:
        """Shutting down: take no new requests, finish those already read."""
        self.parser.closing = True
        self._set_reading(False)
        if not self.pending and not self.out:
            self.close()

    @property
    def idle(self) -> bool:
        return self.closed or (not self.pending and not self.out)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.fd)
        self.worker.clients.discard(self)
        try:
            self.sock.close()
        except OSError:
            pass
        self.pending.clear()
        self.out = bytearray()
