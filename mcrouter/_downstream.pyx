# cython: language_level=3
"""One client connection: read requests, route them, reply in order (hot path).

Every request a client sends takes a slot in ``pending`` in the order it was
read, whether the router answers it itself or a host does; a reply is written
only when every earlier slot has been written.  Replies from different hosts
may complete in any order; the client sees them in its own order.

Bounded: at most ``MAX_PENDING`` requests of one client are owed a reply at
any time (more stay unparsed in its buffer), and reading pauses while more
than ``out_limit`` bytes wait to be written.  A client that never reads holds
at most its replies to those requests, never an unbounded backlog.

Ending a connection (SIGTERM, ``quit``, a line memcached would close on):
a client is answered for everything it had sent before, then the router
shuts its side (FIN after the last reply) and *lingers* for at most LINGER
seconds: it reads and drops whatever else comes until the client closes.
Closing at once instead would turn data arriving later into a reset, and a
reset makes the client's kernel drop replies it had received but not yet
read.  So a client sees every reply, then end-of-file; whatever it sent
after that was never executed and is safe to send again elsewhere.
"""

from collections import deque
import select
import socket

from mcrouter._metrics cimport Counters, G_BYTES_IN, G_BYTES_OUT, G_CLIENTS, G_CLIENTS_TOTAL
from mcrouter._metrics import local as local_counters
from mcrouter._parser cimport Request, CMD_QUIT
from mcrouter._parser import RequestParser

cdef int EV_IN = select.EPOLLIN
cdef int EV_OUT = select.EPOLLOUT
cdef int EV_ERR = select.EPOLLERR | select.EPOLLHUP

MAX_PENDING = 1024
LINGER = 2.0                 # seconds a hung-up client gets to close its side
MAX_GET_LINE = 1 << 20       # a multiget line may run this long (or -b, if larger)
cdef Py_ssize_t C_MAX_PENDING = MAX_PENDING


cdef class ClientConnection:
    cdef readonly object worker
    cdef object loop
    cdef object sock
    cdef readonly int fd
    cdef readonly object parser    # RequestParser
    cdef object pending            # deque of Request, oldest first
    cdef bytearray out             # replies ready to write
    cdef public bint dirty         # queued in loop.dirty_clients for this turn
    cdef readonly bint closed
    cdef bint quitting
    cdef bint eof                  # the client half-closed
    cdef bint reading
    cdef bint draining             # answer what was read, then hang up
    cdef readonly bint lingering   # hung up: waiting for the client to close
    cdef readonly Py_ssize_t answered   # replies moved to ``out`` so far
    cdef bint want_write
    cdef Py_ssize_t recv_size
    cdef Py_ssize_t out_limit
    cdef Counters counters         # this worker's metrics slot

    def __init__(self, worker, sock):
        s = worker.settings
        self.worker = worker
        self.loop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = RequestParser(s.max_item_size, max(s.buffer_size, MAX_GET_LINE),
                                    worker.next_channel())
        self.pending = deque()
        self.out = bytearray()
        self.reading = True
        self.recv_size = min(s.buffer_size, 256 * 1024)
        self.out_limit = max(s.buffer_size, 64 * 1024)
        self.counters = local_counters()
        self.counters.add(G_CLIENTS, 1)
        self.counters.add(G_CLIENTS_TOTAL, 1)
        self.loop.add(self.fd, EV_IN, self)

    # -- events ------------------------------------------------------------

    cpdef on_event(self, int mask):
        if mask & EV_IN:
            self.read()
        elif mask & EV_ERR and not mask & EV_OUT:
            self.close()
            return
        if mask & EV_OUT and not self.closed:
            self.flush()

    cdef read(self):
        cdef Py_ssize_t n
        buf = self.loop.recv_buf
        try:
            n = self.sock.recv_into(buf, self.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.lingering:
            if n == 0:
                self.close()
            return              # after the hang-up: dropped, never executed
        if n == 0:
            # The client shut its write side: answer what it sent, then close.
            self.eof = True
            self.parser.closing = True
            self._set_reading(False)
            if not self.pending and not self.out:
                self.close()
            return
        self.take(buf, n)

    cdef take(self, data, Py_ssize_t n):
        """Parse and route what the client sent, never more than MAX_PENDING
        requests owed a reply: the rest waits in the parser, and reading
        pauses until replies drain, so one client's memory stays bounded."""
        cdef list reqs
        cdef Request req
        cdef Py_ssize_t room = C_MAX_PENDING - len(self.pending)
        cdef unsigned long long now = self.counters.tick()
        self.counters.add(G_BYTES_IN, n)
        reqs = self.parser.feed(data, n, room)
        if reqs:
            pending = self.pending
            dispatch = self.worker.route.dispatch
            for req in reqs:
                req.owner = self
                req.born_ns = now
                pending.append(req)
                if req.reply is None:
                    dispatch(req)
            if pending and (<Request>pending[0]).reply is not None:
                self.on_reply(pending[0])
        if self.parser.closing or len(reqs) >= room or len(self.out) > self.out_limit:
            self._set_reading(False)

    cpdef on_reply(self, Request req):
        """A request was answered: move every answered slot at the head to ``out``."""
        cdef Request r
        if self.closed:
            return
        pending = self.pending
        while pending:
            r = <Request>pending[0]
            if r.reply is None:
                break
            pending.popleft()
            self.answered += 1
            self.counters.request_done(r)
            if r.cmd == CMD_QUIT:
                self.quitting = True
                pending.clear()
                break
            self.out += r.reply
        if not self.dirty:
            self.dirty = True
            self.loop.dirty_clients.append(self)

    cpdef flush(self):
        cdef Py_ssize_t sent = 0
        if self.closed:
            return
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.counters.add(G_BYTES_OUT, sent)
            if sent == len(self.out):
                self.out = bytearray()
            else:
                del self.out[:sent]
        if not self.out and not self.pending and self.draining and not self.lingering:
            self._hang_up()
            return
        if self.quitting and not self.out and not self.lingering:
            self._hang_up()     # the client may still be sending: see the docstring
            return
        if self.eof and not self.pending and not self.out:
            self.close()
            return
        if not self.reading:
            if not self.parser.closing and len(self.out) <= self.out_limit // 2 \
                    and len(self.pending) <= C_MAX_PENDING // 2:
                self._set_reading(True)
                if self.parser.buffered:
                    self.take(b"", 0)   # requests read earlier, held back by the bound
        elif len(self.out) > self.out_limit:
            self._set_reading(False)
        self._set_want_write(len(self.out) > 0)

    # -- state -------------------------------------------------------------

    cdef _register(self):
        self.loop.modify(self.fd, (EV_IN if self.reading else 0) | (EV_OUT if self.want_write else 0))

    cdef _set_reading(self, bint on):
        if on != self.reading:
            self.reading = on
            self._register()

    cdef _set_want_write(self, bint on):
        if on != self.want_write:
            self.want_write = on
            self._register()

    cdef _hang_up(self):
        self.lingering = True
        self.loop.call_later(LINGER, self.close)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.reading = True
        self.want_write = False
        self._register()

    def drain(self):
        """Shutting down: take no new requests, answer those already read,
        then hang up (see the module docstring)."""
        self.draining = True
        self.parser.closing = True
        self._set_reading(False)
        if not self.pending and not self.out:
            self._hang_up()

    def reply_mark(self):
        """The value of ``answered`` once every request read so far is answered."""
        return self.answered + len(self.pending)

    @property
    def idle(self):
        return self.closed or (not self.pending and not self.out)

    def abort(self):
        self.close()

    cpdef close(self):
        if self.closed:
            return
        self.closed = True
        self.counters.add(G_CLIENTS, <unsigned long long>-1)
        self.loop.remove(self.fd)
        self.worker.clients.discard(self)
        try:
            self.sock.close()
        except OSError:
            pass
        self.pending.clear()
        self.out = bytearray()
