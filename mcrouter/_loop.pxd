from cpython.exc cimport PyErr_SetFromErrno

from mcrouter._parser cimport Owner
from libc.errno cimport errno, EAGAIN, EINTR

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    cdef struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    ssize_t c_sendmsg "sendmsg" (int fd, const msghdr *msg, int flags)
    int MSG_NOSIGNAL

cdef enum:
    MAX_EVENTS = 1023


# Raw descriptor I/O for plain connections (why: _loop.pyx).  Each returns
# the bytes moved (0 from fd_recv: end of file), -1 when the kernel has
# nothing now (EAGAIN, EINTR: the next turn tries again), and raises the
# OSError the socket module would for any other error.

cdef inline Py_ssize_t io_result(ssize_t n) except -2:
    if n >= 0:
        return n
    if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
        return -1
    PyErr_SetFromErrno(OSError)
    return -2

cdef inline Py_ssize_t fd_recv(int fd, char *buf, Py_ssize_t size) except -2:
    return io_result(c_recv(fd, buf, size, 0))

cdef inline Py_ssize_t fd_send(int fd, const char *data, Py_ssize_t size) except -2:
    return io_result(c_send(fd, data, size, MSG_NOSIGNAL))

cdef inline Py_ssize_t fd_sendv(int fd, iovec *iov, Py_ssize_t count) except -2:
    cdef msghdr msg
    msg.msg_name = NULL
    msg.msg_namelen = 0
    msg.msg_iov = iov
    msg.msg_iovlen = count
    msg.msg_control = NULL
    msg.msg_controllen = 0
    msg.msg_flags = 0
    return io_result(c_sendmsg(fd, &msg, MSG_NOSIGNAL))


cdef class Handler(Owner):
    # What the loop calls for a ready descriptor and at the end of a turn,
    # through the C vtable (see _loop.pyx).  An Owner too, so that a client
    # connection (both) has one C base: extension types have one base class.
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
