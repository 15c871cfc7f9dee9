"""The compiled multi-key get over a hashed pool (HashDispatch: split_hashed,
Shards.assemble) and the parser's repeated-key check, byte for byte.

Destinations are stand-ins answering as memcached does (support.standins:
hits in the order asked, misses absent, one END), so each reply can be predicted exactly from
what each destination holds; the expected bytes are built independently of
the router's merge, from the request's keys in order.
"""
from __future__ import annotations

import pytest

from mcrouter._hash import Hasher
from mcrouter._parser import Request, RequestParser
from mcrouter._routing import HashDispatch
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_TIMEOUT
from support.standins import Holder, Owner, v


def block(key: bytes, data: bytes, gets: bool = False) -> bytes:
    return v(key, data, 7, len(key) + 1000 if gets else None)


def pool(n: int, hold: dict[bytes, bytes], fail: set[int] = frozenset(),
         later: set[int] = frozenset()) -> tuple[HashDispatch, list[Holder]]:
    """A HashDispatch over ``n`` stand-ins; each holds the items that hash to it."""
    hasher = Hasher([f"10.0.0.{i}:11211" for i in range(n)])
    holders = [Holder({k: (7, data, len(k) + 1000) for k, data in hold.items()
                       if hasher.index(k) == i},
                      fail=UPSTREAM_TIMEOUT if i in fail else b"", later=i in later)
               for i in range(n)]
    d = HashDispatch()
    d.children = holders
    d.hasher = hasher
    d.keyless = []
    return d, holders


def ask(d: HashDispatch, holders: list[Holder], line: bytes) -> tuple[Request, Owner]:
    req = RequestParser().feed(line)[0]
    owner = Owner()
    req.owner = owner
    d.dispatch(req)
    for h in holders:
        for sub in h.pending:
            h.answer(sub)
        h.pending = []
    return req, owner


def expected(keys: list[bytes], hold: dict[bytes, bytes], down: set[bytes] = frozenset(),
             gets: bool = False) -> bytes:
    return b"".join(block(k, hold[k], gets) for k in keys
                    if k in hold and k not in down) + b"END\r\n"


def spread(n: int, shards: int = 2) -> list[bytes]:
    """``n`` keys whose destinations over ``shards`` interleave."""
    hasher = Hasher([f"10.0.0.{i}:11211" for i in range(shards)])
    by = [[k for k in (b"key:%06d" % i for i in range(4000)) if hasher.index(k) == s][:n]
          for s in range(shards)]
    return [by[i % shards][i // shards] for i in range(n)]


KEYS10 = spread(10)


@pytest.mark.parametrize("later", [frozenset(), frozenset({0}), frozenset({0, 1})])
def test_ten_keys_over_two_shards_hits_in_key_order(later):
    hold = {k: b"v" * (i + 1) for i, k in enumerate(KEYS10) if i % 3}
    d, holders = pool(2, hold, later=later)
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(expected(KEYS10, hold), ST_OK)]
    # each shard asked once, for its keys in request order
    for i, h in enumerate(holders):
        mine = [k for k in KEYS10 if d.hasher.index(k) == i]
        assert h.asked == [b"get " + b" ".join(mine) + b"\r\n"]
    assert all(h.asked for h in holders)       # the ten keys do span both


def test_gets_and_gat_keep_their_prefix_and_cas():
    hold = {k: b"x%d" % i for i, k in enumerate(KEYS10)}
    d, holders = pool(2, hold)
    _, owner = ask(d, holders, b"gets " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(expected(KEYS10, hold, gets=True), ST_OK)]
    _, owner = ask(d, holders, b"gats 123 " + b" ".join(KEYS10) + b"\r\n")
    assert all(h.asked[-1].startswith(b"gats 123 key:") for h in holders)
    assert owner.replies == [(expected(KEYS10, hold), ST_OK)]


def test_all_misses_is_one_end_and_a_miss():
    d, holders = pool(2, {})
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(b"END\r\n", ST_FAIL)]


def test_one_shard_erring_costs_only_its_keys():
    hold = {k: b"data-" + k for k in KEYS10}
    d, holders = pool(2, hold, fail={1})
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    down = {k for k in KEYS10 if d.hasher.index(k) == 1}
    assert down and owner.replies == [(expected(KEYS10, hold, down), ST_OK)]
    d, holders = pool(2, hold, fail={0, 1})
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(UPSTREAM_TIMEOUT, ST_ERROR)]
    # the working shard only misses: END, a miss (as when no key is found)
    d, holders = pool(2, {}, fail={0})
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(b"END\r\n", ST_FAIL)]


def test_values_that_look_like_protocol_are_copied_verbatim():
    tricky = [b"END\r\n", b"VALUE " + KEYS10[1] + b" 0 5\r\nEND\r\n", b"\r\nVALUE ", b"", b"END",
              b"VALUE " + KEYS10[9] + b" 7 3\r\nabc\r\nEND\r\n"]
    hold = {k: tricky[i % len(tricky)] for i, k in enumerate(KEYS10)}
    d, holders = pool(2, hold)
    _, owner = ask(d, holders, b"get " + b" ".join(KEYS10) + b"\r\n")
    assert owner.replies == [(expected(KEYS10, hold), ST_OK)]


def test_repeated_keys_are_asked_once_and_named_in_order():
    """The parser names a repeated get key once (the client connection
    repeats it); the merge sees distinct keys only."""
    line_keys = KEYS10[:5] + [KEYS10[2], KEYS10[0]] + KEYS10[5:] + [KEYS10[9]]
    hold = {k: b"v-" + k for k in KEYS10}
    d, holders = pool(2, hold)
    req, owner = ask(d, holders, b"get " + b" ".join(line_keys) + b"\r\n")
    assert req.keys == KEYS10 and req.order == line_keys
    assert req.wire == b"get " + b" ".join(KEYS10) + b"\r\n"
    assert owner.replies == [(expected(KEYS10, hold), ST_OK)]
    assert sorted(k for h in holders for w in h.asked for k in w.split()[1:]) == sorted(KEYS10)


def test_a_gat_repeat_is_asked_again_and_answered_each_time():
    keys = [KEYS10[0], KEYS10[1], KEYS10[0], KEYS10[2], KEYS10[1]]
    hold = {k: b"t" for k in KEYS10}
    d, holders = pool(2, hold)
    req, owner = ask(d, holders, b"gat 0 " + b" ".join(keys) + b"\r\n")
    assert req.order is None
    assert owner.replies == [(expected(keys, hold), ST_OK)]


@pytest.mark.parametrize("keys", [
    [b"a", b"b", b"a"],
    [b"abcdefgh1", b"abcdefgh2", b"abcdefgh1"],          # the same first eight bytes
    [b"x" * 250, b"x" * 249 + b"y", b"x" * 250],
    [b"k%d" % i for i in range(64)] + [b"k63"],          # past the table: the dict's way
    [b"k%d" % i for i in range(63)] + [b"k0"],           # exactly at the table's size
    [bytes([0xc3, 0xa9, i]) for i in range(33, 52)] + [bytes([0xc3, 0xa9, 40])],
])
def test_the_parser_finds_every_repeat(keys):
    req = RequestParser().feed(b"get " + b" ".join(keys) + b"\r\n")[0]
    distinct = list(dict.fromkeys(keys))
    assert req.keys == distinct and req.order == keys
    assert req.wire == b"get " + b" ".join(distinct) + b"\r\n"


@pytest.mark.parametrize("keys", [
    [b"a", b"b"],
    [b"abcdefgh1", b"abcdefgh2", b"abcdefgh"],
    [b"k%d" % i for i in range(64)],
    [bytes([0xc3, 0xa9, i]) for i in range(33, 92)],
    [b"x" * n for n in range(1, 30)],                    # a prefix of each other
])
def test_distinct_keys_go_as_sent(keys):
    line = b"get  " + b"  ".join(keys) + b" \r\n"
    req = RequestParser().feed(line)[0]
    assert req.keys == keys and req.order is None and req.wire == line


def test_one_key_goes_as_it_is():
    hold = {b"only": b"1"}
    d, holders = pool(2, hold)
    _, owner = ask(d, holders, b"get only\r\n")
    assert owner.replies == [(block(b"only", b"1") + b"END\r\n", ST_OK)]
    assert [h.asked for h in holders if h.asked] == [[b"get only\r\n"]]


@pytest.mark.parametrize("shards", [2, 5, 40])
def test_a_hundred_binaryish_keys(shards):
    """Beyond the in-object slots (24 keys), the stack's destinations (32)
    and the repeat table (64 keys)."""
    keys = [bytes([0x21 + (i * 7) % 90, 0x80 + i % 120, 0xff]) + b"%d" % i for i in range(100)]
    hold = {k: bytes(range(256))[i % 200:] + b"\r\nEND\r\n" for i, k in enumerate(keys) if i % 4}
    d, holders = pool(shards, hold, later=set(range(0, shards, 2)))
    req, owner = ask(d, holders, b"get " + b" ".join(keys) + b"\r\n")
    assert req.order is None
    assert owner.replies == [(expected(keys, hold), ST_OK)]
    assert sum(len(h.asked) for h in holders) == len({d.hasher.index(k) for k in keys})


def test_keys_all_on_one_shard_go_as_one_request():
    hasher = Hasher(["10.0.0.0:11211", "10.0.0.1:11211"])
    keys = [k for k in (b"s%d" % i for i in range(200)) if hasher.index(k) == 1][:6]
    hold = {k: b"v" for k in keys}
    d, holders = pool(2, hold)
    line = b"get " + b" ".join(keys) + b"\r\n"
    _, owner = ask(d, holders, line)
    assert holders[1].asked == [line] and holders[0].asked == []
    assert owner.replies == [(expected(keys, hold), ST_OK)]
