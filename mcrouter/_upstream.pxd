# The compiled half of upstream.py (see _upstream.pyx): what the compiled
# routes (_routing.pyx) call per request.
from mcrouter._loop cimport Loop
from mcrouter._parser cimport Request

cdef class HostBase:
    cdef public Loop loop
    cdef public list conns              # Connection, -C of them
    cdef public double timeout
    cdef public bint healthy            # as the shared HostTable says
    cdef public long failures           # consecutive timeouts/errors seen by the data path

    cpdef send(self, Request req)
