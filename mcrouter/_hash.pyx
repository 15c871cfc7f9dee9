# cython: language_level=3
"""Key hashing and consistent placement (hot path).

Hashing is a specification, not an implementation detail: a fleet moving
from twemproxy must find every key on the server twemproxy put it on.  So
the key hashes are twemproxy's (``src/hashkit/``), bit for bit, including
its C quirks: keys are read as *signed* chars where twemproxy does so
(``fnv1a_64``, ``fnv1_64``, ``fnv1_32``, ``fnv1a_32``, ``one_at_a_time``
sign-extend bytes >= 0x80), ``crc32`` is twemproxy's 15-bit variant and
``crc32a`` the full CRC-32, and ``fnv1a_64`` keeps only 32 bits of state.

Distributions:

* ``ketama``: twemproxy's continuum (``nc_ketama.c``): 160 points per server
  scaled by weight, computed in single-precision float as twemproxy does,
  four points per MD5 of ``"<name>-<i>"``; a key goes to the first point at
  or after its hash, wrapping.  A server's name is ``host:port``, or just
  ``host`` when the port is 11211 (libmemcached's convention, kept by
  twemproxy).  Checked against a real nutcracker by
  ``test_same_servers_as_twemproxy`` in ``tests/integration/test_pool_route.py``,
  and offline against its recorded answers by ``tests/unit/test_hash.py``.
* ``jump``: Lamping and Veach's jump consistent hash of the key hash.
* ``rendezvous``: weighted highest-random-weight: each server scores
  ``-weight / ln(u)``, ``u`` a uniform number from the key hash and the
  server's name; the highest score wins.

Which part of the key is hashed: everything before a hash stop (``|#|``),
or what is between a hash tag's two characters (``{}``: the first ``{``,
the next ``}``, non-empty, as twemproxy's ``hash_tag``); then the salt is
appended.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int8_t, int64_t
from libc.string cimport memcpy, memcmp, memchr
from libc.stdlib cimport malloc, free
from libc.math cimport floorf, log
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define MCR_LITTLE_ENDIAN 1
    #else
    #define MCR_LITTLE_ENDIAN 0
    #endif
    """
    const bint LITTLE_ENDIAN "MCR_LITTLE_ENDIAN"

cdef extern from "_md5x.h" nogil:
    enum:
        MD5X_LANES                  # keys hashed side by side (index_many)
        MD5X_MAX_KEY                # the longest key that fits one block
    void md5x_first_words(const uint8_t **p, const size_t *n, int count, uint32_t *out)

if INDEX_MANY_ != MD5X_LANES:
    raise ImportError("_hash.pxd's INDEX_MANY_ must equal _md5x.h's MD5X_LANES")

cdef extern from "string.h":
    void *memmem(const void *haystack, size_t hl, const void *needle, size_t nl)

# ---------------------------------------------------------------------------
# key hashes (twemproxy's hashkit)

DEF H_ONE_AT_A_TIME = 0
DEF H_MD5 = 1
DEF H_CRC16 = 2
DEF H_CRC32 = 3
DEF H_CRC32A = 4
DEF H_FNV1_64 = 5
DEF H_FNV1A_64 = 6
DEF H_FNV1_32 = 7
DEF H_FNV1A_32 = 8
DEF H_MURMUR = 9

FUNCTIONS = ("one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
             "fnv1_32", "fnv1a_32", "murmur")
DISTRIBUTIONS = ("ketama", "jump", "rendezvous")

cdef uint32_t CRC32_TABLE[256]
cdef uint32_t CRC16_TABLE[256]


cdef void _init_tables():
    cdef uint32_t c, n, k
    for n in range(256):
        c = n
        for k in range(8):
            c = (0xEDB88320U ^ (c >> 1)) if (c & 1) else (c >> 1)
        CRC32_TABLE[n] = c
        c = n << 8                      # CRC-16/XMODEM (twemproxy's crc16tab)
        for k in range(8):
            c = ((c << 1) ^ 0x1021) if (c & 0x8000) else (c << 1)
        CRC16_TABLE[n] = c & 0xFFFF


_init_tables()


# MD5 (RFC 1321), for the ketama points and the md5 key hash.
cdef inline uint32_t rotl(uint32_t x, int c) nogil:
    return (x << c) | (x >> (32 - c))


cdef inline uint32_t step_f(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x,
                            int s, uint32_t k) noexcept nogil:
    return rotl(a + ((b & c) | (~b & d)) + x + k, s) + b


cdef inline uint32_t step_g(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x,
                            int s, uint32_t k) noexcept nogil:
    return rotl(a + ((d & b) | (~d & c)) + x + k, s) + b


cdef inline uint32_t step_h(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x,
                            int s, uint32_t k) noexcept nogil:
    return rotl(a + (b ^ c ^ d) + x + k, s) + b


cdef inline uint32_t step_i(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x,
                            int s, uint32_t k) noexcept nogil:
    return rotl(a + (c ^ (b | ~d)) + x + k, s) + b


cdef void md5_block(uint32_t *st, const uint8_t *blk) noexcept nogil:
    """One 64-byte block, its 64 steps written out (the RFC's order, message
    word and shift per step; constants floor(abs(sin(i + 1)) * 2**32)): a
    loop choosing them per step cost about 2,000 instructions a block, 3x this."""
    cdef uint32_t m[16]
    cdef uint32_t a = st[0], b = st[1], c = st[2], d = st[3]
    cdef int i
    if LITTLE_ENDIAN:
        memcpy(m, blk, 64)          # the words are little-endian: as they lie
    else:
        for i in range(16):
            m[i] = (<uint32_t>blk[4 * i] | (<uint32_t>blk[4 * i + 1] << 8)
                    | (<uint32_t>blk[4 * i + 2] << 16) | (<uint32_t>blk[4 * i + 3] << 24))
    a = step_f(a, b, c, d, m[0], 7, 0xd76aa478U)
    d = step_f(d, a, b, c, m[1], 12, 0xe8c7b756U)
    c = step_f(c, d, a, b, m[2], 17, 0x242070dbU)
    b = step_f(b, c, d, a, m[3], 22, 0xc1bdceeeU)
    a = step_f(a, b, c, d, m[4], 7, 0xf57c0fafU)
    d = step_f(d, a, b, c, m[5], 12, 0x4787c62aU)
    c = step_f(c, d, a, b, m[6], 17, 0xa8304613U)
    b = step_f(b, c, d, a, m[7], 22, 0xfd469501U)
    a = step_f(a, b, c, d, m[8], 7, 0x698098d8U)
    d = step_f(d, a, b, c, m[9], 12, 0x8b44f7afU)
    c = step_f(c, d, a, b, m[10], 17, 0xffff5bb1U)
    b = step_f(b, c, d, a, m[11], 22, 0x895cd7beU)
    a = step_f(a, b, c, d, m[12], 7, 0x6b901122U)
    d = step_f(d, a, b, c, m[13], 12, 0xfd987193U)
    c = step_f(c, d, a, b, m[14], 17, 0xa679438eU)
    b = step_f(b, c, d, a, m[15], 22, 0x49b40821U)
    a = step_g(a, b, c, d, m[1], 5, 0xf61e2562U)
    d = step_g(d, a, b, c, m[6], 9, 0xc040b340U)
    c = step_g(c, d, a, b, m[11], 14, 0x265e5a51U)
    b = step_g(b, c, d, a, m[0], 20, 0xe9b6c7aaU)
    a = step_g(a, b, c, d, m[5], 5, 0xd62f105dU)
    d = step_g(d, a, b, c, m[10], 9, 0x02441453U)
    c = step_g(c, d, a, b, m[15], 14, 0xd8a1e681U)
    b = step_g(b, c, d, a, m[4], 20, 0xe7d3fbc8U)
    a = step_g(a, b, c, d, m[9], 5, 0x21e1cde6U)
    d = step_g(d, a, b, c, m[14], 9, 0xc33707d6U)
    c = step_g(c, d, a, b, m[3], 14, 0xf4d50d87U)
    b = step_g(b, c, d, a, m[8], 20, 0x455a14edU)
    a = step_g(a, b, c, d, m[13], 5, 0xa9e3e905U)
    d = step_g(d, a, b, c, m[2], 9, 0xfcefa3f8U)
    c = step_g(c, d, a, b, m[7], 14, 0x676f02d9U)
    b = step_g(b, c, d, a, m[12], 20, 0x8d2a4c8aU)
    a = step_h(a, b, c, d, m[5], 4, 0xfffa3942U)
    d = step_h(d, a, b, c, m[8], 11, 0x8771f681U)
    c = step_h(c, d, a, b, m[11], 16, 0x6d9d6122U)
    b = step_h(b, c, d, a, m[14], 23, 0xfde5380cU)
    a = step_h(a, b, c, d, m[1], 4, 0xa4beea44U)
    d = step_h(d, a, b, c, m[4], 11, 0x4bdecfa9U)
    c = step_h(c, d, a, b, m[7], 16, 0xf6bb4b60U)
    b = step_h(b, c, d, a, m[10], 23, 0xbebfbc70U)
    a = step_h(a, b, c, d, m[13], 4, 0x289b7ec6U)
    d = step_h(d, a, b, c, m[0], 11, 0xeaa127faU)
    c = step_h(c, d, a, b, m[3], 16, 0xd4ef3085U)
    b = step_h(b, c, d, a, m[6], 23, 0x04881d05U)
    a = step_h(a, b, c, d, m[9], 4, 0xd9d4d039U)
    d = step_h(d, a, b, c, m[12], 11, 0xe6db99e5U)
    c = step_h(c, d, a, b, m[15], 16, 0x1fa27cf8U)
    b = step_h(b, c, d, a, m[2], 23, 0xc4ac5665U)
    a = step_i(a, b, c, d, m[0], 6, 0xf4292244U)
    d = step_i(d, a, b, c, m[7], 10, 0x432aff97U)
    c = step_i(c, d, a, b, m[14], 15, 0xab9423a7U)
    b = step_i(b, c, d, a, m[5], 21, 0xfc93a039U)
    a = step_i(a, b, c, d, m[12], 6, 0x655b59c3U)
    d = step_i(d, a, b, c, m[3], 10, 0x8f0ccc92U)
    c = step_i(c, d, a, b, m[10], 15, 0xffeff47dU)
    b = step_i(b, c, d, a, m[1], 21, 0x85845dd1U)
    a = step_i(a, b, c, d, m[8], 6, 0x6fa87e4fU)
    d = step_i(d, a, b, c, m[15], 10, 0xfe2ce6e0U)
    c = step_i(c, d, a, b, m[6], 15, 0xa3014314U)
    b = step_i(b, c, d, a, m[13], 21, 0x4e0811a1U)
    a = step_i(a, b, c, d, m[4], 6, 0xf7537e82U)
    d = step_i(d, a, b, c, m[11], 10, 0xbd3af235U)
    c = step_i(c, d, a, b, m[2], 15, 0x2ad7d2bbU)
    b = step_i(b, c, d, a, m[9], 21, 0xeb86d391U)
    st[0] += a
    st[1] += b
    st[2] += c
    st[3] += d


cdef void md5(const uint8_t *p, size_t n, uint8_t *out) noexcept nogil:
    cdef uint32_t st[4]
    cdef uint8_t tail[128]
    cdef size_t i, rest, tl
    cdef uint64_t bits = (<uint64_t>n) * 8
    st[0] = 0x67452301
    st[1] = 0xefcdab89U
    st[2] = 0x98badcfeU
    st[3] = 0x10325476
    i = 0
    while i + 64 <= n:
        md5_block(st, p + i)
        i += 64
    rest = n - i
    memcpy(tail, p + i, rest)
    tail[rest] = 0x80
    tl = 64 if rest < 56 else 128
    for i in range(rest + 1, tl - 8):
        tail[i] = 0
    for i in range(8):
        tail[tl - 8 + i] = (bits >> (8 * i)) & 0xFF
    md5_block(st, tail)
    if tl == 128:
        md5_block(st, tail + 64)
    for i in range(16):
        out[i] = (st[i >> 2] >> (8 * (i & 3))) & 0xFF


cdef inline uint32_t le32(const uint8_t *d) noexcept nogil:
    return <uint32_t>d[0] | (<uint32_t>d[1] << 8) | (<uint32_t>d[2] << 16) | (<uint32_t>d[3] << 24)


cdef uint32_t key_hash(int fn, const uint8_t *p, size_t n) noexcept nogil:
    """twemproxy's hash_<fn>(key, n); (uint32_t)(int8_t) mirrors its signed char reads."""
    cdef uint32_t h, k
    cdef uint64_t h64
    cdef uint8_t digest[16]
    cdef size_t i
    if fn == H_FNV1A_64:
        h = 0x84222325U                   # (uint32_t)FNV_64_INIT
        for i in range(n):
            h ^= <uint32_t><int8_t>p[i]
            h *= 0x1b3                   # (uint32_t)FNV_64_PRIME
        return h
    if fn == H_FNV1_64:
        h64 = 0xcbf29ce484222325ULL
        for i in range(n):
            h64 *= 0x100000001b3ULL
            h64 ^= <uint64_t><int8_t>p[i]
        return <uint32_t>h64
    if fn == H_FNV1_32 or fn == H_FNV1A_32:
        h = 2166136261U
        for i in range(n):
            if fn == H_FNV1_32:
                h *= 16777619
                h ^= <uint32_t><int8_t>p[i]
            else:
                h ^= <uint32_t><int8_t>p[i]
                h *= 16777619
        return h
    if fn == H_MD5:
        md5(p, n, digest)
        return le32(digest)
    if fn == H_CRC32:
        h = 0xFFFFFFFFU
        for i in range(n):
            h = (h >> 8) ^ CRC32_TABLE[(h ^ p[i]) & 0xFF]
        return ((~h) >> 16) & 0x7FFF
    if fn == H_CRC32A:
        h = 0xFFFFFFFFU
        for i in range(n):
            h = CRC32_TABLE[(h ^ p[i]) & 0xFF] ^ (h >> 8)
        return h ^ 0xFFFFFFFFU
    if fn == H_CRC16:
        h = 0
        for i in range(n):
            h = (h << 8) ^ CRC16_TABLE[((h >> 8) ^ <uint32_t><int8_t>p[i]) & 0xFF]
        return h
    if fn == H_MURMUR:
        h = (0xdeadbeefU * <uint32_t>n) ^ <uint32_t>n
        i = 0
        while n - i >= 4:
            k = le32(p + i) * 0x5bd1e995
            k ^= k >> 24
            k *= 0x5bd1e995
            h = (h * 0x5bd1e995) ^ k
            i += 4
        if n - i == 3:
            h ^= (<uint32_t>p[i + 2]) << 16
        if n - i >= 2:
            h ^= (<uint32_t>p[i + 1]) << 8
        if n - i >= 1:
            h ^= p[i]
            h *= 0x5bd1e995
        h ^= h >> 13
        h *= 0x5bd1e995
        h ^= h >> 15
        return h
    # one_at_a_time
    h = 0
    for i in range(n):
        h += <uint32_t><int8_t>p[i]
        h += h << 10
        h ^= h >> 6
    h += h << 3
    h ^= h >> 11
    h += h << 15
    return h


cdef dict FUNCTION_INDEX = {name: i for i, name in enumerate(FUNCTIONS)}


def hash_key(str function, bytes key):
    """The 32-bit hash twemproxy's ``hash: <function>`` gives ``key``."""
    cdef object fn = FUNCTION_INDEX.get(function)
    if fn is None:
        raise ValueError(f"{function!r} is not in FUNCTIONS")
    return key_hash(fn, <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


def index_many(Hasher hasher, list keys):
    """[hasher.index(k) for k in keys] through Hasher.index_chunk (for tests);
    TypeError for anything but bytes (its pointer is read as a bytes')."""
    cdef int out[INDEX_MANY_]
    cdef list res = []
    cdef list ks = list(keys)           # a snapshot: nothing below can shrink it
    cdef bytes k
    cdef Py_ssize_t i
    cdef int c, j
    for k in ks:                        # TypeError before any pointer is taken
        if k is None:
            raise TypeError("index_many takes bytes, not None")
    for i in range(0, len(ks), INDEX_MANY_):
        c = hasher.index_chunk(ks, i, out)
        res.extend([out[j] for j in range(c)])
    return res


def md5_words(list keys):
    """The first 32 bits of each key's MD5, the keys (bytes, at most
    MD5X_LANES, each at most MD5X_MAX_KEY bytes) hashed side by side by
    _md5x.h (for tests).  The sizes are the objects' own, not len()'s: a
    bytes subclass's __len__ must not size a copy into the 64-byte block."""
    cdef const uint8_t *p[INDEX_MANY_]
    cdef size_t n[INDEX_MANY_]
    cdef uint32_t out[INDEX_MANY_]
    cdef tuple ks = tuple(keys)
    cdef bytes k
    cdef Py_ssize_t i, c = len(ks)
    if c > MD5X_LANES:
        raise ValueError(f"at most {MD5X_LANES} keys of at most {MD5X_MAX_KEY} bytes")
    for i in range(c):
        k = ks[i]                       # TypeError unless exactly bytes
        if PyBytes_GET_SIZE(k) > MD5X_MAX_KEY:
            raise ValueError(f"at most {MD5X_LANES} keys of at most {MD5X_MAX_KEY} bytes")
        p[i] = <const uint8_t *>PyBytes_AS_STRING(k)
        n[i] = PyBytes_GET_SIZE(k)
    md5x_first_words(p, n, <int>c, out)
    return [out[i] for i in range(c)]


def md5_digest(bytes data):
    """MD5 of ``data`` (the ketama point hash); tested against hashlib."""
    cdef uint8_t out[16]
    md5(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), out)
    return bytes(out[:16])


def ketama_name(str host, int port):
    """twemproxy's name for a server without an explicit name (nc_conf.c)."""
    return host if port == 11211 else f"{host}:{port}"


# ---------------------------------------------------------------------------
# placement

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # splitmix64's finalizer: spreads a 64-bit value uniformly
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


DEF BUCKETS = 1024          # the ketama continuum's lookup table: one entry per 2**22 hashes
DEF BUCKET_SHIFT = 22
DEF D_KETAMA = 0
DEF D_JUMP = 1
DEF D_RENDEZVOUS = 2


NOT_BUILT = "Hasher.__new__ without __init__ (or a failed __init__): no servers to place on"


cdef class Hasher:
    """Maps a key to the index of one of ``len(names)`` servers (fields in _hash.pxd).

    Built once per config load; ``index`` is called per key of every request.
    """

    def __cinit__(self):
        self.points = NULL
        self.owners = NULL
        self.buckets = NULL
        self.seeds = NULL
        self.weights = NULL

    def __dealloc__(self):
        free(self.points)
        free(self.owners)
        free(self.buckets)
        free(self.seeds)
        free(self.weights)

    def __init__(self, list names, list weights=None, str function="fnv1a_64",
                 str distribution="ketama", bytes salt not None=b"", bytes stop not None=b"",
                 bytes tags not None=b""):
        # everything checked before any field is set, and size (what makes the
        # object usable) set last: a failed or repeated __init__ leaves no mix of
        # two configurations (say md5_whole from one, fn from the other)
        if self.size:
            raise TypeError("a Hasher is built once: make a new Hasher for another pool")
        if not names:
            raise ValueError("a hasher needs at least one server")
        if weights is None:
            weights = [1] * len(names)
        if len(weights) != len(names):
            raise ValueError("one weight per server")
        if len(tags) not in (0, 2):
            raise ValueError("hash tags are two characters, e.g. {}")
        if function not in FUNCTIONS:
            raise ValueError(f"hash function {function!r}: one of {', '.join(FUNCTIONS)}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution {distribution!r}: one of {', '.join(DISTRIBUTIONS)}")
        self.fn = FUNCTIONS.index(function)
        self.dist = DISTRIBUTIONS.index(distribution)
        self.salt = salt
        self.stop = stop
        self.tags = tags
        self.md5_whole = self.fn == H_MD5 and not salt and not stop and not tags
        if self.dist == D_KETAMA:
            self._build_ketama([n.encode() if isinstance(n, str) else n for n in names], weights)
        elif self.dist == D_RENDEZVOUS:
            self._build_rendezvous([n.encode() if isinstance(n, str) else n for n in names],
                                   weights)
        self.size = len(names)

    cdef _build_ketama(self, list names, list weights):
        cdef uint32_t total = sum(int(w) for w in weights)
        cdef uint32_t nlive = len(names)
        cdef float pct, a
        cdef double d
        cdef uint32_t per_server, i, x
        cdef uint8_t digest[16]
        cdef list pts = []
        cdef bytes label
        for idx, (name, w) in enumerate(zip(names, weights)):
            # nc_ketama.c, in float as there: floorf(pct * 160 / 4 * n + 1e-10) * 4
            pct = <float><uint32_t>int(w) / <float>total
            a = pct * 160
            a = a / 4
            a = a * <float>nlive
            d = <double>a + 0.0000000001
            per_server = <uint32_t>(floorf(<float>d) * 4)
            for i in range(per_server // 4):
                label = name + b"-%d" % i
                md5(<const uint8_t *>PyBytes_AS_STRING(label), len(label), digest)
                for x in range(4):
                    pts.append((le32(digest + 4 * x), idx))
        pts.sort(key=lambda t: t[0])     # stable, as glibc's merge-sorting qsort
        self.npoints = len(pts)
        free(self.points)               # a build that failed before (__init__ called again)
        free(self.owners)
        free(self.buckets)
        self.points = self.owners = self.buckets = NULL
        self.points = <uint32_t *>malloc(sizeof(uint32_t) * max(1, self.npoints))
        self.owners = <uint32_t *>malloc(sizeof(uint32_t) * max(1, self.npoints))
        if self.points == NULL or self.owners == NULL:
            raise MemoryError()
        for i in range(self.npoints):
            self.points[i] = pts[i][0]
            self.owners[i] = pts[i][1]
        # where each 1/1024th of the hash space starts on the continuum, so a
        # lookup searches only the points of its bucket (ketama_point)
        self.buckets = <uint32_t *>malloc(sizeof(uint32_t) * (BUCKETS + 1))
        if self.buckets == NULL:
            raise MemoryError()
        x = 0
        for i in range(BUCKETS):
            while x < self.npoints and self.points[x] < (<uint64_t>i << BUCKET_SHIFT):
                x += 1
            self.buckets[i] = x
        self.buckets[BUCKETS] = self.npoints

    cdef _build_rendezvous(self, list names, list weights):
        cdef int i
        cdef uint8_t digest[16]
        cdef int n = len(names)
        free(self.seeds)                # a build that failed before (__init__ called again)
        free(self.weights)
        self.seeds = <uint64_t *>malloc(sizeof(uint64_t) * n)
        self.weights = <double *>malloc(sizeof(double) * n)
        if self.seeds == NULL or self.weights == NULL:
            raise MemoryError()
        for i in range(n):
            # the seed depends on the name only, so removing a server moves only its keys
            md5(<const uint8_t *>PyBytes_AS_STRING(names[i]), len(names[i]), digest)
            self.seeds[i] = le32(digest) | (<uint64_t>le32(digest + 4) << 32)
            self.weights[i] = float(weights[i])

    cdef uint32_t hash_part(self, bytes key):
        """The hash of the part of ``key`` that places it (stop, tags, salt)."""
        return self.hash_span(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef uint32_t hash_span(self, const uint8_t *p, size_t n) except? 0:
        """hash_part of the key at ``p``, ``n`` bytes long."""
        cdef const uint8_t *s
        cdef const uint8_t *e
        cdef uint8_t buf[512]
        cdef size_t sl
        if self.stop:
            s = <const uint8_t *>memmem(p, n, PyBytes_AS_STRING(self.stop), len(self.stop))
            if s != NULL:
                n = s - p
        elif self.tags:
            s = <const uint8_t *>memchr(p, (<const uint8_t *>PyBytes_AS_STRING(self.tags))[0], n)
            if s != NULL:
                e = <const uint8_t *>memchr(s + 1, (<const uint8_t *>PyBytes_AS_STRING(self.tags))[1],
                                            p + n - s - 1)
                if e != NULL and e - s > 1:
                    p = s + 1
                    n = e - p
        sl = len(self.salt)
        if sl == 0:
            return key_hash(self.fn, p, n)
        if n + sl > sizeof(buf):
            long_key = PyBytes_FromStringAndSize(<const char *>p, n) + self.salt
            return key_hash(self.fn, <const uint8_t *>PyBytes_AS_STRING(long_key), n + sl)
        memcpy(buf, p, n)
        memcpy(buf + n, PyBytes_AS_STRING(self.salt), sl)
        return key_hash(self.fn, buf, n + sl)

    cpdef int index(self, bytes key):
        """The server index of ``key``."""
        return self.index_span(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef int index_span(self, const uint8_t *p, size_t n) except -2:
        """The server index of the key at ``p``, ``n`` bytes long."""
        if self.size <= 1:
            if self.size == 1:
                return 0        # as twemproxy: a one-server pool is not hashed
            raise ValueError(NOT_BUILT)
        return self.index_of_hash(self.hash_span(p, n) if n else 0)

    cdef int index_many(self, const uint8_t **p, const size_t *n, int count,
                        int *out) except -1:
        """index_span of ``count`` keys (at most INDEX_MANY_) into ``out``: with
        md5 of whole keys (no stop, tags or salt), the short ones are hashed
        side by side (_md5x.h), 7x fewer instructions than one by one."""
        cdef const uint8_t *bp[INDEX_MANY_]
        cdef size_t bn[INDEX_MANY_]
        cdef int at[INDEX_MANY_]
        cdef uint32_t h[INDEX_MANY_]
        cdef int i, nb = 0
        cdef bint side_by_side = self.size > 1 and self.md5_whole
        for i in range(count):
            if side_by_side and 0 < n[i] <= MD5X_MAX_KEY:
                bp[nb] = p[i]
                bn[nb] = n[i]
                at[nb] = i
                nb += 1
            else:
                out[i] = self.index_span(p[i], n[i])
        if nb:
            md5x_first_words(bp, bn, nb, h)
            for i in range(nb):
                out[at[i]] = self.index_of_hash(h[i])
        return 0

    cdef int index_chunk(self, list keys, Py_ssize_t at, int *out) except -1:
        """index_many of keys[at:at + INDEX_MANY_], bytes that ``keys`` holds
        while this runs; how many were placed."""
        cdef const uint8_t *p[INDEX_MANY_]
        cdef size_t n[INDEX_MANY_]
        cdef int c = <int>min(INDEX_MANY_, len(keys) - at), j
        cdef bytes k
        if c <= 0:
            return 0
        for j in range(c):
            k = <bytes>keys[at + j]
            p[j] = <const uint8_t *>PyBytes_AS_STRING(k)
            n[j] = PyBytes_GET_SIZE(k)
        self.index_many(p, n, c, out)
        return c

    cdef int index_of_hash(self, uint32_t h) noexcept:
        """The server index of key hash ``h`` (more than one server)."""
        cdef int64_t b, j
        cdef uint64_t k
        cdef double best, score
        cdef int i, win
        if self.dist == D_KETAMA:
            return self.owners[self.ketama_point(h) % self.npoints]
        if self.dist == D_JUMP:
            k = h
            b = -1
            j = 0
            while j < self.size:
                b = j
                k = k * 2862933555777941757ULL + 1
                j = <int64_t>((b + 1) * (<double>(1LL << 31) / <double>((k >> 33) + 1)))
            return <int>b
        win = 0
        best = -1.0
        for i in range(self.size):
            score = self.rendezvous_score(h, i)
            if score > best:
                best = score
                win = i
        return win

    cdef inline Py_ssize_t ketama_point(self, uint32_t h):
        """The first continuum point at or after ``h`` (``npoints`` past the last)."""
        cdef Py_ssize_t lo = self.buckets[h >> BUCKET_SHIFT], hi = self.buckets[(h >> BUCKET_SHIFT) + 1], mid
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if self.points[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        return hi

    cdef inline double rendezvous_score(self, uint32_t h, int i):
        """Server ``i``'s weighted score for hash ``h``: the highest wins."""
        cdef double u = ((mix64((<uint64_t>h) ^ self.seeds[i]) >> 11) + 0.5) * (1.0 / 9007199254740992.0)
        return -self.weights[i] / log(u)

    cpdef int index_up(self, bytes key, bytes up):
        """Where ``key`` goes while some servers are down (``up[i]`` is 0 for a
        down server i): its own server if that is up, else the next server on
        the continuum that is up (ketama: the next point clockwise owned by a
        live server; rendezvous: the best score among the live ones); -1 when
        none is.  Jump has no next server: its own or -1."""
        cdef const unsigned char *u = <const unsigned char *>PyBytes_AS_STRING(up)
        cdef uint32_t h
        cdef Py_ssize_t hi, step
        cdef uint32_t owner
        cdef double best, score
        cdef int i, win
        if self.size == 0:
            raise ValueError(NOT_BUILT)
        if len(up) != self.size:
            raise ValueError("one up flag per server")
        if self.size == 1 or self.dist == D_JUMP:
            i = self.index(key)
            return i if u[i] else -1
        h = self.hash_part(key) if len(key) else 0
        if self.dist == D_KETAMA:
            hi = self.ketama_point(h)
            for step in range(self.npoints):
                owner = self.owners[(hi + step) % self.npoints]
                if u[owner]:
                    return owner
            return -1
        win = -1
        best = -1.0
        for i in range(self.size):
            if not u[i]:
                continue
            score = self.rendezvous_score(h, i)
            if score > best:
                best = score
                win = i
        return win
