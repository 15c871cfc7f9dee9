# cython: language_level=3, boundscheck=False, wraparound=False
"""The worker's loop turn, compiled: poll, per-descriptor dispatch,
end-of-turn flush, timers (loop.py says why it is shaped so).

The turn itself runs no bytecode: ``epoll_wait`` is called directly on
the epoll's descriptor (the GIL released, as ``select.epoll.poll`` does:
the sidecar's DNS and /metrics threads run meanwhile), events go into a C
array, and handlers are called through the C vtable of ``Handler``
(``c_on_event``, ``c_flush``): the client and upstream connections
override those in C, so a ready descriptor or a dirty connection costs a
C call, not an attribute lookup and a vectorcall.  A Python handler
(accept, control channel, signals, probes) subclasses ``Handler`` and
defines ``on_event``; any other object with ``on_event``/``flush`` (the
tests' fakes) is called through Python.  The per-turn hook is a
``TurnHook`` (the worker's ``SignatureWatch``: one ``memcmp`` of the
shared host table) or any callable.  A replaced ``ep`` (tests' fake
epolls) or ``clock`` is honoured through Python calls.

Connections move their bytes with the raw descriptor calls of _loop.pxd
(``fd_recv``, ``fd_send``, ``fd_sendv``: libc recv/send/sendmsg on the fd,
errors as the socket module reports them): a socket object's
``recv_into``/``send``/``sendmsg`` cost more instructions per call than
the router's own work on a small request.  Each connection class has one
read/write pair that picks between those and a TLS session (its ``tls``
attribute, socket-like), so TLS changes that pair and nothing else.
"""
import heapq
import itertools
import logging
import select
import time

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EINTR
from libc.math cimport ceil
from libc.stdint cimport uint32_t
from libc.string cimport memcmp, memcpy

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
# MAX_EVENTS (_loop.pxd) is select.epoll.poll's own default (FD_SETSIZE - 1);
# the rest waits a turn

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *tp)
    int CLOCK_MONOTONIC

log = logging.getLogger("mcrouter.loop")

TICK = 0.01
RECV_SIZE = 256 * 1024
IDLE_POLL = 1.0

cdef double C_TICK = TICK
cdef double C_IDLE_POLL = IDLE_POLL
cdef object EPOLL_TYPE = select.epoll
cdef object MONOTONIC = time.monotonic


cpdef guarded(fn):
    """Run a timer or the turn hook; a bug in one is logged, and the worker
    (with every client on it) keeps serving."""
    try:
        fn()
    except Exception:       # one failing duty must not end the worker
        log.exception("internal error in a timer or turn hook (the worker continues)")


cdef class Handler(Owner):
    """What the loop calls: ``c_on_event(mask)`` when the descriptor it was
    added for is ready, ``c_flush()`` once per turn while it is in one of the
    dirty lists.  C subclasses (client and upstream connections) override
    these; for a Python subclass they call its ``on_event`` and ``flush``.
    A handler may also have ``abort()``, called to drop it after an
    internal error."""

    cdef int c_on_event(self, unsigned int mask) except -1:
        self.on_event(mask)
        return 0

    cdef int c_flush(self) except -1:
        self.flush()
        return 0


cdef class TurnHook:
    """A duty run once per turn, called in C by the loop (``on_turn``)."""

    cdef int c_call(self) except -1:
        raise NotImplementedError

    def __call__(self):
        self.c_call()


cdef class SignatureWatch(TurnHook):
    """Calls ``changed()`` in a turn where a run of shared bytes moved:
    ``width`` bytes per unit of the u32 count at ``count_at`` (at most
    ``limit`` bytes), from ``data_at`` of ``buf`` (the host table's status
    bytes: hosttable.HostTable.signature).  Comparing is one ``memcmp``;
    Python runs only on a change."""

    def __init__(self, buf, Py_ssize_t count_at, Py_ssize_t data_at, Py_ssize_t width,
                 Py_ssize_t limit, changed):
        cdef const unsigned char[::1] view
        self.view = memoryview(buf)
        view = self.view
        if count_at < 0 or count_at + 4 > view.shape[0] or data_at < 0 or width < 0 \
                or limit < 0 or data_at + limit > view.shape[0]:
            raise ValueError("SignatureWatch: span outside the buffer")
        self.base = &view[0]
        self.count_at = count_at
        self.data_at = data_at
        self.width = width
        self.limit = limit
        self.changed = changed
        self.seen = self.current()

    cdef bytearray current(self):
        cdef Py_ssize_t n = self.span()
        return PyByteArray_FromStringAndSize(<const char *>self.base + self.data_at, n)

    cdef Py_ssize_t span(self):
        cdef uint32_t count
        memcpy(&count, self.base + self.count_at, 4)
        return min(<Py_ssize_t>count * self.width, self.limit)

    cdef int c_call(self) except -1:
        cdef Py_ssize_t n = self.span()
        if n == len(self.seen) and memcmp(self.base + self.data_at,
                                          PyByteArray_AS_STRING(self.seen), n) == 0:
            return 0
        self.seen = self.current()
        self.changed()
        return 0


cdef inline double c_monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Loop:
    """One epoll, its handlers by descriptor, the turn's dirty lists, timers."""

    def __init__(self, clock=None):
        self.ep = select.epoll()
        self.clock = MONOTONIC if clock is None else clock
        self.handlers = {}
        self.now = self.monotonic()
        self.dirty_upstreams = []
        self.dirty_clients = []
        self.busy = set()
        # One receive buffer for every socket of the worker: a read is parsed
        # before the next one happens, and parsers copy only unfinished tails.
        # (recv() would allocate and shrink a bytes object per call instead.)
        self.recv_buf = bytearray(RECV_SIZE)
        self._timers = []
        # Called once per turn after the poll and before any handler, so
        # what a handler does sees shared state as of this turn.
        self.on_turn = _nothing
        self._seq = itertools.count()

    @property
    def ep(self):
        return self._ep

    @ep.setter
    def ep(self, value):
        self._ep = value
        self.native_ep = type(value) is EPOLL_TYPE
        self.epfd = value.fileno() if self.native_ep else -1

    @property
    def clock(self):
        return self._clock

    @clock.setter
    def clock(self, value):
        self._clock = value
        self.native_clock = value is MONOTONIC

    cdef double monotonic(self) except? -1.0:
        if self.native_clock:
            return c_monotonic()
        return self._clock()

    # -- registration ------------------------------------------------------

    def add(self, int fd, int mask, handler):
        self.handlers[fd] = handler
        self._ep.register(fd, mask)

    cpdef modify(self, int fd, int mask):
        self._ep.modify(fd, mask)

    cpdef remove(self, int fd):
        if self.handlers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_later(self, double delay, fn):
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), fn))

    # -- one turn ----------------------------------------------------------

    cpdef double poll_timeout(self) except? -1.0:
        cdef double timeout = C_TICK if self.busy else C_IDLE_POLL
        cdef double left
        if self._timers:
            left = <double>self._timers[0][0] - self.monotonic()
            if left < 0.0:
                left = 0.0
            if left < timeout:
                timeout = left
        return timeout

    cdef int wait(self, double timeout) except -1:
        """Poll into fds/masks; return how many are ready."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, ms
        if not self.native_ep:
            n = 0
            for fd, mask in self._ep.poll(timeout):
                if n == MAX_EVENTS:
                    break
                self.fds[n] = fd
                self.masks[n] = mask
                n += 1
            return n
        # select.epoll.poll rounds up to whole milliseconds, as here
        ms = <int>ceil(timeout * 1000.0) if timeout > 0.0 else 0
        with nogil:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, ms)
        if n < 0:
            if errno != EINTR:
                raise OSError(errno, "epoll_wait")
            PyErr_CheckSignals()        # a handler that raises ends the turn here
            return 0                    # a signal: an empty turn, then poll again
        for i in range(n):
            self.fds[i] = events[i].data.fd
            self.masks[i] = events[i].events
        return n

    cpdef run_once(self):
        cdef int n = self.wait(self.poll_timeout())
        cdef int i, fd
        cdef dict handlers = self.handlers
        cdef list ready
        cdef list timers
        self.now = self.monotonic()
        # An event belongs to the handler registered when the poll returned:
        # a descriptor closed and its number reused in this turn (on_turn, or
        # an earlier handler, opening a new connection) must not get it.
        ready = [handlers.get(self.fds[i]) for i in range(n)]
        hook = self.on_turn
        if isinstance(hook, TurnHook):
            try:
                (<TurnHook>hook).c_call()
            except Exception:   # as guarded(): the worker keeps serving
                log.exception("internal error in a timer or turn hook (the worker continues)")
        else:
            guarded(hook)
        for i in range(n):
            h = ready[i]
            fd = self.fds[i]
            if h is not None and handlers.get(fd) is h:
                self.dispatch(h, fd, self.masks[i])
        self.flush()
        timers = self._timers
        while timers and <double>timers[0][0] <= self.now:
            guarded(heapq.heappop(timers)[2])
        self.flush()

    cdef int dispatch(self, object h, int fd, unsigned int mask) except -1:
        """One ready handler; a bug in it drops it (logged, removed, aborted)."""
        try:
            if isinstance(h, Handler):
                (<Handler>h).c_on_event(mask)
            else:
                h.on_event(mask)
        except Exception:   # a bug on one connection must not stop the rest
            log.exception("closing a connection after an internal error")
            self.remove(fd)
            abort = getattr(h, "abort", None)
            if abort is not None:
                abort()
        return 0

    cdef flush_upstreams(self):
        cdef list batch = self.dirty_upstreams
        self.dirty_upstreams = []
        flush_all(batch)

    cpdef flush(self):
        """Write what this turn produced: upstream batches first, then replies."""
        cdef list batch
        if self.dirty_upstreams:
            self.flush_upstreams()
        if self.dirty_clients:
            batch = self.dirty_clients
            self.dirty_clients = []
            flush_all(batch)
            # a client whose output drained forwards requests it held back
            # (its window): send them now, not a poll later
            if self.dirty_upstreams:
                self.flush_upstreams()


cdef int flush_all(list batch) except -1:
    """Clear each one's dirty mark, then flush it (a flush may mark it again).
    A bug in one flush drops that one (logged, aborted), as dispatch does:
    the rest of the batch, already taken off the dirty list, still goes out."""
    for x in batch:
        try:
            if isinstance(x, Handler):
                (<Handler>x).dirty = False
                (<Handler>x).c_flush()
            else:
                x.dirty = False
                x.flush()
        except Exception:
            log.exception("closing a connection after an internal error while writing")
            abort = getattr(x, "abort", None)
            if abort is not None:
                abort()
    return 0


def _nothing():
    pass
