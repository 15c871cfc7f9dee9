"""The multi-key split and merge (_routing.pyx) with stand-in destinations.

Each destination answers a sub-request with a canned reply built from a
table of what it holds, so every merge case can be set up exactly: hits in
request order, repeated keys, a destination that errs, all that err.
"""
from __future__ import annotations

from mcrouter._parser import Request, RequestParser
from mcrouter._routing import group_keys, split
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_TIMEOUT
from support.standins import Holder, Owner, v


def request(line: bytes) -> tuple[Request, Owner]:
    req = RequestParser().feed(line)[0]
    owner = Owner()
    req.owner = owner
    return req, owner


def by_first_letter(key: bytes) -> int:
    return {b"a": 0, b"b": 1, b"c": 2}[key[:1]]


def run(line: bytes, holders: list[Holder]) -> tuple[bytes, int]:
    req, owner = request(line)
    split(req, holders, group_keys(req, None, by_first_letter))
    for h in holders:
        for sub in h.pending:
            h.answer(sub)
    assert len(owner.replies) == 1
    return owner.replies[0]


A = Holder({b"a1": (1, b"x", 11), b"a2": (2, b"yy", 12)})
B = Holder({b"b1": (3, b"END\r\nVALUE b9 0 1", 13)})         # data that looks like protocol
C = Holder({b"c1": (0, b"", 14)})


def test_hits_in_request_order_one_sub_request_per_destination():
    holders = [Holder(A.items), Holder(B.items), Holder(C.items, later=True)]
    reply, status = run(b"get c1 a2 b1 a0 a1 b2\r\n", holders)
    assert reply == v(b"c1", b"") + v(b"a2", b"yy", 2) + v(b"b1", B.items[b"b1"][1], 3) \
        + v(b"a1", b"x", 1) + b"END\r\n"
    assert status == ST_OK
    assert holders[0].asked == [b"get a2 a0 a1\r\n"]
    assert holders[1].asked == [b"get b1 b2\r\n"]
    assert holders[2].asked == [b"get c1\r\n"]


def test_gets_keeps_each_servers_cas_and_gat_its_exptime():
    holders = [Holder(A.items), Holder(B.items), Holder(C.items)]
    reply, _ = run(b"gets a1 b1\r\n", holders)
    assert reply == v(b"a1", b"x", 1, 11) + v(b"b1", B.items[b"b1"][1], 3, 13) + b"END\r\n"
    run(b"gat 77 a1 b1\r\n", holders)
    assert holders[0].asked[-1] == b"gat 77 a1\r\n" and holders[1].asked[-1] == b"gat 77 b1\r\n"


def test_repeated_keys_are_asked_and_answered_once():
    """The parser names a repeated key once; the client connection repeats
    its value in the reply (test_hostile_clients), from one copy."""
    holders = [Holder(A.items), Holder(B.items), Holder(C.items)]
    reply, _ = run(b"get a1 b1 a1\r\n", holders)
    assert reply == v(b"a1", b"x", 1) + v(b"b1", B.items[b"b1"][1], 3) + b"END\r\n"
    assert holders[0].asked == [b"get a1\r\n"]                  # asked once


def test_a_failing_destination_costs_only_its_keys():
    holders = [Holder(A.items), Holder({}, fail=UPSTREAM_TIMEOUT), Holder(C.items, later=True)]
    reply, status = run(b"get a1 b1 c1\r\n", holders)
    assert (reply, status) == (v(b"a1", b"x", 1) + v(b"c1", b"") + b"END\r\n", ST_OK)
    reply, status = run(b"get b1 b2 a9\r\n", holders)           # a miss and an error
    assert (reply, status) == (b"END\r\n", ST_FAIL)


def test_only_errors_give_the_error():
    holders = [Holder({}, fail=UPSTREAM_TIMEOUT), Holder({}, fail=UPSTREAM_TIMEOUT), C]
    assert run(b"get a1 b1\r\n", holders) == (UPSTREAM_TIMEOUT, ST_ERROR)
    assert run(b"get a1 b1 a1\r\n", holders) == (UPSTREAM_TIMEOUT, ST_ERROR)


def test_one_destination_gets_the_request_as_it_is():
    holders = [Holder(A.items), B, C]
    req, owner = request(b"get a1 a2\r\n")
    split(req, holders, group_keys(req, None, by_first_letter))
    assert holders[0].asked == [b"get a1 a2\r\n"]
    assert owner.replies == [(v(b"a1", b"x", 1) + v(b"a2", b"yy", 2) + b"END\r\n", ST_OK)]


# -- streamed merge (Shards.takes_parts / on_partial) --------------------------

class StreamOwner(Owner):
    """A client that takes parts (``take``: what takes_parts answers)."""

    def __init__(self, take: int = 1) -> None:
        super().__init__()
        self.take = take
        self.parts: list[bytes] = []

    def takes_parts(self, req: Request) -> int:
        return self.take

    def on_partial(self, req: Request, part: bytes) -> None:
        self.parts.append(part)

    def received(self) -> bytes:
        return b"".join(self.parts) + b"".join(r for r, _ in self.replies)


def streamed(line: bytes, holders: list[Holder], take: int = 1):
    req = RequestParser().feed(line)[0]
    owner = StreamOwner(take)
    req.owner = owner
    req.stream = True
    split(req, holders, group_keys(req, None, by_first_letter))
    return req, owner


def feed_values(sub: Request, holder: Holder, count: int) -> bytes:
    """Pass the first ``count`` hits of ``sub``'s reply as one part, as the
    ring does while it arrives; return them."""
    keys = sub.keys if sub.keys is not None else [sub.key]
    hits = [k for k in keys if k in holder.items][:count]
    part = b"".join(v(k, holder.items[k][1], holder.items[k][0]) for k in hits)
    assert sub.owner.takes_parts(sub) == 1
    sub.owner.on_partial(sub, part)
    return part


def rest_of(sub: Request, holder: Holder, skip: int) -> bytes:
    keys = sub.keys if sub.keys is not None else [sub.key]
    hits = [k for k in keys if k in holder.items][skip:]
    return b"".join(v(k, holder.items[k][1], holder.items[k][0]) for k in hits) + b"END\r\n"


AS = Holder({b"a1": (1, b"x", 0), b"a2": (2, b"yy", 0), b"a3": (3, b"zzz", 0)})
BS = Holder({b"b1": (4, b"p", 0), b"b3": (5, b"qq", 0)})


def test_streamed_values_go_on_in_key_order_once_settled():
    a, b = Holder(AS.items, later=True), Holder(BS.items, later=True)
    line = b"get a1 b1 a2 b2 a3 b3\r\n"
    req, owner = streamed(line, [a, b])
    (sa,), (sb,) = a.pending, b.pending
    assert sa.stream and sb.stream
    feed_values(sa, a, 2)                       # a1 a2: a1 settled, a2 waits for b1
    assert owner.parts == [v(b"a1", b"x", 1)]
    feed_values(sb, b, 1)                       # b1: then a2; b2 is not settled yet
    assert b"".join(owner.parts) == v(b"a1", b"x", 1) + v(b"b1", b"p", 4) + v(b"a2", b"yy", 2)
    sb.finish(rest_of(sb, b, 1), ST_OK)         # b ends: b2 a miss, a3 waits for a
    assert owner.replies == []
    sa.finish(rest_of(sa, a, 2), ST_OK)
    reply, status = owner.replies[0]
    assert (reply, status) == (b"END\r\n", ST_OK)          # a3 b3 went on as parts
    holders = [Holder(AS.items), Holder(BS.items)]
    assert owner.received() == run(line, holders)[0]        # the merge not streamed
    assert req.streamed == len(owner.received()) - len(reply)


def test_a_client_not_taking_parts_gets_the_merge_whole():
    a, b = Holder(AS.items, later=True), Holder(BS.items, later=True)
    req, owner = streamed(b"get a1 b1 a2\r\n", [a, b], take=0)
    (sa,), (sb,) = a.pending, b.pending
    assert sa.owner.takes_parts(sa) == 0        # the ring holds the reply
    sa.finish(rest_of(sa, a, 0), ST_OK)
    sb.finish(rest_of(sb, b, 0), ST_OK)
    assert owner.parts == []
    assert owner.replies == [(v(b"a1", b"x", 1) + v(b"b1", b"p", 4) + v(b"a2", b"yy", 2)
                              + b"END\r\n", ST_OK)]


def test_a_failure_after_values_went_on_ends_with_its_error():
    a, b = Holder(AS.items, later=True), Holder(BS.items, later=True)
    req, owner = streamed(b"get a1 b1 a2 b3 a3\r\n", [a, b])
    (sa,), (sb,) = a.pending, b.pending
    feed_values(sa, a, 3)                       # a1 on; a2, a3 held
    feed_values(sb, b, 1)                       # b1, then a2; b3 not settled
    sb.finish(UPSTREAM_TIMEOUT, ST_ERROR)
    assert owner.received() == v(b"a1", b"x", 1) + v(b"b1", b"p", 4) + v(b"a2", b"yy", 2) \
        + UPSTREAM_TIMEOUT
    assert owner.replies == [(UPSTREAM_TIMEOUT, ST_ERROR)]
    sa.finish(rest_of(sa, a, 3), ST_OK)         # late: dropped
    assert sa.owner.takes_parts(sa) == 1 and len(owner.replies) == 1


def test_a_failure_before_anything_went_on_costs_only_its_keys():
    a, b = Holder(AS.items, later=True), Holder(BS.items, later=True)
    req, owner = streamed(b"get b1 a1 a2\r\n", [a, b])
    (sa,), (sb,) = a.pending, b.pending
    feed_values(sa, a, 1)                       # a1 waits for b1
    sb.finish(UPSTREAM_TIMEOUT, ST_ERROR)       # nothing went on: b1 reads as a miss
    assert sa.owner.takes_parts(sa) == 0        # held whole from now on
    sa.finish(rest_of(sa, a, 1), ST_OK)
    assert owner.parts == []
    assert owner.replies == [(v(b"a1", b"x", 1) + v(b"a2", b"yy", 2) + b"END\r\n", ST_OK)]


def test_repeated_gat_keys_keep_their_places_when_streamed():
    a, b = Holder(AS.items, later=True), Holder(BS.items, later=True)
    line = b"gat 0 a1 b1 a1 b1 a1\r\n"
    req, owner = streamed(line, [a, b])
    (sa,), (sb,) = a.pending, b.pending
    assert sa.wire == b"gat 0 a1 a1 a1\r\n"
    feed_values(sa, a, 3)
    sb.finish(v(b"b1", b"p", 4) * 2 + b"END\r\n", ST_OK)
    sa.finish(b"END\r\n", ST_OK)
    assert owner.received() == (v(b"a1", b"x", 1) + v(b"b1", b"p", 4)) * 2 \
        + v(b"a1", b"x", 1) + b"END\r\n"
