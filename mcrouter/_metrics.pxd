# This process's slot of the shared metrics block (see metrics.py for the
# layout as a whole and _metrics.pyx for why it is written this way).
# The word indices below are the layout: metrics.py reads them from here.

from libc.stdint cimport uint64_t
from mcrouter._parser cimport Request

cpdef enum:
    NCMD = 32               # command ids are < CMD_LIMIT <= NCMD (checked at load)
    NBUCKETS = 17           # 16 finite bounds (seconds) + Inf
    HIST_WORDS = 18         # [sum in ns, NBUCKETS non-cumulative bucket counts]
    NREPLY = 16             # reasons of replies the router made itself
    NROUTE = 8              # route decisions
    NERROR = 4              # upstream error reasons
    NTLS_REASON = 8         # TLS handshake failure reasons (tls.REASONS), per side
    NTLS = 16               # NTLS_REASON per side (tls.SIDES: client, upstream)

    # words of a slot's global part
    G_CLIENTS = 0           # client connections open now (gauge)
    G_CLIENTS_TOTAL = 1
    G_CLIENTS_REJECTED = 2
    G_BYTES_IN = 3          # bytes read from clients
    G_BYTES_OUT = 4         # bytes written to clients
    G_WORKER_RESTARTS = 5   # written by the master (its own slot)
    G_SIDECAR_RESTARTS = 6
    G_RELOADS_OK = 7
    G_RELOADS_FAILED = 8
    G_RELOAD_LAST_OK = 9    # unix time of the last good config load, seconds
    G_START_TIME = 10       # unix time the master started, seconds
    G_MASTER_PID = 11
    G_WORKERS = 12          # workers the master keeps running now (gauge)
    G_GENERATION = 13       # the config generation the master made current (master only)
    G_WORKERS_CURRENT = 14  # workers that confirmed that generation (master only; /healthz)
    G_REPLIES = 16          # NREPLY counters, by reason
    G_ROUTES = 32           # NROUTE counters, by decision
    G_TLS_FAILURES = 40     # NTLS counters: TLS handshakes failed, by side then reason
    G_REQUESTS = 64         # NCMD histograms of client request duration, by command
    # what the hosts whose HostTable slots were freed had counted (master only), so that
    # totals summed over hosts never go backwards when a slot is reset for another host
    G_LEFT_SENT = 640       # requests queued to them, all commands
    G_LEFT_HITS = 641
    G_LEFT_MISSES = 642
    G_LEFT_ERRORS = 644     # NERROR counters, by reason
    HOSTS_AT = 1024         # where the per-host part of a slot starts

    # words of one host's part (HOST_WORDS each, indexed by HostTable slot)
    H_CONNS = 0             # upstream connections up now (gauge)
    H_HITS = 1              # get-family replies with a value
    H_MISSES = 2            # get-family replies without one
    H_ERRORS = 4            # NERROR counters, by reason
    H_SENT = 8              # NCMD counters: requests queued to the host, by command
    H_DURATION = 40         # NCMD histograms of upstream round trips, by command
    HOST_WORDS = 616        # H_DURATION + NCMD * HIST_WORDS

    # upstream error reasons, route decisions
    E_TIMEOUT = 0
    E_CONNECT = 1
    E_RESET = 2
    E_PARSE = 3
    R_FAILOVER = 0          # a later host took the request: an earlier one was down or failed
    R_MISS_FAILOVER = 1     # another host was asked after a miss
    R_FANOUT = 2            # the request was copied to several hosts


cdef class Counters:
    # One writer (this process), no locks: plain aligned 64-bit increments.
    cdef uint64_t *words        # this slot's first word; NULL when counting is off
    cdef object buf             # keeps the mapping behind ``words`` alive
    cdef readonly bint on
    cdef readonly Py_ssize_t hosts      # host capacity of the slot
    cdef readonly uint64_t now          # last clock reading (monotonic ns)

    cdef uint64_t tick(self)                    # read the clock once for a batch
    cdef void add(self, Py_ssize_t word, uint64_t n)
    cdef void request_done(self, Request req)   # a client got its reply
    cdef void upstream_sent(self, int host, Request req)
    cdef void upstream_done(self, int host, Request req, int status)


cpdef Counters local()          # this process's slot
