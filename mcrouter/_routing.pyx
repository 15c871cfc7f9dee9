# cython: language_level=3
"""The per-request part of the route tree (hot path).

Route handles are Python objects (routes/), but the few steps every request
takes run here, so a request crosses the tree without entering the
interpreter: ``TableDispatch`` (OperationSelectorRoute: a lookup by command),
``HashDispatch`` (PoolRoute/HashRoute: a key's destination), ``HostDispatch``
(a host, or the router's error when it is down), the routes over an ordered
pool (``DefaultDispatch``, ``MissFailoverDispatch``, ``AllFastestDispatch``),
and the multi-key get.  Every handle is a ``Node``: a parent calls a child
through the C vtable, and a Python route's own ``dispatch`` is found there.

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

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t
from libc.string cimport memchr, memcmp, memcpy

from mcrouter._hash cimport INDEX_MANY_, Hasher
from mcrouter._metrics cimport local, G_ROUTES, R_FAILOVER, R_MISS_FAILOVER, R_FANOUT
from mcrouter._parser cimport (Owner, Request, CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS, CMD_STATS,
                               ST_OK, ST_FAIL, ST_ERROR, TAKE_NO, TAKE_YES)
from mcrouter._upstream cimport HostBase
from mcrouter import protocol

cdef extern from *:
    """
    static inline int mcr_lowest_bit(unsigned long long m) { return __builtin_ctzll(m); }
    static inline int mcr_popcount(unsigned long long m) { return __builtin_popcountll(m); }
    """
    int mcr_lowest_bit(unsigned long long m) nogil
    int mcr_popcount(unsigned long long m) nogil

cdef bytes END = b"END\r\n"

DEF SMALL_KEYS = 24         # a Shards keeps the slots of this many keys in itself
DEF SMALL_SLOTS = 32        # merges over this many destinations use the stack
cdef bytes R_NO_HEALTHY = protocol.NO_HEALTHY_UPSTREAM
cdef bytes R_UPSTREAM_ERROR = protocol.UPSTREAM_ERROR


cdef class Node:
    """Base of every route handle (routes/base.py: Route): a parent calls its
    children's ``dispatch`` through the C vtable, whether it is compiled (the
    *Dispatch classes below) or Python (a subclass's own ``dispatch``)."""

    cpdef dispatch(self, Request req):
        raise NotImplementedError(f"{type(self).__name__} has no dispatch")


cdef inline route_to(object node, Request req):
    """``node.dispatch(req)``: a C call for a Node (anything else: a stand-in)."""
    if isinstance(node, Node):
        (<Node>node).dispatch(req)
    else:
        node.dispatch(req)


cdef class TableDispatch(Node):
    """Base of OperationSelectorRoute: a child per command id."""

    cdef public list table

    cpdef dispatch(self, Request req):
        route_to(self.table[req.cmd], req)


cdef class HostDispatch(Node):
    """Base of HostRoute: the host, or at once the router's error when the
    host is down (so that the routes above can fail over)."""

    cdef public HostBase host

    cpdef dispatch(self, Request req):
        cdef HostBase host = self.host
        if host.healthy:
            host.send(req)
        else:
            req.finish(R_NO_HEALTHY, ST_ERROR)


# -- routes over an ordered pool of hosts (routes/simple.py, failover.py, fanout.py) --
#
# Their state per request lives in the request itself while it is in their
# hands (Request.todo, note, note_fail; a copy's ``parent``), and their copies'
# replies go to one owner per route (MissFailover) or per process (RACE): no
# object per request but the copies themselves.

DEF MASK_HOSTS = 64         # pools up to this size keep their healthy hosts in Request.todo

cdef class HostListDispatch(Node):
    """Base of HostListRoute: the pool, as ``upstream.Host`` objects (C calls
    to their health and ``send``)."""

    cdef tuple hosts

    @property
    def pool(self):
        return self.hosts

    @pool.setter
    def pool(self, value):
        cdef tuple hosts = tuple(value)
        for h in hosts:
            if not isinstance(h, HostBase):
                raise TypeError(f"a pool holds upstream hosts, not {type(h).__name__}")
        self.hosts = hosts
        self.pool_changed()

    cdef pool_changed(self):
        pass

    cdef unsigned long long healthy_mask(self):
        """Bit i set: ``hosts[i]`` is healthy (pools of at most 64 hosts)."""
        cdef tuple hosts = self.hosts
        cdef Py_ssize_t i
        cdef unsigned long long mask = 0
        for i in range(len(hosts)):
            if (<HostBase>hosts[i]).healthy:
                mask |= 1ULL << i
        return mask


cdef class DefaultDispatch(HostListDispatch):
    """Base of DefaultRoute: the first healthy host; its reply is forwarded."""

    cpdef dispatch(self, Request req):
        cdef tuple hosts = self.hosts
        cdef Py_ssize_t i
        cdef HostBase host
        for i in range(len(hosts)):
            host = <HostBase>hosts[i]
            if host.healthy:
                if i:
                    local().add(G_ROUTES + R_FAILOVER, 1)
                host.send(req)
                return
        req.finish(R_NO_HEALTHY, ST_ERROR)


cdef inline void note_reply(Request parent, Request sub):
    """Attempts.note: remember a copy's failure reply, or its error."""
    if sub.status == ST_FAIL:
        parent.note = sub.reply
        parent.note_fail = True
    elif not parent.note_fail:
        parent.note = sub.reply


cdef inline give_up(Request parent):
    """Attempts.give_up: the last failure if there was one (a real memcached
    reply beats the router's own error), else the last error."""
    note = parent.note
    parent.note = None
    if parent.note_fail:
        parent.finish(note, ST_FAIL)
    else:
        parent.finish(note or R_UPSTREAM_ERROR, ST_ERROR)


cdef class MissFailover(Owner):
    """The owner of a MissFailoverRoute's copies: a single-key request's hosts
    in order (those healthy when it came, bits of ``parent.todo``) until one
    succeeds; a miss or any failure moves on.  The first success, else the
    last failure, else the last error (routes/failover.py's _Chain)."""

    cdef tuple hosts

    cdef start(self, Request req, unsigned long long mask):
        req.todo = mask
        req.note = None
        req.note_fail = False
        self.next(req)

    cdef next(self, Request parent):
        cdef unsigned long long m = parent.todo
        cdef Request sub = parent.child(self)
        parent.todo = m & (m - 1)
        sub.parent = parent
        (<HostBase>self.hosts[mcr_lowest_bit(m)]).send(sub)

    cpdef on_reply(self, Request sub):
        cdef Request parent = sub.parent
        reply = sub.reply or b""
        if sub.status == ST_OK or reply.startswith(b"CLIENT_ERROR "):
            # a CLIENT_ERROR is about the request: every host would say the same
            parent.note = None
            parent.finish(reply, sub.status)
            return
        note_reply(parent, sub)
        if parent.todo:
            local().add(G_ROUTES + (R_FAILOVER if sub.status == ST_ERROR else R_MISS_FAILOVER), 1)
            self.next(parent)
        else:
            give_up(parent)


cdef class MissFailoverDispatch(HostListDispatch):
    """Base of MissFailoverRoute: a single-key request through MissFailover;
    a multi-key get (MissChain) or a pool of more than 64 hosts through the
    subclass's ``chain``."""

    cdef MissFailover failover

    def __cinit__(self):
        self.failover = MissFailover()

    cdef pool_changed(self):
        self.failover.hosts = self.hosts

    cpdef dispatch(self, Request req):
        cdef unsigned long long mask
        if req.keys is not None or len(self.hosts) > MASK_HOSTS:
            self.chain(req)
            return
        mask = self.healthy_mask()
        if mask == 0:
            req.finish(R_NO_HEALTHY, ST_ERROR)
        else:
            self.failover.start(req, mask)


cdef class Race(Owner):
    """The owner of AllFastestRoute's copies: the first success is forwarded
    at once; if none succeeds, the last failure, else the last error.  The
    copies still out are counted in ``parent.todo``."""

    cpdef on_reply(self, Request sub):
        cdef Request parent = sub.parent
        parent.todo -= 1
        if parent.reply is not None:
            return                      # already answered: the rest finish in the background
        if sub.status == ST_OK:
            parent.note = None
            parent.finish(sub.reply or b"", ST_OK)
            return
        note_reply(parent, sub)
        if parent.todo == 0:
            give_up(parent)


cdef Race RACE = Race()


cdef class AllFastestDispatch(HostListDispatch):
    """Base of AllFastestRoute: a copy to every host healthy when the request
    came (one healthy: the request itself); the first success wins (Race)."""

    cpdef dispatch(self, Request req):
        cdef tuple hosts = self.hosts
        cdef unsigned long long mask
        cdef list up
        if len(hosts) > MASK_HOSTS:
            up = [h for h in hosts if (<HostBase>h).healthy]
            if not up:
                req.finish(R_NO_HEALTHY, ST_ERROR)
            elif len(up) == 1:
                (<HostBase>up[0]).send(req)
            else:
                start_race(req, len(up))
                for h in up:
                    race_copy(req, <HostBase>h)
            return
        mask = self.healthy_mask()
        if mask == 0:
            req.finish(R_NO_HEALTHY, ST_ERROR)
        elif mask & (mask - 1) == 0:
            (<HostBase>hosts[mcr_lowest_bit(mask)]).send(req)
        else:
            start_race(req, mcr_popcount(mask))
            while mask:         # a send may mark its own host down: the mask was taken before
                race_copy(req, <HostBase>hosts[mcr_lowest_bit(mask)])
                mask &= mask - 1


cdef inline void start_race(Request req, Py_ssize_t copies):
    local().add(G_ROUTES + R_FANOUT, 1)
    req.todo = copies
    req.note = None
    req.note_fail = False


cdef inline race_copy(Request req, HostBase host):
    cdef Request sub = req.child(RACE)
    sub.parent = req
    host.send(sub)


cdef class ServiceDispatch(Node):
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
            route_to(self.tree, req)


cdef class HashDispatch(Node):
    """Base of PoolRoute/HashRoute: a keyed request to the child its key
    hashes to, a multi-key get split by child, the rest by command."""

    cdef public list children
    cdef public Hasher hasher
    cdef public list keyless          # by command id, for requests without a key

    cpdef dispatch(self, Request req):
        if req.keys is not None:
            split_hashed(req, self.children, self.hasher, None)
        elif len(req.key):
            route_to(self.children[self.hasher.index(req.key)], req)
        else:
            route_to(self.keyless[req.cmd], req)


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
        if req.keys is not None:
            if not split_hashed(req, self.children, self.hasher, self.up_mask()):
                split(req, self.routes, self.regroup(req))      # some destination is down
        elif len(req.key):
            i = self.hasher.index(req.key)
            child = self.children[i]
            if child.host.healthy:
                route_to(child, req)
            else:
                route_to(self.routes[self.destination(req.key, self.up_mask())], req)
        else:
            route_to(self.keyless[req.cmd], req)

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


cpdef Request for_keys(Request parent, Owner owner, bytes prefix, list keys):
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


cdef Py_ssize_t next_value(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos,
                           Py_ssize_t *ks, Py_ssize_t *ke):
    """If ``p[pos:n]`` starts with a whole ``VALUE <key> <flags> <bytes>[ <cas>]``
    block, the index just past it (its key at ``p[ks:ke]``); else 0.  The
    replies walked here were checked by the ring (scan_reply)."""
    cdef Py_ssize_t le, i
    cdef long size = 0
    cdef const unsigned char *nl
    if n - pos <= 6 or memcmp(p + pos, b"VALUE ", 6) != 0:
        return 0
    nl = <const unsigned char *>memchr(p + pos, 10, n - pos)
    if nl == NULL:
        return 0
    le = nl - p + 1                     # just past the line's \n
    ks[0] = pos + 6
    i = pos + 6
    while i < le and p[i] != 32:
        i += 1
    ke[0] = i
    # skip the flags, read the length
    i += 1
    while i < le and p[i] != 32:
        i += 1
    i += 1
    while i < le and p[i] >= 48 and p[i] <= 57:
        size = size * 10 + (p[i] - 48)
        i += 1
    i = le + size + 2
    return i if i <= n else 0


cdef list merge_values(dict found, bytes reply, bint want_hits):
    """Add the VALUE blocks of a get reply to ``found`` (first one per key
    wins); return the [(key, block)] of this reply if ``want_hits``."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply), pos = 0, ks = 0, ke = 0, end
    cdef list hits = []
    while True:
        end = next_value(p, n, pos, &ks, &ke)
        if end == 0:
            break
        key = reply[ks:ke]
        block = reply[pos:end]
        if want_hits:
            hits.append((key, block))
        if key not in found:
            found[key] = block
        pos = end
    return hits


cdef class Gather(Owner):
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
    repeated key, the general merge of Gather.

    Streamed (the fast path, for a request whose owner takes its reply in
    parts): the ring passes a sub-reply's complete values while it arrives
    (``takes_parts``/``on_partial``, asked of the request's owner in turn, so
    the ring's per-reply bound holds for each destination), and every value
    whose place is settled goes on at once, in the request's key order.
    Walking the keys from the last one passed on, a key is settled once its
    destination has passed it (a hit, or a later key of it: a miss) or has
    answered whole; the first unsettled key stops the walk, and only the
    values after it are held.  A destination that fails before anything went
    on costs only its keys, as above; after values went on, the reply ends
    with what was settled and the failure's error line (the single-host
    shape: the client never sees a byte that is not memcached's merged
    reply, or the error that cut it)."""

    cdef public int left
    cdef list subs            # the sub-requests, one per destination (each owned by self:
                              # a cycle, broken once the last reply is in)
    cdef int *slot            # slot[i]: the index in subs of keys[i]'s destination; NULL:
                              # a get's repeated key (the general merge of Gather)
    cdef int small[SMALL_KEYS]  # slot's storage for a request of few keys
    cdef list owners          # streaming: slot[i] as a list
    # streaming state, made at the first part (streaming): see the docstring
    cdef bint streaming
    cdef bint frozen          # a destination failed before anything went on: hold all
    cdef bint closed          # the parent is answered: later parts are dropped
    cdef dict dest            # sub-request → its destination index
    cdef list posin           # posin[i]: index of keys[i] in its destination's keys
    cdef dict indices         # destination → [index in keys of each of its keys]
    cdef dict passed          # destination → how many of its keys it has passed
    cdef set ended            # destinations that answered whole
    cdef dict held            # index in keys → its VALUE block, not yet passed on
    cdef Py_ssize_t emitted   # keys passed on (every earlier one settled)

    def takes_parts(self, Request sub):
        """Whether ``sub``'s complete values go to this merge now: as the
        request's owner takes parts of the request (see ClientConnection)."""
        cdef Request parent = self.parent
        if self.closed:
            return TAKE_YES     # answered already: dropped as they come
        if self.frozen or not parent.stream or self.slot == NULL:
            return TAKE_NO
        return parent.owner.takes_parts(parent)

    def on_partial(self, Request sub, bytes part):
        """Complete values of ``sub``'s reply still arriving: pass on what
        is settled, hold the rest (only after takes_parts allowed it)."""
        cdef Py_ssize_t frontier
        cdef list spans
        if self.closed:
            return
        if not self.streaming:
            self.start_streaming()
        spans = self.record(sub, part)
        if self.frozen:
            self.hold(part, spans)
            return
        if not self.held and spans:
            frontier = self.frontier()
            last = <tuple>spans[len(spans) - 1]
            if last[0] < frontier and last[2] == PyBytes_GET_SIZE(part):
                # every value of the part is settled and none from elsewhere
                # waits among them: the part goes on as it is, uncopied
                self.pass_block(part)
                self.emitted = frontier
                self.parent.cursor = frontier
                return
        self.hold(part, spans)
        self.pass_on()

    def __dealloc__(self):
        if self.slot != NULL and self.slot != self.small:
            PyMem_Free(self.slot)

    cpdef finish(self):
        if self.found is None:
            self.found = {}
        Gather.finish(self)

    cpdef list take(self, Request sub, bint want_hits=True):
        if self.found is None:
            self.found = {}
        return Gather.take(self, sub, want_hits)

    cpdef on_reply(self, Request sub):
        if self.streaming and not self.closed:
            self.streamed_reply(sub)
        elif self.slot == NULL:
            self.take(sub, False)
        self.left -= 1
        if self.left == 0:
            if self.closed:
                pass
            elif self.streaming:
                self.streamed_finish()
            elif self.slot == NULL:
                self.finish()
            else:
                self.assemble()
            self.subs = None          # no cycle left for the garbage collector
            self.dest = None
            self.held = None

    # -- streaming ----------------------------------------------------------

    cdef start_streaming(self):
        """Make the streaming state; take in the destinations already answered."""
        cdef Py_ssize_t i
        cdef list lst
        self.streaming = True
        self.dest = {}
        self.passed = {}
        self.indices = {}
        self.ended = set()
        self.held = {}
        self.posin = []
        self.owners = [self.slot[i] for i in range(len(self.keys))]
        for idx, sub in enumerate(self.subs):
            self.dest[sub] = idx
            self.passed[idx] = 0
            self.indices[idx] = []
        for i in range(len(self.owners)):
            lst = <list>self.indices[self.owners[i]]
            self.posin.append(len(lst))
            lst.append(i)
        for sub in self.subs:
            if (<Request>sub).reply is not None:
                self.take_whole(sub)

    cdef bint take_whole(self, Request sub) except -1:
        """A destination answered: hold its remaining values, mark it ended;
        False if it failed (its error is kept, as Gather.take does)."""
        reply = sub.reply if sub.reply is not None else b""
        if sub.status == ST_ERROR or not reply.endswith(END):
            self.error = reply
            self.error_status = sub.status
            return False
        self.answered = True
        self.hold(reply, self.record(sub, reply))
        self.ended.add(self.dest[sub])
        return True

    cdef streamed_reply(self, Request sub):
        """A destination answered while streaming (the rest of its reply)."""
        cdef Request parent = self.parent
        if self.take_whole(sub):
            if not self.frozen and parent.stream and parent.owner.takes_parts(parent):
                self.pass_on()
        elif parent.streamed == 0:
            self.frozen = True      # costs only its keys, as when not streamed
            self.ended.add(self.dest[sub])
        else:
            # values went on already: what is settled, then the error line
            self.pass_on()
            self.closed = True
            self.held = None
            parent.finish(self.error if self.error else R_UPSTREAM_ERROR, ST_ERROR)

    cdef streamed_finish(self):
        """Every destination answered: the values not yet passed on, then END."""
        cdef Request parent = self.parent
        cdef dict held = self.held
        cdef list rest
        cdef Py_ssize_t i
        if not self.answered and parent.streamed == 0:
            self.finish()           # none answered: the error (found is empty)
            return
        rest = [held[i] for i in range(self.emitted, len(self.keys)) if i in held]
        status = ST_OK if rest or parent.streamed else ST_FAIL
        if rest and not self.frozen and parent.stream and parent.owner.takes_parts(parent):
            for block in rest:
                self.pass_block(block)
            parent.finish(END, status)
        else:
            parent.finish(b"".join(rest) + END, status)

    cdef list record(self, Request sub, bytes data):
        """The (index in keys, start, end) of each VALUE block in ``data``,
        a part of ``sub``'s reply; moves its destination's passed count past
        them (memcached answers hits in the order asked)."""
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0, ks = 0, ke = 0, end, j, nk
        cdef list spans = []
        cdef list keys = sub.keys if sub.keys is not None else [sub.key]
        idx = self.dest[sub]
        cdef list indices = self.indices[idx]
        j = self.passed[idx]
        nk = len(keys)
        while True:
            end = next_value(p, n, pos, &ks, &ke)
            if end == 0:
                break
            key = data[ks:ke]
            while j < nk and keys[j] != key:
                j += 1
            if j == nk:
                break               # not asked (the ring lets none through)
            spans.append((indices[j], pos, end))
            j += 1
            pos = end
        self.passed[idx] = j
        return spans

    cdef hold(self, bytes data, list spans):
        """Keep the blocks ``spans`` of ``data`` until their turn."""
        cdef dict held = self.held
        cdef tuple span
        if len(spans) == 1 and (<tuple>spans[0])[1] == 0 \
                and (<tuple>spans[0])[2] == PyBytes_GET_SIZE(data):
            held[(<tuple>spans[0])[0]] = data
            return
        for span in spans:
            held[span[0]] = data[<Py_ssize_t>span[1]:<Py_ssize_t>span[2]]

    cdef Py_ssize_t frontier(self):
        """The index of the first key whose place is not settled (or len(keys))."""
        cdef Py_ssize_t i = self.emitted, n = len(self.owners)
        cdef list owners = self.owners, posin = self.posin
        cdef dict passed = self.passed
        cdef set ended = self.ended
        while i < n:
            d = owners[i]
            if d not in ended and <Py_ssize_t>passed[d] <= <Py_ssize_t>posin[i]:
                break
            i += 1
        return i

    cdef pass_on(self):
        """Pass on every held value up to the frontier, in key order."""
        cdef Py_ssize_t i, stop = self.frontier()
        cdef dict held = self.held
        for i in range(self.emitted, stop):
            block = held.pop(i, None)
            if block is not None:
                self.pass_block(block)
        self.emitted = stop
        self.parent.cursor = stop

    cdef pass_block(self, bytes block):
        cdef Request parent = self.parent
        parent.owner.on_partial(parent, block)
        parent.streamed += PyBytes_GET_SIZE(block)

    cdef assemble(self):
        """Every destination answered (not streamed): the hits in key order,
        each VALUE block found by walking its destination's reply with a
        cursor (memcached answers in the order asked, misses absent) and
        copied once into the reply."""
        cdef list subs = self.subs, keys = self.keys
        cdef Py_ssize_t m = PyList_GET_SIZE(subs), nkeys = PyList_GET_SIZE(keys)
        cdef Py_ssize_t total = 0, i, s, pos, stop, n
        cdef Py_ssize_t stack[4 * SMALL_SLOTS]
        cdef Py_ssize_t sstack[2 * SMALL_KEYS]
        cdef Py_ssize_t *rp                    # per destination: its reply (0: none) ...
        cdef Py_ssize_t *rn                    # ... its length ...
        cdef Py_ssize_t *cur                   # ... and the cursor in it
        cdef Py_ssize_t *spans                 # per key: start, stop in its destination's reply
        cdef Request sub
        cdef bytes out
        cdef object reply
        cdef const char *p
        cdef char *dst
        cdef int *slot = self.slot
        rp = &stack[0] if m <= SMALL_SLOTS else <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * 3 * m)
        spans = &sstack[0] if nkeys <= SMALL_KEYS else \
            <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * 2 * nkeys)
        if rp == NULL or spans == NULL:
            if rp != &stack[0]:
                PyMem_Free(rp)
            if spans != &sstack[0]:
                PyMem_Free(spans)
            raise MemoryError()
        rn = rp + m
        cur = rn + m
        try:
            for s in range(m):
                sub = <Request>PyList_GET_ITEM(subs, s)
                reply = sub.reply if sub.reply is not None else b""
                n = PyBytes_GET_SIZE(reply)
                p = PyBytes_AS_STRING(reply)
                rp[s] = 0
                if sub.status == ST_ERROR or n < 5 or memcmp(p + n - 5, b"END\r\n", 5) != 0:
                    self.error = reply             # an error: these keys stay missing
                    self.error_status = sub.status
                else:
                    self.answered = True
                    rp[s] = <Py_ssize_t>p
                    rn[s] = n
                    cur[s] = 0
            if not self.answered:
                self.finish()
                return
            for i in range(nkeys):
                s = slot[i]
                spans[2 * i + 1] = 0
                if rp[s] == 0:
                    continue
                pos = cur[s]
                stop = value_end(<const unsigned char *>rp[s], rn[s], pos,
                                 <bytes>PyList_GET_ITEM(keys, i))
                if stop > 0:
                    spans[2 * i] = pos
                    spans[2 * i + 1] = stop
                    cur[s] = stop
                    total += stop - pos
            out = PyBytes_FromStringAndSize(NULL, total + 5)
            dst = PyBytes_AS_STRING(out)
            for i in range(nkeys):
                stop = spans[2 * i + 1]
                if stop:
                    pos = spans[2 * i]
                    memcpy(dst, <const char *>rp[slot[i]] + pos, stop - pos)
                    dst += stop - pos
            memcpy(dst, b"END\r\n", 5)
        finally:
            if rp != &stack[0]:
                PyMem_Free(rp)
            if spans != &sstack[0]:
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


cdef Shards new_shards(Request req, Py_ssize_t nkeys):
    """A Shards for ``req`` (Gather's state set here: no Python __init__ per
    request), with room for ``nkeys`` slots (0: the general merge)."""
    cdef Shards shards = Shards.__new__(Shards)
    shards.parent = req
    shards.keys = req.keys
    shards.error_status = ST_ERROR
    shards.subs = []
    if nkeys == 0:
        shards.slot = NULL
    elif nkeys <= SMALL_KEYS:
        shards.slot = shards.small
    else:
        shards.slot = <int *>PyMem_Malloc(sizeof(int) * nkeys)
        if shards.slot == NULL:
            raise MemoryError()
    return shards


cpdef split(Request req, list routes, tuple grouping):
    """Send each group of ``req``'s keys to its route; the client gets one
    merged reply.  ``grouping`` is what group_keys returns."""
    cdef dict groups = grouping[0]
    cdef list owners = grouping[1]
    cdef Py_ssize_t i
    if len(groups) == 1:
        for i in groups:
            route_to(routes[i], req)      # one destination: the request as it is
        return
    cdef Shards shards = new_shards(req, len(owners) if owners is not None else 0)
    cdef dict slot_of = {}
    cdef list dests = []
    cdef bytes prefix = retrieval_prefix(req)
    cdef Request sub
    cdef bint stream = req.stream and owners is not None
    for i, keys in groups.items():
        slot_of[i] = len(dests)
        dests.append(i)
        sub = for_keys(req, shards, prefix, keys)
        sub.stream = stream         # its values may go on while it arrives (Shards)
        shards.subs.append(sub)
    if owners is not None:
        for i in range(len(owners)):
            shards.slot[i] = slot_of[owners[i]]
    shards.left = len(dests)
    for i in range(len(dests)):
        route_to(routes[dests[i]], shards.subs[i])


cdef split_hashed(Request req, list routes, Hasher hasher, bytes up):
    """split(req, routes, group_keys(req, hasher, None)) without the
    grouping's objects: each key's destination in a C array, each
    sub-request's keys and wire made at their final size.  A get's keys
    are distinct here (the parser names a repeated key once); a gat's
    repeats are each asked, as group_keys does.  With ``up`` (a
    PolicyDispatch's health of ``routes``): False if a destination is
    down, and nothing was sent."""
    cdef list keys = req.keys, lst
    cdef Py_ssize_t n = PyList_GET_SIZE(keys), nr = PyList_GET_SIZE(routes), i, s, m = 0
    cdef Py_ssize_t ms = n if n < nr else nr
    cdef Py_ssize_t need = nr + 4 * ms, d, kl
    cdef Py_ssize_t stack[4 * SMALL_SLOTS + 64]
    cdef Py_ssize_t *buf
    cdef Py_ssize_t *rslot          # per route: its slot, or -1
    cdef Py_ssize_t *sroute         # per slot: its route ...
    cdef Py_ssize_t *scount         # ... how many keys ...
    cdef Py_ssize_t *slen           # ... its wire's length, then its fill position
    cdef Py_ssize_t *sfill          # ... keys placed so far
    cdef Shards shards = new_shards(req, n)
    cdef int *slot = shards.slot
    cdef bytes k, prefix, wire
    cdef Request sub
    cdef list wires, lists
    cdef Py_ssize_t plen
    cdef char *dst
    cdef bint stream = req.stream
    cdef int kd[INDEX_MANY_]
    buf = &stack[0] if need <= 4 * SMALL_SLOTS + 64 else <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * need)
    if buf == NULL:
        raise MemoryError()
    rslot = buf
    sroute = rslot + nr
    scount = sroute + ms
    slen = scount + ms
    sfill = slen + ms
    try:
        if req.cmd == CMD_GET:
            prefix = b"get"
        elif req.cmd == CMD_GETS:
            prefix = b"gets"
        else:
            prefix = retrieval_prefix(req)
        plen = PyBytes_GET_SIZE(prefix)
        for i in range(nr):
            rslot[i] = -1
        for i in range(n):
            if i % INDEX_MANY_ == 0:        # the next few keys placed together
                hasher.index_chunk(keys, i, kd)
            k = <bytes>PyList_GET_ITEM(keys, i)
            d = kd[i % INDEX_MANY_]
            if d < 0 or d >= nr:
                raise IndexError(f"the hasher placed a key at {d}, past the {nr} routes")
            s = rslot[d]
            if s < 0:
                s = rslot[d] = m
                sroute[m] = d
                scount[m] = 0
                slen[m] = plen + 2
                m += 1
            slot[i] = <int>s
            scount[s] += 1
            slen[s] += 1 + PyBytes_GET_SIZE(k)
        if up is not None:
            for s in range(m):
                if not (<const unsigned char *>PyBytes_AS_STRING(up))[sroute[s]]:
                    return False
        if m == 1:
            route_to(routes[sroute[0]], req)      # one destination: the request as it is
            return True
        # each sub-request's keys and wire, at their final size, in one pass over the keys
        wires = []
        lists = []
        for s in range(m):
            wire = PyBytes_FromStringAndSize(NULL, slen[s])
            dst = PyBytes_AS_STRING(wire)
            memcpy(dst, PyBytes_AS_STRING(prefix), plen)
            memcpy(dst + slen[s] - 2, b"\r\n", 2)
            slen[s] = plen
            sfill[s] = 0
            wires.append(wire)
            lists.append(PyList_New(scount[s]))
        for i in range(n):
            k = <bytes>PyList_GET_ITEM(keys, i)
            s = slot[i]
            kl = PyBytes_GET_SIZE(k)
            dst = PyBytes_AS_STRING(<bytes>PyList_GET_ITEM(wires, s)) + slen[s]
            dst[0] = 32
            memcpy(dst + 1, PyBytes_AS_STRING(k), kl)
            slen[s] += 1 + kl
            Py_INCREF(k)
            PyList_SET_ITEM(<list>PyList_GET_ITEM(lists, s), sfill[s], k)
            sfill[s] += 1
        for s in range(m):
            sub = req.child(shards)
            lst = <list>PyList_GET_ITEM(lists, s)
            sub.wire = <bytes>PyList_GET_ITEM(wires, s)
            sub.key = <bytes>PyList_GET_ITEM(lst, 0)
            sub.keys = lst if scount[s] > 1 else None
            sub.stream = stream     # its values may go on while it arrives (Shards)
            shards.subs.append(sub)
        shards.left = <int>m
        for s in range(m):
            route_to(routes[sroute[s]], <Request>PyList_GET_ITEM(shards.subs, s))
        return True
    finally:
        if buf != &stack[0]:
            PyMem_Free(buf)
