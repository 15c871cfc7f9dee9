"""The master's loop, with fakes: no fork, no signal sent, a fake clock.

What is checked: a worker that misses the confirmation of a generation
(start or reload) is reported and the master carries on (it used to die on
an UnboundLocalError, taking every worker with it); any exception raised by
one of the loop's duties is logged with its traceback and the loop goes on,
without spinning.
"""
from __future__ import annotations

import logging
import signal

import pytest

from mcrouter import master as master_mod
from mcrouter._metrics import install, local
from mcrouter.config import parse_config
from mcrouter.listen import parse_listen
from mcrouter.master import ERROR_PAUSE, SIDECAR, Master
from mcrouter.settings import Settings

CONFIG = "orderedPool: [127.0.0.1:11211]\nroute: {type: DefaultRoute}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notified(monkeypatch) -> list[str]:
    """What the master tells systemd (READY=1 with a status), instead of a socket."""
    sent: list[str] = []
    monkeypatch.setattr(master_mod.sdnotify, "ready", lambda status="": sent.append(status))
    monkeypatch.setattr(master_mod.sdnotify, "reloading", lambda status="": None)
    return sent


@pytest.fixture
def master():
    """A Master with two workers (pids 101, 102) and a sidecar (103), none real."""
    before = local()
    m = Master(Settings(workers=2, confirm_timeout=10.0), parse_config(CONFIG),
               parse_listen("127.0.0.1:1"))
    install(before)             # the master installs its own counters; give them back
    m.clock = Clock()
    m.children = {101: 0, 102: 1, 103: SIDECAR}
    yield m


def test_a_worker_missing_the_reload_confirmation_is_reported_and_the_master_goes_on(
        master, notified, caplog):
    master.generation = 2
    master.running_gen = {101: 2, 102: 1}           # worker 1 is stopped, still on 1
    master.await_workers("reload 2")
    master.clock.now += 9.9
    master.check_confirmed()                          # still within the deadline: waits
    assert master.confirm_by and notified == []
    master.clock.now += 0.2
    with caplog.at_level(logging.INFO, logger="mcrouter.master"):
        master.check_confirmed()                      # was: UnboundLocalError on 'count'
    assert master.confirm_by == 0.0
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "reload 2: worker(s) [1] did not confirm generation 2 within 10s; "
                    "1 of 2 worker(s) confirmed")]
    assert notified == ["1 of 2 worker(s) on config generation 2; late: 1"]
    master.check_confirmed()                          # reported once, not every turn
    assert len(notified) == 1


def test_workers_missing_the_start_confirmation(master, notified, caplog):
    master.running_gen = {}
    master.await_workers("start")
    master.clock.now += 10.0
    with caplog.at_level(logging.WARNING, logger="mcrouter.master"):
        master.check_confirmed()
    assert caplog.records[0].getMessage().startswith(
        "start: worker(s) [0, 1] did not confirm generation 1 within 10s")
    assert notified == ["0 of 2 worker(s) on config generation 1; late: 0, 1"]


def test_every_worker_confirms(master, notified, caplog):
    master.running_gen = {101: 1}
    master.await_workers("start")
    master.check_confirmed()
    assert notified == []
    master.running_gen[102] = 1                       # the sidecar never confirms: not counted
    with caplog.at_level(logging.INFO, logger="mcrouter.master"):
        master.check_confirmed()
    assert caplog.records[0].getMessage() == "start: all 2 worker(s) run config generation 1"
    assert notified == ["2 worker(s), config generation 1"]


class Duties:
    """Records which of the master's duties ran, in order; some raise."""

    def __init__(self, m: Master, raising: dict[str, BaseException]) -> None:
        self.ran: list[str] = []
        self.raising = raising
        for name in ("sleep", "reap_workers", "manage_workers", "check_watch",
                     "check_confirmed", "handle_hup", "handle_ttin"):
            setattr(m, name, self.duty(name))

    def duty(self, name: str):
        def run() -> None:
            self.ran.append(name)
            if name in self.raising:
                raise self.raising.pop(name)
        return run


def test_a_handler_raising_is_logged_with_its_traceback_and_the_loop_goes_on(master, caplog):
    duties = Duties(master, {"handle_hup": KeyError("boom")})
    master.sig_queue = [signal.SIGHUP, signal.SIGTTIN]
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        master.turn()
    # the next signal is still handled, and every duty of the turn still runs
    assert duties.ran == ["sleep", "handle_hup", "handle_ttin", "reap_workers",
                          "manage_workers", "check_watch", "check_confirmed"]
    assert master.exit_code is None
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert record.getMessage() == "master: handle_hup failed; still supervising"
    assert record.exc_info[0] is KeyError            # the traceback goes with the line
    master.turn()                                     # and the next turn is a full one
    assert duties.ran[7:] == ["sleep", "reap_workers", "manage_workers", "check_watch",
                              "check_confirmed"]


@pytest.mark.parametrize("duty", ["sleep", "reap_workers", "manage_workers", "check_watch",
                                  "check_confirmed"])
def test_any_duty_raising_leaves_the_master_supervising(master, caplog, duty):
    duties = Duties(master, {duty: RuntimeError("unexpected")})
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        master.turn()
        master.turn()
    assert duties.ran.count("check_confirmed") == 2      # both turns ran to the end
    assert [r.getMessage() for r in caplog.records] == [
        f"master: {duty} failed; still supervising"]


def test_after_a_duty_raised_the_loop_pauses_rather_than_spins(master):
    Duties(master, {"check_confirmed": RuntimeError("every turn")})
    master.await_workers("start")
    master.clock.now = master.confirm_by + 5.0        # overdue: the timeout would be 0
    assert master.next_timeout() == 0.0
    master.turn()
    assert master.next_timeout() == pytest.approx(ERROR_PAUSE)
    master.clock.now += ERROR_PAUSE
    assert master.next_timeout() == 0.0


def test_run_returns_the_exit_code_after_surviving_a_failed_handler(master, monkeypatch):
    Duties(master, {"handle_hup": ValueError("bad")})
    monkeypatch.setattr(master, "start", lambda: None)
    master.sig_queue = [signal.SIGHUP]

    def term() -> None:
        master.exit_code = 0
    monkeypatch.setattr(master, "handle_term", term)

    def sleep_then_term() -> None:
        if not master.sig_queue:
            master.sig_queue.append(signal.SIGTERM)   # the second turn stops the master
    monkeypatch.setattr(master, "sleep", sleep_then_term)
    assert master.run() == 0


def test_system_exit_is_not_swallowed(master):
    Duties(master, {"reap_workers": SystemExit(3)})
    with pytest.raises(SystemExit):
        master.turn()


def test_a_failing_sleep_still_pauses_the_loop(master, monkeypatch):
    """If the wait itself raises (select on a bad descriptor), the loop must
    not spin logging tracebacks: it sleeps ERROR_PAUSE instead."""
    Duties(master, {"sleep": OSError(9, "Bad file descriptor")})
    slept: list[float] = []
    monkeypatch.setattr("mcrouter.master.time.sleep", slept.append)
    master.turn()
    assert slept == [ERROR_PAUSE]
    master.turn()                                     # a good sleep: no extra pause
    assert slept == [ERROR_PAUSE]


def test_a_failed_fork_is_retried_later(master, monkeypatch):
    spawned: list[int] = []

    def spawn(slot: int) -> None:
        spawned.append(slot)
        if len(spawned) == 1:
            raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(master, "spawn_worker", spawn)
    master.respawn_at = {1: master.clock()}
    master.guard("manage_workers", master.manage_workers)
    assert spawned == [1] and 1 in master.respawn_at  # still owed a worker
    master.clock.now = master.respawn_at[1]
    master.manage_workers()
    assert spawned == [1, 1] and master.respawn_at == {}


def hosts_config(*ports: int) -> tuple:
    text = f"orderedPool: [{', '.join(f'127.0.0.1:{p}' for p in ports)}]\nroute: {{type: DefaultRoute}}\n"
    return parse_config(text), text


@pytest.fixture
def small(notified, monkeypatch):
    """A Master whose table has 8 slots (a config names at most 4), on
    11211; two workers (101, 102) and a sidecar (103), each holding
    generation 1.  Sidecar restarts are recorded, not forked."""
    before = local()
    config, text = hosts_config(11211)
    m = Master(Settings(workers=2, host_slots=8), config, parse_listen("127.0.0.1:1"),
               config_text=text)
    install(before)
    m.clock = Clock()
    m.children = {101: 0, 102: 1, 103: SIDECAR}
    m.holds = {101: 1, 102: 1, 103: 1}
    m.restarted = []
    monkeypatch.setattr(m, "restart_sidecar", lambda: m.restarted.append(m.generation))
    return m


def publish(m: Master, *ports: int) -> None:
    config, text = hosts_config(*ports)
    m.publish(config, text, {}, {}, "test", "reload")


def reaped(m: Master, pid: int, monkeypatch) -> None:
    """``pid`` exited (as reap_workers sees it after SIGCHLD)."""
    m.retiring.add(pid)
    waits = [(pid, 0)]
    monkeypatch.setattr(master_mod.os, "waitpid", lambda *_: waits.pop() if waits else (0, 0))
    m.reap_workers()


def key(port: int) -> str:
    return f"127.0.0.1:{port}"


def test_a_slot_is_freed_once_no_child_holds_a_generation_naming_its_host(small, monkeypatch,
                                                                          caplog):
    m = small
    a = m.table.slot_of(key(11211))
    publish(m, 11212)                                   # generation 2: 11211 left
    assert m.generation == 2 and m.restarted == [2]
    m.free_slots()
    assert m.table.slot_of(key(11211)) == a             # every child still holds 1
    m.hold(101, 2)
    m.hold(102, 2)
    m.free_slots()
    assert m.table.slot_of(key(11211)) == a             # the old sidecar still runs
    with caplog.at_level(logging.INFO, logger="mcrouter.master"):
        reaped(m, 103, monkeypatch)
        m.free_slots()
    assert m.table.slot_of(key(11211)) == -1 and list(m.slots) == list(m.config.hosts())
    assert "freed the host slots of 1 host(s) that no running generation names " \
           "(1 of 8 slots in use)" in caplog.text
    publish(m, 11212, 11213)                            # the freed slot is taken first
    assert m.table.slot_of(key(11213)) == a
    assert m.table.status(a).key == key(11213)


def test_a_host_that_comes_back_before_its_slot_is_freed_keeps_it(small):
    m = small
    a = m.table.slot_of(key(11211))
    publish(m, 11212)
    m.hold(101, 2)                                      # worker 102 still runs generation 1
    m.free_slots()
    publish(m, 11212, 11211)
    assert m.table.slot_of(key(11211)) == a and m.slots[m.config.hosts()[1]] == a
    m.hold(102, 3)
    m.hold(101, 3)
    m.hold(103, 3)
    m.free_slots()
    assert m.table.slot_of(key(11211)) == a             # named by the current generation


def test_a_draining_worker_keeps_its_hosts_slots_until_it_exits(small, monkeypatch):
    m = small
    m.children[104] = 2                                 # retired by TTOU, still draining
    m.holds[104] = 1
    m.retiring.add(104)
    publish(m, 11212)
    for pid in (101, 102, 103):
        m.hold(pid, 2)
    m.free_slots()
    assert m.table.slot_of(key(11211)) >= 0
    reaped(m, 104, monkeypatch)
    m.free_slots()
    assert m.table.slot_of(key(11211)) == -1


def test_a_change_the_table_cannot_hold_is_refused_whole_in_one_line(small, caplog):
    m = small
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        publish(m, 1, 2, 3, 4, 5)
        assert m.generation == 1 and m.table.used == 1
        publish(m, 1, 2, 3, 4)                          # 5 slots in use, generation 1 held
        assert m.generation == 2
        publish(m, 5, 6, 7, 8)                          # 4 more: 3 free
        assert m.generation == 2 and m.table.used == 5
    assert [r.getMessage() for r in caplog.records] == [
        ("reload refused, still serving generation 1: more than 4 distinct hosts (5 named); "
         "a config may name at most 4"),
        ("reload refused, still serving generation 2: more than 8 distinct hosts (4 new, 5 in use "
         "by generations 1..2, older ones still draining); send SIGHUP again once they have "
         "drained (within -r and --graceful-timeout)")]
    for pid in (101, 102, 103):
        m.hold(pid, 2)
    m.free_slots()
    publish(m, 5, 6, 7, 8)
    assert m.generation == 3
