"""The per-worker budget for request bodies still arriving (issue 11)."""
from __future__ import annotations

import pytest

from mcrouter import _parser
from mcrouter._parser import RequestParser, body_bytes_held, set_body_budget

from support.parser_events import events

NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"


@pytest.fixture(autouse=True)
def base():
    """What parsers of earlier tests in this process still hold (never released)."""
    held = body_bytes_held()
    set_body_budget(held + 2500)
    yield held
    set_body_budget(1 << 62)


def test_partial_bodies_reserve_their_size_until_complete_or_closed(base):
    a, b = RequestParser(), RequestParser()
    assert a.feed(b"set a 0 0 1000\r\n" + b"x" * 10) == []
    assert body_bytes_held() == base + 1018
    assert b.feed(b"set b 0 0 1000\r\n") == []
    assert body_bytes_held() == base + 2036
    assert a.feed(b"x" * 990) == []                 # more of the body: same reservation
    assert body_bytes_held() == base + 2036
    assert [e[0] for e in events(a.feed(b"\r\n"))] == ["forward"]
    assert body_bytes_held() == base + 1018
    b.release()
    assert body_bytes_held() == base


def test_past_the_budget_a_body_is_refused_as_memcached_refuses_it_and_swallowed(base):
    a, b = RequestParser(), RequestParser()
    a.feed(b"set a 0 0 2000\r\n")
    # a set also deletes the old value, as memcached does when it has no memory
    (drop,) = b.feed(b"set b 0 0 1000\r\n" + b"y" * 10)
    assert (drop.wire, drop.override) == (b"delete b noreply\r\nmn\r\n", NO_MEMORY)
    assert events(b.feed(b"y" * 990 + b"\r\nget b\r\n")) == [
        ("forward", "get", b"b", b"get b\r\n", None)]
    assert events(b.feed(b"add c 0 0 1000 noreply\r\n")) == []         # noreply: silent
    assert events(b.feed(b"z" * 1000 + b"\r\nmn\r\n")) == [("forward", "mn", b"", b"mn\r\n", None)]
    assert events(b.feed(b"ms k 1000 T0\r\n")) == [
        ("forward", "ms", b"k", b"md k q\r\nmn\r\n", NO_MEMORY)]
    a.release()
    assert body_bytes_held() == base


def test_a_request_that_arrives_whole_needs_no_room(base):
    p = RequestParser()
    set_body_budget(base)
    assert [e[0] for e in events(p.feed(b"set a 0 0 3000\r\n" + b"x" * 3000 + b"\r\n"))] == \
        ["forward"]
    assert body_bytes_held() == base
    assert _parser.body_bytes_held() == base
