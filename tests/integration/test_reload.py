"""Config reload (SIGHUP, --watch-config) under load, against real memcached.

Two memcached servers hold different values for the same keys; config A
routes to one, config B to the other, so every reply says which config
routed it.  The test keeps a timeline of the reloads (signal sent →
every worker confirmed, read from the router's log) and checks every reply
against the configs that could have been in force while it was under way.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from support import Client, pool_config, show, wait_until

from support.fake_upstream import FakeUpstream
from support.loadgen import Loader, value_reply

KEYS = [f"key{i}" for i in range(64)]
INVALID = "orderedPool: [127.0.0.1:1]\nroute: {type: NoSuchRoute}\n"


def two_sources(memcached):
    """Two servers, the same keys, different values: (server A, server B, replies by label)."""
    a, b = memcached(), memcached()
    sources: dict[str, dict[str, bytes]] = {"A": {}, "B": {}}
    for i, k in enumerate(KEYS):
        for label, m in (("A", a), ("B", b)):
            value = f"{label}-{i}-".encode() + b"v" * (i % 7)
            m.set(k, value)
            sources[label][k] = value_reply(k, value)
    return a, b, sources


def write(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def confirmed(n: int) -> str:
    return f"reload {n}: all "


def test_twenty_reloads_under_pipelined_load(memcached, router):
    a, b, sources = two_sources(memcached)
    configs = {"A": yaml.safe_dump(pool_config([a])), "B": yaml.safe_dump(pool_config([b]))}
    r = router(configs["A"], workers=2)
    loaders = [Loader(r.port, KEYS, sources, batch=24, seed=7 * i) for i in range(6)]
    # (label, earliest it may answer, latest the previous label may still answer)
    timeline: list[tuple[str, float, float]] = [("A", 0.0, 0.0)]
    for ld in loaders:
        ld.start()
    try:
        time.sleep(0.3)
        generation, refused = 1, 0
        for i in range(20):
            if i % 5 == 2:                    # an invalid config now and then: refused, no change
                write(r.config_path, INVALID)
                r.signal(signal.SIGHUP)
                refused += 1
                assert r.wait_log("reload refused", refused), r.stderr()[-2000:]
            label = "B" if i % 2 == 0 else "A"
            write(r.config_path, configs[label])
            t_hup = time.monotonic()
            r.signal(signal.SIGHUP)
            generation += 1
            assert r.wait_log(confirmed(generation)), r.stderr()[-2000:]
            timeline.append((label, t_hup, time.monotonic()))
            time.sleep(0.12)
        time.sleep(0.2)
    finally:
        for ld in loaders:
            ld.stop()

    # how many reloads actually happened, and none was refused by a worker
    log = r.stderr()
    assert log.count("all 2 worker(s) run config generation") == 21, log[-3000:]
    assert "refused generation" not in log and "Traceback" not in log
    assert log.count("reload refused") == 4
    assert "nosuchroute" in log.lower() and "restart-level" in log

    # zero errors, zero connections closed, and plenty of traffic
    for ld in loaders:
        assert ld.errors == [] and ld.eofs == 0, (ld.errors[:3], ld.eofs)
        assert not ld.is_alive()
    total = sum(ld.requests for ld in loaders)
    assert total > 2000, total

    # every reply came from a config in force at some moment while its batch was under way:
    # config k may answer from its reload signal until reload k+1 is confirmed everywhere
    windows = []
    for k, (label, start, _) in enumerate(timeline):
        end = timeline[k + 1][2] if k + 1 < len(timeline) else float("inf")
        windows.append((label, start, end))
    seen = {"A": 0, "B": 0}
    for ld in loaders:
        for batch in ld.batches:
            allowed = {lab for lab, s, e in windows if s <= batch.done and e >= batch.sent}
            for lab in batch.labels:
                assert lab in allowed, (lab, allowed, batch)
                seen[lab] += 1
    assert seen["A"] > 200 and seen["B"] > 200, seen


def test_hosts_that_stay_keep_their_connections(memcached, router):
    """Reloads between [m1, m2] and [m1]: nobody reconnects to m1."""
    m1, m2 = memcached(), memcached()
    both = yaml.safe_dump(pool_config([m1, m2]))
    one = yaml.safe_dump(pool_config([m1]))
    r = router(both, workers=2, conns=2)
    m1.set("k", b"v1")

    def connections(m) -> int:
        with m.client() as c:
            stats = c.call(b"stats\r\n", b"END\r\n")
        line = next(x for x in stats.split(b"\r\n") if x.startswith(b"STAT total_connections "))
        return int(line.split()[2])

    assert wait_until(lambda: connections(m1) >= 1 + 4, 5)     # 2 workers × -C 2, + this one
    before = connections(m1)
    for n, text in enumerate([one, both, one, both], start=2):
        write(r.config_path, text)
        r.signal(signal.SIGHUP)
        assert r.wait_log(confirmed(n))
    with r.client() as c:
        assert c.request(b"get k\r\n", value_reply("k", b"v1")) == value_reply("k", b"v1")
    # one more connection per stats call of ours, none from the router
    assert connections(m1) == before + 1
    assert "1 added, 0 removed" in r.stderr() and "0 added, 1 removed" in r.stderr()


def test_a_leaving_host_finishes_its_requests_in_flight(memcached, router):
    """A get in flight on a host the reload removes gets that host's reply;
    the next get goes to the new host; the old host's connections then close."""
    slow = FakeUpstream()
    try:
        m = memcached()
        m.set("k", b"new")
        slow.set(b"k", b"old")
        r = router(pool_config([slow]), workers=1, conns=1, timeout_ms=5000)
        with r.client() as c:
            assert c.request(b"get k\r\n", value_reply("k", b"old")) == value_reply("k", b"old")
            slow.behave("delay", 1, delay=1.0)
            c.send(b"get k\r\n")
            assert slow.wait_requests(2)
            write(r.config_path, yaml.safe_dump(pool_config([m])))
            r.signal(signal.SIGHUP)
            assert r.wait_log(confirmed(2))
            assert slow.closed_by_peer == 0          # still owed a reply
            c.send(b"get k\r\n")
            want = value_reply("k", b"old") + value_reply("k", b"new")
            got = c.recv_exact(len(want), timeout=5)
            assert got == want, show(got)
            assert wait_until(lambda: slow.closed_by_peer == 1, 5), "retired host never closed"
    finally:
        slow.close()


def test_an_invalid_config_keeps_the_old_one(memcached, router):
    m = memcached()
    m.set("k", b"v")
    r = router(pool_config([m]), workers=2)
    with r.client() as c:
        write(r.config_path, "orderedPool: [nohost]\nroute: {type: DefaultRoute}\n")
        r.signal(signal.SIGHUP)
        assert r.wait_log("reload refused")
        assert c.request(b"get k\r\n", value_reply("k", b"v")) == value_reply("k", b"v")
    line = next(x for x in r.stderr().splitlines() if "reload refused" in x)
    assert line.endswith(f"{r.config_path}:1:15: malformed host:port 'nohost'; "
                         "write host:port or [ipv6]:port with a port from 1 to 65535"), line
    assert "Traceback" not in r.stderr()


def test_watch_config_reloads_a_changed_file(memcached, router):
    a, b, sources = two_sources(memcached)
    r = router(pool_config([a]), workers=1, extra=["--watch-config"])
    with r.client() as c:
        assert c.request(b"get key1\r\n", sources["A"]["key1"]) == sources["A"]["key1"]
        write(r.config_path, yaml.safe_dump(pool_config([b])))
        assert r.wait_log(confirmed(2))
        assert "changed; reloading" in r.stderr()
        assert c.request(b"get key1\r\n", sources["B"]["key1"]) == sources["B"]["key1"]
        write(r.config_path, INVALID)
        assert r.wait_log("reload refused")
        assert c.request(b"get key1\r\n", sources["B"]["key1"]) == sources["B"]["key1"]


def test_a_respawned_worker_starts_on_the_current_config(memcached, router):
    a, b, sources = two_sources(memcached)
    r = router(pool_config([a]), workers=1)
    write(r.config_path, yaml.safe_dump(pool_config([b])))
    r.signal(signal.SIGHUP)
    assert r.wait_log(confirmed(2))
    write(r.config_path, yaml.safe_dump(pool_config([a])))    # on disk, not reloaded
    (old,) = r.worker_pids()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: r.worker_pids() not in ([], [old]), 10)
    with Client(r.port) as c:
        assert c.request(b"get key2\r\n", sources["B"]["key2"]) == sources["B"]["key2"]


@pytest.mark.parametrize("sig", ["SIGTTIN", "SIGTTOU"])
def test_ttin_ttou_change_the_worker_count(memcached, router, sig):
    m = memcached()
    m.set("k", b"v")
    r = router(pool_config([m]), workers=2)
    before = r.worker_pids()
    r.signal(getattr(signal, sig))
    want = 3 if sig == "SIGTTIN" else 1
    assert wait_until(lambda: len(r.worker_pids()) == want, 10), r.worker_pids()
    time.sleep(0.5)                  # and it stays so: a retired worker is not respawned
    assert len(r.worker_pids()) == want
    if sig == "SIGTTOU":
        assert set(r.worker_pids()) < set(before)
        assert r.wait_log("retired; 1 worker(s)")
    for _ in range(4):
        with r.client() as c:
            assert c.request(b"get k\r\n", value_reply("k", b"v")) == value_reply("k", b"v")


def test_a_reload_brings_new_hosts_into_the_health_table_and_the_sidecar(memcached, router):
    """New hosts get a slot and an address before any worker uses them, and
    the sidecar is restarted to probe the new set: a host added by a reload
    that accepts connections but never answers (so no worker's traffic can
    mark it down: none is sent) is found down by the probes."""
    m = memcached()
    hung = FakeUpstream()
    try:
        hung.behave("hang")
        r = router(pool_config([m]), workers=2, extra=["-H", "100ms"])
        (sidecar,) = r.sidecar_pids()
        cfg = pool_config([m, hung])
        cfg["health"] = {"probe_timeout_ms": 100}
        write(r.config_path, yaml.safe_dump(cfg))
        r.signal(signal.SIGHUP)
        assert r.wait_log(confirmed(2))
        assert wait_until(lambda: len(r.sidecar_pids()) == 1 and sidecar not in r.children(), 10)

        def servers() -> dict[str, str]:
            with r.client() as c:
                reply = c.call(b"stats servers\r\n", b"END\r\n")
            return {line.split()[1]: line.split()[2] for line in reply.decode().splitlines()
                    if line.startswith("STAT ")}

        assert wait_until(lambda: servers() == {m.addr: "up", hung.addr: "down"}, 10), servers()
        assert "probe: no reply within 100 ms" in r.stderr()
        assert "crashed" not in r.stderr()
    finally:
        hung.close()
