"""Ring: FIFO matching, timeouts that keep their slot, bounded queues."""
from __future__ import annotations

import time

import pytest

from mcrouter._parser import Owner, RequestParser
from mcrouter._ring import Ring
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK

TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
GONE = b"SERVER_ERROR mcrouter: upstream error\r\n"


class Inbox(Owner):
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
    inbox, ring, sock = Inbox(), Ring(timeout=1.0), Wire()
    first, second = requests(b"get a\r\nget b\r\n", inbox)
    ring.push(first, 9.0)
    ring.write_to(sock, 0.0)                  # its reply is due 1.0 after it was written
    ring.push(second, 9.0)
    ring.write_to(sock, 1.0)
    assert ring.awaiting == 2
    assert ring.expire(1.5, TIMEOUT) == 1
    assert inbox.got == [(b"get a\r\n", TIMEOUT, ST_ERROR)]
    assert ring.inflight == 2                 # the slot is kept for the late reply
    ring.feed(b"VALUE a 0 1\r\nA\r\nEND\r\nVALUE b 0 1\r\nB\r\nEND\r\n")
    assert inbox.got[1] == (b"get b\r\n", b"VALUE b 0 1\r\nB\r\nEND\r\n", ST_OK)
    assert len(inbox.got) == 2 and ring.inflight == 0


class Trickle(Wire):
    """A socket that takes only a few bytes per send."""

    def send(self, data):
        self.sends.append(bytes(data[:5]))
        return min(5, len(data))


def test_the_reply_clock_starts_when_the_request_is_written_whole():
    inbox, ring, sock = Inbox(), Ring(timeout=1.0), Trickle()
    first, second = requests(b"get a\r\nget bb\r\n", inbox)
    ring.push(first, 5.0)
    ring.push(second, 5.0)
    ring.write_to(sock, 0.0)                  # 5 of 7 bytes: nothing written whole
    assert ring.awaiting == 0
    ring.write_to(sock, 2.0)                  # the rest of "get a", 3 bytes of "get bb"
    assert ring.awaiting == 1
    assert ring.expire(2.5, TIMEOUT) == 0     # due at 3.0, not at 1.0
    ring.write_to(sock, 3.0)
    assert ring.awaiting == 2
    assert ring.expire(3.5, TIMEOUT) == 1 and inbox.got == [(first.wire, TIMEOUT, ST_ERROR)]


def test_a_request_that_waited_in_the_queue_is_answered_but_not_counted():
    inbox, ring = Inbox(), Ring(timeout=1.0)
    first, second = requests(b"get a\r\nget b\r\n", inbox)
    ring.push(first, 1.0)                     # never written: the socket is not up
    ring.push(second, 2.0)
    assert ring.expire(1.5, TIMEOUT) == 0     # answered, yet not the host's fault
    assert inbox.got == [(first.wire, TIMEOUT, ST_ERROR)]
    assert ring.expire(2.5, TIMEOUT) == 0 and len(inbox.got) == 2


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


# Every reply is checked against its request's command: what cannot answer it
# is a protocol error, whichever way it is framed.
WRONG_REPLIES = [
    # (request as a client sends it, a reply that cannot answer it)
    (b"set k 0 0 1\r\nx\r\n", b"VALUE x 0 3\r\nabc\r\nEND\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"END\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"16\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"DELETED\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"HD\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"STORED \r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"CLIENT_ERRORS\r\n"),
    (b"add k 0 0 1\r\nx\r\n", b"OK\r\n"),
    (b"replace k 0 0 1\r\nx\r\n", b"TOUCHED\r\n"),
    (b"append k 0 0 1\r\nx\r\n", b"VA 1\r\nx\r\n"),
    (b"prepend k 0 0 1\r\nx\r\n", b"MN\r\n"),
    (b"cas k 0 0 1 1\r\nx\r\n", b"VERSION 1.6.18\r\n"),
    (b"delete k\r\n", b"STORED\r\n"),
    (b"delete k\r\n", b"1\r\n"),
    (b"delete k\r\n", b"END\r\n"),
    (b"incr k 1\r\n", b"STORED\r\n"),
    (b"incr k 1\r\n", b"DELETED\r\n"),
    (b"incr k 1\r\n", b"1a\r\n"),
    (b"incr k 1\r\n", b"-1\r\n"),
    (b"incr k 1\r\n", b" 1\r\n"),
    (b"incr k 1\r\n", b"\r\n"),
    (b"decr k 1\r\n", b"123456789012345678901\r\n"),     # 21 digits: no uint64
    (b"decr k 1\r\n", b"VALUE k 0 1\r\n1\r\nEND\r\n"),
    (b"touch k 1\r\n", b"DELETED\r\n"),
    (b"touch k 1\r\n", b"STORED\r\n"),
    (b"flush_all\r\n", b"STORED\r\n"),
    (b"flush_all\r\n", b"END\r\n"),
    (b"verbosity 1\r\n", b"DELETED\r\n"),
    (b"version\r\n", b"STORED\r\n"),
    (b"version\r\n", b"VERSION\r\n"),
    (b"cache_memlimit 100\r\n", b"STORED\r\n"),
    (b"slabs automove 1\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n"),
    (b"get k\r\n", b"STORED\r\n"),
    (b"get k\r\n", b"VALUE other 0 1\r\nx\r\nEND\r\n"),          # a key not asked
    (b"get k\r\n", b"VALUE k 0 1\r\nx\r\nVALUE k 0 1\r\nx\r\nEND\r\n"),   # twice
    (b"get k\r\n", b"VALUE k 0 1 5\r\nx\r\nEND\r\n"),             # cas on a get
    (b"get k\r\n", b"VALUE k 0\r\nx\r\nEND\r\n"),
    (b"get k\r\n", b"VALUE k 0 1\r\nx\r\nOK\r\n"),
    (b"get k\r\n", b"VALUE k 0 1\r\nx\r\nEND \r\n"),
    (b"get a b\r\n", b"VALUE b 0 1\r\ny\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),   # out of order
    (b"get a b\r\n", b"VALUE a 0 1\r\nx\r\nVALUE c 0 1\r\nz\r\nEND\r\n"),
    (b"gets k\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n"),              # gets without cas
    (b"gets k\r\n", b"VALUE k 0 1 x\r\nx\r\nEND\r\n"),
    (b"gat 10 k\r\n", b"VALUE 10 0 1\r\nx\r\nEND\r\n"),           # the exptime is no key
    (b"gats 10 k\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n"),
    (b"stats\r\n", b"STORED\r\n"),
    (b"stats\r\n", b"STAT pid 1\r\nVALUE k 0 1\r\nx\r\nEND\r\n"),
    (b"mg k v\r\n", b"NS\r\n"),
    (b"mg k v\r\n", b"NF\r\n"),
    (b"mg k v\r\n", b"EX\r\n"),
    (b"mg k v\r\n", b"MN\r\n"),
    (b"mg k v\r\n", b"STORED\r\n"),
    (b"mg k v\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n"),
    (b"mg k v\r\n", b"HDX\r\n"),
    (b"ms k 1\r\nx\r\n", b"VA 1\r\nx\r\n"),
    (b"ms k 1\r\nx\r\n", b"EN\r\n"),
    (b"ms k 1\r\nx\r\n", b"STORED\r\n"),
    (b"md k\r\n", b"VA 1\r\nx\r\n"),
    (b"md k\r\n", b"EN\r\n"),
    (b"md k\r\n", b"NS\r\n"),
    (b"md k\r\n", b"DELETED\r\n"),
    (b"ma k\r\n", b"EN\r\n"),
    (b"ma k\r\n", b"ME k exp=-1\r\n"),
    (b"ma k\r\n", b"5\r\n"),
    (b"mn\r\n", b"HD\r\n"),
    (b"mn\r\n", b"EN\r\n"),
    (b"mn\r\n", b"MN O1\r\n"),
    (b"me k\r\n", b"HD\r\n"),
    (b"me k\r\n", b"VA 1\r\nx\r\n"),
    # quiet: at most one reply that fits the command, then the router's MN
    (b"set k 0 0 1 noreply\r\nx\r\n", b"VALUE x 0 3\r\nabc\r\nEND\r\nMN\r\n"),
    (b"set k 0 0 1 noreply\r\nx\r\n", b"NOT_STORED\r\nNOT_STORED\r\nMN\r\n"),
    (b"set k 0 0 1 noreply\r\nx\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\nMN\r\n"),
    (b"delete k noreply\r\n", b"STORED\r\nMN\r\n"),
    (b"incr k 1 noreply\r\n", b"OK\r\nMN\r\n"),
    (b"flush_all noreply\r\n", b"END\r\nMN\r\n"),
    (b"mg k v q\r\n", b"NS\r\nMN\r\n"),
    (b"mg k v q\r\n", b"HD\r\nHD\r\nMN\r\n"),
    (b"mg k v q\r\n", b"VA 1\r\nx\r\nVA 1\r\nx\r\nMN\r\n"),
    (b"ms k 1 q\r\nx\r\n", b"VA 1\r\nx\r\nMN\r\n"),
    (b"md k q\r\n", b"EN\r\nMN\r\n"),
    (b"ma k q\r\n", b"garbage\r\nMN\r\n"),
]


@pytest.mark.parametrize("request_bytes,wrong", WRONG_REPLIES)
@pytest.mark.parametrize("step", [0, 1], ids=["one-read", "byte-by-byte"])
def test_a_reply_that_cannot_answer_its_request_is_never_delivered(request_bytes, wrong, step):
    """The replies before the wrong one are delivered; the wrong one and
    every later one (even in the same read) are not: the connection is
    dropped and each request still owed a reply gets the router's error."""
    inbox, ring = Inbox(), Ring()
    before, bad, after = requests(b"get a\r\n" + request_bytes + b"get z\r\n", inbox)
    for r in (before, bad, after):
        assert ring.push(r, 10.0)
    good = b"VALUE a 0 1\r\nA\r\nEND\r\n"
    stream = good + wrong + b"VALUE z 0 1\r\nZ\r\nEND\r\n"
    if step == 0:
        assert ring.feed(stream) == -1
        assert ring.fault_cmd == bad.cmd          # what the log line names
        assert ring.fault_bytes == stream[len(good):len(good) + 80]
    else:
        results = [ring.feed(stream[i:i + 1]) for i in range(len(stream))]
        assert -1 in results and set(results[:results.index(-1)]) == {0}
    assert inbox.got == [(b"get a\r\n", good, ST_OK)]
    ring.fail_all(GONE)                 # what the connection does on -1
    assert inbox.got == [(b"get a\r\n", good, ST_OK),
                         (bad.wire, GONE, ST_ERROR),
                         (b"get z\r\n", GONE, ST_ERROR)]
    assert ring.inflight == 0


@pytest.mark.parametrize("request_bytes,stream,delivered,status", [
    (b"set k 0 0 1\r\nx\r\n", b"STORED\r\nSTORED\r\n", b"STORED\r\n", ST_OK),
    (b"get k\r\n", b"END\r\nEND\r\n", b"END\r\n", ST_FAIL),
    (b"mg k q\r\n", b"MN\r\nMN\r\n", b"", ST_FAIL),
    (b"mn\r\n", b"MN\r\nHD\r\n", b"MN\r\n", ST_OK),
])
def test_an_extra_reply_is_a_protocol_error_and_the_first_is_kept(request_bytes, stream,
                                                                   delivered, status):
    inbox, ring = Inbox(), Ring()
    req = requests(request_bytes, inbox)[0]
    ring.push(req, 10.0)
    assert ring.feed(stream) == -1          # bytes nobody asked for
    assert ring.fault_cmd == 0 and ring.fault_bytes == stream[len(stream) // 2:]
    assert inbox.got == [(req.wire, delivered, status)]


def test_a_wrong_reply_to_a_timed_out_request_is_still_an_error():
    """A late reply is dropped, but it must still fit: a desynchronised
    pipeline shows itself there first."""
    inbox, ring, sock = Inbox(), Ring(timeout=1.0), Wire()
    first, second = requests(b"set k 0 0 1\r\nx\r\nset j 0 0 1\r\ny\r\n", inbox)
    ring.push(first, 9.0)
    ring.write_to(sock, 0.0)
    ring.push(second, 9.0)
    ring.write_to(sock, 1.0)
    assert ring.expire(1.5, TIMEOUT) == 1
    assert ring.feed(b"END\r\nSTORED\r\n") == -1
    ring.fail_all(GONE)
    assert inbox.got == [(first.wire, TIMEOUT, ST_ERROR), (second.wire, GONE, ST_ERROR)]


@pytest.mark.parametrize("request_bytes,wrong", [
    (b"get a b\r\n", b"VALUE c 0 1000\r\n"),            # a key not asked, too large to hold
    (b"get a\r\n", b"VALUE a 0 1000 7\r\n"),           # a cas on a get
    (b"ms k 1\r\nx\r\n", b"VA 1000\r\n"),              # ms has no value to return
    (b"md k q\r\n", b"VA 1000\r\n"),
    (b"mg k v q\r\n", b"VA 300\r\n" + b"z" * 300 + b"\r\nVA 1\r\n"),   # a second reply
])
def test_a_large_reply_walked_past_is_checked_too(request_bytes, wrong):
    inbox, ring = Inbox(), Ring(max_reply=100)
    req = requests(request_bytes, inbox)[0]
    ring.push(req, 10.0)
    stream = wrong + b"x" * 1000 + b"\r\nEND\r\nMN\r\n"
    for i in range(0, len(stream), 60):
        if ring.feed(stream[i:i + 60]) == -1:
            break
    else:
        pytest.fail("the reply was accepted")
    assert inbox.got == []


class FakeTable:
    def state(self, slot):
        return 0

    def generation(self, slot):
        return 0


def test_protocol_errors_are_logged_at_most_once_per_interval_per_host(caplog):
    """One clear line per fault, naming host, command and bytes; a broken
    backend cannot flood the log: the next line says how many were skipped."""
    from mcrouter.config import HostAddr
    from mcrouter.upstream import PROTOCOL_LOG_INTERVAL, Host

    from mcrouter.loop import Loop

    loop = Loop()
    loop.now = 100.0
    host = Host(HostAddr("10.0.0.7", 11211), loop, FakeTable(), 0, connections=1, timeout=1.0,
                connect_timeout=1.0, max_item_size=1 << 20, tko=3)
    inbox, ring = Inbox(), Ring()
    caplog.set_level("WARNING", logger="mcrouter.upstream")

    def fault(request_bytes, wrong):
        ring.push(requests(request_bytes, inbox)[0], 10.0)
        assert ring.feed(wrong) == -1
        ring.fail_all(GONE)
        return host.protocol_error(ring)

    assert fault(b"set k 0 0 1\r\nx\r\n", b"VALUE x 0 3\r\nabc\r\nEND\r\n") == \
        "protocol error (a reply to set that cannot answer it)"
    for _ in range(5):
        loop.now += 1.0
        fault(b"incr k 1\r\n", b"STORED\r\n")
    loop.now += PROTOCOL_LOG_INTERVAL
    assert ring.feed(b"END\r\n") == -1          # nothing owed
    host.protocol_error(ring)
    assert [r.getMessage() for r in caplog.records] == [
        "host 10.0.0.7:11211: protocol error, connection closed: a reply to set that cannot "
        "answer it: b'VALUE x 0 3\\r\\nabc\\r\\nEND\\r\\n'",
        "host 10.0.0.7:11211: protocol error, connection closed: bytes while no reply was "
        "owed: b'END\\r\\n' (5 more since the last such line)",
    ]


def test_progress_is_the_last_reply_bytes_or_the_first_write_after_a_lull():
    inbox, ring, sock = Inbox(), Ring(timeout=1.0), Wire()
    first, second = requests(b"get a\r\nget b\r\n", inbox)
    ring.push(first, 9.0)
    ring.write_to(sock, 5.0)                  # nothing was owed: the clock starts here
    assert ring.progress_at == 5.0
    ring.push(second, 9.0)
    ring.write_to(sock, 7.0)                  # something still owed: no progress by writing
    assert ring.progress_at == 5.0
    ring.feed(b"EN")                          # any reply byte is progress (loop clock)
    assert abs(ring.progress_at - time.monotonic()) < 5
    assert ring.awaiting == 2
