# cython: language_level=3
"""Counting into this process's slot of the shared metrics block (hot path).

Every process writes only its own slot (metrics.py has the layout), so a
count is a plain aligned 64-bit ``+=`` through a pointer into the shared
mapping: no lock, no atomic, no system call.  A reader in another process
sees each word whole (aligned 8-byte stores are single-copy atomic on the
64-bit targets we build for) and at worst one request behind.

Time is read once per batch, not per request: ``tick`` is called where a
batch of requests is read or a batch of replies is matched (one
``clock_gettime(CLOCK_MONOTONIC)``, a vDSO call), and every request of that
batch uses ``now``.  A request's duration is ``now`` when its reply is
handed to the client minus ``now`` when its bytes were read.

With counting off (``Counters()`` with no block, e.g. ``MCROUTER_METRICS=off``
for the benchmark) every method returns at its first test: the hot path
does the same work minus the counting and the clock reads.
"""

from array import array

from libc.stdint cimport uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from mcrouter._parser cimport (Request, CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS, CMD_MG,
                               CMD_LIMIT, CMD_LOCAL, ST_OK, ST_FAIL, ST_ERROR)
from mcrouter import protocol

# Upper bounds of the duration buckets, in seconds (Prometheus ``le``); the
# last bucket (+Inf) takes the rest.  50 µs is about one loopback round trip.
BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
cdef uint64_t BOUNDS_NS[16]
for _i, _b in enumerate(BOUNDS):
    BOUNDS_NS[_i] = <uint64_t>(_b * 1e9 + 0.5)
assert len(BOUNDS) + 1 == NBUCKETS
assert G_REQUESTS + NCMD * HIST_WORDS <= G_LEFT_SENT and G_LEFT_ERRORS + NERROR <= HOSTS_AT
assert G_ROUTES + NROUTE <= G_TLS_FAILURES and G_TLS_FAILURES + NTLS <= G_REQUESTS

# Why the router answered a request itself, one row per reason (its index is
# its word after G_REPLIES): the reason's name and the router's reply that
# says it.  Any other reply to an error or a CMD_LOCAL request is a bad
# request the parser answered (the last row).
_REASON_ROWS = (
    ("no_healthy_upstream", protocol.NO_HEALTHY_UPSTREAM),
    ("upstream_timeout", protocol.UPSTREAM_TIMEOUT),
    ("upstream_error", protocol.UPSTREAM_ERROR),
    ("upstream_queue_full", protocol.UPSTREAM_QUEUE_FULL),
    ("reply_too_large", protocol.REPLY_TOO_LARGE),
    ("not_handled_locally", protocol.NOT_HANDLED_LOCALLY),
    ("not_supported", protocol.NOT_SUPPORTED),
    ("shutting_down", protocol.SHUTTING_DOWN),
    ("bad_request", None),
)
REPLY_REASONS = tuple(name for name, _ in _REASON_ROWS)
cdef Py_ssize_t BAD_REQUEST = len(_REASON_ROWS) - 1
cdef dict REASON_OF = {reply: i for i, (_, reply) in enumerate(_REASON_ROWS) if reply is not None}
assert len(REPLY_REASONS) <= NREPLY and <int>CMD_LIMIT <= <int>NCMD
ERROR_REASONS = ("timeout", "connect", "reset", "parse")        # H_ERRORS + E_*
ROUTE_DECISIONS = ("failover", "miss_failover", "fanout")        # G_ROUTES + R_*


cdef inline void observe(uint64_t *hist, uint64_t start, uint64_t now):
    """One duration into a histogram: [sum ns, bucket counts]."""
    cdef uint64_t ns = now - start if now > start else 0
    cdef int b = 0
    while b < NBUCKETS - 1 and ns > BOUNDS_NS[b]:
        b += 1
    hist[0] += ns
    hist[1 + b] += 1


cdef class Counters:

    def __init__(self, buf=None, Py_ssize_t offset=0, Py_ssize_t hosts=0):
        """Count into the slot at byte ``offset`` of ``buf`` (a writable
        shared mapping); with no ``buf``, counting is off."""
        cdef unsigned char[::1] view
        if buf is None:
            return
        view = buf
        if offset % 8 or offset + (HOSTS_AT + hosts * HOST_WORDS) * 8 > view.shape[0]:
            raise ValueError("metrics slot outside the block or not aligned")
        self.buf = view
        self.words = <uint64_t *>&view[offset]
        self.hosts = hosts
        self.on = True

    # -- hot (called from _downstream and _ring) -------------------------------

    cdef uint64_t tick(self):
        cdef timespec ts
        if self.on:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            self.now = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
        return self.now

    cdef void add(self, Py_ssize_t word, uint64_t n):
        if self.on:
            self.words[word] += n

    cdef void request_done(self, Request req):
        cdef int cmd = req.cmd
        if not self.on:
            return
        if cmd < 0 or cmd >= NCMD:
            cmd = 0
        observe(self.words + G_REQUESTS + cmd * HIST_WORDS, req.born_ns, self.now)
        if req.status == ST_ERROR or cmd == CMD_LOCAL:
            self.words[G_REPLIES + REASON_OF.get(req.reply, BAD_REQUEST)] += 1

    cdef void upstream_sent(self, int host, Request req):
        req.sent_ns = self.now
        if self.on and 0 <= host < self.hosts and 0 <= req.cmd < NCMD:
            self.words[HOSTS_AT + host * HOST_WORDS + H_SENT + req.cmd] += 1

    cdef void upstream_done(self, int host, Request req, int status):
        cdef uint64_t *h
        cdef int cmd = req.cmd
        if not self.on or not 0 <= host < self.hosts or not 0 <= cmd < NCMD:
            return
        h = self.words + HOSTS_AT + host * HOST_WORDS
        observe(h + H_DURATION + cmd * HIST_WORDS, req.sent_ns, self.now)
        if cmd == CMD_GET or cmd == CMD_GETS or cmd == CMD_GAT or cmd == CMD_GATS \
                or cmd == CMD_MG:
            if status == ST_OK:
                h[H_HITS] += 1
            elif status == ST_FAIL:
                h[H_MISSES] += 1

    # -- cold (Python callers: connects, errors, routes, the master) ------------

    def count(self, Py_ssize_t word, uint64_t n=1):
        """Add to a word of the global part (G_*)."""
        if self.on and 0 <= word < HOSTS_AT:
            self.words[word] += n

    def set(self, Py_ssize_t word, uint64_t value):
        if self.on and 0 <= word < HOSTS_AT:
            self.words[word] = value

    def upstream_error(self, int host, int reason, uint64_t n=1):
        if self.on and 0 <= host < self.hosts and 0 <= reason < NERROR:
            self.words[HOSTS_AT + host * HOST_WORDS + H_ERRORS + reason] += n

    def upstream_connections(self, int host, int delta):
        """The gauge of a host's connections that are up: +1 or -1."""
        if self.on and 0 <= host < self.hosts:
            self.words[HOSTS_AT + host * HOST_WORDS + H_CONNS] += <uint64_t>delta

    def route(self, int decision):
        if self.on and 0 <= decision < NROUTE:
            self.words[G_ROUTES + decision] += 1

    def take_over(self, Py_ssize_t hosts_used):
        """A (re)started process takes its slot: counters carry on, gauges
        restart from zero (what the previous owner held died with it).  Only
        the hosts in use are touched, so unused pages stay unallocated."""
        cdef Py_ssize_t h
        if not self.on:
            return
        self.words[G_CLIENTS] = 0
        for h in range(min(hosts_used, self.hosts)):
            self.words[HOSTS_AT + h * HOST_WORDS + H_CONNS] = 0


cdef Counters _local = Counters()


def install(Counters counters):
    """Make ``counters`` this process's slot (a worker at boot, the master)."""
    global _local
    _local = counters


cpdef Counters local():
    """This process's slot: what hot objects count into when they are made."""
    return _local


cdef extern from *:
    """
    static int mcr_cas_u8(unsigned char *p, unsigned char expected, unsigned char desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    """
    int mcr_cas_u8(unsigned char *p, unsigned char expected, unsigned char desired) nogil


def swap_byte(buf, Py_ssize_t at, unsigned char expected, unsigned char desired):
    """Set byte ``at`` of a shared mapping to ``desired`` if it is ``expected``,
    atomically across processes; whether it was.  Two workers seeing a host
    fail at the same moment both try: one wins, one logs the change."""
    cdef unsigned char[::1] view = buf
    if not 0 <= at < view.shape[0]:
        raise ValueError("a byte outside the mapping")
    return bool(mcr_cas_u8(&view[at], expected, desired))


def sum_slots(buf, Py_ssize_t first, Py_ssize_t nslots, Py_ssize_t slot_words,
              Py_ssize_t at, Py_ssize_t count):
    """Words ``at`` .. ``at + count`` of every slot, summed (slot 0 starts at
    byte ``first``): the whole router's totals, read while workers write."""
    cdef const unsigned char[::1] view = buf
    cdef const uint64_t *base
    cdef Py_ssize_t s, i
    out = array("Q", bytes(8 * count))
    cdef uint64_t[::1] o = out
    if count <= 0:
        return out
    if first % 8 or first + (nslots * slot_words) * 8 > view.shape[0] or at + count > slot_words:
        raise ValueError("summing outside the metrics block")
    base = <const uint64_t *>&view[first]
    for s in range(nslots):
        for i in range(count):
            o[i] += base[s * slot_words + at + i]
    return out
