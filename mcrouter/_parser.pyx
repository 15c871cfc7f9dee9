# cython: language_level=3
"""The memcached wire protocol, both directions (hot path).

Client side: ``RequestParser.feed`` turns the bytes a client sent into
``Request`` objects, exactly framed as memcached 1.6.18 frames them.  The
router decides only what it must: where a request ends, its command and
key, and whether it is quiet.  Everything else (numeric arguments, meta
flags) is forwarded verbatim so that memcached itself produces the exact
reply, error strings included.

Quiet requests (text ``noreply``, meta ``q``) are forwarded with ``mn\\r\\n``
appended: memcached then answers with exactly what it would have sent the
client (often nothing) followed by ``MN``, so a reply is never missing and
never misaligns the upstream pipeline.

Upstream side: ``scan_reply`` finds where one reply ends for a given reply
kind and judges its status on the first token (ROUTES.md).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memchr, memcmp, memcpy, memset
from libc.stdlib cimport strtol, strtoul, strtoull
from libc.limits cimport INT_MAX
from libc.stdint cimport int32_t
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef extern from "ctype.h":
    int isspace(int c)

# Cython turns ``errno = 0`` inside a function into a local variable, so a
# range error would never be seen: clear and test the C errno in C.
cdef extern from *:
    """
    #include <errno.h>
    static inline void mcr_clear_errno(void) { errno = 0; }
    static inline int mcr_erange(void) { return errno == ERANGE; }
    """
    void mcr_clear_errno() nogil
    bint mcr_erange() nogil

# Whether a get's keys repeat, without a dict: the keys' spans in the line,
# hashed eight bytes at a time into a small open-addressed table of their
# indices (a hash match is confirmed by comparing the bytes).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define MCR_DEDUP_KEYS 64          /* more keys than this: the dict does it */
    static inline uint64_t mcr_span_hash(const unsigned char *p, Py_ssize_t n) {
        uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, w;
        while (n >= 8) {
            memcpy(&w, p, 8);
            h = (h ^ w) * 0xff51afd7ed558ccdULL;
            h ^= h >> 29;
            p += 8;
            n -= 8;
        }
        w = 0;
        while (n > 0) {
            n--;
            w = (w << 8) | p[n];
        }
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
        return h ^ (h >> 32);
    }
    /* keys i < n at p + ks[i], kl[i] bytes long (n <= MCR_DEDUP_KEYS) */
    static int mcr_keys_repeat(const unsigned char *p, const Py_ssize_t *ks,
                               const Py_ssize_t *kl, int n) {
        unsigned char slot[2 * MCR_DEDUP_KEYS];
        const unsigned int mask = 2 * MCR_DEDUP_KEYS - 1;
        int i, j;
        unsigned int h;
        memset(slot, 0, sizeof(slot));
        for (i = 0; i < n; i++) {
            h = (unsigned int)mcr_span_hash(p + ks[i], kl[i]) & mask;
            while ((j = slot[h]) != 0) {
                j--;
                if (kl[j] == kl[i] && memcmp(p + ks[j], p + ks[i], kl[i]) == 0)
                    return 1;
                h = (h + 1) & mask;
            }
            slot[h] = (unsigned char)(i + 1);
        }
        return 0;
    }
    """
    enum: MCR_DEDUP_KEYS
    bint mcr_keys_repeat(const unsigned char *p, const Py_ssize_t *ks, const Py_ssize_t *kl,
                         int n) nogil

DEF KEY_MAX = 250
DEF LINE_LIMIT = 2048
DEF REPLY_LINE_MAX = 65536   # no reply line is longer: more without \r\n is garbage
DEF BINARY_MAGIC = 0x80      # first byte of every binary-protocol request

cdef bytes MN_SUFFIX = b"mn\r\n"
# flags memcached 1.6.18's meta preparse accepts without a check of its own
cdef const char *MS_PLAIN_FLAGS = "lOPLkstcfvhuqI"
DEF META_MAX_OPAQUE = 32     # memcached's MFLAG_MAX_OPAQUE_LENGTH, 'O' included
cdef bytes R_ERROR = b"ERROR\r\n"
cdef bytes R_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
cdef bytes R_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
cdef bytes R_FLAGS_TOO_LONG = b"CLIENT_ERROR options flags too long\r\n"
cdef bytes R_BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
cdef bytes R_BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
cdef bytes R_END = b"END\r\n"
cdef bytes R_BAD_TOKEN = b"CLIENT_ERROR bad token in command line format\r\n"
DEF META_MAX_NTOKENS = 20    # memcached's MFLAG_MAX_OPT_LENGTH
cdef bytes R_NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"

# Bytes this worker process holds for request bodies that have not fully
# arrived, over all its clients, and the most it may (set_body_budget).  A
# body that would pass the budget is refused as memcached refuses a value it
# has no memory for, so a crowd of slow uploads cannot grow the worker.
cdef Py_ssize_t body_held = 0
cdef Py_ssize_t body_budget = PY_SSIZE_T_MAX


def set_body_budget(Py_ssize_t budget):
    """The most bytes this process holds in partial request bodies."""
    global body_budget
    body_budget = budget


def body_bytes_held():
    """Bytes reserved now by partial request bodies (tests, stats)."""
    return body_held


@cython.freelist(512)
cdef class Request:
    """One request; ``finish`` delivers its reply to ``owner`` exactly once.
    Kept on a free list: one is made per client request and per copy."""

    def __cinit__(self):
        self.key = b""
        self.status = ST_OK

    cpdef finish(self, bytes reply, int status):
        if self.reply is not None:
            return          # already answered (e.g. timed out): a late reply is dropped
        if self.override is not None:
            reply = self.override
        self.reply = reply
        self.status = status
        if self.owner is None:
            raise AttributeError("a Request without an owner was answered")
        self.owner.on_reply(self)

    cpdef Request child(self, Owner owner):
        """A copy to send elsewhere (fan-out, failover); its reply goes to
        ``owner``.  An override is what the client gets: a route judges the
        copies of a request by what the hosts really answer, exactly as it
        would judge it without one (a gat before a long key), except for a
        quiet stand-in (the delete of a value too large), which always
        counts as done wherever it went, as the write it stands for would."""
        cdef Request r = Request.__new__(Request)
        r.cmd = self.cmd
        r.rkind = self.rkind
        r.quiet = self.quiet
        r.key = self.key
        r.keys = self.keys
        r.wire = self.wire
        if self.rkind == RK_QUIET:
            r.override = self.override
        r.chan = self.chan
        r.owner = owner
        return r

    def __repr__(self):
        return f"<Request cmd={self.cmd} key={self.key!r} wire={self.wire!r} reply={self.reply!r}>"


cdef class Owner:
    """Base of whatever a request's reply goes to (a client connection, a
    route's merge or attempts); subclasses define ``on_reply``."""

    cpdef on_reply(self, Request req):
        raise NotImplementedError(f"{type(self).__name__} takes no replies")


cdef Request local_reply(bytes reply):
    cdef Request r = Request.__new__(Request)
    r.cmd = CMD_LOCAL
    r.rkind = RK_NONE
    r.reply = reply
    r.status = ST_FAIL
    return r


# ---------------------------------------------------------------------------
# memcached's number parsing (util.c safe_strto*), using libc as it does, so
# that "3\t", "+3", "-0" and overflow behave exactly as in the server.

cdef bint mc_strtoul32(bytes tok):
    cdef const char *s = PyBytes_AS_STRING(tok)
    cdef char *end
    mcr_clear_errno()
    cdef unsigned long l = strtoul(s, &end, 10)
    if mcr_erange() or end == s:
        return False
    if isspace(end[0]) or end[0] == 0:
        if <long>l < 0 and memchr(s, b'-', len(tok)) != NULL:     # strchr, as memcached
            return False
        return True
    return False


cdef bint mc_strtoull(bytes tok):
    cdef const char *s = PyBytes_AS_STRING(tok)
    cdef char *end
    mcr_clear_errno()
    cdef unsigned long long l = strtoull(s, &end, 10)
    if mcr_erange() or end == s:
        return False
    if isspace(end[0]) or end[0] == 0:
        if <long long>l < 0 and memchr(s, b'-', len(tok)) != NULL:
            return False
        return True
    return False


cdef bint mc_strtol(bytes tok, long *out):
    # memcached stores the result in an int32_t: 4294967299 becomes 3 (probed)
    cdef const char *s = PyBytes_AS_STRING(tok)
    cdef char *end
    mcr_clear_errno()
    cdef long l = strtol(s, &end, 10)
    if mcr_erange() or end == s:
        return False
    if isspace(end[0]) or end[0] == 0:
        out[0] = <int32_t>l
        return True
    return False


# memcached's base64 decoder (base64.c), byte for byte: characters outside
# the alphabet are skipped, '=' counts as a digit, the first padded block
# ends the key, and an empty or ragged result is a failure.  The router
# must decode exactly as the server does so that a ``b`` key hashes to the
# server that stores it.

cdef unsigned char B64_SKIP = 0x80
cdef unsigned char B64_TABLE[256]
cdef const unsigned char *B64_ALPHABET = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
memset(B64_TABLE, B64_SKIP, 256)
for _i in range(64):
    B64_TABLE[B64_ALPHABET[_i]] = _i
B64_TABLE[b'='] = 0


cdef bytes mc_base64_decode(const unsigned char *src, Py_ssize_t n):
    """The decoded key, or None where memcached answers "error decoding key"."""
    cdef Py_ssize_t i, count = 0, olen = 0
    cdef unsigned char block[4]
    cdef unsigned char out[KEY_MAX]
    cdef unsigned char t
    cdef int pad = 0
    for i in range(n):
        if B64_TABLE[src[i]] != B64_SKIP:
            count += 1
    if count == 0 or count % 4 or n > KEY_MAX:
        return None
    count = 0
    for i in range(n):
        t = B64_TABLE[src[i]]
        if t == B64_SKIP:
            continue
        if src[i] == b'=':
            pad += 1
        block[count] = t
        count += 1
        if count == 4:
            out[olen] = <unsigned char>((block[0] << 2) | (block[1] >> 4))
            out[olen + 1] = <unsigned char>((block[1] << 4) | (block[2] >> 2))
            out[olen + 2] = <unsigned char>((block[2] << 6) | block[3])
            olen += 3
            count = 0
            if pad:
                if pad > 2:
                    return None
                olen -= pad
                break
    if olen == 0:
        return None
    return PyBytes_FromStringAndSize(<const char *>out, olen)


def base64_key(bytes token):
    """Python entry to the decoder, for tests: bytes, or None on failure."""
    return mc_base64_decode(<const unsigned char *>PyBytes_AS_STRING(token), len(token))


# ---------------------------------------------------------------------------
# Client side

cdef void append_bytes(bytearray dst, const unsigned char *src, Py_ssize_t n) except *:
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(dst)
    PyByteArray_Resize(dst, old + n)
    memcpy(PyByteArray_AS_STRING(dst) + old, src, n)


cdef inline bint tok_is(const unsigned char *p, Py_ssize_t ts, Py_ssize_t tl, const char *word, Py_ssize_t wl):
    return tl == wl and memcmp(p + ts, word, wl) == 0


cdef class RequestParser:
    """Incremental, bounded request framing for one client connection.

    State is explicit and small: the unparsed tail of the input, and how many
    bytes of a rejected data block are still to be swallowed.  Once
    ``closing`` is set the parser accepts nothing more.
    """
    # attributes and C methods: _parser.pxd

    def __init__(self, Py_ssize_t max_item_size=1048576, Py_ssize_t max_line=1048576,
                 int chan=0):
        self.buf = bytearray()
        self.chan = chan
        self.max_item_size = max_item_size
        self.max_line = max(max_line, LINE_LIMIT)

    @property
    def buffered(self):
        return len(self.buf)

    @property
    def midway(self):
        """Whether a line or a data block (kept or swallowed) is unfinished."""
        return len(self.buf) > 0 or self.swallow > 0

    @property
    def body_pending(self):
        """Whether a data block holding a body-budget reservation is
        unfinished: its connection is read on until it ends (or times out),
        so a client that stops reading replies cannot pin the budget."""
        return self.reserved > 0

    def release(self):
        """The connection is gone: give its body reservation back."""
        global body_held
        body_held -= self.reserved
        self.reserved = 0

    def discard(self):
        """The connection is ending: forget the unparsed input (none of it
        will ever run), so a lingering connection holds no client bytes."""
        self.closing = True
        self.buf = bytearray()
        self.swallow = 0
        self.release()

    def feed(self, data=b"", Py_ssize_t n=-1, Py_ssize_t limit=PY_SSIZE_T_MAX):
        """Add client bytes (the first ``n`` of ``data`` if given); return the
        complete requests, in order, at most ``limit`` of them: the rest stay
        buffered for a later call (``feed()`` with no data parses them).
        Input is parsed in place when nothing is buffered, so only what is
        left over is ever copied."""
        cdef const unsigned char[::1] view = data
        if n < 0 or n > view.shape[0]:
            n = view.shape[0]
        return self.feed_ptr(&view[0] if n else NULL, n, limit)

    cdef list feed_ptr(self, const unsigned char *p, Py_ssize_t n, Py_ssize_t limit):
        """``feed`` from a pointer (the loop's receive buffer: no memoryview
        per read); ``p`` must stay valid during the call."""
        cdef list out = []
        cdef Py_ssize_t skip, pos
        self.limit = limit
        if self.closing or (n == 0 and len(self.buf) == 0):
            return out
        if n == 0:
            pos = self.parse(self.buf, len(self.buf), out)
            if pos:
                del self.buf[:pos]
            return out
        if self.swallow:
            skip = min(self.swallow, n)
            self.swallow -= skip
            p += skip
            n -= skip
            if n == 0:
                return out
        if len(self.buf) == 0:
            pos = self.parse(p, n, out)
            if pos < n and not self.closing:
                append_bytes(self.buf, p + pos, n - pos)
        else:
            append_bytes(self.buf, p, n)
            pos = self.parse(self.buf, len(self.buf), out)
            if pos:
                del self.buf[:pos]
        return out

    cdef Py_ssize_t parse(self, const unsigned char *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t pos = 0, nl, el, r, k
        cdef const unsigned char *hit
        while pos < n and not self.closing and len(out) < self.limit:
            if self.swallow:
                k = min(self.swallow, n - pos)
                self.swallow -= k
                pos += k
                continue
            if p[pos] == BINARY_MAGIC and not self.started:
                # a binary-protocol client would wait for a reply that never
                # comes (its request has no newline): close instead of hanging.
                # memcached too looks only at a connection's first byte.
                self.close(out)
                break
            self.started = True
            hit = <const unsigned char *>memchr(p + pos, b'\n', n - pos)
            if hit == NULL:
                if n - pos > LINE_LIMIT and (not self.is_large_get(p, pos, n) or n - pos > self.max_line):
                    self.close(out)
                break
            nl = hit - p
            if nl - pos > LINE_LIMIT and (not self.is_large_get(p, pos, nl) or nl - pos > self.max_line):
                # memcached closes on such a line whenever its first 2048 bytes
                # arrive without the newline, which depends on how its reads
                # fall.  The router always does, as if they never came in one
                # read: its answer does not depend on timing, and no such line
                # reaches (and resets) an upstream connection others share.
                self.close(out)
                break
            el = nl
            if el - pos > 1 and p[el - 1] == b'\r':
                el -= 1
            r = self.command(p, pos, el, nl + 1, n, out)
            if r < 0:
                break       # a data block is not complete yet
            pos = r
        return pos

    cdef void close(self, list out):
        # the connection ends once every earlier request is answered
        cdef Request r = local_reply(b"")
        r.cmd = CMD_QUIT
        out.append(r)
        self.closing = True

    cdef bint is_large_get(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t n):
        # memcached lets a line run past 2048 bytes only for a large multiget
        cdef Py_ssize_t i = pos
        while i < n and p[i] == b' ':
            i += 1
        if i - pos > 100:
            return False
        if n - i >= 4 and memcmp(p + i, b"get ", 4) == 0:
            return True
        return n - i >= 5 and memcmp(p + i, b"gets ", 5) == 0

    cdef void tokenize(self, const unsigned char *p, Py_ssize_t s, Py_ssize_t e):
        # memcached's tokenize_command: split on single spaces, skip empties,
        # and stop storing after MAX_TOKENS - 1 tokens.
        cdef Py_ssize_t i = s, start
        self.ntok = 0
        self.more = 0
        while i < e:
            while i < e and p[i] == b' ':
                i += 1
            if i >= e:
                break
            if self.ntok == MAX_TOKENS - 1:
                self.more = 1
                break
            start = i
            while i < e and p[i] != b' ':
                i += 1
            self.ts[self.ntok] = start
            self.tl[self.ntok] = i - start
            self.ntok += 1

    cdef bytes token(self, const unsigned char *p, int i):
        return PyBytes_FromStringAndSize(<const char *>p + self.ts[i], self.tl[i])

    cdef bint last_is(self, const unsigned char *p, const char *word, Py_ssize_t wl):
        cdef int i = self.ntok - 1
        # memcached reads tokens[ntokens - 2]: the last stored one, even past MAX_TOKENS
        return i >= 1 and tok_is(p, self.ts[i], self.tl[i], word, wl)

    cdef Request forward(self, const unsigned char *p, int cmd, int rkind, bint quiet,
                         Py_ssize_t start, Py_ssize_t end, int keytok):
        cdef Request r = Request.__new__(Request)
        r.cmd = cmd
        r.rkind = rkind
        r.quiet = quiet
        r.chan = self.chan
        if self.route_key is not None:
            r.key = self.route_key
        elif keytok >= 0 and keytok < self.ntok:
            r.key = self.token(p, keytok)
        r.wire = PyBytes_FromStringAndSize(<const char *>p + start, end - start)
        if quiet:
            r.wire += MN_SUFFIX
            r.rkind = RK_QUIET
        return r

    cdef Py_ssize_t command(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t el,
                            Py_ssize_t nxt, Py_ssize_t n, list out) except -2:
        """Handle the line [pos, el); its successor starts at nxt.  Return the
        position after what was consumed, or -1 when a data block is incomplete."""
        # memcached reads the line as a C string: a NUL byte ends it (probed)
        cdef const unsigned char *nul = <const unsigned char *>memchr(p + pos, 0, el - pos)
        self.route_key = None
        if nul != NULL:
            el = nul - p
        self.tokenize(p, pos, el)
        cdef int nt = self.mc_ntokens()
        if nt < 2 or self.tl[0] < 2:
            out.append(local_reply(R_ERROR))
            return nxt
        cdef Py_ssize_t c0 = self.ts[0]
        cdef Py_ssize_t cl = self.tl[0]
        cdef unsigned char first = p[c0]
        cdef int cmd = 0
        if first == b'm' and cl == 2:
            return self.meta(p, pos, el, nxt, n, out)
        if first == b'g':
            if tok_is(p, c0, cl, "get", 3):
                cmd = CMD_GET
            elif tok_is(p, c0, cl, "gets", 4):
                cmd = CMD_GETS
            elif tok_is(p, c0, cl, "gat", 3):
                cmd = CMD_GAT
            elif tok_is(p, c0, cl, "gats", 4):
                cmd = CMD_GATS
            if cmd:
                return self.retrieval(p, cmd, pos, el, nxt, out)
        elif tok_is(p, c0, cl, "bget", 4):      # memcached still reads it as get
            return self.retrieval(p, CMD_GET, pos, el, nxt, out)
        elif tok_is(p, c0, cl, "set", 3):
            return self.storage(p, CMD_SET, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "add", 3):
            return self.storage(p, CMD_ADD, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "replace", 7):
            return self.storage(p, CMD_REPLACE, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "append", 6):
            return self.storage(p, CMD_APPEND, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "prepend", 7):
            return self.storage(p, CMD_PREPEND, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "cas", 3):
            return self.storage(p, CMD_CAS, pos, nxt, n, out)
        elif tok_is(p, c0, cl, "delete", 6):
            return self.keyed(p, CMD_DELETE, nt >= 3 and nt <= 5, pos, nxt, out)
        elif tok_is(p, c0, cl, "incr", 4):
            return self.keyed(p, CMD_INCR, nt == 4 or nt == 5, pos, nxt, out)
        elif tok_is(p, c0, cl, "decr", 4):
            return self.keyed(p, CMD_DECR, nt == 4 or nt == 5, pos, nxt, out)
        elif tok_is(p, c0, cl, "touch", 5):
            return self.keyed(p, CMD_TOUCH, nt == 4 or nt == 5, pos, nxt, out)
        elif tok_is(p, c0, cl, "flush_all", 9):
            return self.keyless(p, CMD_FLUSH_ALL, RK_LINE, nt >= 2 and nt <= 4, pos, nxt, out)
        elif tok_is(p, c0, cl, "version", 7):
            out.append(self.forward(p, CMD_VERSION, RK_LINE, False, pos, nxt, -1))
            return nxt
        elif tok_is(p, c0, cl, "verbosity", 9):
            return self.keyless(p, CMD_VERBOSITY, RK_LINE, nt == 3 or nt == 4, pos, nxt, out)
        elif tok_is(p, c0, cl, "stats", 5):
            out.append(self.forward(p, CMD_STATS, RK_STATS, False, pos, nxt, -1))
            return nxt
        elif tok_is(p, c0, cl, "quit", 4):
            self.close(out)
            return nxt
        elif (tok_is(p, c0, cl, "cache_memlimit", 14) or tok_is(p, c0, cl, "shutdown", 8)
              or tok_is(p, c0, cl, "slabs", 5) or tok_is(p, c0, cl, "lru", 3)
              or tok_is(p, c0, cl, "lru_crawler", 11) or tok_is(p, c0, cl, "watch", 5)
              or tok_is(p, c0, cl, "misbehave", 9) or tok_is(p, c0, cl, "debugtime", 9)
              or tok_is(p, c0, cl, "extstore", 8) or tok_is(p, c0, cl, "refresh_certs", 13)):
            # memcached's admin commands: RootRoute refuses each one unless the
            # config's admin: section allows it (routes/admin_policy.py).  With
            # noreply, mn follows, so the reply frames whether memcached honours it.
            out.append(self.forward(p, CMD_ADMIN, RK_LINE, self.last_is(p, "noreply", 7),
                                    pos, nxt, -1))
            return nxt
        # memcached closes on an unknown command that looks like HTTP, but only
        # where its dispatch has no branch for the first letter (proto_text.c)
        cdef int last = self.ntok - 1
        if memchr(b"gsacidt", first, 7) == NULL and self.tl[last] >= 5 \
                and memcmp(p + self.ts[last], b"HTTP/", 5) == 0:
            self.close(out)
            return nxt
        out.append(local_reply(R_ERROR))
        return nxt

    cdef Py_ssize_t retrieval(self, const unsigned char *p, int cmd, Py_ssize_t pos,
                              Py_ssize_t el, Py_ssize_t nxt, list out) except -2:
        # get/gets <key>*, gat/gats <exptime> <key>*: any number of keys, so
        # scan the whole line rather than the token table.
        cdef Py_ssize_t i = self.ts[0] + self.tl[0], start
        cdef int skip = 1 if (cmd == CMD_GAT or cmd == CMD_GATS) else 0
        cdef list keys = []
        cdef bint too_long = False
        cdef Py_ssize_t ks[MCR_DEDUP_KEYS]
        cdef Py_ssize_t kl[MCR_DEDUP_KEYS]
        cdef int nk = 0
        if skip and self.ntok >= 2 and not mc_strtol(self.token(p, 1), &self.scratch):
            out.append(local_reply(R_BAD_EXPTIME))
            return nxt
        while i < el:
            while i < el and p[i] == b' ':
                i += 1
            if i >= el:
                break
            start = i
            while i < el and p[i] != b' ':
                i += 1
            if skip:
                skip = 0
                continue
            if i - start > KEY_MAX:
                too_long = True
                break
            keys.append(PyBytes_FromStringAndSize(<const char *>p + start, i - start))
            if nk < MCR_DEDUP_KEYS:
                ks[nk] = start
                kl[nk] = i - start
            nk += 1
        if not keys and not too_long:
            # a bare get/gets/gat is unknown; "gat <exptime>" finds nothing (probed)
            out.append(local_reply(R_ERROR if skip or cmd == CMD_GET or cmd == CMD_GETS
                                   else R_END))
            return nxt
        cdef Request r
        if too_long:
            if keys and (cmd == CMD_GAT or cmd == CMD_GATS):
                # memcached touches every key before the long one, then answers
                # the error alone: the router touches them too (replies dropped)
                r = self.keys_request(cmd, keys)
                r.wire = b"%s %s %s\r\n" % (self.token(p, 0), self.token(p, 1), b" ".join(keys))
                r.override = R_BAD_FORMAT
                out.append(r)
            else:
                out.append(local_reply(R_BAD_FORMAT))
            return nxt
        cdef list distinct
        if nk > 1 and (cmd == CMD_GET or cmd == CMD_GETS) and (
                nk > MCR_DEDUP_KEYS or mcr_keys_repeat(p, ks, kl, nk)):
            distinct = list(dict.fromkeys(keys))
            if len(distinct) < len(keys):
                # ask for each key once: the client's reply repeats the values
                # from one copy (ClientConnection), so "get k k k ..." cannot
                # make the router hold a reply many times the size of k.  (A
                # gat is sent as asked: each of its touches counts.)
                r = self.keys_request(cmd, distinct)
                r.order = keys
                r.wire = b"%s %s\r\n" % (self.token(p, 0), b" ".join(distinct))
                out.append(r)
                return nxt
        r = self.keys_request(cmd, keys)
        r.wire = PyBytes_FromStringAndSize(<const char *>p + pos, nxt - pos)
        out.append(r)
        return nxt

    cdef Request keys_request(self, int cmd, list keys):
        cdef Request r = Request.__new__(Request)
        r.cmd = cmd
        r.rkind = RK_GET
        r.chan = self.chan
        r.key = keys[0]
        if len(keys) > 1:
            r.keys = keys
        return r

    cdef Py_ssize_t storage(self, const unsigned char *p, int cmd, Py_ssize_t pos,
                            Py_ssize_t nxt, Py_ssize_t n, list out) except -2:
        # <cmd> <key> <flags> <exptime> <bytes> [<cas unique>] [noreply]\r\n<data>\r\n
        cdef int nt = self.mc_ntokens()
        cdef bint cas = cmd == CMD_CAS
        if (not cas and nt != 6 and nt != 7) or (cas and nt != 7 and nt != 8):
            out.append(local_reply(R_ERROR))
            return nxt
        cdef bint noreply = self.last_is(p, "noreply", 7)
        cdef long exptime = 0, vlen = 0
        if self.tl[1] > KEY_MAX or not (
                mc_strtoul32(self.token(p, 2)) and mc_strtol(self.token(p, 3), &exptime)
                and mc_strtol(self.token(p, 4), &vlen)) or (
                cas and not mc_strtoull(self.token(p, 5))) or vlen < 0 or vlen > INT_MAX - 2:
            if not noreply:
                out.append(local_reply(R_BAD_FORMAT))
            return nxt
        if vlen > self.max_item_size:
            self.too_large(p, cmd, noreply, cmd == CMD_SET, b"delete %s noreply\r\n", out,
                           R_TOO_LARGE)
            self.swallow = vlen + 2
            return nxt
        if not self.reserve(nxt + vlen + 2 - pos, n - pos):
            self.too_large(p, cmd, noreply, cmd == CMD_SET, b"delete %s noreply\r\n", out,
                           R_NO_MEMORY)
            self.swallow = vlen + 2
            return nxt
        return self.data_block(p, cmd, RK_LINE, noreply, pos, nxt, n, vlen, out)

    cdef bint reserve(self, Py_ssize_t size, Py_ssize_t have):
        """Room in the worker's body budget for a request of ``size`` bytes of
        which ``have`` arrived; False if it would pass the budget.  A request
        that arrived whole needs no room; the reservation is kept until the
        body completes (data_block) or the connection closes (release)."""
        global body_held
        if size <= have or self.reserved:
            return True
        if body_held + size > body_budget:
            return False
        body_held += size
        self.reserved = size
        return True

    cdef void too_large(self, const unsigned char *p, int cmd, bint quiet, bint drop_old,
                        bytes drop_fmt, list out, bytes error):
        # memcached answers "too large" (or "out of memory") after swallowing
        # the block, and a set also deletes the old value so it cannot be read
        # stale (probed): the router forwards that delete where the set would
        # have gone.
        cdef bytes reply = b"" if quiet else error
        cdef Request r
        if not drop_old:
            if reply:
                out.append(local_reply(reply))
            return
        r = Request.__new__(Request)
        r.cmd = cmd
        r.rkind = RK_QUIET
        r.quiet = True
        r.chan = self.chan
        r.wire = (drop_fmt % self.token(p, 1)) + MN_SUFFIX
        r.key = self.route_key if self.route_key is not None else self.token(p, 1)
        r.override = reply
        out.append(r)

    cdef Py_ssize_t data_block(self, const unsigned char *p, int cmd, int rkind, bint quiet,
                               Py_ssize_t pos, Py_ssize_t nxt, Py_ssize_t n, long vlen,
                               list out) except -2:
        # A block without its "\r\n" is forwarded too: memcached consumes
        # exactly vlen + 2 bytes whatever they are, then answers "bad data
        # chunk", or "too large" for a value at the edge of its item size
        # (which only the backend knows), or a flag error first for ms.
        global body_held
        cdef Py_ssize_t end = nxt + vlen + 2
        if end > n:
            return -1
        if self.reserved:           # the body is whole: its reservation ends
            body_held -= self.reserved
            self.reserved = 0
        out.append(self.forward(p, cmd, rkind, quiet, pos, end, 1))
        return end

    cdef Py_ssize_t keyed(self, const unsigned char *p, int cmd, bint ntokens_ok,
                          Py_ssize_t pos, Py_ssize_t nxt, list out) except -2:
        # delete/incr/decr/touch <key> ... [noreply]
        if not ntokens_ok:
            out.append(local_reply(R_ERROR))
            return nxt
        cdef bint noreply = self.last_is(p, "noreply", 7)
        cdef int nt = self.mc_ntokens()
        cdef bint hold_zero
        if cmd == CMD_DELETE and nt > 3:
            # memcached checks the legacy "delete <key> 0 [noreply]" form first
            hold_zero = tok_is(p, self.ts[2], self.tl[2], "0", 1)
            if not ((nt == 4 and (hold_zero or noreply)) or (nt == 5 and hold_zero and noreply)):
                if not noreply:
                    out.append(local_reply(R_BAD_DELETE))
                return nxt
        if self.tl[1] > KEY_MAX:
            if not noreply:
                out.append(local_reply(R_BAD_FORMAT))
            return nxt
        out.append(self.forward(p, cmd, RK_LINE, noreply, pos, nxt, 1))
        return nxt

    cdef Py_ssize_t keyless(self, const unsigned char *p, int cmd, int rkind, bint ntokens_ok,
                            Py_ssize_t pos, Py_ssize_t nxt, list out) except -2:
        if not ntokens_ok:
            out.append(local_reply(R_ERROR))
            return nxt
        out.append(self.forward(p, cmd, rkind, self.last_is(p, "noreply", 7), pos, nxt, -1))
        return nxt

    cdef bytes ms_flag_error(self, const unsigned char *p):
        """The error memcached 1.6.18 gives an ms line's flags before it reads
        the value (proto_text.c: _meta_flag_preparse, then ms's own checks),
        or None.  Needed when the router answers the line itself (a value too
        large, a bad data chunk), since memcached never sees it then."""
        cdef int i
        cdef unsigned char seen[128]
        cdef unsigned char c, mode = 0
        cdef bytes err = R_BAD_FORMAT       # memcached's errstr before any flag sets it
        cdef bint failed = False
        memset(seen, 0, sizeof(seen))
        for i in range(3, self.ntok):
            c = p[self.ts[i]]
            if c >= 127 or seen[c]:
                return b"CLIENT_ERROR duplicate flag\r\n"
            seen[c] = 1
            if c == b'b':
                if self.decoded_key(p) is None:
                    err, failed = b"CLIENT_ERROR error decoding key\r\n", True
            elif c == b'N' or c == b'T' or c == b'R':
                if not mc_strtol(self.token(p, i)[1:], &self.scratch):
                    err, failed = R_BAD_TOKEN, True
            elif c == b'C':
                if not mc_strtoull(self.token(p, i)[1:]):
                    err, failed = R_BAD_TOKEN, True
            elif c == b'F':
                if not mc_strtoul32(self.token(p, i)[1:]):
                    failed = True           # memcached keeps the last message
            elif c == b'M':
                if self.tl[i] != 2:
                    err, failed = b"CLIENT_ERROR incorrect length for M token\r\n", True
                else:
                    mode = p[self.ts[i] + 1]
            elif c == b'J':
                if not mc_strtoull(self.token(p, i)[1:]):
                    err, failed = b"CLIENT_ERROR invalid numeric initial value\r\n", True
            elif c == b'D':
                if not mc_strtoull(self.token(p, i)[1:]):
                    err, failed = b"CLIENT_ERROR invalid numeric delta value\r\n", True
            elif memchr(MS_PLAIN_FLAGS, c, 14) == NULL:
                return b"CLIENT_ERROR invalid flag\r\n"
        if failed:
            return err
        for i in range(2, self.ntok):
            if p[self.ts[i]] == b'O' and self.tl[i] > META_MAX_OPAQUE:
                err, failed = b"CLIENT_ERROR opaque token too long\r\n", True
        if mode != 0 and memchr(b"EAPRS", mode, 5) == NULL:
            return b"CLIENT_ERROR invalid mode for ms M token\r\n"
        return err if failed else None

    cdef bytes decoded_key(self, const unsigned char *p):
        """Token 1 decoded as memcached decodes a ``b`` key, or None."""
        return mc_base64_decode(p + self.ts[1], self.tl[1])

    cdef Py_ssize_t meta(self, const unsigned char *p, Py_ssize_t pos, Py_ssize_t el,
                         Py_ssize_t nxt, Py_ssize_t n, list out) except -2:
        cdef unsigned char c = p[self.ts[0] + 1]
        cdef int cmd
        if c == b'g':
            cmd = CMD_MG
        elif c == b's':
            cmd = CMD_MS
        elif c == b'd':
            cmd = CMD_MD
        elif c == b'a':
            cmd = CMD_MA
        elif c == b'e':
            cmd = CMD_ME
        elif c == b'n':
            out.append(self.forward(p, CMD_MN, RK_META, False, pos, nxt, -1))
            return nxt
        else:
            out.append(local_reply(R_ERROR))
            return nxt
        if self.ntok < 2:
            out.append(local_reply(R_BAD_FORMAT if cmd == CMD_ME else R_ERROR))
            return nxt
        if self.tl[1] > KEY_MAX:
            out.append(local_reply(R_BAD_FORMAT))
            return nxt
        cdef int first_flag = 3 if cmd == CMD_MS else 2
        cdef bint quiet = False, b64 = False
        cdef int i
        if cmd == CMD_ME:
            b64 = self.ntok >= 3 and tok_is(p, self.ts[2], self.tl[2], "b", 1)
        else:
            for i in range(first_flag, self.ntok):
                c = p[self.ts[i]]
                if c == b'q':
                    quiet = True
                elif c == b'b':
                    b64 = True
        if b64:     # route on the key memcached stores; the line goes as sent
            self.route_key = self.decoded_key(p)
        if cmd != CMD_MS:
            out.append(self.forward(p, cmd, RK_META, quiet, pos, nxt, 1))
            return nxt
        # ms <key> <datalen> <flags>*\r\n<data>\r\n, checked in memcached's order
        cdef long vlen = 0
        if self.ntok < 3:
            out.append(local_reply(R_BAD_FORMAT))
            return nxt
        if self.mc_ntokens() > META_MAX_NTOKENS:
            out.append(local_reply(R_FLAGS_TOO_LONG))
            return nxt
        if not mc_strtol(self.token(p, 2), &vlen) or vlen < 0 or vlen > INT_MAX - 2:
            out.append(local_reply(R_BAD_FORMAT))
            return nxt
        cdef bint no_room = vlen <= self.max_item_size and not self.reserve(
            nxt + vlen + 2 - pos, n - pos)
        if vlen > self.max_item_size or no_room:
            err = self.ms_flag_error(p)
            if err is not None:
                out.append(local_reply(err))
            else:       # in every mode ms drops the old value (probed)
                self.too_large(p, CMD_MS, False, True,
                               b"md %s b q\r\n" if b64 else b"md %s q\r\n", out,
                               R_NO_MEMORY if no_room else R_TOO_LARGE)
            self.swallow = vlen + 2
            return nxt
        return self.data_block(p, CMD_MS, RK_META, quiet, pos, nxt, n, vlen, out)


# ---------------------------------------------------------------------------
# Upstream side
#
# A reply is accepted only if it can answer its request: framing by the reply
# kind, and the reply's first token by the command (memcached 1.6.18).  A
# storage command is answered by a status line, never VALUE or a number; an
# arithmetic command by a number; a meta command by its own codes; a get by
# VALUE blocks for the keys it asked, in the order asked.  Anything else (a
# broken or hostile backend, a desynchronised pipeline) is a protocol error:
# the caller drops the connection and no byte of the reply reaches a client.
# Each check is a few compares on the first bytes of a line.

from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

cdef inline Py_ssize_t line_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n):
    """Index just past the next \\r\\n, -1 if incomplete, -2 if a bare \\n."""
    cdef const unsigned char *hit = <const unsigned char *>memchr(p + pos, b'\n', n - pos)
    if hit == NULL:
        return -1
    cdef Py_ssize_t nl = hit - p
    if nl == pos or p[nl - 1] != b'\r':
        return -2
    return nl + 1


cdef inline Py_ssize_t reply_line_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n):
    """line_end for a reply: -2 (garbage) once REPLY_LINE_MAX bytes came
    without an end, so a server's endless line is refused at 64 KiB rather
    than held up to the reply bound times the keys asked."""
    cdef Py_ssize_t le = line_end(p, pos, n)
    if le == -1 and n - pos > REPLY_LINE_MAX:
        return -2
    return le


cdef inline bint starts(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, const char *w, Py_ssize_t wl):
    return le - pos >= wl and memcmp(p + pos, w, wl) == 0


cdef inline bint line_is(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le,
                         const char *w, Py_ssize_t wl):
    """The whole line (its \\r\\n included) is ``w``."""
    return le - pos == wl and memcmp(p + pos, w, wl) == 0


cdef int line_status(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le):
    """Judge a reply by its first token (le is just past its \\r\\n)."""
    cdef Py_ssize_t tl = 0
    while pos + tl < le - 2 and p[pos + tl] != b' ':
        tl += 1
    if tl == 2:
        if (memcmp(p + pos, b"EN", 2) == 0 or memcmp(p + pos, b"NF", 2) == 0
                or memcmp(p + pos, b"NS", 2) == 0 or memcmp(p + pos, b"EX", 2) == 0):
            return ST_FAIL
        return ST_OK
    if tok_is(p, pos, tl, "END", 3) or tok_is(p, pos, tl, "NOT_FOUND", 9) \
            or tok_is(p, pos, tl, "NOT_STORED", 10) or tok_is(p, pos, tl, "EXISTS", 6) \
            or tok_is(p, pos, tl, "ERROR", 5) or tok_is(p, pos, tl, "CLIENT_ERROR", 12) \
            or tok_is(p, pos, tl, "SERVER_ERROR", 12):
        return ST_FAIL
    return ST_OK


cdef inline bint is_error_line(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le):
    """memcached's error replies: ``ERROR``, ``ERROR <text>`` (lru, watch),
    ``CLIENT_ERROR <text>``, ``SERVER_ERROR <text>``; any command may get one."""
    cdef unsigned char c = p[pos]
    if c == b'E':
        return starts(p, pos, le, "ERROR\r\n", 7) or starts(p, pos, le, "ERROR ", 6)
    if c == b'C':
        return starts(p, pos, le, "CLIENT_ERROR ", 13)
    if c == b'S':
        return starts(p, pos, le, "SERVER_ERROR ", 13)
    return False


cdef inline bint is_number_line(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le):
    """An incr/decr result: 1 to 20 decimal digits (a uint64), nothing else."""
    cdef Py_ssize_t i
    if le - pos < 3 or le - pos > 22:
        return False
    for i in range(pos, le - 2):
        if p[i] < b'0' or p[i] > b'9':
            return False
    return True


cdef bint line_fits(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, int cmd):
    """Whether the one-line reply p[pos:le] can answer classic command ``cmd``."""
    if cmd >= CMD_SET and cmd <= CMD_CAS:
        if (line_is(p, pos, le, "STORED\r\n", 8) or line_is(p, pos, le, "NOT_STORED\r\n", 12)
                or line_is(p, pos, le, "EXISTS\r\n", 8)
                or line_is(p, pos, le, "NOT_FOUND\r\n", 11)):
            return True
    elif cmd == CMD_DELETE:
        if line_is(p, pos, le, "DELETED\r\n", 9) or line_is(p, pos, le, "NOT_FOUND\r\n", 11):
            return True
    elif cmd == CMD_INCR or cmd == CMD_DECR:
        if is_number_line(p, pos, le) or line_is(p, pos, le, "NOT_FOUND\r\n", 11):
            return True
    elif cmd == CMD_TOUCH:
        if line_is(p, pos, le, "TOUCHED\r\n", 9) or line_is(p, pos, le, "NOT_FOUND\r\n", 11):
            return True
    elif cmd == CMD_FLUSH_ALL or cmd == CMD_VERBOSITY:
        if line_is(p, pos, le, "OK\r\n", 4):
            return True
    elif cmd == CMD_VERSION:
        if starts(p, pos, le, "VERSION ", 8):
            return True
    elif cmd == CMD_ADMIN:
        if admin_line(p, pos, le):
            return True
    else:
        return False
    return is_error_line(p, pos, le)


cdef bint admin_line(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le):
    """What memcached 1.6.18's admin commands that a client may be allowed
    (slabs, lru, lru_crawler crawl, cache_memlimit, extstore, ...) answer
    besides an error line: OK, or a status word and its explanation."""
    cdef Py_ssize_t tl = 0
    while pos + tl < le - 2 and p[pos + tl] != b' ':
        tl += 1
    return (tok_is(p, pos, tl, "OK", 2) or tok_is(p, pos, tl, "BUSY", 4)
            or tok_is(p, pos, tl, "BADCLASS", 8) or tok_is(p, pos, tl, "NOSPARE", 7)
            or tok_is(p, pos, tl, "NOTFULL", 7) or tok_is(p, pos, tl, "UNSAFE", 6)
            or tok_is(p, pos, tl, "SAME", 4) or tok_is(p, pos, tl, "NOTSTARTED", 10)
            or tok_is(p, pos, tl, "MEMLIMIT_ADJUST_FAILED", 22)
            or tok_is(p, pos, tl, "MEMLIMIT_TOO_SMALL", 18)
            or tok_is(p, pos, tl, "Error", 5))         # refresh_certs without TLS (probed)


cdef bint meta_fits(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, int cmd):
    """Whether the reply line p[pos:le] can answer meta command ``cmd``: its
    two-letter code (then a space or the line's end), or an error line."""
    cdef unsigned char a, b, c
    if le - pos >= 4:
        c = p[pos + 2]
        if c == b' ' or (c == b'\r' and le - pos == 4):
            a = p[pos]
            b = p[pos + 1]
            if a == b'H' and b == b'D':
                return cmd == CMD_MG or cmd == CMD_MS or cmd == CMD_MD or cmd == CMD_MA
            if a == b'V' and b == b'A':
                return cmd == CMD_MG or cmd == CMD_MA
            if a == b'E' and b == b'N':
                return cmd == CMD_MG or cmd == CMD_ME
            if a == b'N' and b == b'F':
                return cmd == CMD_MS or cmd == CMD_MD or cmd == CMD_MA
            if a == b'N' and b == b'S':
                return cmd == CMD_MS or cmd == CMD_MA
            if a == b'E' and b == b'X':
                return cmd == CMD_MS or cmd == CMD_MD or cmd == CMD_MA
            if a == b'M' and b == b'E':
                return cmd == CMD_ME
            if a == b'M' and b == b'N':
                return cmd == CMD_MN and c == b'\r'
            return False
    return cmd != CMD_MN and is_error_line(p, pos, le)


cdef inline bint reply_fits(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, int cmd):
    """One-line reply check for a classic or a meta command."""
    if cmd >= CMD_MG and cmd <= CMD_ME:
        return meta_fits(p, pos, le, cmd)
    return line_fits(p, pos, le, cmd)


cdef long field_number(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, int field):
    """The decimal value of space-separated field ``field`` of a reply line, or -1."""
    cdef int f = 0
    cdef long v = -1
    cdef Py_ssize_t i = pos
    le -= 2
    while i < le and f < field:
        if p[i] == b' ':
            f += 1
            while i < le and p[i] == b' ':
                i += 1
        else:
            i += 1
    if f != field or i >= le:
        return -1
    v = 0
    while i < le and p[i] != b' ':
        if p[i] < b'0' or p[i] > b'9' or v > 0x7fffffff:
            return -1
        v = v * 10 + (p[i] - 48)   # 48 is '0'
        i += 1
    return v


cdef inline Py_ssize_t number_after_space(const unsigned char *p, Py_ssize_t i, Py_ssize_t e,
                                          int maxlen, long *value):
    """p[i] is a space followed by 1 to ``maxlen`` digits (and then a space
    or ``e``): the index past them, else -1.  ``value`` gets the number if
    it is below 2^31, else -1."""
    cdef Py_ssize_t s
    cdef long v = 0
    if i >= e or p[i] != b' ':
        return -1
    i += 1
    s = i
    while i < e and p[i] >= b'0' and p[i] <= b'9':
        if v >= 0:
            v = v * 10 + (p[i] - 48)
            if v > 0x7fffffff:
                v = -1
        i += 1
    if i == s or i - s > maxlen or (i < e and p[i] != b' '):
        return -1
    value[0] = v
    return i


cdef inline Py_ssize_t uint_after_space(const unsigned char *p, Py_ssize_t i, Py_ssize_t e,
                                        unsigned long long top):
    """p[i] is a space followed by a decimal number from 0 to ``top`` (and
    then a space or ``e``): the index past it, else -1."""
    cdef Py_ssize_t s
    cdef unsigned long long v = 0, d
    if i >= e or p[i] != b' ':
        return -1
    i += 1
    s = i
    while i < e and p[i] >= b'0' and p[i] <= b'9':
        d = p[i] - 48
        if v > (top - d) // 10:
            return -1                       # past top (and never wraps)
        v = v * 10 + d
        i += 1
    if i == s or (i < e and p[i] != b' '):
        return -1
    return i


cdef bint key_asked(Request req, const unsigned char *k, Py_ssize_t kl, Py_ssize_t *cursor):
    """``k`` is a key ``req`` asked for, at or after ``*cursor`` (memcached
    answers hits in the order of the keys asked); moves the cursor past it."""
    cdef list keys = req.keys
    cdef bytes key
    cdef Py_ssize_t i
    if keys is None:
        key = req.key
        if cursor[0] == 0 and PyBytes_GET_SIZE(key) == kl \
                and memcmp(PyBytes_AS_STRING(key), k, kl) == 0:
            cursor[0] = 1
            return True
        return False
    for i in range(cursor[0], PyList_GET_SIZE(keys)):
        key = <bytes>PyList_GET_ITEM(keys, i)
        if PyBytes_GET_SIZE(key) == kl and memcmp(PyBytes_AS_STRING(key), k, kl) == 0:
            cursor[0] = i + 1
            return True
    return False


cdef long value_line(const unsigned char *p, Py_ssize_t pos, Py_ssize_t le, Request req,
                     Py_ssize_t *cursor):
    """The data size of ``VALUE <key> <flags> <bytes>[ <cas>]``, -1 if the
    line cannot answer ``req``: a key it did not ask (or out of order), a
    cas unique missing on gets/gats or present on get/gat, a bad number."""
    cdef Py_ssize_t e = le - 2, i = pos + 6, ks = pos + 6
    cdef long size = -1
    while i < e and p[i] != b' ':
        i += 1
    if i == ks or not key_asked(req, p + ks, i - ks, cursor):
        return -1
    i = uint_after_space(p, i, e, 0xffffffff)              # flags: a uint32
    if i < 0:
        return -1
    i = number_after_space(p, i, e, 10, &size)
    if i < 0 or size < 0:
        return -1
    if req.cmd == CMD_GETS or req.cmd == CMD_GATS:
        i = uint_after_space(p, i, e, 0xffffffffffffffff)  # cas unique: a uint64
        if i < 0:
            return -1
    return size if i == e else -1


cdef inline Py_ssize_t block_end(const unsigned char *p, Py_ssize_t le, Py_ssize_t n,
                                 long size):
    """End of a ``size``-byte data block and its \\r\\n starting at ``le``:
    -1 if incomplete, -2 if the size is bad (< 0) or the block is not closed."""
    cdef Py_ssize_t end
    if size < 0:
        return -2
    end = le + size + 2
    if end > n:
        return -1
    if p[end - 2] != b'\r' or p[end - 1] != b'\n':
        return -2
    return end


cdef Py_ssize_t scan_reply(const unsigned char *p, Py_ssize_t n, Request req, int *status):
    """Length of the first complete reply to ``req`` in p[0:n]; -1 if
    incomplete; -2 if the bytes are no reply to it (the connection must be
    dropped).  Every complete line is checked as soon as it is seen."""
    cdef Py_ssize_t pos = 0, le, end, cursor = 0
    cdef long size
    cdef bint hit = False
    cdef int rkind = req.rkind, cmd = req.cmd
    if rkind == RK_LINE:
        le = reply_line_end(p, 0, n)
        if le < 0:
            return le
        if not line_fits(p, 0, le, cmd):
            return -2
        status[0] = line_status(p, 0, le)
        return le
    if rkind == RK_META:
        le = reply_line_end(p, 0, n)
        if le < 0:
            return le
        if not meta_fits(p, 0, le, cmd):
            return -2
        status[0] = line_status(p, 0, le)
        if p[0] == b'V' and p[1] == b'A':
            return block_end(p, le, n, field_number(p, 0, le, 1))
        return le
    if rkind == RK_GET:
        cursor = req.cursor         # past the keys of parts already delivered
        hit = cursor > 0
        while True:
            le = reply_line_end(p, pos, n)
            if le < 0:
                return le
            if starts(p, pos, le, "VALUE ", 6):
                end = block_end(p, le, n, value_line(p, pos, le, req, &cursor))
                if end < 0:
                    return end
                pos = end
                hit = True
                continue
            if line_is(p, pos, le, "END\r\n", 5):
                status[0] = ST_OK if hit else ST_FAIL
                return le
            if is_error_line(p, pos, le):
                status[0] = ST_FAIL
                return le
            return -2
    if rkind == RK_STATS:
        while True:
            le = reply_line_end(p, pos, n)
            if le < 0:
                return le
            if starts(p, pos, le, "STAT ", 5) or starts(p, pos, le, "ITEM ", 5) \
                    or starts(p, pos, le, "PREFIX ", 7):
                pos = le
                continue
            # END, or what stats detail on|off (OK) and stats reset (RESET) say
            if line_is(p, pos, le, "END\r\n", 5) or line_is(p, pos, le, "OK\r\n", 4) \
                    or line_is(p, pos, le, "RESET\r\n", 7):
                status[0] = ST_OK
                return le
            if is_error_line(p, pos, le):
                status[0] = ST_FAIL
                return le
            return -2
    if rkind == RK_QUIET:
        # at most one reply (what memcached did not suppress), then the MN
        # the router appended
        status[0] = ST_OK
        le = reply_line_end(p, 0, n)
        if le < 0:
            return le
        if line_is(p, 0, le, "MN\r\n", 4):
            return le
        if not reply_fits(p, 0, le, cmd):
            return -2
        status[0] = line_status(p, 0, le)
        pos = le
        if p[0] == b'V' and p[1] == b'A':
            pos = block_end(p, le, n, field_number(p, 0, le, 1))
            if pos < 0:
                return pos
        le = reply_line_end(p, pos, n)
        if le < 0:
            return le
        if line_is(p, pos, le, "MN\r\n", 4):
            return le
        return -2
    return -2


cdef Py_ssize_t complete_values(const unsigned char *p, Py_ssize_t n, Request req,
                                Py_ssize_t *cursor):
    """Length of the complete VALUE blocks at the start of p[0:n], a get
    reply still arriving that scan_reply found sound so far; ``*cursor``
    (starting at ``req.cursor``) moves past their keys.  Those blocks can go
    to the client before the reply ends (streaming)."""
    cdef Py_ssize_t pos = 0, le, end, at = req.cursor
    cursor[0] = at
    while True:
        le = line_end(p, pos, n)
        if le < 0 or not starts(p, pos, le, "VALUE ", 6):
            return pos
        end = block_end(p, le, n, value_line(p, pos, le, req, &at))
        if end < 0:
            return pos
        cursor[0] = at
        pos = end


cdef Py_ssize_t skip_reply(const unsigned char *p, Py_ssize_t n, Request req,
                           Py_ssize_t *skip_left, bint *last, Py_ssize_t *seen, bint *done):
    """Walk a reply too large to hold without keeping it: consume what is in
    p[0:n] and return how much (or -2 on garbage); ``*done`` once the reply
    has ended.  ``*skip_left`` counts data bytes still to drop, ``*last``
    says the reply ends with them (meta VA), ``*seen`` is the get key cursor
    or the count of quiet replies; all three start at 0.  Each line is
    checked against ``req`` as scan_reply checks it."""
    cdef Py_ssize_t pos = 0, k, le
    cdef long size
    cdef int rkind = req.rkind
    while pos < n or (skip_left[0] == 0 and last[0]):
        if skip_left[0]:
            k = min(skip_left[0], n - pos)
            skip_left[0] -= k
            pos += k
            continue
        if last[0]:
            done[0] = True
            return pos
        le = line_end(p, pos, n)
        if le == -1:
            return -2 if n - pos > REPLY_LINE_MAX else pos
        if le < 0:
            return -2
        if rkind == RK_GET:
            if starts(p, pos, le, "VALUE ", 6):
                size = value_line(p, pos, le, req, seen)
            elif line_is(p, pos, le, "END\r\n", 5) or is_error_line(p, pos, le):
                done[0] = True
                return le
            else:
                return -2
        elif rkind == RK_META or rkind == RK_QUIET:
            if rkind == RK_QUIET and line_is(p, pos, le, "MN\r\n", 4):
                done[0] = True
                return le
            if seen[0] or not reply_fits(p, pos, le, req.cmd):
                return -2
            seen[0] = 1
            if not (p[pos] == b'V' and p[pos + 1] == b'A'):
                if rkind == RK_META:
                    done[0] = True
                    return le
                pos = le
                continue
            size = field_number(p, pos, le, 1)
            last[0] = rkind == RK_META
        else:
            return -2
        if size < 0:
            return -2
        skip_left[0] = size + 2
        pos = le
    return pos


def scan(data, request):
    """Python entry to ``scan_reply`` for tests and cold paths: (length,
    status) of ``data`` as a reply to ``request`` (a Request, or the bytes
    of one request as a client sends it)."""
    cdef const unsigned char[:] view = data
    cdef int status = ST_OK
    cdef Py_ssize_t n = view.shape[0]
    cdef Request req = request if isinstance(request, Request) else RequestParser().feed(request)[0]
    if n == 0:
        return (-1, status)
    return (scan_reply(&view[0], n, req, &status), status)


def split_values(bytes reply):
    """Split a get-family reply into [(key, block)], block being the VALUE
    line and its data; used to merge partial hits from several hosts."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = len(reply), pos = 0, le, ks, ke, end
    cdef long size
    cdef list out = []
    while pos < n:
        le = line_end(p, pos, n)
        if le < 0 or not starts(p, pos, le, "VALUE ", 6):
            break
        ks = pos + 6
        ke = ks
        while ke < le - 2 and p[ke] != b' ':
            ke += 1
        size = field_number(p, pos, le, 3)
        end = le + size + 2
        out.append((reply[ks:ke], reply[pos:end]))
        pos = end
    return out
