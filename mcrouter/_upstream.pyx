# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-request half of upstream.py, compiled: ``Host.send`` (connection
choice, queueing) and a connection's read and write in a loop turn.

``upstream.Host`` and ``upstream.Connection`` subclass these; the socket's
life (connect, reconnect, fail, close) and health stay there in Python,
and are called from here only on a cold event (a connect finishing, an
error, a closed socket).

Bytes move through one pair, ``recv_into``/``send_out``: on a plain
connection (``tls`` None) they are libc ``recv``/``send`` on the
descriptor into the loop's buffer and from the ring's (the socket
module's methods cost more per call than the rest of a read); with a TLS
session in ``tls`` (issue 14) they go through its socket-like
``recv_into``/``send`` instead.  Everything else (rings, routes, the
loop) sees bytes only, so TLS plugs in at this one place.  The handshake
itself is driven from upstream.py while the connection is CONNECTING; a
read error on a TLS connection goes to its ``tls_error``, which tells a
certificate alert (TLS 1.3: memcached refusing ours after our side of the
handshake) from a broken connection.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING

from mcrouter._loop cimport Handler, Loop, fd_recv, fd_send
from mcrouter._parser cimport Request
from mcrouter._ring cimport Ring

import select
from ssl import SSLWantReadError, SSLWantWriteError

from mcrouter import _metrics, protocol

# a connection's states (a host's are the HostTable's: hosttable.UP and DOWN)
CONN_DOWN, CONN_CONNECTING, CONN_UP = 0, 1, 2
cdef int C_DOWN = CONN_DOWN
cdef int C_CONNECTING = CONN_CONNECTING
cdef int C_UP = CONN_UP
cdef int EV_IN = select.EPOLLIN
cdef int EV_OUT = select.EPOLLOUT
cdef int EV_ERR = select.EPOLLERR | select.EPOLLHUP
cdef int C_ST_ERROR = protocol.ST_ERROR
cdef bytes R_NO_HEALTHY = protocol.NO_HEALTHY_UPSTREAM
cdef bytes R_UPSTREAM_ERROR = protocol.UPSTREAM_ERROR
cdef bytes R_QUEUE_FULL = protocol.UPSTREAM_QUEUE_FULL
cdef object E_PARSE = _metrics.E_PARSE
# what a TLS session raises when it has nothing now: an ``ssl`` session's
# want-read/want-write are OSErrors, not BlockingIOError, yet mean EAGAIN
cdef tuple TRY_AGAIN = (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError)


cdef class HostBase:
    """What Host.send needs, as C fields (declared in _upstream.pxd)."""

    cpdef send(self, Request req):
        """Queue ``req`` on its client's connection (so that one client's
        requests reach memcached in the order it sent them, as on a direct
        connection), or on the next usable one if that is down."""
        cdef list conns = self.conns
        cdef Py_ssize_t n = len(conns), k
        cdef Py_ssize_t i = req.chan % n
        cdef ConnectionBase c = None
        cdef Loop loop = self.loop
        if i < 0:
            i += n
        for k in range(n):
            c = <ConnectionBase>conns[i]
            if c.state != C_DOWN:
                break
            i += 1
            if i == n:
                i = 0
        else:
            # every connection waits out a backoff, yet the host is not marked
            # down: try now rather than fail a request the host may serve
            c.connect()
            if c.state == C_DOWN:
                req.finish(R_UPSTREAM_ERROR if self.healthy else R_NO_HEALTHY, C_ST_ERROR)
                return
        if not c.ring.push(req, loop.now + self.timeout):
            req.finish(R_QUEUE_FULL, C_ST_ERROR)
            return
        loop.busy.add(c)
        if c.state == C_UP:                 # written at the end of this loop turn
            loop.mark_upstream(c)


cdef class ConnectionBase(Handler):
    """One pipelined connection's fields, and its reads and writes."""
    cdef public HostBase host
    cdef public Loop loop
    cdef public Ring ring
    cdef public object sock             # a socket.socket while connecting or up
    cdef public int fd
    cdef public int state
    cdef public bint want_write
    cdef public object tls              # None: plain bytes on fd; else a TLS session (see above)
    cdef bint tls_pumping               # a read of plaintext the session holds is scheduled

    cdef Py_ssize_t recv_into(self, bytearray buf) except -2:
        """Read into ``buf``: the bytes read, 0 at end of file, -1 if none
        now; OSError on a failure."""
        if self.tls is None:
            return fd_recv(self.fd, PyByteArray_AS_STRING(buf), len(buf))
        try:
            return self.tls.recv_into(buf)
        except TRY_AGAIN:
            return -1

    cdef Py_ssize_t send_out(self, bytearray data) except -2:
        """Write from the start of ``data``: the bytes written, -1 if none
        now; OSError on a failure."""
        if self.tls is None:
            return fd_send(self.fd, PyByteArray_AS_STRING(data), len(data))
        try:
            return self.tls.send(data)
        except TRY_AGAIN:
            return -1

    def flush(self):
        """Called once per loop turn: one send of everything queued."""
        self.c_flush()

    cdef int c_flush(self) except -1:
        cdef Py_ssize_t left, sent
        cdef Ring ring = self.ring
        if self.state != C_UP:
            return 0
        try:
            left = len(ring.out)
            if self.tls is not None:
                return self._tls_flush(left)
            if left:
                ring.before_write(self.loop.now)
                sent = self.send_out(ring.out)
                if sent > 0:
                    left = ring.wrote(sent, self.loop.now)
        except OSError as e:
            self.fail(f"send: {e.strerror or e}")
            return 0
        self.c_want_writable(left > 0)
        return 0

    # -- TLS (cold: only for a connection with a session; see tls.py) --------

    cdef int _tls_flush(self, Py_ssize_t left) except -1:
        """c_flush over a session: requests wait for the handshake (no
        EPOLLOUT for them meanwhile: the descriptor is writable, the session
        is not); records the kernel refused ask for EPOLLOUT."""
        cdef Ring ring = self.ring
        cdef Py_ssize_t sent
        try:
            if left and self.tls.handshake_done:
                ring.before_write(self.loop.now)
                sent = self.send_out(ring.out)
                if sent > 0:
                    left = ring.wrote(sent, self.loop.now)
            elif self.tls.want_write:
                self.tls.flush()
        except OSError as e:
            self.fail(f"send: {e.strerror or e}")
            return 0
        self.c_want_writable(self.tls.want_write or (left > 0 and self.tls.handshake_done))
        return 0

    cdef _tls_after_read(self):
        """After a read: plaintext the session still holds is read on the
        next pass (the descriptor will not announce it); requests queued
        during the handshake go out once it is done; records it could not
        write ask for EPOLLOUT."""
        if self.state != C_UP or self.tls is None:
            return
        if self.tls.more and not self.tls_pumping:
            self.tls_pumping = True
            self.loop.call_later(0.0, self._tls_pump)
        if self.tls.handshake_done and len(self.ring.out):
            self.loop.mark_upstream(self)
        self.c_want_writable(self.tls.want_write or (len(self.ring.out) > 0
                                                     and self.tls.handshake_done))

    def _tls_pump(self):
        """Read what the session holds, as epoll would for kernel bytes."""
        self.tls_pumping = False
        if self.state == C_UP and self.tls is not None and self.tls.more:
            self.c_on_event(EV_IN)

    def on_event(self, int mask):
        self.c_on_event(mask)

    cdef int c_on_event(self, unsigned int mask) except -1:
        cdef Py_ssize_t n
        cdef bytearray buf
        if self.state == C_CONNECTING:
            self.connect_done()
            return 0
        if mask & (EV_IN | EV_ERR):
            buf = self.loop.recv_buf
            try:
                n = self.recv_into(buf)
            except OSError as e:
                if self.tls is not None:    # a TLS alert may say which certificate is wrong
                    self.tls_error(e)
                else:
                    self.fail(f"recv: {e.strerror or e}")
                return 0
            if n == 0:
                self.fail("connection closed by server")
                return 0
            if n > 0:
                if self.ring.feed_ptr(<const unsigned char *>PyByteArray_AS_STRING(buf), n) < 0:
                    # nothing of the bad reply, nor of what followed it, was delivered
                    self.fail(self.host.protocol_error(self.ring), kind=E_PARSE)
                    return 0
                self.host.failures = 0
            if self.tls is not None:
                self._tls_after_read()
        if mask & EV_OUT and self.state == C_UP:
            self.c_flush()
        return 0

    def want_writable(self, bint want):
        """Ask for EPOLLOUT only while the kernel refused bytes."""
        self.c_want_writable(want)

    cdef int c_want_writable(self, bint want) except -1:
        if want != self.want_write and self.state == C_UP:
            self.want_write = want
            self.loop.modify(self.fd, EV_IN | EV_OUT if want else EV_IN)
        return 0
