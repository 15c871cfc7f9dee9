# cython: language_level=3
"""One client connection: read requests, route them, reply in order (hot path).

Every request a client sends takes a slot in ``pending`` in the order it was
read, whether the router answers it itself or a host does; a reply is written
only when every earlier slot has been written.  Replies from different hosts
may complete in any order; the client sees them in its own order.

Bounded: at most ``MAX_PENDING`` requests of one client are owed a reply at
any time (more stay unparsed in its buffer), and reading pauses while more
than ``out_limit`` (``-b``) bytes wait to be written or more than that many
bytes of its requests wait for their replies.  Requests are forwarded in a
window sized by bytes, not by count: while the unwritten output plus the
replies expected for the requests in flight would pass ``out_limit``, further
requests wait, parsed, in ``queued``; none is forwarded while the output
alone is above it.  A reply is expected per key asked (a 40-key get counts
40), each the size of this client's recent replies per key, but never less
than ``out_limit / MAX_WINDOW_KEYS``: however small its replies were, a
client has at most MAX_WINDOW_KEYS keys in flight beyond its first request.
So a client that never reads holds at most ``-b`` plus the replies in flight
when its output filled up: one request's, or MAX_WINDOW_KEYS values.

Those replies in flight are the one part of a client's memory it cannot be
stopped from asking for (a window's guess comes from replies already seen,
and the next ones may be larger): so they are charged to one budget per
worker (``--reply-budget``).  A value reply (``get``, ``mg``) of 8 KiB or
more that arrives for a client already holding more than ``-b`` (unwritten,
or complete behind an earlier reply still owed) takes its size from the
budget; once the budget is spent, that reply becomes memcached's ``SERVER_ERROR
out of memory writing get response`` instead.  The reply in progress (the
oldest owed, passed on as it arrives) is never charged, and a client's
charge is returned once it holds no more than ``-b`` again.  So however
many clients never read, the worker holds at most ``-b`` and one reply in
progress per client, plus the budget.

A data block that holds a share of the body budget is read to its end even
while reading is paused for the bounds above (it is already counted), so a
client that stops reading its replies cannot pin the budget: it finishes the
block or meets the body timeout.

Bytes move through one pair, ``recv_into``/``send_out``: on a plain
connection (``tls`` None) libc ``recv`` into the loop's buffer and
``send``/``sendmsg`` over the output parts, on the descriptor (the socket
module's methods cost more per call than parsing the request); with a TLS
session in ``tls`` (issue 14) its socket-like ``recv_into``/``send``.
Nothing else here sees whether a connection is encrypted.

Output is a queue of parts, written with one ``send``/``sendmsg`` per turn:
small replies are coalesced into a bytearray, a large reply is queued as the
bytes object the upstream ring cut, never copied again.  A drained queue
holds nothing, so a burst leaves no buffer behind.

Ending a connection (SIGTERM, ``quit``, a line memcached would close on):
a client is answered for everything it had sent before, then the router
shuts its side (FIN after the last reply) and *lingers* for at most LINGER
seconds: it reads and drops whatever else comes until the client closes.
Closing at once instead would turn data arriving later into a reset, and a
reset makes the client's kernel drop replies it had received but not yet
read.  So a client sees every reply, then end-of-file; whatever it sent
after that was never executed and is safe to send again elsewhere.
"""

import select
import socket
from ssl import SSLWantReadError, SSLWantWriteError

cimport cython

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from mcrouter._loop cimport Handler, Loop, iovec, fd_recv, fd_send, fd_sendv
from mcrouter._metrics cimport Counters, G_BYTES_IN, G_BYTES_OUT, G_CLIENTS, G_CLIENTS_TOTAL
from mcrouter._metrics import local as local_counters
from mcrouter._parser cimport (Request, RequestParser, CMD_QUIT, RK_GET, RK_META, ST_ERROR,
                               TAKE_NO, TAKE_YES, TAKE_BOUNDED)
from mcrouter._parser import split_values

cdef int EV_IN = select.EPOLLIN
cdef int EV_OUT = select.EPOLLOUT
cdef int EV_ERR = select.EPOLLERR | select.EPOLLHUP

MAX_PENDING = 1024
LINGER = 2.0                 # seconds a hung-up client gets to close its side
MAX_GET_LINE = 1 << 20       # a multiget line may run this long (or -b, if larger)
REPLY_WINDOW = 16            # a new client's first window: this many keys in flight
MAX_WINDOW_KEYS = 32         # the most keys in flight beyond the first request
COALESCE = 8 * 1024          # replies smaller than this are copied into one output part
MAX_IOV = 64                 # parts one sendmsg takes
DEF C_MAX_IOV = 64
cdef Py_ssize_t C_MAX_PENDING = MAX_PENDING
cdef Py_ssize_t C_COALESCE = COALESCE
# what a TLS session raises when it has nothing now: an ``ssl`` session's
# want-read/want-write are OSErrors, not BlockingIOError, yet mean EAGAIN
cdef tuple TRY_AGAIN = (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError)
cdef bytes R_GET_OOM = b"SERVER_ERROR out of memory writing get response\r\n"

# The worker's reply budget (see the module docstring): bytes charged now,
# and the most that may be (set_reply_budget).
cdef Py_ssize_t reply_charged = 0
cdef Py_ssize_t reply_budget = 64 << 20


def set_reply_budget(Py_ssize_t budget):
    """The bytes of value replies this worker may hold for clients past -b."""
    global reply_budget
    reply_budget = budget


def reply_bytes_charged():
    """Bytes charged to the reply budget now (tests, metrics)."""
    return reply_charged


@cython.final
cdef class Fifo:
    """A queue as a list and a head index: pushes and pops are C calls, not
    deque method calls through Python.  Popped slots are dropped in bulk."""
    cdef list items
    cdef Py_ssize_t head

    def __cinit__(self):
        self.items = []

    cdef inline Py_ssize_t size(self):
        return len(self.items) - self.head

    cdef inline object first(self):
        return self.items[self.head]

    cdef inline object at(self, Py_ssize_t i):
        return self.items[self.head + i]

    cdef inline object last(self):
        return self.items[len(self.items) - 1]

    cdef inline int set_last(self, x) except -1:
        self.items[len(self.items) - 1] = x
        return 0

    cdef inline int push(self, x) except -1:
        self.items.append(x)
        return 0

    cdef object pop(self):
        cdef list items = self.items
        x = items[self.head]
        items[self.head] = None
        self.head += 1
        if self.head >= 32 and self.head * 2 >= len(items):
            del items[:self.head]
            self.head = 0
        return x

    cdef int clear(self) except -1:
        self.items = []
        self.head = 0
        return 0


cdef inline Py_ssize_t reply_keys(Request req):
    """Replies a request's window share counts: one per key asked."""
    return max(1, len(req.keys)) if req.keys is not None else 1


cdef class ClientConnection(Handler):     # a Handler is also an Owner (_loop.pxd)
    cdef readonly object worker
    cdef Loop loop
    cdef object sock
    cdef readonly int fd
    cdef readonly RequestParser parser
    cdef Fifo pending              # Request, oldest first
    cdef Fifo queued               # the tail of pending not yet forwarded, oldest first
    cdef Py_ssize_t released       # requests taken from queued so far
    cdef Py_ssize_t reply_guess    # expected reply size per key (the window's unit)
    cdef Py_ssize_t guess_floor    # reply_guess never decays below this
    cdef Py_ssize_t released_keys  # keys of the requests taken from queued so far
    cdef Py_ssize_t answered_keys  # keys of the requests answered so far
    cdef Py_ssize_t held_in        # wire bytes of the requests owed a reply
    cdef Fifo out                  # parts (bytes, bytearray) ready to write
    cdef Py_ssize_t out_bytes      # bytes in out not yet written
    cdef Py_ssize_t out_off        # bytes of out[0] already written
    cdef public double last_read   # loop time of the last bytes read (timeouts)
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
    cdef Py_ssize_t charged        # bytes of its replies charged to the reply budget
    cdef Counters counters         # this worker's metrics slot
    cdef public object tls         # None: plain bytes on fd; else a TLS session (docstring)
    cdef bint tls_pumping          # a read of plaintext the session holds is scheduled

    def __init__(self, worker, sock):
        s = worker.settings
        self.worker = worker
        self.loop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = RequestParser(s.max_item_size, max(s.buffer_size, MAX_GET_LINE),
                                    worker.next_channel())
        self.pending = Fifo()
        self.queued = Fifo()
        self.out = Fifo()
        self.last_read = self.loop.now
        self.reading = True
        self.recv_size = min(s.buffer_size, 256 * 1024)
        self.out_limit = max(s.buffer_size, 64 * 1024)
        self.reply_guess = self.out_limit // REPLY_WINDOW
        self.guess_floor = self.out_limit // MAX_WINDOW_KEYS
        self.counters = local_counters()
        self.counters.add(G_CLIENTS, 1)
        self.counters.add(G_CLIENTS_TOTAL, 1)
        self.loop.add(self.fd, EV_IN, self)

    # -- events ------------------------------------------------------------

    def on_event(self, int mask):
        self.c_on_event(mask)

    cdef int c_on_event(self, unsigned int mask) except -1:
        if mask & EV_IN:
            self.read()
            if self.tls is not None:
                self._tls_after_read()
        elif mask & EV_ERR and not mask & EV_OUT:
            self.close()
            return 0
        if mask & EV_OUT and not self.closed:
            self.c_flush()
        return 0

    cdef Py_ssize_t recv_into(self, bytearray buf, Py_ssize_t size) except -2:
        """Read at most ``size`` bytes into ``buf``: the bytes read, 0 at end
        of file, -1 if none now; OSError on a failure."""
        if self.tls is None:
            return fd_recv(self.fd, PyByteArray_AS_STRING(buf), size)
        try:
            return self.tls.recv_into(buf, size)
        except TRY_AGAIN:
            return -1

    cdef read(self):
        cdef Py_ssize_t n
        cdef bytearray buf = self.loop.recv_buf
        try:
            n = self.recv_into(buf, min(self.recv_size, PyByteArray_GET_SIZE(buf)))
        except OSError:
            self.close()
            return
        if n < 0:
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
            if not self.pending.size() and not self.out.size():
                self.close()
            return
        self.last_read = self.loop.now
        self.take(<const unsigned char *>PyByteArray_AS_STRING(buf), n)

    cdef take(self, const unsigned char *data, Py_ssize_t n):
        """Parse what the client sent, never more than MAX_PENDING requests
        owed a reply: the rest waits in the parser, and reading pauses until
        replies drain, so one client's memory stays bounded.  Forward what
        the window allows (forward)."""
        cdef list reqs
        cdef Request req
        cdef Fifo pending, queued
        cdef Py_ssize_t room = C_MAX_PENDING - self.pending.size()
        cdef unsigned long long now = self.counters.tick()
        if self.out_bytes > self.out_limit or self.held_in > self.out_limit:
            room = min(room, 1)     # read on only to finish a reserved data block
        self.counters.add(G_BYTES_IN, n)
        reqs = self.parser.feed_ptr(data, n, room)
        if reqs:
            pending = self.pending
            queued = self.queued
            for req in reqs:
                req.owner = self
                req.born_ns = now
                if req.wire is not None:
                    self.held_in += len(req.wire)
                    if req.rkind == RK_GET and req.order is None and req.override is None:
                        req.stream = True       # see on_partial
                pending.push(req)
                queued.push(req)
            self.forward()
            if pending.size() and (<Request>pending.first()).reply is not None:
                self.on_reply(pending.first())
        if self.parser.closing or len(reqs) >= room or self.over_limit():
            self._set_reading(False)

    cdef inline bint over_limit(self):
        """Whether the bytes held for this client pass -b (its output, or its
        requests owed a reply), unless a reserved data block is still
        arriving (see the module docstring)."""
        return (self.out_bytes > self.out_limit or self.held_in > self.out_limit) \
            and not self.parser.reserved     # (parser.body_pending)

    cdef forward(self):
        """Route queued requests, in order, while the window has room: the
        output waiting plus one expected reply per key in flight stays
        within out_limit (at least one request is in flight while the output
        is within it, so every client makes progress)."""
        cdef Request req
        cdef Py_ssize_t keys
        cdef Fifo queued = self.queued
        dispatch = self.worker.route.dispatch
        while queued.size():
            if self.out_bytes > self.out_limit:
                return
            req = <Request>queued.first()
            keys = reply_keys(req)
            if self.released > self.answered and self.out_bytes + (
                    self.released_keys - self.answered_keys + keys) * self.reply_guess \
                    > self.out_limit:
                return
            queued.pop()
            self.released += 1
            self.released_keys += keys
            if req.reply is None:
                dispatch(req)

    def takes_parts(self, Request req):
        """Whether complete values of ``req``'s large get reply, still
        arriving, go to this client now (on_partial): TAKE_NO until every
        earlier reply is out (the request is the oldest owed one); then
        TAKE_YES while the output is within -b, else TAKE_BOUNDED: only
        while the reply passed on stays within the per-reply bound (the
        ring holds the rest under that bound), so a client that reads
        slower than the host sends, or not at all, never makes the router
        queue a reply of any size (``gat 0 k k k ...`` repeats one value as
        often as the line allows)."""
        if self.closed:
            return TAKE_YES     # nobody will read them: dropped as they come
        if not self.pending.size() or self.pending.first() is not req:
            return TAKE_NO
        return TAKE_YES if self.out_bytes <= self.out_limit else TAKE_BOUNDED

    def on_partial(self, Request req, bytes part):
        """Queue complete values of a large get reply still arriving, so the
        reply is not held whole (only after takes_parts allowed it)."""
        if self.closed:
            return
        self._queue(part)
        self.loop.mark_client(self)

    cpdef on_reply(self, Request req):
        """A request was answered: move every answered slot at the head to ``out``."""
        cdef Request r
        cdef Py_ssize_t size, keys
        if self.closed:
            return
        cdef Fifo pending = self.pending
        if req.reply is not None:
            self._charge(req)
        while pending.size():
            r = <Request>pending.first()
            if r.reply is None:
                break
            pending.pop()
            self.answered += 1
            keys = reply_keys(r)
            self.answered_keys += keys
            if r.wire is not None:
                self.held_in -= len(r.wire)
            self.counters.request_done(r)
            if r.cmd == CMD_QUIT:
                self.quitting = True
                pending.clear()
                self.queued.clear()
                break
            reply = r.reply
            if r.order is not None and r.status != ST_ERROR:
                size = self._queue_repeated(r.order, reply)
            else:
                size = len(reply)
                if size:
                    self._queue(reply)
            size += r.streamed          # parts of it went out before (on_partial)
            if size == 0:
                continue
            # the window's unit: up at once to a larger reply, down slowly,
            # never below the floor
            size //= keys
            if size > self.reply_guess:
                # past out_limit any guess means one request at a time: cap
                # it there, so one huge reply does not slow the decay back
                self.reply_guess = min(size, self.out_limit + 1)
            elif self.reply_guess > self.guess_floor:
                self.reply_guess = max(self.guess_floor,
                                       self.reply_guess - ((self.reply_guess - size) >> 3))
        self.loop.mark_client(self)

    cdef _charge(self, Request req):
        """A value reply of 8 KiB or more, complete while this client already
        holds more than -b (unwritten, or complete behind an earlier reply
        still owed): charge it to the worker's reply budget, or answer it with
        memcached's out-of-memory error once the budget is spent (the module
        docstring says why).  The reply in progress, passed on in parts as it
        arrived, is not charged."""
        global reply_charged
        cdef Py_ssize_t size, held
        reply = req.reply
        if req.rkind != RK_GET and req.rkind != RK_META or req.status == ST_ERROR \
                or req.streamed or type(reply) is not bytes:
            return
        size = len(<bytes>reply)
        if size < C_COALESCE:
            return
        held = self.out_bytes
        if self.released - self.answered > 1:
            held += self._waiting() - size
        if held <= self.out_limit:
            return
        if reply_charged + size <= reply_budget:
            reply_charged += size
            self.charged += size
        else:
            req.reply = R_GET_OOM
            req.status = ST_ERROR

    cdef Py_ssize_t _waiting(self) except -1:
        """Bytes of complete replies waiting behind the oldest owed one (the
        requests in flight: at most a window's worth)."""
        cdef Py_ssize_t total = 0, i
        cdef Py_ssize_t n = min(self.released - self.answered, self.pending.size())
        cdef Request r
        for i in range(n):
            r = <Request>self.pending.at(i)
            if r.reply is not None:
                total += len(r.reply)
        return total

    cdef _uncharge(self):
        global reply_charged
        reply_charged -= self.charged
        self.charged = 0

    cdef _queue(self, reply):
        """Queue one part of the output: as is if large, else coalesced."""
        cdef Py_ssize_t size = len(reply)
        cdef Fifo out = self.out
        if not out.size() or size >= C_COALESCE or len(out.last()) >= C_COALESCE * 8:
            out.push(reply)             # queued as is: no copy
        else:
            last = out.last()
            if type(last) is not bytearray:
                last = bytearray(last)
                out.set_last(last)
            last += reply
        self.out_bytes += size

    cdef Py_ssize_t _queue_repeated(self, list order, bytes reply) except -1:
        """A get whose keys repeat was sent with each key once: queue each
        hit once per time it was asked, from the one copy (cold path)."""
        cdef Py_ssize_t total = 0
        if not reply.endswith(b"END\r\n"):
            self._queue(reply)
            return len(reply)
        blocks = dict(split_values(reply))
        cdef Fifo out = self.out
        for key in order:
            block = blocks.get(key)
            if block is not None:
                # a part of its own, never coalesced: each repeat is one more
                # reference to the same bytes, not one more copy of them
                out.push(block)
                total += len(block)
        self.out_bytes += total
        self._queue(b"END\r\n")
        return total + 5

    cdef Py_ssize_t send_out(self) except -2:
        """Write from the head of the output (``out_off`` bytes into its
        first part): the bytes written, -1 if none now; OSError on a
        failure.  Plain: one send, or one sendmsg of up to MAX_IOV parts."""
        cdef iovec iov[C_MAX_IOV]
        cdef Py_ssize_t count = 0, size
        cdef char *data
        cdef Fifo out = self.out
        cdef Py_ssize_t i, parts = min(out.size(), C_MAX_IOV)
        if self.tls is not None:
            first = out.first()
            try:
                return self.tls.send(memoryview(first)[self.out_off:] if self.out_off else first)
            except TRY_AGAIN:
                return -1
        for i in range(parts):
            part = out.at(i)
            if type(part) is bytes:
                data = PyBytes_AS_STRING(part)
                size = PyBytes_GET_SIZE(part)
            elif type(part) is bytearray:
                data = PyByteArray_AS_STRING(part)
                size = PyByteArray_GET_SIZE(part)
            else:
                raise TypeError(f"an output part must be bytes or bytearray: {type(part)}")
            if count == 0:
                data += self.out_off
                size -= self.out_off
            iov[count].iov_base = data
            iov[count].iov_len = size
            count += 1
        if count == 1:
            return fd_send(self.fd, <const char *>iov[0].iov_base, iov[0].iov_len)
        return fd_sendv(self.fd, iov, count)

    cdef Py_ssize_t _send(self) except -1:
        """One send (or sendmsg of several parts) of the queued output."""
        cdef Py_ssize_t sent, left
        cdef Fifo out = self.out
        sent = self.send_out()
        if sent <= 0:
            return 0
        self.out_bytes -= sent
        left = sent
        while left:
            first = out.first()
            if left >= len(first) - self.out_off:
                left -= len(first) - self.out_off
                out.pop()
                self.out_off = 0
            else:
                self.out_off += left
                left = 0
        return sent

    def flush(self):
        self.c_flush()

    cdef int c_flush(self) except -1:
        cdef Py_ssize_t sent = 0
        if self.closed:
            return 0
        if self.out.size():
            try:
                sent = self._send()
            except OSError:
                self.close()
                return 0
            self.counters.add(G_BYTES_OUT, sent)
        elif self.tls is not None:
            self._tls_flush()
            if self.closed:
                return 0
        if self.queued.size() and not self.quitting:
            self.forward()
            if self.pending.size() and (<Request>self.pending.first()).reply is not None:
                self.on_reply(self.pending.first())
        if self.charged and self.out_bytes + self._waiting() <= self.out_limit:
            self._uncharge()
        if not self.out.size() and not self.pending.size() and self.draining \
                and not self.lingering and self._tls_sent():
            self._hang_up()
            return 0
        if self.quitting and not self.out.size() and not self.lingering and self._tls_sent():
            self._hang_up()     # the client may still be sending: see the docstring
            return 0
        if self.eof and not self.pending.size() and not self.out.size() and self._tls_sent():
            self.close()
            return 0
        if not self.reading:
            if not self.parser.closing and self.out_bytes <= self.out_limit // 2 \
                    and self.held_in <= self.out_limit // 2 \
                    and self.pending.size() <= C_MAX_PENDING // 2:
                self._set_reading(True)
                if len(self.parser.buf):
                    self.take(NULL, 0)   # requests read earlier, held back by the bound
                if self.tls is not None:
                    self._tls_pump_later()   # plaintext the session held while paused
        elif self.over_limit():
            self._set_reading(False)
        self._set_want_write(self.out_bytes > 0 or (self.tls is not None and self.tls.want_write))
        return 0

    # -- TLS (cold: only for a connection with a session; see tls.py) --------

    cdef _tls_after_read(self):
        """After a read: the session may hold plaintext the descriptor will
        not announce (read it next, without epoll), or records it could not
        write while shaking hands (ask for EPOLLOUT)."""
        if self.closed:
            return
        self._tls_pump_later()
        self._set_want_write(self.out_bytes > 0 or self.tls.want_write)

    cdef _tls_pump_later(self):
        if self.tls.more and self.reading and not self.tls_pumping and not self.closed:
            self.tls_pumping = True
            self.loop.call_later(0.0, self._tls_pump)

    def _tls_pump(self):
        """Read what the session holds, as epoll would for kernel bytes."""
        self.tls_pumping = False
        if not self.closed and self.reading and self.tls.more:
            self.read()
            self._tls_after_read()

    cdef _tls_flush(self):
        """Write records the kernel refused before (the output queue is empty)."""
        if self.tls.want_write:
            try:
                self.tls.flush()
            except OSError:
                self.close()

    cdef inline bint _tls_sent(self):
        """Whether no records wait for the kernel (always, on a plain connection):
        a hang-up or close before that would cut off the last replies."""
        return self.tls is None or not self.tls.want_write

    # -- state -------------------------------------------------------------

    cdef _register(self):
        self.loop.modify(self.fd, (EV_IN if self.reading else 0) | (EV_OUT if self.want_write else 0))

    cdef _set_reading(self, bint on):
        if on != self.reading:
            self.reading = on
            if on:
                # the time the router itself did not read is not the client's
                # stall: the body timeout counts from now (stale)
                self.last_read = self.loop.now
            self._register()

    cdef _set_want_write(self, bint on):
        if on != self.want_write:
            self.want_write = on
            self._register()

    cdef _hang_up(self):
        self.lingering = True
        self.parser.discard()   # what is left unparsed is dropped, never run
        self.loop.call_later(LINGER, self.close)
        if self.tls is not None:
            self.tls.close_notify()
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
        if not self.pending.size() and not self.out.size():
            self._hang_up()

    def stale(self, double now, double body_timeout, double idle_timeout):
        """Whether to close: stopped mid-line or mid-body for ``body_timeout``
        (not while the router itself stopped reading it), or idle with
        nothing owed for ``idle_timeout`` (0: never)."""
        if self.closed or self.lingering:
            return False
        if self.tls is not None and not self.tls.handshake_done:
            return now > self.tls.deadline      # the handshake timeout (the sweep logs it)
        quiet = now - self.last_read
        if self.reading and not self.eof and self.parser.midway and quiet > body_timeout:
            return True
        return idle_timeout > 0 and quiet > idle_timeout and not self.pending.size() \
            and not self.out.size() and not self.draining

    def reply_mark(self):
        """The value of ``answered`` once every request read so far is answered."""
        return self.answered + self.pending.size()

    @property
    def idle(self):
        return self.closed or (not self.pending.size() and not self.out.size())

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
        self.queued.clear()
        self.out.clear()
        self.out_bytes = 0
        self._uncharge()
        self.parser.release()
