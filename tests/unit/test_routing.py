"""The multi-key split and merge (_routing.pyx) with stand-in destinations.

Each destination answers a sub-request with a canned reply built from a
table of what it holds, so every merge case can be set up exactly: hits in
request order, repeated keys, a destination that errs, all that err.
"""
from __future__ import annotations

from mcrouter._parser import Request, RequestParser
from mcrouter._routing import group_keys, split
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK, UPSTREAM_TIMEOUT


class Owner:
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, int]] = []

    def on_reply(self, req: Request) -> None:
        self.replies.append((req.reply, req.status))


class Holder:
    """A destination holding ``items`` {key: (flags, data, cas)}; or failing."""

    def __init__(self, items: dict[bytes, tuple[int, bytes, int]], fail: bytes = b"",
                 later: bool = False) -> None:
        self.items = items
        self.fail = fail
        self.later = later
        self.asked: list[bytes] = []
        self.pending: list[Request] = []

    def dispatch(self, req: Request) -> None:
        self.asked.append(req.wire)
        if self.later:
            self.pending.append(req)
        else:
            self.answer(req)

    def answer(self, req: Request) -> None:
        if self.fail:
            req.finish(self.fail, ST_ERROR)
            return
        gets = req.wire.startswith(b"gets")
        keys = req.keys if req.keys is not None else [req.key]
        body = b""
        for k in keys:                       # memcached answers in the order asked
            if k in self.items:
                flags, data, cas = self.items[k]
                cas_part = b" %d" % cas if gets else b""
                body += b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(data), cas_part, data)
        req.finish(body + b"END\r\n", ST_OK if body else ST_FAIL)


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


def v(key: bytes, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    c = b" %d" % cas if cas is not None else b""
    return b"VALUE %s %d %d%s\r\n%s\r\n" % (key, flags, len(data), c, data)


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
