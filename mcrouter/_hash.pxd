# The hashing extension's hot object (see _hash.pyx): what _routing.pyx calls per request.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    INDEX_MANY_ = 8              # keys a Hasher.index_many call takes at most (MD5X_LANES)

cdef class Hasher:
    cdef int fn                  # key hash function (index into FUNCTIONS)
    cdef int dist                # distribution (index into DISTRIBUTIONS)
    cdef readonly int size       # number of servers / children
    cdef bytes salt
    cdef bytes stop              # hash stop, e.g. b"|#|", or b""
    cdef bytes tags              # two characters, e.g. b"{}", or b""
    cdef bint md5_whole          # md5 of the whole key: index_many's case
    cdef uint32_t *points        # ketama continuum: sorted point values ...
    cdef uint32_t *owners        # ... and the server index of each
    cdef Py_ssize_t npoints
    cdef uint32_t *buckets       # buckets[b]: the first point >= b << BUCKET_SHIFT (b <= 1024)
    cdef uint64_t *seeds         # rendezvous: per-server seed ...
    cdef double *weights         # ... and weight

    cdef _build_ketama(self, list names, list weights)
    cdef _build_rendezvous(self, list names, list weights)
    cdef uint32_t hash_part(self, bytes key)
    cdef uint32_t hash_span(self, const uint8_t *p, size_t n) except? 0
    cdef int index_span(self, const uint8_t *p, size_t n) except -2
    cdef int index_many(self, const uint8_t **p, const size_t *n, int count, int *out) except -1
    cdef int index_chunk(self, list keys, Py_ssize_t at, int *out) except -1
    cdef int index_of_hash(self, uint32_t h) noexcept
    cdef Py_ssize_t ketama_point(self, uint32_t h)
    cdef double rendezvous_score(self, uint32_t h, int i)
    cpdef int index(self, bytes key)
    cpdef int index_up(self, bytes key, bytes up)
