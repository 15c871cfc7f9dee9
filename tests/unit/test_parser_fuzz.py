"""Bounded randomized checks: chunking never changes what is parsed, and no
input makes the parser raise or buffer without bound."""
from __future__ import annotations

import random

from mcrouter._parser import Owner, RequestParser
from mcrouter._ring import Ring
from mcrouter.protocol import RK_QUIET

from support.corpus_format import load
from support.parser_events import MAX_ITEM, events

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
    # (the request, a reply memcached may give it)
    (b"get k\r\n", b"VALUE k 0 5\r\na\r\nbc\r\nEND\r\n"), (b"get k\r\n", b"END\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"STORED\r\n"), (b"delete k\r\n", b"NOT_FOUND\r\n"),
    (b"incr k 1\r\n", b"42\r\n"), (b"stats\r\n", b"STAT a 1\r\nSTAT b 2\r\nEND\r\n"),
    (b"mg k v t\r\n", b"VA 4 t-1\r\nMN\r\n\r\n"), (b"mg k v\r\n", b"EN\r\n"),
    (b"ms k 1 q\r\nx\r\n", b"NS\r\nMN\r\n"), (b"md k q\r\n", b"MN\r\n"),
]


def test_replies_match_whatever_the_reads():
    rng = random.Random(11)
    for _ in range(ROUNDS):
        picked = rng.choices(REPLIES, k=rng.randint(1, 20))
        got = []

        class Inbox(Owner):
            def on_reply(self, req):
                got.append(req.reply)

        ring, inbox = Ring(), Inbox()
        quiet = []
        for wire, _ in picked:
            req = RequestParser().feed(wire)[0]
            req.owner = inbox
            quiet.append(req.rkind == RK_QUIET)
            assert ring.push(req, 1.0)
        stream = b"".join(r for _, r in picked)
        i = 0
        while i < len(stream):
            n = rng.choice((1, 2, 5, 100))
            assert ring.feed(stream[i:i + n]) == 0
            i += n
        expect = [r[:-4] if q else r for q, (_, r) in zip(quiet, picked)]
        assert got == expect and ring.inflight == 0
