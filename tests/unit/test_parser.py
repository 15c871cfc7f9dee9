"""The client-side parser against the request corpus, whole and byte by byte."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcrouter import protocol
from mcrouter import _parser
from mcrouter._parser import RequestParser

from support.corpus_format import load
from support.parser_events import MAX_ITEM, events

CASES = load("requests.txt")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_whole(case):
    parser = RequestParser(MAX_ITEM)
    assert events(parser.feed(case.data)) == case.expect


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_byte_by_byte(case):
    parser = RequestParser(MAX_ITEM)
    got = []
    for i in range(len(case.data)):
        got += parser.feed(case.data[i:i + 1])
    assert events(got) == case.expect


def test_whole_corpus_as_one_stream():
    """Every case that leaves the stream in sync, back to back in one feed."""
    data, expect = b"", []
    for case in CASES:
        if any(e[0] == "close" for e in case.expect) or not case.expect:
            continue
        data += case.data
        expect += case.expect
    assert events(RequestParser(MAX_ITEM).feed(data)) == expect


def test_too_large_block_is_swallowed_across_feeds():
    parser = RequestParser(MAX_ITEM)
    assert events(parser.feed(b"add k 0 0 1000\r\n" + b"x" * 10)) == [
        ("reply", b"SERVER_ERROR object too large for cache\r\n")]
    for _ in range(99):
        assert parser.feed(b"y" * 10) == []
    assert parser.buffered == 0
    assert events(parser.feed(b"\r\nget k\r\n")) == [("forward", "get", b"k", b"get k\r\n", None)]


def test_partial_data_block_waits():
    parser = RequestParser(MAX_ITEM)
    assert parser.feed(b"set k 0 0 3\r\nab") == []
    assert events(parser.feed(b"c\r\n")) == [
        ("forward", "set", b"k", b"set k 0 0 3\r\nabc\r\n", None)]


def test_nothing_is_parsed_after_close():
    parser = RequestParser(MAX_ITEM)
    assert events(parser.feed(b"quit\r\n")) == [("close",)]
    assert parser.feed(b"get k\r\n") == []


def test_long_get_line_is_bounded():
    parser = RequestParser(MAX_ITEM, max_line=10_000)
    assert parser.feed(b"get " + b"k " * 4000) == []
    assert events(parser.feed(b"k " * 2000)) == [("close",)]


def test_protocol_constants_match_the_extension():
    # protocol.py mirrors the enums of _parser.pxd for the Python layer
    req = RequestParser().feed(b"mg k v q\r\n")[0]
    assert req.cmd == protocol.CMD_MG and req.rkind == protocol.RK_QUIET
    assert RequestParser().feed(b"stats\r\n")[0].rkind == protocol.RK_STATS
    assert RequestParser().feed(b"get k\r\n")[0].rkind == protocol.RK_GET
    assert RequestParser().feed(b"mn\r\n")[0].rkind == protocol.RK_META
    assert RequestParser().feed(b"delete k\r\n")[0].rkind == protocol.RK_LINE
    assert RequestParser().feed(b"cache_memlimit 8\r\n")[0].cmd == protocol.CMD_ADMIN
    assert _parser.scan(b"END\r\n", b"get k\r\n") == (5, protocol.ST_FAIL)


PACKAGE = Path(protocol.__file__).parent


def test_shared_constants_are_defined_once():
    """The cpdef enum of _parser.pxd is the only definition of command ids,
    reply kinds and statuses, and protocol.py the only one of the router's
    own replies: a copy anywhere else fails here."""
    pxd = (PACKAGE / "_parser.pxd").read_text()
    enum = pxd[pxd.index("cpdef enum:"):pxd.index("\ncdef ")]
    shared = dict(re.findall(r"^    ((?:CMD|RK|ST)_[A-Z_]+) = (\d+)", enum, re.M))
    assert {"CMD_GET", "CMD_ADMIN", "CMD_LIMIT", "RK_QUIET", "ST_ERROR"} <= shared.keys()
    for name, value in shared.items():
        assert getattr(protocol, name) == getattr(_parser, name) == int(value), name
    # protocol.py re-exports them and assigns none itself
    assigned = re.findall(r"^((?:CMD|RK|ST)_\w+)\s*[,=]", (PACKAGE / "protocol.py").read_text(), re.M)
    assert assigned == []
    copies = [f"{path.name}:{n}" for path in sorted(PACKAGE.rglob("*"))
              if path.suffix in (".py", ".pyx", ".pxd") and path.name != "protocol.py"
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"""b["']SERVER_ERROR mcrouter:""", line)]
    assert copies == []
