"""Ring: FIFO matching, timeouts that keep their slot, bounded queues."""
from __future__ import annotations

from mcrouter._parser import RequestParser
from mcrouter._ring import Ring
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK

TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
GONE = b"SERVER_ERROR mcrouter: upstream error\r\n"


class Inbox:
    def __init__(self):
        self.got = []

    def on_reply(self, req):
        self.got.append((req.wire, req.reply, req.status))


class Wire:
    """A socket stand-in that accepts every byte and records each send."""

    def __init__(self):
        self.sends = []

    def send(self, data):
        self.sends.append(bytes(data))
        return len(data)


def requests(data: bytes, owner):
    reqs = RequestParser().feed(data)
    for r in reqs:
        r.owner = owner
    return reqs


def test_replies_match_requests_in_order_across_partial_reads():
    inbox, ring = Inbox(), Ring()
    for r in requests(b"get a\r\nset b 0 0 1\r\nx\r\nmg c v q\r\ndelete d noreply\r\n", inbox):
        assert ring.push(r, 10.0)
    sock = Wire()
    assert ring.write_to(sock) == 0        # everything queued goes out in one send
    assert sock.sends == [b"get a\r\nset b 0 0 1\r\nx\r\nmg c v q\r\nmn\r\n"
                          b"delete d noreply\r\nmn\r\n"]
    stream = b"VALUE a 0 2\r\nhi\r\nEND\r\nSTORED\r\nMN\r\nMN\r\n"
    for i in range(len(stream)):
        assert ring.feed(stream[i:i + 1]) == 0
    assert inbox.got == [
        (b"get a\r\n", b"VALUE a 0 2\r\nhi\r\nEND\r\n", ST_OK),
        (b"set b 0 0 1\r\nx\r\n", b"STORED\r\n", ST_OK),
        (b"mg c v q\r\nmn\r\n", b"", ST_FAIL),      # a quiet mg miss is a miss
        (b"delete d noreply\r\nmn\r\n", b"", ST_OK),
    ]
    assert ring.inflight == 0


def test_timeout_answers_at_once_and_drops_the_late_reply():
    inbox, ring = Inbox(), Ring()
    first, second = requests(b"get a\r\nget b\r\n", inbox)
    ring.push(first, 1.0)
    ring.push(second, 2.0)
    assert ring.expire(1.5, TIMEOUT) == 1
    assert inbox.got == [(b"get a\r\n", TIMEOUT, ST_ERROR)]
    assert ring.inflight == 2                 # the slot is kept for the late reply
    ring.feed(b"VALUE a 0 1\r\nA\r\nEND\r\nVALUE b 0 1\r\nB\r\nEND\r\n")
    assert inbox.got[1] == (b"get b\r\n", b"VALUE b 0 1\r\nB\r\nEND\r\n", ST_OK)
    assert len(inbox.got) == 2 and ring.inflight == 0


def test_unsolicited_or_garbage_bytes_are_a_protocol_error():
    inbox, ring = Inbox(), Ring()
    assert ring.feed(b"STORED\r\n") == -1
    ring = Ring()
    ring.push(requests(b"get a\r\n", inbox)[0], 1.0)
    assert ring.feed(b"STORED\r\n") == -1


def test_fail_all_answers_everything_once():
    inbox, ring = Inbox(), Ring()
    for r in requests(b"get a\r\nget b\r\n", inbox):
        ring.push(r, 1.0)
    ring.fail_all(GONE)
    assert [g[1] for g in inbox.got] == [GONE, GONE]
    assert ring.inflight == 0 and ring.pending == 0


def test_push_is_bounded():
    inbox, ring = Inbox(), Ring(max_inflight=2)
    reqs = requests(b"get a\r\nget b\r\nget c\r\n", inbox)
    assert ring.push(reqs[0], 1.0) and ring.push(reqs[1], 1.0)
    assert not ring.push(reqs[2], 1.0)


def test_a_reply_larger_than_the_bound_is_walked_past_not_held():
    too_large = b"SERVER_ERROR mcrouter: reply too large\r\n"
    for step in (1, 7, 60):         # reads smaller than the bound, as a big value arrives
        inbox, ring = Inbox(), Ring(max_reply=100)
        for r in requests(b"get a b\r\nmg c v\r\nmg d v q\r\nget e\r\n", inbox):
            ring.push(r, 1.0)
        stream = (b"VALUE a 0 3\r\nabc\r\nVALUE b 0 1000\r\n" + b"x" * 1000 + b"\r\nEND\r\n"
                  + b"VA 500 f0\r\n" + b"y" * 500 + b"\r\n"
                  + b"VA 300\r\n" + b"z" * 300 + b"\r\nMN\r\n"
                  + b"VALUE e 0 1\r\nE\r\nEND\r\n")
        for i in range(0, len(stream), step):
            assert ring.feed(stream[i:i + step]) == 0
        assert [g[1] for g in inbox.got] == [too_large, too_large, too_large,
                                              b"VALUE e 0 1\r\nE\r\nEND\r\n"]
        assert ring.inflight == 0


def test_an_endless_line_is_a_protocol_error():
    inbox, ring = Inbox(), Ring(max_reply=100)
    ring.push(requests(b"delete a\r\n", inbox)[0], 1.0)
    assert ring.feed(b"x" * 200) == -1
