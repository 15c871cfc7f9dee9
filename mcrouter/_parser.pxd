# The wire protocol's hot objects, and the numbers both sides of the
# protocol share.  The enum below is the one definition of command ids,
# reply kinds and statuses: Cython modules cimport it, and protocol.py
# re-exports the same names (cpdef) for the Python layer.

from libc.stdint cimport uint64_t

cpdef enum:
    CMD_GET = 1
    CMD_GETS = 2
    CMD_GAT = 3
    CMD_GATS = 4
    CMD_SET = 5
    CMD_ADD = 6
    CMD_REPLACE = 7
    CMD_APPEND = 8
    CMD_PREPEND = 9
    CMD_CAS = 10
    CMD_DELETE = 11
    CMD_INCR = 12
    CMD_DECR = 13
    CMD_TOUCH = 14
    CMD_FLUSH_ALL = 15
    CMD_VERSION = 16
    CMD_VERBOSITY = 17
    CMD_STATS = 18
    CMD_QUIT = 19
    CMD_MG = 20
    CMD_MS = 21
    CMD_MD = 22
    CMD_MA = 23
    CMD_MN = 24
    CMD_ME = 25
    CMD_LOCAL = 26  # not a command: a reply the parser made itself (an error)
    CMD_ADMIN = 27  # a memcached admin command (cache_memlimit, lru, ...): RootRoute's admin policy
    CMD_LIMIT = 28  # every command id is below this: the size of tables by command id

    RK_NONE = 0     # answered by the router itself
    RK_GET = 1      # VALUE ... <data> ... END
    RK_LINE = 2     # one line
    RK_STATS = 3    # STAT/ITEM/PREFIX lines, then one closing line
    RK_META = 4     # one line, VA <n> followed by a data block
    RK_QUIET = 5    # whatever comes before the MN the router appended

    ST_OK = 0
    ST_FAIL = 1
    ST_ERROR = 2

cdef enum:
    MAX_TOKENS = 24     # memcached's MAX_TOKENS: the parser's token table

cdef enum:
    # what a streamed get's owner answers Ring.feed (owner.takes_parts)
    TAKE_NO = 0         # not now: an earlier reply of its client is not out
    TAKE_YES = 1        # every complete value so far
    TAKE_BOUNDED = 2    # only while the reply passed on fits the per-reply bound


cdef class Owner


cdef class Request:
    # One client request on its way through the router, or a reply the parser
    # made itself (cmd == CMD_LOCAL, reply already set).
    cdef public int cmd          # CMD_*
    cdef public int rkind        # RK_*: how its upstream reply is framed
    cdef public bint quiet       # noreply / meta q: wire ends with "mn\r\n"
    cdef public int status       # ST_* once answered
    cdef public bytes key        # routing key (the first key), b"" if none
    cdef public list keys        # every key of a multi-key get, else None
    cdef public bytes wire       # the exact bytes to send upstream
    cdef public object reply     # bytes once answered, None before
    cdef public Owner owner      # who is told: owner.on_reply(request)
    cdef public double deadline  # monotonic time its upstream reply is due
    cdef public uint64_t born_ns # when the client's bytes were read (metrics clock)
    cdef public uint64_t sent_ns # when it was queued upstream (metrics clock)
    cdef public bytes override   # if set, the client gets this whatever upstream says
    cdef public int chan         # the client's channel: picks its upstream connection,
                                 # so one client's requests keep their order on a host
    cdef public list order       # a get's keys as asked when some repeat (keys and wire
                                 # then name each once; the client's reply is expanded)
    cdef public bint stream      # a get whose owner takes its reply in parts
                                 # (owner.takes_parts, on_partial), as complete VALUE blocks arrive
    cdef public Py_ssize_t cursor  # keys of ``keys`` already passed by parts delivered
    cdef public Py_ssize_t streamed  # bytes of its reply passed on in those parts
    cdef public Request parent   # the request a compiled route copied this one from, else None
    # A compiled route's state while this request is in its hands (_routing.pyx:
    # MissFailoverDispatch, AllFastestDispatch): hosts still to try (a bit each) or
    # copies still out, and the reply to give if none succeeds (the last failure,
    # else the last error: ``note_fail`` says which).
    cdef public unsigned long long todo
    cdef public object note
    cdef public bint note_fail

    cpdef finish(self, bytes reply, int status)
    cpdef Request child(self, Owner owner)


cdef class Owner:
    # Who a request's reply goes to: ``finish`` calls ``on_reply`` through the
    # C vtable (a compiled owner costs no Python call; a Python subclass's own
    # ``on_reply`` is found as for any cpdef method).
    cpdef on_reply(self, Request req)


cdef class RequestParser:
    # One client connection's request framing; ``feed`` (def) or ``feed_ptr`` is the way in.
    cdef bytearray buf
    cdef Py_ssize_t swallow
    cdef Py_ssize_t max_item_size
    cdef Py_ssize_t max_line
    cdef public bint closing
    cdef bint started        # a first byte has been seen (binary is judged on it alone)
    cdef public int chan

    # token table of the current line: (start, length) relative to the buffer
    cdef Py_ssize_t ts[MAX_TOKENS]
    cdef Py_ssize_t tl[MAX_TOKENS]
    cdef int ntok        # tokens stored (at most MAX_TOKENS - 1)
    cdef int more        # 1 if the line had more tokens than were stored
    cdef long scratch
    cdef bytes route_key     # the current line's decoded base64 key, if any
    cdef Py_ssize_t limit    # most requests one feed may return
    cdef Py_ssize_t reserved # this connection's share of body_held

    cdef list feed_ptr(self, const unsigned char *p, Py_ssize_t n, Py_ssize_t limit)
    cdef Py_ssize_t parse(self, const unsigned char *p, Py_ssize_t n, list out) except -1
    cdef void close(self, list out)
    cdef bint is_large_get(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t n)
    cdef void tokenize(self, const unsigned char *p, Py_ssize_t s, Py_ssize_t e)
    cdef inline int mc_ntokens(self):
        # memcached's ntokens: stored tokens plus its terminal token
        return self.ntok + 1
    cdef bytes token(self, const unsigned char *p, int i)
    cdef bint last_is(self, const unsigned char *p, const char *word, Py_ssize_t wl)
    cdef Request forward(self, const unsigned char *p, int cmd, int rkind, bint quiet,
                         Py_ssize_t start, Py_ssize_t end, int keytok)
    cdef Py_ssize_t command(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t el,
                            Py_ssize_t nxt, Py_ssize_t n, list out) except -2
    cdef Py_ssize_t retrieval(self, const unsigned char *p, int cmd, Py_ssize_t pos,
                              Py_ssize_t el, Py_ssize_t nxt, list out) except -2
    cdef Request keys_request(self, int cmd, list keys)
    cdef Py_ssize_t storage(self, const unsigned char *p, int cmd, Py_ssize_t pos,
                            Py_ssize_t nxt, Py_ssize_t n, list out) except -2
    cdef bint reserve(self, Py_ssize_t size, Py_ssize_t have)
    cdef void too_large(self, const unsigned char *p, int cmd, bint quiet, bint drop_old,
                        bytes drop_fmt, list out, bytes error)
    cdef Py_ssize_t data_block(self, const unsigned char *p, int cmd, int rkind, bint quiet,
                               Py_ssize_t pos, Py_ssize_t nxt, Py_ssize_t n, long vlen,
                               list out) except -2
    cdef Py_ssize_t keyed(self, const unsigned char *p, int cmd, bint ntokens_ok,
                          Py_ssize_t pos, Py_ssize_t nxt, list out) except -2
    cdef Py_ssize_t keyless(self, const unsigned char *p, int cmd, int rkind, bint ntokens_ok,
                            Py_ssize_t pos, Py_ssize_t nxt, list out) except -2
    cdef bytes ms_flag_error(self, const unsigned char *p)
    cdef bytes decoded_key(self, const unsigned char *p)
    cdef Py_ssize_t meta(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t el,
                         Py_ssize_t nxt, Py_ssize_t n, list out) except -2


cdef void append_bytes(bytearray dst, const unsigned char *src, Py_ssize_t n) except *

cdef Py_ssize_t skip_reply(const unsigned char *p, Py_ssize_t n, Request req,
                           Py_ssize_t *skip_left, bint *last, Py_ssize_t *seen, bint *done)

cdef Py_ssize_t scan_reply(const unsigned char *p, Py_ssize_t n, Request req, int *status)
cdef Py_ssize_t complete_values(const unsigned char *p, Py_ssize_t n, Request req,
                                Py_ssize_t *cursor)
