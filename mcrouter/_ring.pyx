# cython: language_level=3
"""One upstream connection's queues (hot path).

A ring holds the requests queued for one memcached connection in the order
they were queued.  Their bytes are appended to ``out``, written by the loop
in one send per turn; memcached answers in order, so each reply read back is
matched to the oldest request still owed one.  A request that times out is
answered at once with the router's timeout reply but keeps its place, so its
late reply is recognised and dropped without shifting any other.

Every queue is bounded: ``push`` refuses work past ``max_inflight``
requests or ``max_out`` unwritten bytes.  A value reply larger than
``max_reply`` per distinct key asked is walked past without being held, and
its request alone is answered with the router's "reply too large" error.

A large ``get`` reply is not held to its end when its client can take it:
once STREAM_MIN bytes of it are here, its complete VALUE blocks are passed
to the request's owner (``on_partial``) if it takes them now
(``takes_parts``: every earlier reply of that client is out, and either its
output is within -b or the reply passed on stays within the per-reply
bound); the rest follows as usual.

Two clocks, so that a host is judged by its own behaviour: a request's reply
is due ``timeout`` after its last byte was written to the socket, and the
oldest request owed a reply gets a full ``timeout`` again whenever reply
bytes arrive (a large reply ahead of it still flowing is progress, not a
dead host); before it is written, the deadline given to ``push`` bounds its
wait in the router's own queue.  ``expire`` answers both kinds, and counts only the first: a request
that never left the router says nothing about the host.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from mcrouter._metrics import local as local_counters
from mcrouter import protocol
from mcrouter._parser cimport (Request, append_bytes, scan_reply, skip_reply, complete_values,
                               RK_LINE, RK_GET, RK_STATS, RK_QUIET, CMD_MG, ST_OK, ST_FAIL,
                               ST_ERROR, TAKE_YES)

cdef inline double monotonic_now():
    """time.monotonic(), in C."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef Py_ssize_t distinct_keys(Request req):
    """Keys a get asks for, each counted once: ``get k k k`` can carry at
    most one item's worth of distinct data per key (cold: a large reply)."""
    if req.keys is None:
        return 1
    return len(set(req.keys))


cdef bytes REPLY_TOO_LARGE = protocol.REPLY_TOO_LARGE
DEF FAULT_EXCERPT = 80      # bytes of a bad reply kept for the log line
DEF STREAM_MIN = 65536      # a get reply this large so far is passed on in parts


cdef class Ring:

    def __init__(self, Py_ssize_t max_inflight=65536, Py_ssize_t max_out=64 << 20,
                 Py_ssize_t max_reply=(1 << 20) * 4, int host=-1, double timeout=1.0):
        self.counters = local_counters()
        self.timeout = timeout
        self.host = host
        self.out = bytearray()
        self.inbuf = bytearray()
        self.fifo = []
        self.max_inflight = max_inflight
        self.max_out = max_out
        self.max_reply = max_reply

    # -- public -------------------------------------------------------------

    @property
    def inflight(self):
        """Requests queued or written and not yet matched to a reply."""
        return len(self.fifo) - self.head

    @property
    def pending(self):
        """Bytes queued and not yet written."""
        return len(self.out)

    @property
    def awaiting(self):
        """Requests written to the socket and not yet matched to a reply."""
        return max(0, self.written - self.head)

    @property
    def oldest_deadline(self):
        """Deadline of the oldest request still owed a reply, or 0.0."""
        if self.head < len(self.fifo):
            return (<Request>self.fifo[self.head]).deadline
        return 0.0

    cpdef bint push(self, Request req, double deadline):
        """Queue a request; False when the ring is full (the caller answers it)."""
        if len(self.fifo) - self.head >= self.max_inflight or len(self.out) > self.max_out:
            return False
        req.deadline = deadline
        self.counters.upstream_sent(self.host, req)
        if self.written == len(self.fifo) and not self.out:
            self.wire_left = len(req.wire)
        self.out += req.wire
        self.fifo.append(req)
        return True

    cpdef Py_ssize_t write_to(self, sock, double now=0.0) except -1:
        """One send of everything queued; returns the bytes still unwritten.
        Each request written whole is given its reply deadline: ``now`` plus
        the timeout.  (The router's connections write ``out`` themselves:
        ``before_write``, their own send, ``wrote``; this is the same through
        a socket-like object.)"""
        cdef Py_ssize_t sent
        if not self.out:
            return 0
        self.before_write(now)
        try:
            sent = sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return len(self.out)
        return self.wrote(sent, now)

    cdef void before_write(self, double now):
        if self.written <= self.head:
            self.progress_at = now      # nothing was owed: the host's clock starts now

    cdef Py_ssize_t wrote(self, Py_ssize_t sent, double now) except -1:
        """``sent`` bytes of ``out`` were written: drop them, give requests
        written whole their reply deadline; return the bytes still unwritten."""
        if sent > 0:
            del self.out[:sent]
            self._mark_written(sent, now)
        return len(self.out)

    cdef void _mark_written(self, Py_ssize_t sent, double now):
        cdef Py_ssize_t nfifo = len(self.fifo)
        cdef Request req
        while sent and self.written < nfifo:
            if sent < self.wire_left:
                self.wire_left -= sent
                return
            sent -= self.wire_left
            req = <Request>self.fifo[self.written]
            if req is not None:
                req.deadline = now + self.timeout
            self.written += 1
            self.wire_left = len((<Request>self.fifo[self.written]).wire) \
                if self.written < nfifo else 0

    cpdef int feed(self, data, Py_ssize_t n=-1) except -2:
        """Match received bytes (the first ``n`` of ``data`` if given) to
        requests; 0 when fine, -1 on a protocol error (the connection must be
        dropped and ``fail_all`` called; ``fault_cmd`` and ``fault_bytes``
        say what was wrong).  A protocol error is bytes nobody asked for, or
        a reply that cannot answer its request's command (scan_reply): it
        is not delivered, nor is anything after it; replies before it are.
        Replies are cut straight from the input when nothing is buffered;
        only an unfinished tail is copied."""
        cdef const unsigned char[::1] view = data
        if n < 0 or n > view.shape[0]:
            n = view.shape[0]
        if n == 0:
            return 0
        return self.feed_ptr(&view[0], n)

    cdef int feed_ptr(self, const unsigned char *data, Py_ssize_t n) except -2:
        """``feed`` from the loop's receive buffer: no memoryview per read.
        ``data`` must stay valid and unchanged during the call."""
        cdef int status = 0
        cdef Py_ssize_t pos = 0, r, end, cursor
        cdef const unsigned char *p
        cdef bytearray held = None
        cdef Request req
        cdef bytes reply
        cdef bint done = False
        cdef int take
        if n <= 0:
            return 0
        self.counters.tick()
        if len(self.inbuf) == 0:
            p = data
        else:
            append_bytes(self.inbuf, data, n)
            held = self.inbuf           # keeps p valid whatever the callbacks do
            p = held
            n = len(held)
        while pos < n:
            if self.head >= len(self.fifo):
                return self._fault(None, p + pos, n - pos)     # bytes nobody asked for
            req = <Request>self.fifo[self.head]
            if self.dropping:
                r = skip_reply(p + pos, n - pos, req, &self.skip_left, &self.skip_last,
                               &self.skip_seen, &done)
                if r < 0:
                    return self._fault(req, p + pos, n - pos)
                pos += r
                if not done:
                    break
                self.dropping = False
                self._pop_head()
                req.finish(REPLY_TOO_LARGE, ST_ERROR)
                continue
            r = scan_reply(p + pos, n - pos, req, &status)
            if r == -1 and req.stream and n - pos >= STREAM_MIN and req.reply is None:
                # a large get reply still arriving: its complete values go
                # to the client now if it takes them (takes_parts), rather
                # than being held to the end.  Asked before anything is
                # copied: a reply held for a client that does not take it
                # is never copied per read.
                take = req.owner.takes_parts(req)
                if take:
                    r = complete_values(p + pos, n - pos, req, &cursor)
                    if r > 0 and (take == TAKE_YES or req.streamed + r <= self.max_reply
                                  or req.streamed + r <= self.max_reply * distinct_keys(req)):
                        req.owner.on_partial(
                            req, PyBytes_FromStringAndSize(<const char *>p + pos, r))
                        req.cursor = cursor
                        req.streamed += r
                        pos += r
                        continue
                r = -1
            if r == -1:
                # a multiget may carry one item per key
                if n - pos > self.max_reply and n - pos > self.max_reply * distinct_keys(req):
                    if req.rkind == RK_LINE or req.rkind == RK_STATS:
                        return self._fault(req, p + pos, n - pos)
                    # too large to hold: walk past it and answer with an error
                    self.dropping = True
                    self.skip_left = 0
                    self.skip_last = False
                    self.skip_seen = req.cursor if req.rkind == RK_GET else 0
                    done = False
                    continue
                break
            if r < 0:
                return self._fault(req, p + pos, n - pos)
            end = pos + r
            if req.rkind == RK_QUIET:
                end -= 4        # the MN the router appended is not the client's
                if end == pos and req.cmd == CMD_MG:
                    status = ST_FAIL    # a quiet mg says nothing only on a miss
            if req.override is not None:
                status = ST_OK          # the router's own answer: no route may fail it over
            reply = PyBytes_FromStringAndSize(<const char *>p + pos, end - pos)
            pos += r
            self._pop_head()
            if req.reply is None:       # not timed out already
                self.counters.upstream_done(self.host, req, status)
            req.finish(reply, status)
        if held is None:
            if pos < n:
                append_bytes(self.inbuf, p + pos, n - pos)
        elif pos and held is self.inbuf:
            del held[:pos]
        self._compact()
        self.progress_at = monotonic_now()
        if self.head < self.written:
            # reply bytes arrived: the oldest request owed one is due a full
            # timeout from now, not from when it was written behind others
            req = <Request>self.fifo[self.head]
            req.deadline = max(req.deadline, self.progress_at + self.timeout)
        return 0

    cpdef int expire(self, double now, bytes reply) except -1:
        """Answer every request whose deadline has passed; return how many of
        them had been written (those that waited in the router's own queue
        are answered too, but do not count against the host)."""
        cdef Py_ssize_t i = max(self.head, self.expired)
        cdef Py_ssize_t count = 0, stop = min(self.written, len(self.fifo))
        cdef Request req
        self.counters.tick()
        while i < stop:
            req = <Request>self.fifo[i]
            if req.deadline > now:
                break
            if req.reply is None:
                count += 1
            req.finish(reply, ST_ERROR)
            i += 1
        self.expired = i
        i = max(self.queue_expired, self.written, self.head)
        while i < len(self.fifo):
            req = <Request>self.fifo[i]
            if req.deadline > now:
                break
            req.finish(reply, ST_ERROR)
            i += 1
        self.queue_expired = i
        return count

    cpdef fail_all(self, bytes reply):
        """The connection is gone: answer everything still owed a reply."""
        cdef list fifo = self.fifo
        cdef Py_ssize_t i, start = self.head
        self.counters.tick()
        self.fifo = []
        self.head = 0
        self.expired = 0
        self.written = 0
        self.wire_left = 0
        self.queue_expired = 0
        self.dropping = False
        self.out = bytearray()
        self.inbuf = bytearray()
        for i in range(start, len(fifo)):
            (<Request>fifo[i]).finish(reply, ST_ERROR)

    cdef int _fault(self, Request req, const unsigned char *p, Py_ssize_t n) except -2:
        """Record what was wrong (cold path) and return -1 for ``feed``."""
        self.fault_cmd = req.cmd if req is not None else 0
        self.fault_bytes = PyBytes_FromStringAndSize(<const char *>p, min(n, FAULT_EXCERPT))
        return -1

    cdef inline void _pop_head(self):
        self.fifo[self.head] = None
        self.head += 1
        if self.expired < self.head:
            self.expired = self.head
        if self.written < self.head:       # a reply before its request was written whole
            self.written = self.head
            self.wire_left = len((<Request>self.fifo[self.head]).wire) \
                if self.head < len(self.fifo) else 0

    cdef void _compact(self):
        if self.head == len(self.fifo):
            self.fifo = []
            self._shift()
        elif self.head > 1024 and self.head * 2 > len(self.fifo):
            del self.fifo[:self.head]
            self._shift()

    cdef inline void _shift(self):
        self.expired -= self.head
        self.written = max(0, self.written - self.head)
        self.queue_expired = max(0, self.queue_expired - self.head)
        self.head = 0
