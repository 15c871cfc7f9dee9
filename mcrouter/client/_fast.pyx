# cython: language_level=3
"""The client's per-key work in C: checking and placing the keys of a bulk
call, and turning a get reply into values.

``codec.key_bytes`` and ``codec.parse_values`` say what is meant; these do
the same for a whole batch in one call (no tuple or function call per key),
and fall back to them for anything unusual (a bad key, to raise its error).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem

from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF

cdef extern from "Python.h":
    # one lookup where Contains then SetItem took two; a borrowed reference
    PyObject *PyDict_SetDefault(object d, object key, object default) except NULL
    Py_ssize_t PyDict_GET_SIZE(object d)

cdef extern from *:
    """
    /* a dict made with room for n keys: no resize (rehash) while filling it */
    #if PY_VERSION_HEX < 0x030D0000
    #define MCR_DICT_PRESIZED(n) _PyDict_NewPresized(n)
    #else
    #define MCR_DICT_PRESIZED(n) PyDict_New()
    #endif
    """
    dict dict_presized "MCR_DICT_PRESIZED" (Py_ssize_t n)
from cpython.list cimport PyList_Append
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EINTR, EAGAIN
from libc.stdlib cimport malloc, free
from libc.string cimport memchr, memcmp, memcpy

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLPRI
        POLLOUT

from libc.stdint cimport uint8_t
from mcrouter._hash cimport INDEX_MANY_, Hasher
from mcrouter._parser cimport CMD_GET, CMD_GETS, RK_GET, ST_ERROR, Owner, Request
from mcrouter._ring cimport Ring

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags)
    enum:
        MSG_NOSIGNAL

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_MONOTONIC

from mcrouter.client.codec import key_bytes as codec_key_bytes

DEF KEY_MAX = 250
cdef enum:
    MULTIGET_CHUNK_ = 1000
MULTIGET_CHUNK = MULTIGET_CHUNK_    # keys per get line: bounded lines, still one write per server
DEF POLL_STACK = 16                 # descriptors polled without an allocation
DEF POLL_MAX_MS = 1 << 30           # one poll's wait at most: a far deadline (a timeout of
                                    # days) is waited for in parts, not cast past INT_MAX


cdef inline bint good_key(bytes k, Py_ssize_t raw_len):
    """What the text protocol can carry: 1..250 bytes (1+ before the prefix),
    no space or control byte."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(k), i
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(k)
    if raw_len == 0 or n > KEY_MAX:
        return False
    for i in range(n):
        if p[i] <= 32 or p[i] == 127:
            return False
    return True


def group_keys(keys, bytes prefix, Hasher hasher, int nservers, slot, key_bytes):
    """(given, groups): each key as sent → as given (first occurrence), and
    per server slot the keys as sent, in order, each once.  ``hasher`` None
    means one server; ``slot`` (the client's, for rehash while a server is
    out) replaces the hasher when not None; ``key_bytes`` raises a bad key's error."""
    cdef bint same
    return c_group_keys(keys, prefix, hasher, nservers, slot, key_bytes, &same)


cdef tuple c_group_keys(keys, bytes prefix, Hasher hasher, int nservers, slot, key_bytes,
                        bint *same):
    """group_keys; ``same`` set when every key is sent as given (bytes, no
    prefix), so that a reply's key needs no lookup in ``given``."""
    cdef dict given = dict_presized(min(builtin_len(keys), MULTIGET_CHUNK_))
    cdef list groups
    cdef bytes k, raw
    cdef int i
    cdef Py_ssize_t n0
    cdef bint plain = len(prefix) == 0
    cdef const uint8_t *bp[INDEX_MANY_]     # new keys waiting to be placed together,
    cdef size_t bn[INDEX_MANY_]             # each held here (bk: a reference of ours,
    cdef PyObject *bk[INDEX_MANY_]          # not ``given``'s: the caller's code runs
    cdef int nb = 0                         # between, and may reach ``given``)
    if nservers < 1 or (hasher is not None and hasher.size > nservers):
        raise ValueError(f"group_keys: {nservers} server slots for a hasher of "
                         f"{hasher.size if hasher is not None else 1}; "
                         "give one slot per server of the hasher")
    groups = [[] for _ in range(nservers)]
    same[0] = plain
    try:
        for key in keys:
            if type(key) is bytes:
                raw = <bytes>key
            elif isinstance(key, str):
                try:
                    raw = (<str>key).encode()
                except UnicodeEncodeError:
                    key_bytes(key, prefix)              # raises MemcacheIllegalInputError
                    raise
            else:
                raw = key_bytes(key, prefix)            # the codec's own error or conversion
                if not plain:
                    raw = raw[len(prefix):]
            if raw is not key:
                same[0] = False
            k = raw if plain else prefix + raw
            if not good_key(k, PyBytes_GET_SIZE(raw)):
                key_bytes(key, prefix)                  # raises MemcacheIllegalInputError
                raise AssertionError(f"key {k!r} refused here but not by codec.key_bytes")
            n0 = PyDict_GET_SIZE(given)
            PyDict_SetDefault(given, k, key)
            if PyDict_GET_SIZE(given) == n0:
                continue                                # asked before: once is enough
            if slot is not None:
                i = slot(k)
                if i < 0 or i >= nservers:
                    raise IndexError(f"group_keys: slot() placed {k!r} at {i}, "
                                     f"past the {nservers} servers")
                PyList_Append(<list>groups[i], k)
            elif hasher is None:
                PyList_Append(<list>groups[0], k)
            else:
                Py_INCREF(k)
                bk[nb] = <PyObject *>k
                bp[nb] = <const uint8_t *>PyBytes_AS_STRING(k)
                bn[nb] = PyBytes_GET_SIZE(k)
                nb += 1
                if nb == INDEX_MANY_:
                    nb = place(hasher, bp, bn, bk, nb, groups)
        nb = place(hasher, bp, bn, bk, nb, groups)
    finally:
        while nb:                                       # an error: ours let go
            nb -= 1
            Py_DECREF(<object>bk[nb])
    return given, groups


cdef inline Py_ssize_t builtin_len(keys) except -1:
    """len(keys) for the builtin collections (their C length: no code of the
    caller's runs), else 0: only a size hint, which must not raise or call
    a __len__/__length_hint__ that iterating would not."""
    if (type(keys) is list or type(keys) is tuple or type(keys) is dict or type(keys) is set
            or type(keys) is frozenset):
        return len(keys)
    return 0


cdef inline int place(Hasher hasher, const uint8_t **bp, size_t *bn, PyObject **bk, int nb,
                      list groups) except -1:
    """Append each of ``nb`` keys to its server's group, placed in one
    Hasher.index_many call (short md5 keys hashed side by side); our
    references in ``bk`` released.  Returns 0 (the keys left pending)."""
    cdef int at[INDEX_MANY_]
    cdef int j
    if nb:
        hasher.index_many(bp, bn, nb, at)
        for j in range(nb):
            PyList_Append(<list>groups[at[j]], <object>bk[j])
        for j in range(nb):
            Py_DECREF(<object>bk[j])
    return 0


cdef inline Py_ssize_t find_crlf(const char *p, Py_ssize_t pos, Py_ssize_t n):
    cdef const char *q
    while pos < n:
        q = <const char *>memchr(p + pos, b'\r', n - pos)
        if q == NULL:
            return -1
        pos = q - p
        if pos + 1 < n and p[pos + 1] == b'\n':
            return pos
        pos += 1
    return -1


cdef inline Py_ssize_t read_uint(const char *p, Py_ssize_t *pos, Py_ssize_t end,
                                 unsigned long long *out):
    """A decimal number at pos (skipping one space before it); -1 if none."""
    cdef unsigned long long v = 0
    cdef Py_ssize_t i = pos[0], start
    if i < end and p[i] == b' ':
        i += 1
    start = i
    while i < end and b'0' <= p[i] <= b'9':
        v = v * 10 + <unsigned long long>(p[i] - 48)
        i += 1
    if i == start:
        return -1
    pos[0] = i
    out[0] = v
    return 0


cdef inline object cas_token(const char *p, Py_ssize_t vs, Py_ssize_t le):
    """The cas unique after the size (``gets``/``gats``), as the bytes sent; None if absent."""
    cdef Py_ssize_t e
    if vs >= le or p[vs] != b' ':
        return None
    vs += 1
    e = vs
    while e < le and b'0' <= p[e] <= b'9':
        e += 1
    return p[vs:e] if e > vs else None


def parse_get_into(bytes reply, dict given, dict out, deserialize, bint with_cas,
                   list asked=None):
    """Every VALUE of a get-family reply (checked by the Ring's scan_reply)
    into ``out`` as {given key: value} (``(value, cas)`` with ``with_cas``, the
    cas as the bytes sent, as pymemcache gives it);
    ``deserialize(key, data, flags)`` unless None (raw bytes).  ``asked``, the
    keys as sent, lets each VALUE's key be found by walking them in order
    (memcached answers hits in the order asked) instead of a new bytes
    object hashed per key.  Returns -1 if the reply ends with END, else the
    offset of what ends it (an error line)."""
    return c_parse_get_into(reply, given, out, deserialize, with_cas, asked, False)


cdef Py_ssize_t c_parse_get_into(bytes reply, dict given, dict out, deserialize,
                                 bint with_cas, list asked, bint same) except -2:
    """parse_get_into; ``same``: every key was sent as given (c_group_keys)."""
    cdef const char *p = PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply), pos = 0, le, ks, ke, vs
    cdef Py_ssize_t j = 0, nasked = len(asked) if asked is not None else 0
    cdef unsigned long long flags, size
    cdef bytes k, data
    cdef object key, value
    cdef void *found
    cdef bint matched
    while n - pos >= 6 and memcmp(p + pos, b"VALUE ", 6) == 0:
        le = find_crlf(p, pos + 6, n)
        if le < 0:
            return pos
        ks = pos + 6
        ke = ks
        while ke < le and p[ke] != b' ':
            ke += 1
        vs = ke
        if read_uint(p, &vs, le, &flags) < 0 or read_uint(p, &vs, le, &size) < 0:
            return pos
        if le + 2 + <Py_ssize_t>size > n:
            return pos
        matched = False
        while j < nasked:
            k = <bytes>asked[j]
            j += 1
            if PyBytes_GET_SIZE(k) == ke - ks and memcmp(PyBytes_AS_STRING(k), p + ks,
                                                         ke - ks) == 0:
                matched = True
                break
        else:
            k = p[ks:ke]
        data = p[le + 2:le + 2 + <Py_ssize_t>size]
        if matched and same:
            key = k
        else:
            found = PyDict_GetItem(given, k)
            key = <object>found if found != NULL else k
        value = data if deserialize is None else deserialize(key, data, flags)
        PyDict_SetItem(out, key, (value, cas_token(p, vs, le)) if with_cas else value)
        pos = le + 4 + <Py_ssize_t>size
    if n - pos == 5 and memcmp(p + pos, b"END\r\n", 5) == 0:
        return -1
    return pos


def parse_one(bytes reply):
    """A one-key get reply: (flags, data, cas bytes or None), None for a miss
    (END), or the offset of an error line as an int."""
    cdef const char *p = PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply), le, vs
    cdef unsigned long long flags, size
    if n == 5 and memcmp(p, b"END\r\n", 5) == 0:
        return None
    if n < 6 or memcmp(p, b"VALUE ", 6) != 0:
        return 0
    le = find_crlf(p, 6, n)
    if le < 0:
        return 0
    vs = 6
    while vs < le and p[vs] != b' ':
        vs += 1
    if read_uint(p, &vs, le, &flags) < 0 or read_uint(p, &vs, le, &size) < 0:
        return 0
    if le + 2 + <Py_ssize_t>size > n:
        return 0
    if n - (le + 4 + <Py_ssize_t>size) != 5 or \
            memcmp(p + le + 4 + size, b"END\r\n", 5) != 0:
        return le + 4 + <Py_ssize_t>size
    return (flags, p[le + 2:le + 2 + <Py_ssize_t>size], cas_token(p, vs, le))


def poll_fds(list fds, list want_out, int timeout_ms):
    """One poll(2) over the descriptors of a call's connections: their
    revents, in order (all 0 if a signal interrupted it, so the caller looks
    again).  ``want_out[i]`` adds POLLOUT for a connection with bytes still
    to write.  One system call for every server of a bulk call, where a
    select.poll object per call, or one poll per connection, cost more."""
    cdef Py_ssize_t n = len(fds), i
    cdef pollfd stack[POLL_STACK]
    cdef pollfd *p = stack
    cdef int r
    if n > POLL_STACK:
        p = <pollfd *>malloc(n * sizeof(pollfd))
        if p == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            p[i].fd = fds[i]
            p[i].events = POLLIN | POLLPRI
            if want_out[i]:
                p[i].events |= POLLOUT
            p[i].revents = 0
        with nogil:
            r = poll(p, n, timeout_ms)
        if r < 0 and errno != EINTR:
            raise OSError(errno, "poll failed")
        return [p[i].revents if r > 0 else 0 for i in range(n)]
    finally:
        if p != stack:
            free(p)


# what exchange() says of a connection that must be closed
cdef enum:
    EX_OK_ = 0
    EX_EOF_ = 1
    EX_READ_ = 2
    EX_WRITE_ = 3
    EX_PROTOCOL_ = 4
EX_OK, EX_EOF, EX_READ, EX_WRITE, EX_PROTOCOL = EX_OK_, EX_EOF_, EX_READ_, EX_WRITE_, EX_PROTOCOL_
EXCHANGE_MAX = POLL_STACK       # connections one exchange takes; more wait in Python


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int send_out(Ring ring, int fd) except -1:
    """One send of what the ring has queued; 0, or errno of a failed send."""
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(ring.out)
    cdef ssize_t sent
    if n == 0:
        return 0
    ring.before_write(0.0)
    sent = c_send(fd, PyByteArray_AS_STRING(ring.out), n, MSG_NOSIGNAL)
    if sent < 0:
        return 0 if errno == EAGAIN or errno == EINTR else errno
    ring.wrote(sent, 0.0)
    return 0


def exchange(list fds, list rings, list lasts, bytearray buf, double deadline,
             int reads_per_wake):
    """A bulk call's wait on plain sockets, in C: write each ring's queued
    requests to its descriptor, then poll them all and read, until each
    connection's last request (``lasts``) is answered, a connection fails
    or ``deadline`` (time.monotonic) passes.  Returns per connection
    (EX_OK, 0) or why it must be closed: (EX_EOF, 0), (EX_READ or EX_WRITE,
    errno), (EX_PROTOCOL, 0) (the Ring's fault_bytes say what came).  What
    blocking.Client._wait does with Python calls per step, for TLS sockets."""
    cdef Py_ssize_t n = len(fds), i
    cdef int kinds[POLL_STACK]
    cdef int errs[POLL_STACK]
    if n > POLL_STACK:
        raise ValueError(f"exchange takes at most {POLL_STACK} connections (EXCHANGE_MAX)")
    run_exchange(n, fds, rings, lasts, buf, deadline, reads_per_wake, kinds, errs,
                 None, None, False, False, NULL)
    return [(kinds[i], errs[i]) for i in range(n)]


cdef int run_exchange(Py_ssize_t n, list fds, list rings, list lasts, bytearray buf,
                      double deadline, int reads_per_wake, int *kinds, int *errs,
                      dict given, dict out, bint with_cas, bint same,
                      Py_ssize_t *parsed) except -1:
    """exchange's loop; each connection's verdict into kinds[i] (EX_*) and errs[i].
    ``out`` (get_many's, raw values only): the clean get replies are parsed
    into it while the other servers are still answering, in slot order (the
    general path's key order: a reply waits for those before it);
    ``parsed[0]`` counts them (more than n: a parse stopped short)."""
    cdef Py_ssize_t i, k, nact
    cdef pollfd p[POLL_STACK]           # n is at most POLL_STACK: the callers see to it
    cdef Py_ssize_t idx[POLL_STACK]
    cdef int r, err, reads, fd
    cdef ssize_t got
    cdef double left, ms
    cdef Ring ring
    cdef char *bp = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t bn = PyByteArray_GET_SIZE(buf)
    cdef Request req
    if n > POLL_STACK:
        raise ValueError("run_exchange: more connections than POLL_STACK")
    for i in range(n):
        kinds[i] = EX_OK_
        errs[i] = 0
        err = send_out(<Ring>rings[i], <int>fds[i])
        if err:
            kinds[i] = EX_WRITE_
            errs[i] = err
    while True:
        nact = 0
        for i in range(n):
            if kinds[i] != EX_OK_ or (<Request>lasts[i]).reply is not None:
                continue
            ring = <Ring>rings[i]
            p[nact].fd = <int>fds[i]
            p[nact].events = POLLIN | POLLPRI
            if PyByteArray_GET_SIZE(ring.out):
                p[nact].events |= POLLOUT
            p[nact].revents = 0
            idx[nact] = i
            nact += 1
        if nact == 0:
            break
        left = deadline - monotonic()
        if left <= 0:
            break
        ms = left * 1000.0 + 1.0
        if ms > POLL_MAX_MS:
            ms = POLL_MAX_MS
        with nogil:
            r = poll(p, nact, <int>ms)
        if r < 0:
            if errno != EINTR:
                raise OSError(errno, "poll failed")
            PyErr_CheckSignals()        # Ctrl-C: raised here (the caller closes)
            continue
        for k in range(nact):
            if not p[k].revents:
                continue
            i = idx[k]
            ring = <Ring>rings[i]
            fd = p[k].fd
            if p[k].revents & POLLOUT:
                err = send_out(ring, fd)
                if err:
                    kinds[i] = EX_WRITE_
                    errs[i] = err
                    continue
            if not (p[k].revents & ~POLLOUT):
                continue
            reads = 0
            while reads < reads_per_wake:
                got = c_recv(fd, bp, bn, 0)
                if got < 0:
                    if errno != EAGAIN and errno != EINTR:
                        kinds[i] = EX_READ_
                        errs[i] = errno
                    break
                if got == 0:
                    kinds[i] = EX_EOF_
                    break
                if ring.feed_ptr(<const unsigned char *>bp, got) < 0:
                    kinds[i] = EX_PROTOCOL_
                    break
                reads += 1
                if got < bn:
                    break
            while out is not None and parsed[0] < n:
                req = <Request>lasts[parsed[0]]
                if kinds[parsed[0]] != EX_OK_ or not clean_get(req):
                    break
                if c_parse_get_into(<bytes>req.reply, given, out, None, with_cas,
                                    req.keys, same) >= 0:
                    parsed[0] = n + 1       # not reached (clean_get saw END)
                    break
                parsed[0] += 1
    return 0


cdef class Waited(Owner):
    """The owner of requests whose callers wait for them (the blocking
    client's connections): a reply needs nothing more than the Ring setting
    it, and this says so in C, not through a Python method per reply."""

    cpdef on_reply(self, Request req):
        pass


cdef inline bint clean_get(Request req):
    """A get reply that codec.error_of passes and that ends with END: values
    (or none) and nothing else, for the fast path to take as it is."""
    cdef object r = req.reply
    cdef const char *p
    cdef Py_ssize_t n
    if r is None or req.status == ST_ERROR:
        return False
    p = PyBytes_AS_STRING(<bytes>r)
    n = PyBytes_GET_SIZE(<bytes>r)
    if n < 5 or memcmp(p + n - 5, b"END\r\n", 5) != 0:
        return False
    return n == 5 or p[0] == b'V'


cdef bytes get_wire(bytes head, list ks):
    """``head + b" ".join(ks) + b"\\r\\n"`` (codec.get_request's line) written
    once into a bytes of the right size, not built by three concatenations."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(head) + len(ks) + 1, i, m
    cdef bytes k, out
    cdef char *w
    for k in ks:
        n += PyBytes_GET_SIZE(k)
    out = PyBytes_FromStringAndSize(NULL, n)
    w = PyBytes_AS_STRING(out)
    m = PyBytes_GET_SIZE(head)
    memcpy(w, PyBytes_AS_STRING(head), m)
    w += m
    for i in range(len(ks)):
        if i:
            w[0] = b' '
            w += 1
        k = <bytes>ks[i]
        m = PyBytes_GET_SIZE(k)
        memcpy(w, PyBytes_AS_STRING(k), m)
        w += m
    w[0] = b'\r'
    w[1] = b'\n'
    return out


cdef object get_plan(client, dict given, list slots, list reqs, bint with_cas):
    """The general path's Plan of the requests the fast path built."""
    return client.plan_get_reqs(given, list(zip(slots, reqs)), with_cas)


cdef bint take_idle(pool, list taken):
    """An idle connection of ``pool`` appended to ``taken`` under its lock
    (ServerPool.acquire's own case with one idle, unchecked); False if none."""
    lock = pool.lock
    lock.acquire()
    try:
        idle = <list>pool.idle
        if not idle:
            return False
        taken.append(idle.pop())
        return True
    finally:
        lock.release()


cdef void give_back(pool, conn) except *:
    """ServerPool.release, its usual case inline: a connection of the pool's
    generation, still open, back to the idle list (the waiting notified)."""
    cdef bint done = False
    lock = pool.lock
    lock.acquire()
    try:
        if not conn.closed and conn.gen == pool.gen:
            (<list>pool.idle).append(conn)
            done = True
            if pool.waiting:
                pool.cond.notify()
    finally:
        lock.release()
    if not done:
        pool.release(conn)


def get_many(client, keys, bint with_cas, int reads_per_wake):
    """blocking.Client.get_many (gets_many: ``with_cas``) with its common
    case in C: plain sockets, every server up, an idle connection in each
    pool the keys need, at most MULTIGET_CHUNK keys per server.  It places
    the keys, builds one get per server, takes the connections in slot order,
    checks them with one poll, sends, waits (run_exchange) and, when every
    reply came back clean, parses them, marks the servers healthy and
    returns the connections.  Anything else is handed to the general path
    at the point reached (the plan with what was taken: Client._run_many,
    or Client._after_send once sent), so its behaviour is the call's."""
    cdef Py_ssize_t ns, n, k
    cdef list lists, ks, slots = [], reqs = [], taken = [], verdicts
    cdef dict given, conns, out
    cdef Request req
    cdef Ring ring
    cdef bytes head = b"gets " if with_cas else b"get "
    cdef int cmd = CMD_GETS if with_cas else CMD_GET
    cdef int handover = 0           # 1: before sending (_run_many), 2: after (_after_send)
    cdef bint sent = False
    cdef pollfd fds_poll[POLL_STACK]
    cdef int kinds[POLL_STACK]
    cdef int errs[POLL_STACK]
    cdef int r
    cdef double deadline
    cdef Py_ssize_t parsed = 0
    cdef bint same
    health = client.health
    if not health.all_up or client.tls_context is not None:
        return client._run(client.plan_get_many(keys, with_cas))
    placement = client.placement
    ns = len(<list>client.names)
    given, lists = c_group_keys(keys, client.key_prefix,
                                None if placement.single else placement.hasher, ns, None,
                                codec_key_bytes, &same)
    for k in range(ns):
        ks = <list>lists[k]
        if not ks:
            continue
        if len(ks) > MULTIGET_CHUNK_:
            return client._get_chunked(given, lists, with_cas)
        req = Request.__new__(Request)
        req.cmd = cmd
        req.rkind = RK_GET
        req.key = <bytes>ks[0]
        req.keys = ks if len(ks) > 1 else None
        req.wire = get_wire(head, ks)
        slots.append(k)
        reqs.append(req)
    n = len(reqs)
    if n == 0:
        return {}
    deadline = monotonic() + <double>client.timeout
    if n > POLL_STACK:
        return client._run(get_plan(client, given, slots, reqs, with_cas))
    pools = <list>client.pools
    try:
        # in slot order, as every call takes them (ServerPool.acquire's rule)
        for k in range(n):
            if not take_idle(pools[<Py_ssize_t>slots[k]], taken):
                handover = 1
                break
        if not handover:
            # Client._in_step's poll: a connection owed nothing with something
            # to read (stray bytes, EOF) goes to the general path's check
            for k in range(n):
                fds_poll[k].fd = <int>taken[k].fd
                fds_poll[k].events = POLLIN | POLLPRI
                fds_poll[k].revents = 0
            r = poll(fds_poll, n, 0)
            if r > 0:
                for k in range(n):
                    ring = <Ring>taken[k].ring
                    if fds_poll[k].revents and len(ring.fifo) - ring.head == 0:
                        handover = 1
                        break
        if not handover:
            for k in range(n):          # Connection.push
                conn = taken[k]
                req = <Request>reqs[k]
                req.owner = <Owner>conn
                if not (<Ring>conn.ring).push(req, 0.0):
                    conn.push(req)      # the ring is full: the request answered lost
            sent = True
            # raw values (no deserializer: parsing calls nothing of the
            # caller's, and is dropped if the call is handed over) are parsed
            # as the replies complete, while the other servers answer
            deserialize = client.deserialize
            out = dict_presized(len(given))
            run_exchange(n, [c.fd for c in taken], [c.ring for c in taken], reqs,
                         <bytearray>taken[0].buf, deadline, reads_per_wake, kinds, errs,
                         given, out if deserialize is None else None, with_cas, same,
                         &parsed)
            for k in range(n):
                if kinds[k] != EX_OK_ or not clean_get(<Request>reqs[k]):
                    handover = 2
                    break
    except BaseException:
        client._abort({slots[k]: taken[k] for k in range(len(taken))}, sent)
        raise
    if handover:
        conns = {slots[k]: taken[k] for k in range(len(taken))}
        plan = get_plan(client, given, slots, reqs, with_cas)
        if handover == 2:
            verdicts = [(kinds[k], errs[k]) for k in range(n)]
            return client._after_send(plan, conns, verdicts)
        if not conns:
            return client._run(plan)
        return client._run_many(plan, conns, deadline)
    fails = <list>health.fails
    for k in range(n):
        fails[<Py_ssize_t>slots[k]] = 0      # health.succeeded
    for k in range(n):
        give_back(pools[<Py_ssize_t>slots[k]], taken[k])
    while parsed < n:
        req = <Request>reqs[parsed]
        if c_parse_get_into(<bytes>req.reply, given, out, deserialize, with_cas,
                            req.keys, same) >= 0:
            break
        parsed += 1
    if parsed != n:
        # not reached (clean_get saw END): the general decoding, from the start
        return get_plan(client, given, slots, reqs, with_cas).done([None] * n)
    return out
