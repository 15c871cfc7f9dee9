"""Bounded randomized checks: chunking never changes what is parsed, and no
input makes the parser raise or buffer without bound."""
from __future__ import annotations

import random

from mcrouter._parser import RequestParser
from mcrouter._ring import Ring
from mcrouter.protocol import RK_GET, RK_LINE, RK_META, RK_QUIET, RK_STATS

from corpus_format import load
from test_parser import MAX_ITEM, events

ROUNDS = 200
IN_SYNC = [c for c in load("requests.txt")
           if c.expect and not any(e[0] == "close" for e in c.expect)]


def feed_in_chunks(parser: RequestParser, data: bytes, rng: random.Random) -> list:
    got, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 64, 1000, 5000))
        got += parser.feed(data[i:i + n])
        i += n
    return got


def test_random_chunking_never_changes_the_requests():
    rng = random.Random(2026)
    for _ in range(ROUNDS):
        cases = rng.choices(IN_SYNC, k=rng.randint(1, 12))
        data = b"".join(c.data for c in cases)
        expect = [e for c in cases for e in c.expect]
        assert events(feed_in_chunks(RequestParser(MAX_ITEM), data, rng)) == expect


def test_garbage_never_raises_and_stays_bounded():
    rng = random.Random(7)
    alphabet = b"get set mg ms 0123456789 \r\n\r\n\x00\xff noreply q v"
    for _ in range(ROUNDS):
        parser = RequestParser(MAX_ITEM, max_line=4096)
        for _ in range(50):
            chunk = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
            parser.feed(chunk)
            # an unfinished line, or a header plus a data block no larger than the limit
            assert parser.buffered <= 4096 + MAX_ITEM + 2 + 300
            if parser.closing:
                break


REPLIES = [
    (RK_GET, b"VALUE k 0 5\r\na\r\nbc\r\nEND\r\n"), (RK_GET, b"END\r\n"),
    (RK_LINE, b"STORED\r\n"), (RK_LINE, b"NOT_FOUND\r\n"), (RK_LINE, b"42\r\n"),
    (RK_STATS, b"STAT a 1\r\nSTAT b 2\r\nEND\r\n"), (RK_META, b"VA 4 t-1\r\nMN\r\n\r\n"),
    (RK_META, b"EN\r\n"), (RK_QUIET, b"NS\r\nMN\r\n"), (RK_QUIET, b"MN\r\n"),
]



def test_replies_match_whatever_the_reads():
    rng = random.Random(11)
    wires = {RK_GET: b"get k\r\n", RK_LINE: b"delete k\r\n", RK_STATS: b"stats\r\n",
             RK_META: b"mg k v\r\n", RK_QUIET: b"md k q\r\n"}
    for _ in range(ROUNDS):
        picked = rng.choices(REPLIES, k=rng.randint(1, 20))
        got = []

        class Inbox:
            def on_reply(self, req):
                got.append(req.reply)

        ring, inbox = Ring(), Inbox()
        for rkind, _ in picked:
            req = RequestParser().feed(wires[rkind])[0]
            req.owner = inbox
            assert ring.push(req, 1.0)
        stream = b"".join(r for _, r in picked)
        i = 0
        while i < len(stream):
            n = rng.choice((1, 2, 5, 100))
            assert ring.feed(stream[i:i + n]) == 0
            i += n
        expect = [r[:-4] if k == RK_QUIET else r for k, r in picked]
        assert got == expect and ring.inflight == 0
