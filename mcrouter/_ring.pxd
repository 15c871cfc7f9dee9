from mcrouter._metrics cimport Counters
from mcrouter._parser cimport Request

cdef class Ring:
    # The two queues of one upstream connection (see _ring.pyx).
    cdef bytearray out          # encoded requests not yet written: one send per loop turn
    cdef bytearray inbuf        # reply bytes received but not yet matched
    cdef list fifo              # requests in the order they were queued
    cdef Py_ssize_t head        # fifo[head] is the oldest request still owed a reply
    cdef Py_ssize_t expired     # fifo[head:expired] timed out; their replies are dropped
    cdef Py_ssize_t written     # fifo[:written] are written whole to the socket
    cdef Py_ssize_t wire_left   # bytes of fifo[written].wire not yet written
    cdef Py_ssize_t queue_expired   # fifo[written:queue_expired] timed out in the queue
    cdef public double timeout  # a written request's reply is due this long after
    cdef readonly double progress_at    # last reply bytes, or the first write after a lull
    cdef Py_ssize_t max_inflight
    cdef Py_ssize_t max_out
    cdef Py_ssize_t max_reply
    cdef bint dropping          # the oldest request's reply is too large: walking past it
    cdef Py_ssize_t skip_left   # value bytes still to drop
    cdef bint skip_last         # the reply ends with those bytes (meta VA)
    cdef Py_ssize_t skip_seen   # its get key cursor, or meta replies seen (skip_reply)
    cdef Counters counters      # this process's metrics slot
    cdef public int host        # the host's HostTable slot (metrics index), -1 if none
    cdef readonly int fault_cmd     # after feed returned -1: the command whose reply was
                                    # wrong (CMD_*), 0 if no request was owed one
    cdef readonly bytes fault_bytes # and the first bytes of what came (for the log)

    cpdef bint push(self, Request req, double deadline)
    cpdef Py_ssize_t write_to(self, sock, double now=*) except -1
    cdef void before_write(self, double now)
    cdef Py_ssize_t wrote(self, Py_ssize_t sent, double now) except -1
    cpdef int feed(self, data, Py_ssize_t n=*) except -2
    cdef int feed_ptr(self, const unsigned char *data, Py_ssize_t n) except -2
    cpdef int expire(self, double now, bytes reply) except -1
    cdef void _mark_written(self, Py_ssize_t sent, double now)
    cpdef fail_all(self, bytes reply)
    cdef void _pop_head(self)
    cdef void _compact(self)
    cdef void _shift(self)
    cdef int _fault(self, Request req, const unsigned char *p, Py_ssize_t n) except -2
