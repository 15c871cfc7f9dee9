cdef enum:
    MAX_EVENTS = 1023


cdef class Handler:
    # What the loop calls for a ready descriptor and at the end of a turn,
    # through the C vtable (see _loop.pyx).
    cdef public bint dirty              # queued in one of the loop's dirty lists this turn
    cdef int c_on_event(self, unsigned int mask) except -1
    cdef int c_flush(self) except -1


cdef class TurnHook:
    # A per-turn duty the loop calls in C (see _loop.pyx).
    cdef int c_call(self) except -1


cdef class SignatureWatch(TurnHook):
    # Calls ``changed`` in a turn where a run of shared bytes moved (_loop.pyx).
    cdef object view                    # keeps the mapping's buffer exported (and open)
    cdef const unsigned char *base
    cdef Py_ssize_t count_at, data_at, width, limit
    cdef bytearray seen
    cdef public object changed

    cdef bytearray current(self)
    cdef Py_ssize_t span(self)


cdef class Loop:
    # One epoll, its handlers by descriptor, the turn's dirty lists, timers (see _loop.pyx).
    cdef public dict handlers
    cdef public double now
    cdef public list dirty_upstreams
    cdef public list dirty_clients
    cdef public set busy                # upstream connections with requests in flight
    cdef readonly bytearray recv_buf
    cdef public list _timers            # heap of (deadline, seq, fn)
    cdef public object on_turn
    cdef object _seq
    cdef object _ep
    cdef object _clock
    cdef bint native_ep                 # _ep is a real select.epoll: epoll_wait on epfd
    cdef bint native_clock              # _clock is time.monotonic: clock_gettime
    cdef int epfd
    cdef int fds[MAX_EVENTS]
    cdef unsigned int masks[MAX_EVENTS]

    cdef double monotonic(self) except? -1.0
    cpdef remove(self, int fd)
    cpdef modify(self, int fd, int mask)
    cpdef double poll_timeout(self) except? -1.0
    cdef int wait(self, double timeout) except -1
    cpdef run_once(self)
    cdef int dispatch(self, object h, int fd, unsigned int mask) except -1
    cdef flush_upstreams(self)
    cpdef flush(self)
    # queue a client or an upstream connection for this turn's flush, once
    cdef inline int mark_client(self, Handler c) except -1:
        if not c.dirty:
            c.dirty = True
            self.dirty_clients.append(c)
        return 0
    cdef inline int mark_upstream(self, Handler u) except -1:
        if not u.dirty:
            u.dirty = True
            self.dirty_upstreams.append(u)
        return 0
