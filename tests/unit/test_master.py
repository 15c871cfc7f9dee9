"""The master's loop, with fakes: no fork, no signal sent, a fake clock.

What is checked: a worker that misses the confirmation of a generation
(start or reload) is reported and the master carries on (it used to die on
an UnboundLocalError, taking every worker with it); any exception raised by
one of the loop's duties is logged with its traceback and the loop goes on,
without spinning.  With a fake ``os`` (fork, waitpid, kill) and ``time``, as
gunicorn's tests/test_arbiter.py does: a dead worker is respawned in its
slot after a growing backoff, the sidecar apart from the workers, a worker
that cannot boot stops the master; TERM drains (and kills stragglers after
the grace), QUIT stops now; HUP sends the new config with the next
generation number and a refused reload keeps the old one; TTIN/TTOU.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time

import pytest

from mcrouter import master as master_mod
from mcrouter._metrics import (G_GENERATION, G_RELOADS_FAILED, G_RELOADS_OK,
                               G_SIDECAR_RESTARTS, G_WORKER_RESTARTS, G_WORKERS,
                               G_WORKERS_CURRENT, install, local)
from mcrouter.config import parse_config
from mcrouter.control import Channel
from mcrouter.listen import parse_listen
from mcrouter.master import ERROR_PAUSE, SIDECAR, STABLE_AFTER, Master
from mcrouter.settings import Settings
from mcrouter.worker import EXIT_BOOT_FAILED

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


# -- supervision with a fake ``os`` and ``time``: fork, reap, respawn, signals, reload ----

class FakeOS:
    """What master.py sees of ``os``: fork, waitpid and kill are fakes (a
    child "exits" when told to, unless it ignores SIGTERM); the rest is real."""

    def __init__(self) -> None:
        self.next_pid = 200
        self.killed: list[tuple[int, int]] = []
        self.exits: list[tuple[int, int]] = []       # (pid, wait status), reaped in order
        self.stubborn: set[int] = set()              # pids that ignore SIGTERM

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fork(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def exit(self, pid: int, code: int = 0, sig: int = 0) -> None:
        self.exits.append((pid, sig if sig else code << 8))

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))
        if sig == signal.SIGKILL or pid not in self.stubborn:
            self.exit(pid, sig=sig)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if pid != -1:
            found = [e for e in self.exits if e[0] == pid]
            self.exits = [e for e in self.exits if e[0] != pid]
            return found[0] if found else (pid, 0)
        return self.exits.pop(0) if self.exits else (0, 0)


class FakeTime:
    """master.py's ``time``: sleep moves the monotonic clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 50.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds

    def time(self) -> float:
        return time.time()


class Worker:
    """The worker's end of a control channel."""

    def __init__(self, channel) -> None:
        self.channel = channel

    def messages(self) -> list[dict]:
        return self.channel.receive()


@pytest.fixture
def fake_os(monkeypatch) -> FakeOS:
    fake = FakeOS()
    monkeypatch.setattr(master_mod, "os", fake)
    monkeypatch.setattr(master_mod, "time", FakeTime())
    monkeypatch.setattr(master_mod.sdnotify, "stopping", lambda: True)
    return fake


@pytest.fixture
def supervised(tmp_path, fake_os, notified):
    """A Master on a config file, with workers 101 (slot 0) and 102 (slot 1),
    each with a real control channel, and the sidecar 103; its counters are
    this process's (reloads count there) until the test ends."""
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG)
    before = local()
    m = Master(Settings(config_path=str(path), workers=2, confirm_timeout=10.0,
                        graceful_timeout=3.0),
               parse_config(CONFIG, str(path)), parse_listen("127.0.0.1:1"), config_text=CONFIG)
    m.clock = Clock()
    m.children = {101: 0, 102: 1, 103: SIDECAR}
    m.holds = {101: 1, 102: 1, 103: 1}               # as _fork records them
    m.started = {0: m.clock(), 1: m.clock(), SIDECAR: m.clock()}
    m.peers = {}                    # type: ignore[attr-defined]
    for pid in (101, 102):
        mine, theirs = Channel.pair()
        m.channels[pid] = mine
        m.peers[pid] = Worker(theirs)
    yield m
    install(before)
    for ch in [*m.channels.values(), *m.sidecar_channels.values()]:
        ch.close()
    for w in m.peers.values():
        w.channel.close()


def gauge(m: Master, word: int) -> int:
    return m.metrics.snapshot(0).value(word)


def test_a_worker_that_exits_is_respawned_in_its_slot_after_a_growing_backoff(supervised,
                                                                           fake_os, caplog):
    m = supervised
    fake_os.exit(101, code=1)
    with caplog.at_level(logging.WARNING, logger="mcrouter.master"):
        m.reap_workers()
    assert [r.getMessage() for r in caplog.records] == [
        "worker 0 (pid 101) exited with 1; restarting in 0.2s"]
    assert 101 not in m.children and 101 not in m.channels
    assert m.respawn_at == {0: pytest.approx(1000.2)}
    m.manage_workers()
    assert fake_os.next_pid == 200                    # not yet: no fork before the backoff
    delays = []
    for _ in range(8):                                # each dies as soon as it is up
        m.clock.now = m.respawn_at[0]
        m.manage_workers()
        pid = fake_os.next_pid
        assert m.children[pid] == 0 and pid in m.channels and m.respawn_at == {}
        fake_os.exit(pid, sig=signal.SIGSEGV)
        m.reap_workers()
        delays.append(round(m.respawn_at[0] - m.clock(), 6))
    assert delays == [0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert gauge(m, G_WORKER_RESTARTS) == 9 and gauge(m, G_SIDECAR_RESTARTS) == 0
    # one that lived past STABLE_AFTER is restarted at once, and its backoff starts over
    m.clock.now = m.respawn_at[0]
    m.manage_workers()
    m.clock.now += STABLE_AFTER + 0.1
    fake_os.exit(fake_os.next_pid, code=0)
    m.reap_workers()
    assert m.respawn_at == {0: m.clock()} and m.failures[0] == 0
    m.manage_workers()
    fake_os.exit(fake_os.next_pid, code=0)
    m.reap_workers()
    assert m.respawn_at == {0: pytest.approx(m.clock() + 0.2)}
    assert list(m.children.values()).count(0) == 0 and m.children[102] == 1   # slot 1 untouched


def test_the_sidecar_is_respawned_as_a_sidecar_and_counted_apart(supervised, fake_os, caplog):
    m = supervised
    fake_os.exit(103, code=EXIT_BOOT_FAILED)          # the boot code stops nothing for it
    with caplog.at_level(logging.WARNING, logger="mcrouter.master"):
        m.reap_workers()
    assert [r.getMessage() for r in caplog.records] == [
        "sidecar (pid 103) exited with 3; restarting in 0.2s"]
    assert m.exit_code is None and m.respawn_at == {SIDECAR: pytest.approx(1000.2)}
    assert gauge(m, G_SIDECAR_RESTARTS) == 1 and gauge(m, G_WORKER_RESTARTS) == 0
    m.clock.now += 0.2
    m.manage_workers()
    pid = fake_os.next_pid
    assert m.children == {101: 0, 102: 1, pid: SIDECAR}
    assert pid in m.sidecar_channels and pid not in m.channels   # no config channel
    assert m.respawn_at == {}


def test_a_worker_that_cannot_boot_stops_the_master(supervised, fake_os, caplog):
    m = supervised
    fake_os.exit(102, code=EXIT_BOOT_FAILED)
    fake_os.exit(101, code=1)                         # reaped after the stop: not respawned
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        m.reap_workers()
    assert m.exit_code == 1
    assert [r.getMessage() for r in caplog.records] == [
        "worker 1 could not start; stopping (see the error above)"]
    assert fake_os.killed == [(101, signal.SIGTERM), (103, signal.SIGTERM)]
    assert m.children == {} and m.channels == {} and m.respawn_at == {}


def test_sigterm_drains_every_child_and_stops_accepting(supervised, fake_os):
    m = supervised
    listener = socket.socket()
    m.listeners = [listener]
    m.sleep = lambda: None                            # type: ignore[method-assign]
    m.sig_queue = [signal.SIGTERM, signal.SIGHUP]     # nothing after the stop is handled
    m.turn()
    assert m.exit_code == 0
    assert fake_os.killed == [(101, signal.SIGTERM), (102, signal.SIGTERM),
                              (103, signal.SIGTERM)]
    assert listener.fileno() == -1 and m.listeners == []
    assert m.children == {} and m.channels == {} and m.generation == 1
    assert m.sig_queue == [signal.SIGHUP]
    assert master_mod.time.slept < 0.1                # nobody waited for the grace


def test_sigterm_kills_a_straggler_after_the_grace(supervised, fake_os):
    m = supervised
    fake_os.stubborn.add(102)
    m.sig_queue = [signal.SIGTERM]
    m.sleep = lambda: None                            # type: ignore[method-assign]
    m.turn()
    assert fake_os.killed == [(101, signal.SIGTERM), (102, signal.SIGTERM),
                              (103, signal.SIGTERM), (102, signal.SIGKILL)]
    # the straggler had the whole grace (--graceful-timeout 3, plus 1 s) first
    assert master_mod.time.slept == pytest.approx(4.0, abs=0.05)
    assert m.children == {} and m.exit_code == 0


def test_sigquit_stops_now(supervised, fake_os):
    m = supervised
    m.sig_queue = [signal.SIGQUIT]
    m.sleep = lambda: None                            # type: ignore[method-assign]
    m.turn()
    assert fake_os.killed == [(101, signal.SIGQUIT), (102, signal.SIGQUIT),
                              (103, signal.SIGQUIT)]
    assert m.exit_code == 0 and m.children == {}


RELOADED = "orderedPool: [127.0.0.1:11211, 127.0.0.1:11212]\nroute: {type: DefaultRoute}\n"


def test_sighup_sends_the_new_config_with_the_next_generation(supervised, fake_os, notified,
                                                              caplog):
    m = supervised
    path = m.settings.config_path
    with open(path, "w") as f:
        f.write(RELOADED)
    m.sig_queue = [signal.SIGHUP]
    m.sleep = lambda: None                            # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="mcrouter.master"):
        m.turn()
    assert m.generation == 2 and gauge(m, G_GENERATION) == 2
    assert gauge(m, G_RELOADS_OK) == 1 and gauge(m, G_RELOADS_FAILED) == 0
    sent = {"config": RELOADED, "path": path, "generation": 2, "members": {}}
    assert m.peers[101].messages() == [sent] and m.peers[102].messages() == [sent]
    # a new host: it has a slot, and a new sidecar probes it; the old one is
    # told to stop, and its exit (reaped in the same turn) is no restart
    assert [r.getMessage() for r in caplog.records] == [
        f"SIGHUP: reloading {path}",
        f"reloading {path}: generation 2: DefaultRoute, 2 host(s) (1 added, 0 removed); the "
        "listen address and other flags are restart-level and keep their values",
        "sidecar (pid 103) retired; 2 worker(s)"]
    assert m.table.slot_of("127.0.0.1:11212") == 1
    assert m.children == {101: 0, 102: 1, fake_os.next_pid: SIDECAR}
    assert fake_os.killed == [(103, signal.SIGTERM)]
    assert m.respawn_at == {} and m.retiring == set() and gauge(m, G_SIDECAR_RESTARTS) == 0
    # READY=1 once both workers confirm generation 2, not before
    assert gauge(m, G_WORKERS_CURRENT) == 0
    m.peers[101].channel.send({"applied": 2})
    m.read_channel(101)
    m.check_confirmed()
    assert notified == []
    m.peers[102].channel.send({"applied": 2})
    m.read_channel(102)
    m.check_confirmed()
    m.count_current()
    assert notified == ["2 worker(s), config generation 2"]
    assert gauge(m, G_WORKERS_CURRENT) == 2


def test_a_reload_with_the_same_hosts_keeps_the_sidecar(supervised, fake_os):
    m = supervised
    text = CONFIG.replace("DefaultRoute", "NullRoute")
    with open(m.settings.config_path, "w") as f:
        f.write(text)
    m.handle_hup()
    assert m.generation == 2 and m.peers[101].messages()[0]["config"] == text
    assert fake_os.next_pid == 200 and fake_os.killed == [] and m.retiring == set()


def test_a_refused_reload_keeps_the_generation_and_tells_no_worker(supervised, fake_os,
                                                                   notified, caplog):
    m = supervised
    path = m.settings.config_path
    with open(path, "w") as f:
        f.write("orderedPool: [127.0.0.1:11211]\nroute: {type: NoSuchRoute}\n")
    config = m.config
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        m.handle_hup()
    assert m.generation == 1 and gauge(m, G_GENERATION) == 1 and m.config is config
    assert gauge(m, G_RELOADS_FAILED) == 1 and gauge(m, G_RELOADS_OK) == 0
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"reload refused, still serving generation 1: {path}:2:15: unknown route type "
        "'NoSuchRoute'; valid: ")
    error = record.getMessage().removeprefix("reload refused, still serving generation 1: ")
    assert notified == [f"reload refused: {error}"]
    assert m.peers[101].messages() == [] and m.peers[102].messages() == []
    assert fake_os.next_pid == 200 and fake_os.killed == []
    # the next good reload takes the next number: nothing was used up
    with open(path, "w") as f:
        f.write(RELOADED)
    m.handle_hup()
    assert m.generation == 2 and m.peers[101].messages()[0]["generation"] == 2


def test_a_worker_rejecting_a_generation_is_restarted(supervised, fake_os, caplog):
    m = supervised
    m.peers[102].channel.send({"rejected": 2, "error": "pool p: no servers"})
    with caplog.at_level(logging.ERROR, logger="mcrouter.master"):
        m.read_channel(102)
    assert [r.getMessage() for r in caplog.records] == [
        "worker 1 refused generation 2: pool p: no servers; restarting it"]
    assert fake_os.killed == [(102, signal.SIGTERM)]
    m.reap_workers()                                  # and its respawn boots on the current one
    assert m.respawn_at == {1: pytest.approx(1000.2)}


def test_signals_are_queued_by_the_handler_and_handled_in_order_by_the_loop(supervised):
    m = supervised
    m.wake_r, m.wake_w = os.pipe()
    for fd in (m.wake_r, m.wake_w):
        os.set_blocking(fd, False)
    try:
        duties = Duties(m, {})
        for sig in [signal.SIGTTIN, signal.SIGHUP] * 10:
            m.queue_signal(sig, None)
        assert len(m.sig_queue) == 16                 # bounded; each one woke the loop
        assert duties.ran == []                       # the handler only queues
        m.sleep = Master.sleep.__get__(m)             # type: ignore[method-assign]
        m.turn()
        assert duties.ran[:16] == ["handle_ttin", "handle_hup"] * 8
        assert m.sig_queue == []
        with pytest.raises(BlockingIOError):
            os.read(m.wake_r, 1)                      # the wake-up bytes were drained
    finally:
        os.close(m.wake_r)
        os.close(m.wake_w)


def test_ttin_adds_a_worker_and_ttou_retires_the_highest_slot(supervised, fake_os):
    m = supervised
    m.handle_ttin()
    pid = fake_os.next_pid
    assert m.num_workers == 3 and m.children[pid] == 2 and gauge(m, G_WORKERS) == 3
    m.handle_ttou()
    assert m.num_workers == 2 and m.retiring == {pid}
    assert fake_os.killed == [(pid, signal.SIGTERM)]
    m.reap_workers()                                  # retired: not respawned
    assert pid not in m.children and m.respawn_at == {} and m.retiring == set()
    fake_os.exit(102, code=1)                         # slot 1 dead, waiting for its respawn
    m.reap_workers()
    m.handle_ttou()                                   # then that slot is simply not refilled
    assert m.num_workers == 1 and m.respawn_at == {}
    m.handle_ttou()
    assert m.num_workers == 1 and m.children == {101: 0, 103: SIDECAR}
