"""The shared host table, the DNS cache (with an injected resolver) and the
health settings, without processes."""
from __future__ import annotations

import logging
import os
import socket

import pytest

from mcrouter.cli import parse_duration
from mcrouter.config import ConfigError, HealthPolicy, HostAddr, parse_config
from mcrouter.dns import DnsCache
from mcrouter.hosttable import DOWN, STATUS_AT, UP, HostTable, TableFull


def test_slots_are_assigned_once_per_address():
    t = HostTable(capacity=4)
    a = t.assign("cache1:11211")
    b = t.assign("[::1]:11212")
    assert (a, b) == (0, 1)
    assert t.assign("cache1:11211") == 0
    assert t.slot_of("[::1]:11212") == 1 and t.slot_of("nope:1") == -1
    assert t.state(a) == UP and t.address(a) is None
    t.assign("c:1")
    t.assign("d:1")
    with pytest.raises(TableFull):
        t.assign("e:1")


def test_state_changes_are_counted_and_move_the_signature():
    t = HostTable(capacity=8)
    s = t.assign("h:1")
    before = t.signature()
    assert t.set_state(s, DOWN, "connect: ECONNREFUSED") is True
    assert t.set_state(s, DOWN, "again") is False          # no change, no log line
    assert t.signature() != before
    st = t.status(s)
    assert (st.key, st.state, st.changes, st.reason) == ("h:1", "down", 1, "connect: ECONNREFUSED")
    assert st.changed_at > 0
    assert t.set_state(s, UP, "2 good probes in a row") is True
    assert t.status(s).changes == 2 and t.status(s).state == "up"


def test_processes_judging_a_host_at_once_change_it_once():
    """Two workers that see a host fail in the same moment: each read "up"
    before either wrote "down", and both logged the change (CI, two
    workers, one ECONNREFUSED).  The swap is atomic: exactly one wins."""
    t = HostTable(capacity=8)
    s = t.assign("h:1")
    wins = 0
    for _ in range(200):
        assert t.set_state(s, UP, "reset") in (True, False)
        r, w = os.pipe()
        pids = []
        for _child in range(4):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)                   # all four start together
                os._exit(1 if t.set_state(s, DOWN, "raced") else 0)
            pids.append(pid)
        os.close(r)
        os.close(w)                             # releases the children
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        assert sum(codes) == 1, codes
        wins += 1
    assert wins == 200 and t.state(s) == DOWN


def test_the_table_is_shared_with_a_forked_child():
    t = HostTable(capacity=8)
    s = t.assign("h:1")
    pid = os.fork()
    if pid == 0:
        t.set_state(s, DOWN, "seen by the child")
        t.set_address(s, socket.AF_INET6, "::1")
        os._exit(0)
    os.waitpid(pid, 0)
    assert t.state(s) == DOWN and t.status(s).reason == "seen by the child"
    assert t.address(s) == (socket.AF_INET6, "::1")


def test_an_address_being_written_is_not_read():
    t = HostTable(capacity=8)
    s = t.assign("h:1")
    t.set_address(s, socket.AF_INET, "10.0.0.1")
    gen = t.generation(s)
    assert gen % 2 == 0 and t.address(s) == (socket.AF_INET, "10.0.0.1")
    t.mm[STATUS_AT + 1 + 2 * s] = gen + 1                 # what a reader sees mid-write
    assert t.address(s) is None
    t.mm[STATUS_AT + 1 + 2 * s] = gen
    t.set_address(s, socket.AF_INET, "10.0.0.2")
    assert t.generation(s) != gen and t.address(s) == (socket.AF_INET, "10.0.0.2")


def test_backend_versions_lowest_wins_and_only_a_strict_x_y_z_is_kept():
    t = HostTable(capacity=8)
    a, b, c = t.assign("a:1"), t.assign("b:1"), t.assign("c:1")
    assert t.lowest_version([a, b, c]) is None             # never probed
    t.set_version(a, b"1.6.18")
    t.set_version(b, b"1.6.9")                             # numerically lower, not as text
    assert t.version(a) == (1, 6, 18) and t.version(b) == (1, 6, 9)
    assert t.lowest_version([a, b, c]) == "1.6.9"
    assert t.lowest_version([a]) == "1.6.18"               # only the slots asked about
    assert t.lowest_version([]) is None
    for hostile in (b"1.6.18 mcrouter/0.1.0", b"1.6", b"1.6.9.1", b"1.6.9\r\nEND", b"a.b.c",
                    b"-1.6.9", b"1.6.9 ", b"12345.0.0", b"1.6.9\x00", "1.6.\u0663".encode()):
        t.set_version(b, b"1.6.9")
        t.set_version(b, hostile)
        assert t.version(b) is None, hostile               # unknown again, never stored
        assert t.lowest_version([a, b]) == "1.6.18"
    t.set_version(c, b"1.4.5")
    assert t.lowest_version([a, b, c]) == "1.4.5"
    assert t.statuses()[2].key == "c:1"                    # the other fields are untouched


def test_a_version_being_written_is_not_read():
    from mcrouter.hosttable import REC_VERSION_SEQ
    t = HostTable(capacity=2)
    s = t.assign("h:1")
    t.set_version(s, b"1.6.18")
    at = t._rec(s) + REC_VERSION_SEQ
    seq = t.mm[at]
    assert seq % 2 == 0 and t.version(s) == (1, 6, 18)
    t.mm[at] = seq + 1                                     # what a reader sees mid-write
    assert t.version(s) is None
    t.mm[at] = seq
    t.set_version(s, b"1.6.18")                            # unchanged: not rewritten
    assert t.mm[at] == seq
    t.set_version(s, b"1.6.21")
    assert t.mm[at] == seq + 2 and t.version(s) == (1, 6, 21)


def test_the_version_reply_is_the_lowest_backend_version_or_1_6_18():
    from mcrouter.routes.simple import BackendVersion
    t = HostTable(capacity=4)
    a, b = t.assign("a:1"), t.assign("b:1")
    assert BackendVersion().reply() == b"VERSION 1.6.18\r\n"
    assert BackendVersion(t, [a, b]).reply() == b"VERSION 1.6.18\r\n"
    t.set_version(b, b"1.5.22")
    assert BackendVersion(t, [a, b]).reply() == b"VERSION 1.5.22\r\n"
    assert BackendVersion(t, [a]).reply() == b"VERSION 1.6.18\r\n"


class FakeResolver:
    def __init__(self, answers: dict[str, tuple[int, str] | None]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> tuple[int, str]:
        self.calls.append(host)
        found = self.answers[host]
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return found


def test_dns_cache_follows_a_change_and_keeps_the_last_good_address(caplog):
    t = HostTable(capacity=8)
    named, literal = t.assign("cache:11211"), t.assign("127.0.0.1:11212")
    resolver = FakeResolver({"cache": (socket.AF_INET, "192.0.2.1")})
    dns = DnsCache(t, [(named, HostAddr("cache", 11211)), (literal, HostAddr("127.0.0.1", 11212))],
                   resolver)
    dns.refresh()
    assert t.address(named) == (socket.AF_INET, "192.0.2.1")
    assert t.address(literal) == (socket.AF_INET, "127.0.0.1")
    assert resolver.calls == ["cache"]                      # literals are never looked up
    gen = t.generation(named)
    dns.refresh()
    assert t.generation(named) == gen                       # same answer: nothing moves
    resolver.answers["cache"] = (socket.AF_INET6, "2001:db8::1")
    with caplog.at_level(logging.INFO, "mcrouter.dns"):
        dns.refresh()
    assert t.address(named) == (socket.AF_INET6, "2001:db8::1") and t.generation(named) != gen
    assert "host cache:11211: address 192.0.2.1 -> 2001:db8::1" in caplog.text
    caplog.clear()
    resolver.answers["cache"] = None
    with caplog.at_level(logging.INFO, "mcrouter.dns"):
        for _ in range(5):
            dns.refresh()
    assert t.address(named) == (socket.AF_INET6, "2001:db8::1")
    assert caplog.text.count("cannot resolve cache") == 1
    assert "keeping 2001:db8::1" in caplog.text
    assert t.status(named).reason.startswith("dns: ")
    resolver.answers["cache"] = (socket.AF_INET6, "2001:db8::1")
    with caplog.at_level(logging.INFO, "mcrouter.dns"):
        dns.refresh()
    assert "cache resolves again" in caplog.text


def test_health_section_defaults_and_values():
    cfg = parse_config("orderedPool: [a:1]\nroute: {type: DefaultRoute}\n")
    assert cfg.health == HealthPolicy(fail=2, rise=2, tko=3, probe_timeout_ms=1000)
    cfg = parse_config("orderedPool: [a:1, b:2, a:1]\nroute: {type: DefaultRoute}\n"
                       "health: {fail: 1, rise: 3, tko: 5, probe_timeout_ms: 250}\n")
    assert cfg.health == HealthPolicy(1, 3, 5, 250)
    assert cfg.hosts() == (HostAddr("a", 1), HostAddr("b", 2))


@pytest.mark.parametrize("text,message", [
    ("health: {fail: 0}", "r.yaml:3:16: health.fail must be a whole number of at least 1 (got '0'); write e.g. 2"),
    ("health: {rise: two}", "r.yaml:3:16: health.rise must be a whole number of at least 1 (got 'two'); write e.g. 2"),
    ("health: {falls: 2}", "r.yaml:3:10: unknown health key 'falls'; valid: fail, rise, tko, probe_timeout_ms"),
    ("health: 3", "r.yaml:3:9: health must be a mapping; write it as 'key: value' lines"),
])
def test_health_section_errors_are_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(f"orderedPool: [a:1]\nroute: {{type: DefaultRoute}}\n{text}\n", "r.yaml")
    assert str(e.value) == message


@pytest.mark.parametrize("text,seconds", [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0),
                                          ("3", 3.0), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-1s", "s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_pool_health_overrides_the_top_level_for_its_servers():
    cfg = parse_config("""
health: {fail: 3, probe_timeout_ms: 500}
pools:
  fast: {servers: [a:1, b:1], health: {fail: 1, rise: 1}}
  slow: {servers: [b:1, c:1]}
route: PoolRoute|fast
""")
    assert cfg.policy(HostAddr("a", 1)) == HealthPolicy(fail=1, rise=1, tko=3, probe_timeout_ms=500)
    # b is in both pools: the first pool with its own health: decides
    assert cfg.policy(HostAddr("b", 1)) == HealthPolicy(fail=1, rise=1, tko=3, probe_timeout_ms=500)
    assert cfg.policy(HostAddr("c", 1)) == HealthPolicy(fail=3, rise=2, tko=3, probe_timeout_ms=500)
    assert list(cfg.policies()) == [HostAddr("a", 1), HostAddr("b", 1), HostAddr("c", 1)]


def test_pool_health_errors_name_the_line():
    with pytest.raises(ConfigError) as e:
        parse_config("pools:\n  p: {servers: [a:1], health: {tko: 0}}\nroute: PoolRoute|p\n", "r.yaml")
    assert str(e.value) == ("r.yaml:2:37: health.tko must be a whole number of at least 1 "
                            "(got '0'); write e.g. 2")


def test_a_freed_slot_is_reset_and_reused_and_its_old_key_is_never_found():
    t = HostTable(capacity=4)
    a, b = t.assign("a:1"), t.assign("b:1")
    t.set_state(a, DOWN, "connect: ECONNREFUSED")
    t.set_address(a, socket.AF_INET, "10.0.0.1")
    t.set_version(a, b"1.6.18")
    gen = t.generation(a)
    t.free(a)
    assert t.slot_of("a:1") == -1 and t.slot_of("b:1") == b
    assert [s.key for s in t.statuses()] == ["b:1"] and t.live_slots() == [b]
    assert t.available == 3 and t.used == 2
    c = t.assign("c:1")                       # the freed slot first, not a new one
    assert c == a and t.used == 2
    st = t.status(c)
    assert (st.key, st.state, st.address, st.changes, st.changed_at, st.reason) == (
        "c:1", "up", "", 0, 0.0, "")
    assert t.address(c) is None and t.version(c) is None
    assert t.generation(c) != gen and t.generation(c) % 2 == 0   # a new address, whole
    assert t.slot_of("a:1") == -1 and t.slot_of("c:1") == c
    t.assign("d:1")
    t.assign("e:1")
    with pytest.raises(TableFull):
        t.assign("f:1")
    t.free(b)
    assert t.assign("f:1") == b


def test_a_forked_child_sees_slots_freed_and_reused_after_the_fork():
    """A child's index of key → slot is from before the fork: it must not
    answer from it once the master freed or reassigned a slot."""
    t = HostTable(capacity=4)
    a = t.assign("a:1")
    t.assign("b:1")
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"%d;" % t.slot_of("a:1"))      # from the index it inherited
            os.read(go_r, 1)                            # the master freed and reused slot a
            os.write(w, b"%d %d %d" % (t.slot_of("a:1"), t.slot_of("z:1"), t.slot_of("b:1")))
        finally:
            os._exit(0)
    assert os.read(r, 64) == b"%d;" % a
    t.free(a)
    assert t.assign("z:1") == a
    os.write(go_w, b".")
    os.waitpid(pid, 0)
    assert os.read(r, 64) == b"-1 %d 1" % a
