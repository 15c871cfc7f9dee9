cdef enum:
    MAX_EVENTS = 1023

cdef class Loop:
    # One epoll, its handlers by descriptor, the turn's dirty lists, timers (see _loop.pyx).
    cdef public dict handlers
    cdef public double now
    cdef public list dirty_upstreams
    cdef public list dirty_clients
    cdef public set busy                # upstream connections with requests in flight
    cdef public bytearray recv_buf
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
    cpdef double poll_timeout(self) except? -1.0
    cdef int wait(self, double timeout) except -1
    cpdef run_once(self)
    cdef flush_upstreams(self)
    cpdef flush(self)
