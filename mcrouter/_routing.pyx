# cython: language_level=3
"""The per-request part of the route tree (hot path).

Route handles are Python objects (routes/), but the few steps every request
takes run here, so a request crosses the tree without entering the
interpreter: ``TableDispatch`` (OperationSelectorRoute: a lookup by command),
``HashDispatch`` (PoolRoute/HashRoute: a key's destination), ``HostDispatch``
(a host, or the router's error when it is down), and the multi-key get.

Multi-key gets: ask several destinations for parts of one request, answer
once.  One mechanism serves every route that splits a ``get``/``gets``/
``gat``/``gats`` with many keys:

* ``split`` (PoolRoute, HashRoute, PrefixSelectorRoute): the keys are grouped
  by destination, one sub-request per destination goes out at once, and the
  client gets one reply: the hits in the order of its request keys, one END.
  A destination that fails costs only its keys (they read as misses); only
  when no destination gave a real get reply does the client see the error.
* ``MissChain`` (routes/multiget.py: MissFailoverRoute, WarmUpRoute):
  destinations one after the other, each asked only for the keys still
  missing.

Both collect hits in a ``Gather``.  Values are forwarded verbatim (VALUE
line and data), so ``gets`` cas values and flags are the servers' own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memchr, memcmp, memcpy

from mcrouter._hash cimport Hasher
from mcrouter._parser cimport Request, CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS, CMD_STATS, ST_OK, ST_FAIL, ST_ERROR
from mcrouter import protocol

cdef bytes END = b"END\r\n"
cdef bytes R_NO_HEALTHY = protocol.NO_HEALTHY_UPSTREAM
cdef bytes R_UPSTREAM_ERROR = protocol.UPSTREAM_ERROR


cdef class TableDispatch:
    """Base of OperationSelectorRoute: a child per command id."""

    cdef public list table

    cpdef dispatch(self, Request req):
        self.table[req.cmd].dispatch(req)


cdef class HostDispatch:
    """Base of HostRoute: the host, or at once the router's error when the
    host is down (so that the routes above can fail over)."""

    cdef public object host

    cpdef dispatch(self, Request req):
        host = self.host
        if host.healthy:
            host.send(req)
        else:
            req.finish(R_NO_HEALTHY, ST_ERROR)


cdef class ServiceDispatch:
    """Base of RootRoute: what the router answers about itself (reserved
    ``__mcrouter__.`` keys to ``serve``, ``stats`` to ``serve_stats``), the
    config's admin policy (the commands whose bit is set in ``gated`` to
    ``serve_admin``: one shift per request), the rest to the tree."""

    cdef public object tree
    cdef public unsigned long long gated     # bit i: command id i passes serve_admin first

    cpdef dispatch(self, Request req):
        cdef int cmd = req.cmd
        if cmd == CMD_GET and req.keys is None and req.key.startswith(b"__mcrouter__."):
            self.serve(req)
        elif cmd == CMD_STATS:
            self.serve_stats(req)
        elif 0 <= cmd < 64 and (self.gated >> cmd) & 1:
            self.serve_admin(req)
        else:
            self.tree.dispatch(req)


cdef class HashDispatch:
    """Base of PoolRoute/HashRoute: a keyed request to the child its key
    hashes to, a multi-key get split by child, the rest by command."""

    cdef public list children
    cdef public Hasher hasher
    cdef public list keyless          # by command id, for requests without a key

    cpdef dispatch(self, Request req):
        if req.keys is not None:
            split(req, self.children, group_keys(req, self.hasher, None))
        elif len(req.key):
            self.children[self.hasher.index(req.key)].dispatch(req)
        else:
            self.keyless[req.cmd].dispatch(req)


cdef class PolicyDispatch(HashDispatch):
    """Base of a PoolRoute whose ``on_down`` is not ``fail``: a key whose host
    is down goes elsewhere while it is down.  ``rehash``: to the next live
    host on the continuum (``Hasher.index_up``); otherwise to ``gutter``, the
    last entry of ``routes``.  While every host a request needs is up this is
    HashDispatch plus one health read per destination."""

    cdef public bint rehash
    cdef public list routes           # children, and the gutter route last (gutter only)

    cpdef bytes up_mask(self):
        return bytes([1 if c.host.healthy else 0 for c in self.children])

    cpdef int destination(self, bytes key, bytes up):
        """The index in ``routes`` of ``key`` while the hosts ``up`` marks are up."""
        cdef int i = self.hasher.index(key), j
        if up[i]:
            return i
        if not self.rehash:
            return len(self.children)
        j = self.hasher.index_up(key, up)
        return j if j >= 0 else i     # none up: its own host, which answers the error

    cpdef dispatch(self, Request req):
        cdef int i
        cdef tuple grouping
        if req.keys is not None:
            grouping = group_keys(req, self.hasher, None)
            for i in grouping[0]:
                if not self.children[i].host.healthy:
                    grouping = self.regroup(req)
                    break
            split(req, self.routes, grouping)
        elif len(req.key):
            i = self.hasher.index(req.key)
            child = self.children[i]
            if child.host.healthy:
                child.dispatch(req)
            else:
                self.routes[self.destination(req.key, self.up_mask())].dispatch(req)
        else:
            self.keyless[req.cmd].dispatch(req)

    cdef tuple regroup(self, Request req):
        """group_keys, with each key at its destination while some hosts are down."""
        cdef bytes up = self.up_mask()
        return group_keys(req, None, lambda k: self.destination(k, up))


cpdef bytes retrieval_prefix(Request req):
    """``get``, ``gets``, ``gat <exptime>`` or ``gats <exptime>``: the request line before its keys."""
    if req.cmd == CMD_GET:
        return b"get"
    if req.cmd == CMD_GETS:
        return b"gets"
    words = req.wire.split(None, 2)
    return b" ".join(words[:2])


cpdef Request for_keys(Request parent, object owner, bytes prefix, list keys):
    """A sub-request of ``parent`` asking only for ``keys``: ``<prefix> <keys>\\r\\n``."""
    cdef Request sub = parent.child(owner)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix) + 2, kl
    cdef bytes k, wire
    cdef char *dst
    for k in keys:
        n += 1 + PyBytes_GET_SIZE(k)
    wire = PyBytes_FromStringAndSize(NULL, n)
    dst = PyBytes_AS_STRING(wire)
    memcpy(dst, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
    dst += PyBytes_GET_SIZE(prefix)
    for k in keys:
        kl = PyBytes_GET_SIZE(k)
        dst[0] = 32
        memcpy(dst + 1, PyBytes_AS_STRING(k), kl)
        dst += 1 + kl
    memcpy(dst, b"\r\n", 2)
    sub.wire = wire
    sub.keys = keys if len(keys) > 1 else None
    sub.key = keys[0]
    return sub


cdef list merge_values(dict found, bytes reply, bint want_hits):
    """Add the VALUE blocks of a get reply to ``found`` (first one per key
    wins); return the [(key, block)] of this reply if ``want_hits``."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply), pos = 0, ks, ke, le, i, end
    cdef long size
    cdef list hits = []
    cdef const unsigned char *nl
    while n - pos > 6 and memcmp(p + pos, b"VALUE ", 6) == 0:
        nl = <const unsigned char *>memchr(p + pos, 10, n - pos)
        if nl == NULL:
            break
        le = nl - p + 1                     # just past the line's \n
        ks = pos + 6
        ke = ks
        while ke < le and p[ke] != 32:
            ke += 1
        # VALUE <key> <flags> <bytes> [<cas>]: skip the flags, read the length
        i = ke + 1
        while i < le and p[i] != 32:
            i += 1
        size = 0
        i += 1
        while i < le and p[i] >= 48 and p[i] <= 57:
            size = size * 10 + (p[i] - 48)
            i += 1
        end = le + size + 2
        if end > n:
            break
        key = reply[ks:ke]
        block = reply[pos:end]
        if want_hits:
            hits.append((key, block))
        if key not in found:
            found[key] = block
        pos = end
    return hits


cdef class Gather:
    """The hits of a multi-key get, collected from the replies of its sub-requests."""

    cdef public Request parent
    cdef public list keys            # the request's keys, in order (duplicates kept)
    cdef public dict found           # key → its VALUE block, from the first server that had it
    cdef public bint answered        # some destination gave a real get reply
    cdef public object error         # the last error reply, for when none answered
    cdef public int error_status

    def __init__(self, Request parent):
        self.parent = parent
        self.keys = parent.keys if parent.keys is not None else [parent.key]
        self.found = {}
        self.answered = False
        self.error = None
        self.error_status = ST_ERROR

    cpdef list take(self, Request sub, bint want_hits=True):
        """Merge one sub-reply; return its hits ([] for a miss or an error,
        or when not wanted)."""
        reply = sub.reply if sub.reply is not None else b""
        if sub.status == ST_ERROR or not reply.endswith(END):
            self.error = reply            # an error: these keys stay missing
            self.error_status = sub.status
            return []
        self.answered = True
        return merge_values(self.found, reply, want_hits)

    cpdef list missing(self):
        cdef dict found = self.found
        return [k for k in dict.fromkeys(self.keys) if k not in found]

    cpdef finish(self):
        cdef dict found = self.found
        if found or self.answered:
            body = b"".join([found[k] for k in self.keys if k in found])
            self.parent.finish(body + END, ST_OK if found else ST_FAIL)
        else:
            self.parent.finish(self.error if self.error is not None else R_UPSTREAM_ERROR,
                               self.error_status)


cdef class Shards(Gather):
    """Every destination asked at once; answer when the last one replies.

    Fast path (no repeated key): each key has one owner, and memcached
    answers a get with its hits in the order asked, so the reply is built by
    walking the request keys and each owner's reply with a cursor and copying
    every VALUE block once into the final bytes: no object per value.  With a
    repeated key, the general merge of Gather."""

    cdef public int left
    cdef list owners          # owners[i]: index of the destination of keys[i]
    cdef dict subs            # destination index → its sub-request (each owned by self:
                              # a cycle, broken once the last reply is in)

    cpdef on_reply(self, Request sub):
        if self.owners is None:
            self.take(sub, False)
        self.left -= 1
        if self.left == 0:
            if self.owners is None:
                self.finish()
            else:
                self.assemble()
            self.subs = None          # no cycle left for the garbage collector

    cdef assemble(self):
        cdef Py_ssize_t nkeys = len(self.keys), total = 0, i, k, n, pos, le, start, stop
        cdef Py_ssize_t *cursor = NULL
        cdef Py_ssize_t *spans = NULL          # per key: start, stop in its owner's reply
        cdef Request sub
        cdef dict replies = {}                 # destination index → reply, if it answered
        cdef bytes reply, key, out
        cdef const unsigned char *p
        cdef char *dst
        for idx, sub in self.subs.items():
            reply = sub.reply if sub.reply is not None else b""
            if sub.status == ST_ERROR or not reply.endswith(END):
                self.error = reply             # an error: these keys stay missing
                self.error_status = sub.status
            else:
                self.answered = True
                replies[idx] = reply
        if not self.answered:
            self.finish()
            return
        cursor = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * (max(self.subs) + 1))
        spans = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * 2 * nkeys)
        if cursor == NULL or spans == NULL:
            PyMem_Free(cursor)
            PyMem_Free(spans)
            raise MemoryError()
        try:
            for idx in self.subs:
                cursor[<Py_ssize_t>idx] = 0
            for i in range(nkeys):
                spans[2 * i] = spans[2 * i + 1] = 0
                k = self.owners[i]
                reply = replies.get(k)
                if reply is None:
                    continue
                key = self.keys[i]
                p = <const unsigned char *>PyBytes_AS_STRING(reply)
                n = PyBytes_GET_SIZE(reply)
                pos = cursor[k]
                stop = value_end(p, n, pos, key)
                if stop > 0:
                    spans[2 * i] = pos
                    spans[2 * i + 1] = stop
                    cursor[k] = stop
                    total += stop - pos
            out = PyBytes_FromStringAndSize(NULL, total + 5)
            dst = PyBytes_AS_STRING(out)
            for i in range(nkeys):
                start = spans[2 * i]
                stop = spans[2 * i + 1]
                if stop:
                    memcpy(dst, PyBytes_AS_STRING(replies[self.owners[i]]) + start, stop - start)
                    dst += stop - start
            memcpy(dst, b"END\r\n", 5)
        finally:
            PyMem_Free(cursor)
            PyMem_Free(spans)
        self.parent.finish(out, ST_OK if total else ST_FAIL)


cdef Py_ssize_t value_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos, bytes key):
    """If ``p[pos:]`` starts with the VALUE block of ``key``, the index just
    past it; else 0."""
    cdef Py_ssize_t kl = PyBytes_GET_SIZE(key), i
    cdef long size = 0
    cdef const unsigned char *nl
    if n - pos < 7 + kl or memcmp(p + pos, b"VALUE ", 6) != 0 \
            or memcmp(p + pos + 6, PyBytes_AS_STRING(key), kl) != 0 or p[pos + 6 + kl] != 32:
        return 0
    nl = <const unsigned char *>memchr(p + pos, 10, n - pos)
    if nl == NULL:
        return 0
    i = pos + 7 + kl
    while i < n and p[i] != 32:         # flags
        i += 1
    i += 1
    while i < n and p[i] >= 48 and p[i] <= 57:
        size = size * 10 + (p[i] - 48)
        i += 1
    i = (nl - p) + 1 + size + 2
    return i if i <= n else 0


cpdef tuple group_keys(Request req, Hasher hasher, object pick):
    """Group a multi-key request's keys by destination, the index given by
    ``hasher`` or else by ``pick(key)``: ({index: [keys]}, owners), keys in
    request order within each group; ``owners[i]`` is the destination of
    ``keys[i]``.  A get's repeated keys are asked once (owners is None then);
    a gat's are not: each one touches the item, and memcached answers a
    repeat as it stands after the touch before it (gone, if that expired it)."""
    cdef dict out = {}
    cdef set seen = set()
    cdef list owners = []
    cdef bytes k
    cdef int i
    cdef bint unique = req.cmd != CMD_GAT and req.cmd != CMD_GATS
    for k in req.keys:
        if unique and k in seen:
            owners = None
            continue
        seen.add(k)
        i = hasher.index(k) if hasher is not None else pick(k)
        if owners is not None:
            owners.append(i)
        lst = out.get(i)
        if lst is None:
            out[i] = [k]
        else:
            lst.append(k)
    return out, owners


cpdef split(Request req, list routes, tuple grouping):
    """Send each group of ``req``'s keys to its route; the client gets one
    merged reply.  ``grouping`` is what group_keys returns."""
    cdef dict groups = grouping[0]
    if len(groups) == 1:
        for i in groups:
            routes[i].dispatch(req)       # one destination: the request as it is
        return
    cdef Shards shards = Shards(req)
    shards.left = len(groups)
    shards.owners = grouping[1]
    shards.subs = {}
    cdef bytes prefix = retrieval_prefix(req)
    cdef Request sub
    for i, keys in groups.items():
        sub = for_keys(req, shards, prefix, keys)
        shards.subs[i] = sub
        routes[i].dispatch(sub)
