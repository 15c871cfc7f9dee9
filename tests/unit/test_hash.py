"""Placement is a specification: twemproxy's vectors, stability, weights, key parts."""
from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from pathlib import Path

import pytest

from mcrouter._hash import (DISTRIBUTIONS, FUNCTIONS, Hasher, hash_key, index_many, ketama_name,
                            md5_digest, md5_words)
from mcrouter._parser import RequestParser
from mcrouter._routing import group_keys

from support import python_apart
from support.twemproxy_probe import probe_keys

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ketama_twemproxy.json").read_text())
KEYS = probe_keys(VECTORS["keys"])
SERVERS4 = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "10.0.0.4:11211"]


def hasher_for(servers: list[str], **kw) -> Hasher:
    names = [ketama_name(*s.rsplit(":", 1)[0:1], int(s.rsplit(":", 1)[1])) for s in servers]
    return Hasher(names, **kw)


@pytest.mark.parametrize("case", VECTORS["cases"],
                         ids=[f"{c['function']}-{len(c['servers'])}-{c['weights']}"
                              for c in VECTORS["cases"]])
def test_ketama_matches_twemproxy_vectors(case):
    h = hasher_for(case["servers"], weights=case["weights"], function=case["function"])
    ours = "".join(str(h.index(k)) for k in KEYS)
    diff = [i for i, (a, b) in enumerate(zip(ours, case["placement"])) if a != b]
    assert not diff, f"{len(diff)} of {len(KEYS)} keys placed differently, first {KEYS[diff[0]]!r}"


def test_vectors_cover_every_function_and_the_11211_name_rule():
    assert {c["function"] for c in VECTORS["cases"]} == set(FUNCTIONS)
    assert ketama_name("127.0.0.1", 11211) == "127.0.0.1"
    assert ketama_name("127.0.0.1", 22122) == "127.0.0.1:22122"
    assert any("127.0.0.1:11211" in c["servers"] for c in VECTORS["cases"])


@pytest.mark.parametrize("n", [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000])
def test_md5_matches_hashlib(n):
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    assert md5_digest(data) == hashlib.md5(data).digest()


def test_md5_side_by_side_matches_hashlib_for_every_short_length():
    """_md5x.h's lanes: every length a one-block key can have (0..55), in
    batches of 1 to 8 keys, each lane its own length and bytes."""
    keys = [bytes((i * 31 + n * 7 + 1) & 0xFF for i in range(n)) for n in range(56)]
    for size in range(1, 9):
        for at in range(0, len(keys), size):
            batch = keys[at:at + size]
            assert md5_words(batch) == [int.from_bytes(hashlib.md5(k).digest()[:4], "little")
                                        for k in batch]
    with pytest.raises(ValueError):
        md5_words([b"x" * 56])
    with pytest.raises(ValueError):
        md5_words([b"x"] * 9)


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("options", [{}, {"salt": b"s1"}, {"stop": b"|#|"}, {"tags": b"{}"}])
@pytest.mark.parametrize("function", ["md5", "fnv1a_64"])
def test_index_many_places_every_key_as_index_does(dist, options, function):
    """Hasher.index_many (the bulk calls' placement: md5 keys side by side,
    the rest one by one) against index, key by key: empty keys, keys either
    side of the one-block bound (55/56 bytes), 250-byte keys, tags and stops."""
    import random
    rng = random.Random(11)
    keys = [b"", b"a", b"x" * 55, b"x" * 56, b"y" * 250, b"{tag}rest", b"pre|#|post"]
    keys += [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 70))) for _ in range(3000)]
    for names in ([b"a:1"], [b"a:1", b"b:2", b"c:3", b"d:4", b"e:5"]):
        h = Hasher(names, None, function, dist, **options)
        assert index_many(h, keys) == [h.index(k) for k in keys]


def test_the_side_by_side_test_entry_points_take_only_bytes():
    """md5_words and index_many hand each key's pointer and size to C: a
    str, bytearray or int read as bytes gave a hash of whatever lies there,
    and a bytes subclass whose __len__ says 1 passed md5_words' size check
    and was copied whole into the 64-byte block (the process died)."""
    h = Hasher(["a:1", "b:2"], None, "md5")
    for bad in ("abc", bytearray(b"abc"), 5):
        with pytest.raises(TypeError, match=f"Expected bytes, got {type(bad).__name__}"):
            md5_words([bad])
        with pytest.raises(TypeError, match=f"Expected bytes, got {type(bad).__name__}"):
            index_many(h, [b"ok", bad])
    assert python_apart(
        "from mcrouter._hash import md5_words\n"
        "class Short(bytes):\n"
        "    def __len__(self): return 1\n"
        "try:\n"
        "    md5_words([Short(b'x' * 100000)])\n"
        "except TypeError as e:\n"
        "    print(e)\n") == (0, "Expected bytes, got Short\n")
    assert md5_words([b"abc"]) == [int.from_bytes(hashlib.md5(b"abc").digest()[:4], "little")]
    with pytest.raises(ValueError, match="at most 8 keys of at most 55 bytes"):
        md5_words([b"x" * 56])


def test_a_hasher_is_built_once_and_never_used_half_built():
    """index_many's md5_whole is set with the function: a second __init__
    that failed on its distribution left the function of the second (fnv)
    with md5_whole of the first, so index_many placed keys by md5 and index
    by fnv.  A Hasher is now built once; one never built (or whose build
    failed) refuses to place rather than reading its absent continuum (the
    process died)."""
    names = ["a:1", "b:2", "c:3", "d:4", "e:5"]
    keys = [b"key%d" % i for i in range(40)]
    h = Hasher(names, None, "md5")
    want = [h.index(k) for k in keys]
    with pytest.raises(TypeError, match="a Hasher is built once"):
        h.__init__(names, None, "fnv1a_64", "nope")
    assert index_many(h, keys) == [h.index(k) for k in keys] == want
    with pytest.raises(ValueError, match="distribution 'nope': one of ketama, jump, rendezvous"):
        Hasher(names, None, "md5", "nope")
    with pytest.raises(ValueError, match="hash function 'sha1': one of one_at_a_time, md5,"):
        Hasher(names, None, "sha1")
    with pytest.raises(TypeError):
        Hasher(names, None, "md5", salt=None)
    assert python_apart(
        "from mcrouter._hash import Hasher, index_many\n"
        "h = Hasher.__new__(Hasher)\n"
        "for place in (lambda: h.index(b''), lambda: h.index(b'k'), lambda: h.index_up(b'', b''),\n"
        "              lambda: index_many(h, [b'', b'k'])):\n"
        "    try:\n"
        "        place()\n"
        "    except ValueError as e:\n"
        "        print(e)\n") == (0, "Hasher.__new__ without __init__ (or a failed __init__): "
                                  "no servers to place on\n" * 4)


def test_key_hashes_against_independent_definitions():
    for key in (b"", b"a", b"hello world", b"user:42:\xc3\xa9"):
        assert hash_key("crc32a", key) == zlib.crc32(key)
        assert hash_key("crc32", key) == (zlib.crc32(key) >> 16) & 0x7FFF
        assert hash_key("md5", key) == int.from_bytes(hashlib.md5(key).digest()[:4], "little")
    # published FNV-1/FNV-1a 32-bit values of "a"
    assert hash_key("fnv1a_32", b"a") == 0xE40C292C
    assert hash_key("fnv1_32", b"a") == 0x050C5D7E


def moved_fraction(before: Hasher, after: Hasher, names_before: list, names_after: list) -> float:
    keys = [b"key:%d" % i for i in range(20000)]
    moved = sum(names_before[before.index(k)] != names_after[after.index(k)] for k in keys)
    return moved / len(keys)


@pytest.mark.parametrize("dist", ["ketama", "rendezvous", "jump"])
def test_removing_one_of_four_moves_about_a_quarter(dist):
    # jump can only drop the last bucket; the others drop one from the middle
    gone = 3 if dist == "jump" else 1
    after_names = [s for i, s in enumerate(SERVERS4) if i != gone]
    before = Hasher(SERVERS4, distribution=dist)
    after = Hasher(after_names, distribution=dist)
    frac = moved_fraction(before, after, SERVERS4, after_names)
    assert 0.18 < frac < 0.32, frac
    # and only the removed server's keys move
    keys = [b"key:%d" % i for i in range(5000)]
    for k in keys:
        if SERVERS4[before.index(k)] != SERVERS4[gone]:
            assert after_names[after.index(k)] == SERVERS4[before.index(k)]


@pytest.mark.parametrize("dist", ["ketama", "rendezvous"])
def test_weights_shift_share(dist):
    h = Hasher(SERVERS4, weights=[1, 1, 1, 3], distribution=dist)
    share = Counter(h.index(b"key:%d" % i) for i in range(30000))
    assert 0.42 < share[3] / 30000 < 0.58, share          # 3/6 expected
    for i in range(3):
        assert 0.12 < share[i] / 30000 < 0.22, share      # 1/6 expected each


def test_even_spread_without_weights():
    for dist in ("ketama", "jump", "rendezvous"):
        share = Counter(Hasher(SERVERS4, distribution=dist).index(b"k%d" % i) for i in range(20000))
        assert all(0.19 < share[i] / 20000 < 0.31 for i in range(4)), (dist, share)


def test_hash_stop_tags_and_salt_pick_the_hashed_part():
    stop = Hasher(SERVERS4, stop=b"|#|")
    plain = Hasher(SERVERS4)
    tags = Hasher(SERVERS4, tags=b"{}")
    for i in range(200):
        user = b"user%d" % i
        assert stop.index(user + b"|#|profile") == plain.index(user)
        assert stop.index(user + b"|#|friends") == plain.index(user)
        assert tags.index(b"a{" + user + b"}b") == plain.index(user)
    assert tags.index(b"a{}b") == plain.index(b"a{}b")        # empty tag: the whole key
    assert tags.index(b"a{bc") == plain.index(b"a{bc")        # no closing tag: the whole key
    salted = Hasher(SERVERS4, salt=b"v2")
    keys = [b"key:%d" % i for i in range(2000)]
    assert all(salted.index(k) == plain.index(k + b"v2") for k in keys)
    assert sum(salted.index(k) != plain.index(k) for k in keys) > 1000


def keys_request(line: bytes):
    return RequestParser().feed(line)[0]


def test_group_keeps_request_order_per_server_and_drops_duplicates():
    h = Hasher(SERVERS4)
    keys = [b"k%d" % i for i in range(50)] + [b"k3"]
    get = keys_request(b"get " + b" ".join(keys) + b"\r\n")
    # the parser names a repeated get key once; the client's reply repeats it (issue 11)
    assert get.keys == keys[:50] and get.order == keys
    groups, owners = group_keys(get, h, None)
    assert owners == [h.index(k) for k in keys[:50]]
    assert group_keys(get, None, h.index)[0] == groups
    assert sorted(k for g in groups.values() for k in g) == sorted(set(keys))
    for idx, ks in groups.items():
        assert all(h.index(k) == idx for k in ks)
        assert ks == sorted(ks, key=keys.index)


def test_gat_keeps_repeated_keys():
    """Each gat of a key touches it: a repeat is asked again, answered as memcached would."""
    h = Hasher(SERVERS4)
    keys = [b"k%d" % i for i in range(50)] + [b"k3"]
    groups, owners = group_keys(keys_request(b"gat 0 " + b" ".join(keys) + b"\r\n"), h, None)
    assert owners == [h.index(k) for k in keys]
    assert groups[h.index(b"k3")].count(b"k3") == 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        Hasher([])
    with pytest.raises(ValueError):
        Hasher(["a", "b"], weights=[1])
    with pytest.raises(ValueError):
        Hasher(["a"], function="sha1")


def test_ketama_bucket_search_matches_a_plain_continuum_including_the_wrap():
    """The bucketed search (ketama_point) against a continuum built here with
    hashlib and bisect: a key hashing above the last point goes to the
    first point's server, one hashing at or below a point to that point's."""
    import bisect
    import random
    names = [b"10.0.0.4", b"10.0.0.5"]          # equal weights: 160 points each
    pts = sorted(((int.from_bytes(hashlib.md5(n + b"-%d" % i).digest()[4 * x:4 * x + 4], "little"), s)
                  for s, n in enumerate(names) for i in range(40) for x in range(4)),
                 key=lambda t: t[0])
    values = [p for p, _ in pts]
    h = Hasher([n.decode() for n in names], function="md5")
    rng = random.Random(5)
    wrapped = 0
    for _ in range(20000):
        key = b"%x" % rng.getrandbits(64)
        hv = hash_key("md5", key)
        j = bisect.bisect_left(values, hv)
        wrapped += j == len(values)
        assert h.index(key) == pts[j % len(pts)][1], key
    assert wrapped > 10          # the wrap-around was exercised
    assert pts[0][1] != pts[-1][1]     # so landing on the last point instead would show
