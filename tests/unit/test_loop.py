"""The worker's event loop: registration, dispatch, timers, end-of-turn flushes.

Descriptor tests use a real epoll over socketpairs (the loop's contract is
with the kernel's level-triggered epoll); timer tests replace the epoll and
the clock with fakes, so that "not early" is checked exactly and nothing
sleeps.  These pin what a rewrite of the loop turn (in Cython) must keep.
"""
from __future__ import annotations

import logging
import select
import socket
import struct

import pytest

from mcrouter import loop as loop_mod
from mcrouter.loop import EV_IN, EV_OUT, IDLE_POLL, RECV_SIZE, TICK, Loop


class Recorder:
    """A handler that logs (name, mask) into a shared journal; ``then`` runs
    inside on_event (to remove or close another descriptor)."""

    def __init__(self, name: str, journal: list, then=None) -> None:
        self.name = name
        self.journal = journal
        self.then = then

    def on_event(self, mask: int) -> None:
        self.journal.append((self.name, mask))
        if self.then is not None:
            self.then()


class Flush:
    """A Flushable that logs its flushes in a shared journal."""

    def __init__(self, name: str, journal: list, then=None) -> None:
        self.name = name
        self.journal = journal
        self.dirty = False
        self.then = then

    def flush(self) -> None:
        self.journal.append((self.name, self.dirty))
        if self.then is not None:
            self.then()


def mark(lst: list, f: Flush) -> None:
    """How Host.send and ClientConnection mark themselves for the end of the turn."""
    if not f.dirty:
        f.dirty = True
        lst.append(f)


@pytest.fixture
def loop():
    lp = Loop()
    lp.busy.add("in flight")      # an idle turn polls TICK, not a whole second
    yield lp
    lp.ep.close()


@pytest.fixture
def pairs():
    """Socket pairs, closed at the end of the test."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)
        made.extend((a, b))
        return a, b
    yield make
    for s in made:
        s.close()


def readable(loop: Loop, pairs, journal: list, **then) -> dict[str, socket.socket]:
    """One socket per name, registered for EV_IN with a Recorder that runs
    ``then[name]``, and made readable: all are ready at the next poll."""
    socks = {}
    for name, fn in then.items():
        sock, peer = pairs()
        loop.add(sock.fileno(), EV_IN, Recorder(name, journal, fn))
        peer.send(b"x")
        socks[name] = sock
    return socks


# -- registration and dispatch ---------------------------------------------

def test_a_ready_descriptor_reaches_its_own_handler_with_the_kernel_mask(loop, pairs):
    (a, peer_a), (b, _) = pairs(), pairs()
    journal: list = []
    loop.add(a.fileno(), EV_IN, Recorder("a", journal))
    loop.add(b.fileno(), EV_IN, Recorder("b", journal))
    loop.run_once()
    assert journal == []                     # nothing readable: nobody called
    peer_a.send(b"x")
    loop.run_once()
    assert journal == [("a", EV_IN)]
    loop.run_once()                          # level-triggered: still unread, called again
    assert journal == [("a", EV_IN), ("a", EV_IN)]
    a.recv(1)
    peer_a.close()                           # the peer hangs up: IN and HUP together
    loop.run_once()
    assert journal[2:] == [("a", EV_IN | select.EPOLLHUP)]


def test_modify_changes_the_interest(loop, pairs):
    a, _ = pairs()
    journal: list = []
    loop.add(a.fileno(), EV_IN, Recorder("a", journal))
    loop.run_once()
    assert journal == []
    loop.modify(a.fileno(), EV_IN | EV_OUT)  # an empty send buffer: writable at once
    loop.run_once()
    assert journal == [("a", EV_OUT)]
    loop.modify(a.fileno(), EV_IN)
    loop.run_once()
    assert journal == [("a", EV_OUT)]


def test_remove_stops_dispatch_and_tolerates_unknown_or_closed_descriptors(loop, pairs):
    (a, peer_a), (b, _) = pairs(), pairs()
    journal: list = []
    loop.add(a.fileno(), EV_IN, Recorder("a", journal))
    loop.add(b.fileno(), EV_IN, Recorder("b", journal))
    peer_a.send(b"x")
    loop.remove(a.fileno())
    loop.remove(a.fileno())                  # twice: a no-op
    loop.remove(12345)                       # never added: a no-op
    loop.run_once()
    assert journal == [] and list(loop.handlers) == [b.fileno()]
    fd = b.fileno()
    b.close()                                # closed first (epoll forgot it): still fine
    loop.remove(fd)
    assert loop.handlers == {}


def test_a_handler_removing_another_ready_descriptor_in_the_same_turn(loop, pairs):
    """Both are ready in one poll; whichever runs first removes and closes
    the other, which then must not be called with the stale event."""
    journal: list = []

    def drop(name: str):
        def run() -> None:
            sock = socks.pop(name, None)
            if sock is not None:
                loop.remove(sock.fileno())
                sock.close()
        return run
    socks = readable(loop, pairs, journal, a=drop("b"), b=drop("a"))
    loop.run_once()
    assert journal in ([("a", EV_IN)], [("b", EV_IN)])
    assert len(loop.handlers) == 1
    loop.run_once()                          # the survivor is still served
    assert len(journal) == 2 and journal[0] == journal[1]


def test_a_reused_descriptor_number_does_not_get_the_stale_event(loop, pairs):
    journal: list = []
    fresh: list[socket.socket] = []

    def replace(name: str):
        """Close the other descriptor and open a new one, which takes its number."""
        def run() -> None:
            sock = socks.pop(name, None)
            if sock is None:
                return
            fd = sock.fileno()
            loop.remove(fd)
            sock.close()
            new, other = socket.socketpair()
            fresh.extend((new, other))
            if new.fileno() != fd:
                pytest.skip("the kernel did not reuse the descriptor number")
            loop.add(new.fileno(), EV_IN, Recorder("new", journal))   # nothing to read
        return run
    socks = readable(loop, pairs, journal, a=replace("b"), b=replace("a"))
    try:
        loop.run_once()
        assert [name for name, _ in journal] in (["a"], ["b"])
    finally:
        for s in fresh:
            s.close()


def test_a_handler_that_raises_is_dropped_and_aborted_and_the_turn_goes_on(loop, pairs,
                                                                             caplog):
    (a, peer_a), (b, peer_b), (c, peer_c) = pairs(), pairs(), pairs()
    journal: list = []

    class Broken(Recorder):
        def on_event(self, mask: int) -> None:
            super().on_event(mask)
            raise ZeroDivisionError("bug")

        def abort(self) -> None:
            journal.append((self.name, "abort"))

    class BrokenNoAbort(Broken):
        abort = None            # type: ignore[assignment]

    up = Flush("up", journal)
    loop.add(a.fileno(), EV_IN, Broken("a", journal))
    loop.add(b.fileno(), EV_IN, Recorder("b", journal, lambda: mark(loop.dirty_upstreams, up)))
    loop.add(c.fileno(), EV_IN, BrokenNoAbort("c", journal))
    for peer in (peer_a, peer_b, peer_c):
        peer.send(b"x")
    with caplog.at_level(logging.ERROR, logger="mcrouter.loop"):
        loop.run_once()
    assert len(journal) == 5 and set(journal[:-1]) == {("a", EV_IN), ("a", "abort"),
                                                        ("b", EV_IN), ("c", EV_IN)}
    assert journal.index(("a", EV_IN)) + 1 == journal.index(("a", "abort"))
    assert journal[-1] == ("up", False)      # the turn's flush still happened
    assert list(loop.handlers) == [b.fileno()]
    assert [r.getMessage() for r in caplog.records] == [
        "closing a connection after an internal error"] * 2
    assert all(r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_on_turn_runs_once_per_turn_after_the_poll_and_before_any_handler(loop, pairs):
    journal: list = []
    loop.on_turn = lambda: journal.append(("turn", loop.now))
    socks = readable(loop, pairs, journal, a=None, b=None)
    before = loop.now
    loop.run_once()
    assert journal[0][0] == "turn" and journal[0][1] > before   # now is this turn's
    assert sorted(journal[1:]) == [("a", EV_IN), ("b", EV_IN)]
    for sock in socks.values():
        loop.remove(sock.fileno())
    loop.run_once()                          # nothing ready: on_turn still runs
    assert len(journal) == 4 and journal[3][0] == "turn" and journal[3][1] > journal[0][1]


def test_the_receive_buffer_is_one_bytearray_kept_for_the_loop_life(loop, pairs):
    a, peer = pairs()
    buf = loop.recv_buf
    assert type(buf) is bytearray and len(buf) == RECV_SIZE == 256 * 1024
    got: list[bytes] = []

    class Reader:
        def on_event(self, mask: int) -> None:
            n = a.recv_into(loop.recv_buf)
            got.append(bytes(loop.recv_buf[:n]))
    loop.add(a.fileno(), EV_IN, Reader())
    for chunk in (b"first", b"2nd"):
        peer.send(chunk)
        loop.run_once()
    assert got == [b"first", b"2nd"]
    assert loop.recv_buf is buf and len(buf) == RECV_SIZE


# -- end-of-turn flush -----------------------------------------------------

def test_a_turn_flushes_once_after_every_handler_upstreams_first(loop, pairs):
    """Two clients each queue to one upstream and reply: one upstream send,
    after both handlers ran, then each client's reply."""
    journal: list = []
    up = Flush("up", journal)
    clients = {"a": Flush("client a", journal), "b": Flush("client b", journal)}

    def read(name: str):
        def run() -> None:
            mark(loop.dirty_upstreams, up)
            mark(loop.dirty_clients, clients[name])
        return run
    readable(loop, pairs, journal, a=read("a"), b=read("b"))
    loop.run_once()
    handlers, flushes = journal[:2], journal[2:]
    assert sorted(handlers) == [("a", EV_IN), ("b", EV_IN)]
    # dirty is cleared before flush is called (a flush may mark it again)
    assert flushes == [("up", False)] + [("client " + name, False) for name, _ in handlers]
    assert loop.dirty_upstreams == [] and loop.dirty_clients == []
    assert not up.dirty and not any(c.dirty for c in clients.values())


def test_an_upstream_dirtied_by_a_client_flush_goes_out_in_the_same_flush(loop):
    """A client whose output drained forwards the requests it held back."""
    journal: list = []
    up = Flush("up", journal)
    client = Flush("client", journal, lambda: mark(loop.dirty_upstreams, up))
    mark(loop.dirty_clients, client)
    loop.flush()
    assert journal == [("client", False), ("up", False)]
    assert loop.dirty_upstreams == [] and not up.dirty
    loop.flush()                             # nothing dirty: nothing flushed
    assert len(journal) == 2


def test_each_dirty_item_is_flushed_once_in_the_order_marked(loop):
    journal: list = []
    ups = [Flush(f"up{i}", journal) for i in range(3)]
    for u in (ups[2], ups[0], ups[2], ups[1], ups[0]):
        mark(loop.dirty_upstreams, u)
    loop.flush()
    assert journal == [("up2", False), ("up0", False), ("up1", False)]


def test_a_flush_that_raises_is_aborted_and_the_rest_of_the_batch_goes_out(loop, caplog):
    """Bug: the batch was taken off the dirty list, and a flush raising cut
    through it: the items after it kept ``dirty`` set without being on any
    list, so nothing they queued was ever written again (and the error
    reached the worker's loop)."""
    journal: list = []

    class Broken(Flush):
        def flush(self) -> None:
            super().flush()
            raise ZeroDivisionError("bug")

        def abort(self) -> None:
            journal.append((self.name, "abort"))

    ups = [Flush("up0", journal), Broken("up1", journal), Flush("up2", journal)]
    clients = [Broken("c0", journal), Flush("c1", journal)]
    for u in ups:
        mark(loop.dirty_upstreams, u)
    for c in clients:
        mark(loop.dirty_clients, c)
    with caplog.at_level(logging.ERROR, logger="mcrouter.loop"):
        loop.flush()
    assert journal == [("up0", False), ("up1", False), ("up1", "abort"), ("up2", False),
                       ("c0", False), ("c0", "abort"), ("c1", False)]
    assert [r.getMessage() for r in caplog.records] == [
        "closing a connection after an internal error while writing"] * 2
    assert not any(x.dirty for x in ups + clients)
    mark(loop.dirty_upstreams, ups[2])          # marked again: flushed again
    loop.flush()
    assert journal[-1] == ("up2", False)


# -- timers (fake clock, fake epoll) ----------------------------------------

class FakeEpoll:
    """Records each poll's timeout and advances the fake clock by it (or to
    the next of ``wakes``, if sooner)."""

    def __init__(self, clock: "Clock") -> None:
        self.clock = clock
        self.timeouts: list[float] = []
        self.wakes: list[float] = []      # instants a poll returns early (events came)

    def poll(self, timeout: float) -> list:
        self.timeouts.append(timeout)
        if self.wakes:
            self.clock.now = min(self.wakes.pop(0), self.clock.now + timeout)
        else:
            self.clock.now += timeout
        return []

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timed(monkeypatch):
    """A loop on a fake clock and a fake epoll: a poll takes exactly its timeout."""
    clock = Clock()
    monkeypatch.setattr(loop_mod, "monotonic", clock)
    lp = Loop()
    lp.ep.close()
    lp.ep = FakeEpoll(clock)      # type: ignore[assignment]
    return lp, clock


def test_timers_run_by_deadline_then_in_the_order_scheduled(timed):
    loop, clock = timed
    ran: list[str] = []
    loop.call_later(0.3, lambda: ran.append("0.3"))
    loop.call_later(0.1, lambda: ran.append("0.1 first"))
    loop.call_later(0.2, lambda: ran.append("0.2"))
    loop.call_later(0.1, lambda: ran.append("0.1 second"))
    for _ in range(10):
        loop.run_once()
        if len(ran) == 4:
            break
    assert ran == ["0.1 first", "0.1 second", "0.2", "0.3"]
    # each poll slept exactly until the next deadline
    assert loop.ep.timeouts == pytest.approx([0.1, 0.1, 0.1])


def test_no_timer_runs_before_its_deadline(timed):
    """Turns that end early (a descriptor was ready) just short of the
    deadline do not run the timer; the first turn at or past it does."""
    loop, clock = timed
    ran: list[float] = []
    loop.call_later(0.25, lambda: ran.append(loop.now))
    loop.ep.wakes = [500.1, 500.245, 500.2499]
    for _ in range(3):
        loop.run_once()
    assert ran == [] and loop.now == 500.2499
    for _ in range(10):
        loop.run_once()
        if ran:
            break
    assert ran == [pytest.approx(500.25)] and ran[0] >= 500.25
    assert loop.ep.timeouts[3] == pytest.approx(0.0001)   # slept only the rest


def test_while_busy_the_poll_is_one_tick(timed):
    """Requests in flight: the loop wakes every TICK, so Worker.tick can
    expire them even when no byte arrives."""
    loop, clock = timed
    ran: list[float] = []
    loop.call_later(0.025, lambda: ran.append(loop.now))
    loop.busy.add("in flight")
    for _ in range(5):
        loop.run_once()
    assert loop.ep.timeouts == pytest.approx([TICK, TICK, 0.005, TICK, TICK])
    assert ran == [pytest.approx(500.025)]


def test_a_timer_is_relative_to_the_turn_clock_not_the_call_time(timed):
    """call_later(d) from a handler counts from the turn's ``now``: work done
    during the turn does not push a reconnect further out."""
    loop, clock = timed
    loop.run_once()                          # idle: one IDLE_POLL
    assert loop.ep.timeouts == [IDLE_POLL] and loop.now == 501.0
    clock.now += 0.4                         # the turn's handlers took 0.4 s
    ran: list[float] = []
    loop.call_later(1.0, lambda: ran.append(clock.now))
    assert loop.poll_timeout() == pytest.approx(0.6)
    loop.run_once()
    assert ran == [pytest.approx(502.0)]


def test_poll_timeout_idle_busy_and_overdue(timed):
    loop, clock = timed
    assert loop.poll_timeout() == IDLE_POLL == 1.0
    loop.busy.add(object())
    assert loop.poll_timeout() == TICK == 0.01
    loop.busy.clear()
    loop.call_later(0.5, lambda: None)
    assert loop.poll_timeout() == pytest.approx(0.5)
    clock.now += 2.0
    assert loop.poll_timeout() == 0.0        # overdue: never negative


def test_what_a_timer_dirties_is_flushed_in_the_same_turn(timed):
    loop, clock = timed
    journal: list = []
    up = Flush("up", journal)
    loop.call_later(0.05, lambda: (journal.append("timer"), mark(loop.dirty_upstreams, up)))
    loop.run_once()
    assert journal == ["timer", ("up", False)] and loop.dirty_upstreams == []


def test_timers_run_after_the_handlers_and_their_flush(timed, pairs):
    loop, clock = timed
    journal: list = []
    up = Flush("up", journal)

    class Events(FakeEpoll):
        def poll(self, timeout: float) -> list:
            super().poll(timeout)
            return [(7, EV_IN)]
    loop.ep = Events(clock)                  # type: ignore[assignment]
    loop.handlers[7] = Recorder("h", journal, lambda: mark(loop.dirty_upstreams, up))
    loop.call_later(0.0, lambda: journal.append("timer"))
    loop.run_once()
    assert journal == [("h", EV_IN), ("up", False), "timer"]


# -- Handler subclasses and the C turn hook --------------------------------

def test_python_handler_subclasses_are_called_through_the_compiled_base(loop, pairs):
    """Worker handlers subclass loop.Handler: their on_event and flush run
    from the loop's C calls; a bug in one is dropped as for any handler."""
    journal: list = []

    class Mine(loop_mod.Handler):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_event(self, mask: int) -> None:
            journal.append((self.name, mask))
            if self.name == "bad":
                raise ZeroDivisionError("bug")
            mark(loop.dirty_clients, self)

        def flush(self) -> None:
            journal.append((self.name, "flush", self.dirty))

    (a, peer_a), (b, peer_b) = pairs(), pairs()
    good, bad = Mine("good"), Mine("bad")
    assert not good.dirty
    loop.add(a.fileno(), EV_IN, good)
    loop.add(b.fileno(), EV_IN, bad)
    peer_a.send(b"x")
    peer_b.send(b"x")
    loop.run_once()
    assert sorted(journal[:2]) == [("bad", EV_IN), ("good", EV_IN)]
    assert journal[2:] == [("good", "flush", False)]    # dirty cleared before its flush
    assert list(loop.handlers) == [a.fileno()]


def test_a_signature_watch_calls_back_only_when_the_counted_bytes_move(loop):
    buf = bytearray(64)
    seen: list[bytes] = []
    struct.pack_into("<I", buf, 0, 2)         # two units of two bytes: buf[8:12]
    watch = loop_mod.SignatureWatch(buf, 0, 8, 2, 16, lambda: seen.append(bytes(buf[8:24])))
    loop.on_turn = watch
    loop.run_once()
    assert seen == []                          # nothing moved since it was made
    buf[9] = 1
    loop.run_once()
    loop.run_once()
    assert len(seen) == 1                      # once per change
    buf[12] = 1                                # past the counted span: not watched
    loop.run_once()
    assert len(seen) == 1
    struct.pack_into("<I", buf, 0, 3)          # the count grew: the span did too
    loop.run_once()
    assert len(seen) == 2
    struct.pack_into("<I", buf, 0, 1000)       # capped at the limit (16 bytes)
    loop.run_once()
    buf[30] = 7
    loop.run_once()
    assert len(seen) == 3
    with pytest.raises(ValueError):
        loop_mod.SignatureWatch(buf, 0, 60, 2, 16, lambda: None)


def test_a_failing_turn_hook_is_logged_and_the_turn_goes_on(loop, pairs, caplog):
    buf = bytearray(16)
    journal: list = []

    def changed() -> None:
        raise ZeroDivisionError("bug")
    loop.on_turn = loop_mod.SignatureWatch(buf, 0, 4, 1, 8, changed)
    readable(loop, pairs, journal, a=None)
    buf[0], buf[4] = 1, 9                      # one byte counted now, and it moved
    with caplog.at_level(logging.ERROR, logger="mcrouter.loop"):
        loop.run_once()
    assert journal == [("a", EV_IN)]
    assert [r.getMessage() for r in caplog.records] == [
        "internal error in a timer or turn hook (the worker continues)"]
