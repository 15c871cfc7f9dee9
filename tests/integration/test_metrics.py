"""Metrics end to end: what ``/metrics`` and ``stats mcrouter`` report for
traffic whose every request we know, through a router with two workers."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request

import pytest

from support import HOST, Client, owner, pool_config, wait_until
from support.scrape import Scrape

VERSION = re.compile(rb"VERSION [^\r]*\r\n")


class Counted:
    """A client that remembers every byte it sent and received."""

    def __init__(self, port: int) -> None:
        self.c = Client(port)
        self.sent = self.received = 0

    def do(self, data: bytes, terminator: bytes = b"\r\n") -> bytes:
        self.sent += len(data)
        reply = self.c.call(data, terminator)
        self.received += len(reply)
        return reply


def selector_config(m1, m2) -> dict:
    return pool_config([m1, m2], "OperationSelectorRoute", get="MissFailoverRoute",
                       set="AllFastestRoute", version="LocalRoute")


def drive(c: Counted, i: int) -> None:
    """One client's known traffic (the expected counts are in the test)."""
    for j in range(5):
        assert c.do(b"set k%d_%d 0 0 3\r\nabc\r\n" % (i, j)) == b"STORED\r\n"
    for j in range(3):
        c.sent += len(b"set q%d_%d 0 0 1 noreply\r\nx\r\n" % (i, j))
        c.c.send(b"set q%d_%d 0 0 1 noreply\r\nx\r\n" % (i, j))
    assert VERSION.fullmatch(c.do(b"version\r\n"))      # after the quiet sets' (empty) replies
    for j in range(4):
        assert c.do(b"get k%d_%d\r\n" % (i, j), b"END\r\n") == b"VALUE k%d_%d 0 3\r\nabc\r\nEND\r\n" % (i, j)
    for j in range(2):
        assert c.do(b"get none%d_%d\r\n" % (i, j)) == b"END\r\n"
    for j in range(2):
        assert c.do(b"get k%d_0 k%d_1 none%d\r\n" % (i, i, i), b"END\r\n").count(b"VALUE") == 2
    for _ in range(2):
        assert c.do(b"bogus\r\n") == b"ERROR\r\n"
    assert c.do(b"delete k%d_4\r\n" % i) == b"DELETED\r\n"
    assert c.do(b"mg k%d_0 v\r\n" % i, b"abc\r\n") == b"VA 3\r\nabc\r\n"
    assert c.do(b"shutdown\r\n") == b"SERVER_ERROR mcrouter: command not supported\r\n"


def settled(r) -> Scrape:
    """A scrape once the readiness probe's connection has come and gone."""
    s = [Scrape(r.scrape())]

    def quiet() -> bool:
        s[0] = Scrape(r.scrape())
        return s[0]["mcrouter_client_connections"] == 0 and \
            s[0]["mcrouter_upstream_connections", {"host": r.hosts[0]}] > 0
    assert wait_until(quiet, 10)
    return s[0]


def test_counters_equal_what_was_sent(memcached, router):
    m1, m2 = memcached(), memcached()
    r = router(selector_config(m1, m2), workers=2, metrics=True)
    r.hosts = [m1.addr, m2.addr]
    before = settled(r)
    conns = 6                          # spread over both workers by the kernel
    clients = [Counted(r.port) for _ in range(conns)]
    for i, c in enumerate(clients):
        drive(c, i)
    sent, received = sum(c.sent for c in clients), sum(c.received for c in clients)
    for c in clients:
        c.c.close()
    # shutdown: an admin command, refused by the admin policy (not an invalid line)
    want_requests = {"set": 8, "version": 1, "get": 8, "invalid": 2, "admin": 1, "delete": 1,
                     "mg": 1}
    want_upstream = {(m1.addr, "set"): 8, (m2.addr, "set"): 8, (m1.addr, "get"): 8,
                     (m2.addr, "get"): 4, (m1.addr, "delete"): 1, (m1.addr, "mg"): 1}

    def all_answered() -> bool:         # AllFastestRoute's slower copies finish in the background
        s = Scrape(r.scrape())
        return all(s.delta(before, ("mcrouter_upstream_request_duration_seconds_count",
                                    {"host": h, "cmd": cmd})) == n * conns
                   for (h, cmd), n in want_upstream.items()) \
            and s["mcrouter_client_connections"] == 0
    assert wait_until(all_answered, 10)
    s = Scrape(r.scrape())

    for cmd, n in want_requests.items():
        assert s.delta(before, ("mcrouter_requests_total", {"cmd": cmd})) == n * conns, cmd
        for sample in ("mcrouter_request_duration_seconds_count",
                       "mcrouter_request_duration_seconds_bucket"):
            labels = {"cmd": cmd, "le": "+Inf"} if sample.endswith("bucket") else {"cmd": cmd}
            assert s.delta(before, (sample, labels)) == n * conns, (sample, cmd)
    assert s.total("mcrouter_requests_total") - before.total("mcrouter_requests_total") \
        == sum(want_requests.values()) * conns
    for (host, cmd), n in want_upstream.items():
        assert s.delta(before, ("mcrouter_upstream_requests_total",
                                {"host": host, "cmd": cmd})) == n * conns, (host, cmd)
    assert s.total("mcrouter_upstream_requests_total") - \
        before.total("mcrouter_upstream_requests_total") == sum(want_upstream.values()) * conns
    for host, hits, misses in ((m1.addr, 7, 2), (m2.addr, 0, 4)):
        assert s.delta(before, ("mcrouter_get_hits_total", {"host": host})) == hits * conns
        assert s.delta(before, ("mcrouter_get_misses_total", {"host": host})) == misses * conns
    for decision, n in (("fanout", 8), ("miss_failover", 4), ("failover", 0)):
        assert s.delta(before, ("mcrouter_route_decisions_total", {"decision": decision})) \
            == n * conns, decision
    for reason, n in (("bad_request", 2), ("not_supported", 1), ("upstream_error", 0),
                      ("upstream_timeout", 0), ("no_healthy_upstream", 0)):
        assert s.delta(before, ("mcrouter_router_replies_total", {"reason": reason})) \
            == n * conns, reason
    assert s.total("mcrouter_upstream_errors_total") == 0
    assert s.delta(before, "mcrouter_client_received_bytes_total") == sent
    assert s.delta(before, "mcrouter_client_sent_bytes_total") == received
    assert s.delta(before, "mcrouter_client_connections_accepted_total") == conns
    assert s["mcrouter_client_connections_rejected_total"] == 0
    for host in (m1.addr, m2.addr):
        assert s["mcrouter_host_up", {"host": host}] == 1
        assert s["mcrouter_upstream_connections", {"host": host}] == 2 * 2     # -C 2, -n 2
    assert s["mcrouter_healthy_hosts"] == 2
    assert s["mcrouter_restarts_total", {"process": "worker"}] == 0
    assert s["mcrouter_config_reloads_total", {"result": "success"}] == 0
    assert abs(s["mcrouter_config_last_reload_success_timestamp_seconds"] - time.time()) < 120
    assert s["mcrouter_build_info", {"version": "0.1.0", "python": s.text.split(
        'python="')[1].split('"')[0]}] == 1


STATS_NAMES = """pid uptime time version workers curr_connections total_connections
rejected_connections bytes_read bytes_written cmd_get cmd_gets cmd_gat cmd_gats cmd_set cmd_add
cmd_replace cmd_append cmd_prepend cmd_cas cmd_delete cmd_incr cmd_decr cmd_touch cmd_flush_all
cmd_version cmd_verbosity cmd_stats cmd_quit cmd_mg cmd_ms cmd_md cmd_ma cmd_mn cmd_me
cmd_admin cmd_invalid upstream_requests upstream_connections get_hits get_misses upstream_errors_timeout
upstream_errors_connect upstream_errors_reset upstream_errors_parse hosts healthy_hosts
replies_no_healthy_upstream replies_upstream_timeout replies_upstream_error
replies_upstream_queue_full replies_reply_too_large replies_not_handled_locally
replies_not_supported replies_shutting_down replies_bad_request route_failover
route_miss_failover route_fanout worker_restarts sidecar_restarts config_reloads
config_reload_failures config_last_reload_success tls_handshake_failures_client
tls_handshake_failures_upstream""".split()


def test_stats_mcrouter_format(memcached, router):
    """``stats mcrouter``: memcached's STAT lines, fixed names in a fixed
    order, the whole router's counters whichever worker answers."""
    m1, m2 = memcached(), memcached()
    r = router(selector_config(m1, m2), workers=2)
    clients = [Counted(r.port) for _ in range(4)]
    for i, c in enumerate(clients):
        drive(c, i)
    polls = [0]

    def poll() -> bytes:
        polls[0] += 1
        return c.call(b"stats mcrouter\r\n", b"END\r\n")

    with r.client() as c:       # until every upstream connection is up (-C 2, -n 2, 2 hosts)
        assert wait_until(lambda: b"STAT upstream_connections 8\r\n" in poll(), 10)
        reply = poll()
    lines = reply.decode().split("\r\n")
    assert lines[-2:] == ["END", ""]
    stats = [line.split(" ") for line in lines[:-2]]
    assert all(len(parts) == 3 and parts[0] == "STAT" for parts in stats), reply
    assert [name for _, name, _ in stats] == STATS_NAMES
    got = {name: value for _, name, value in stats}
    assert got["pid"] == str(r.pid) and got["version"] == "0.1.0" and got["workers"] == "2"
    assert 0 <= int(got["uptime"]) < 120 and abs(int(got["time"]) - time.time()) < 5
    want = {"cmd_set": 32, "cmd_version": 4, "cmd_get": 32, "cmd_invalid": 8, "cmd_admin": 4, "cmd_delete": 4,
            "cmd_mg": 4, "get_hits": 28, "hosts": 2, "healthy_hosts": 2,
            "replies_bad_request": 8, "replies_not_supported": 4, "route_fanout": 32,
            "route_miss_failover": 16, "route_failover": 0, "upstream_errors_timeout": 0,
            "get_misses": 24, "worker_restarts": 0, "curr_connections": 5,
            "cmd_stats": polls[0] - 1,           # the earlier polls, answered before this one
            "bytes_read": sum(c.sent for c in clients) + polls[0] * len(b"stats mcrouter\r\n")}
    assert {k: int(got[k]) for k in want} == want
    for c in clients:
        c.c.close()


def test_worker_killed_mid_run_loses_no_counts(memcached, router):
    """Load on several connections; one worker is killed with SIGKILL while
    it runs.  A scraper watching throughout never sees a counter go down, and
    the final total accounts for every reply the clients received (plus at
    most one request in flight on each connection that died)."""
    m = memcached()
    r = router(pool_config([m]), workers=2, metrics=True)
    stop = threading.Event()
    received = [0] * 6
    broken = [False] * 6
    local_ports = [0] * 6

    def load(n: int) -> None:
        with Client(r.port, timeout=5) as c:
            local_ports[n] = c.sock.getsockname()[1]
            for j in range(100_000):
                if stop.is_set():
                    return
                try:
                    reply = c.call(b"set w%d 0 0 1\r\nx\r\n" % n if j % 2 else b"get w%d\r\n" % n,
                                   b"\r\n", timeout=5)
                except OSError:
                    reply = b""
                if not reply:
                    broken[n] = True
                    return
                if reply.startswith(b"VALUE"):
                    reply += c.recv_until(b"END\r\n")
                received[n] += 1

    seen: list[float] = []

    def scraper() -> None:
        while not stop.is_set() and len(seen) < 2000:
            seen.append(Scrape(r.scrape()).total("mcrouter_requests_total"))
            time.sleep(0.02)

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(6)]
    threads.append(threading.Thread(target=scraper, daemon=True))
    for t in threads:
        t.start()
    assert wait_until(lambda: min(received) > 20, 20), received
    # the worker holding load connection 0 (the kernel may give one worker all six)
    victim = owner(r.port, local_ports[0], r.worker_pids())
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(r.worker_pids()) == 2 and victim not in r.worker_pids(), 10)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert any(broken), "the killed worker had none of the connections"
    assert seen == sorted(seen), "a counter went backwards"
    assert wait_until(lambda: Scrape(r.scrape())["mcrouter_client_connections"] == 0, 10)
    s = Scrape(r.scrape())
    total = s.total("mcrouter_requests_total")
    assert sum(received) <= total <= sum(received) + sum(broken)
    assert s["mcrouter_restarts_total", {"process": "worker"}] == 1
    assert s["mcrouter_upstream_connections", {"host": m.addr}] == 4, \
        "the new worker's connections plus the survivor's (the dead one's are not counted)"


def test_killed_sidecar_serves_again_promptly(memcached, router):
    """SIGKILL the sidecar twice: each time /metrics answers again within two
    seconds (the second restart is held back 0.4 s), with the same counters;
    a client doing gets meanwhile is never held up."""
    m = memcached()
    r = router(pool_config([m]), workers=2, metrics=True)
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[bytes] = []

    def gets() -> None:
        with Client(r.port, timeout=5) as c:
            while not stop.is_set() and len(latencies) < 100_000:
                t = time.monotonic()
                reply = c.call(b"get nothing\r\n")
                latencies.append(time.monotonic() - t)
                if reply != b"END\r\n":
                    errors.append(reply)
                    return

    t = threading.Thread(target=gets, daemon=True)
    t.start()
    assert wait_until(lambda: len(latencies) > 50, 10)
    for _ in range(2):
        before = Scrape(r.scrape())["mcrouter_requests_total", {"cmd": "get"}]
        (sidecar,) = r.sidecar_pids()
        os.kill(sidecar, signal.SIGKILL)
        killed = time.monotonic()
        text = None
        while text is None and time.monotonic() - killed < 5:
            try:
                text = r.scrape(timeout=2)
            except OSError:
                time.sleep(0.01)
        elapsed = time.monotonic() - killed
        # the master holds back a restart of a sidecar that lived under STABLE_AFTER
        # (0.2 s, then 0.4 s), so the second kill leaves less of the second for the rest
        assert text is not None and elapsed < 2.0, f"serving again after {elapsed:.2f}s"
        assert r.sidecar_pids() and r.sidecar_pids() != [sidecar]
        assert Scrape(text)["mcrouter_requests_total", {"cmd": "get"}] >= before
    stop.set()
    t.join(10)
    assert not errors
    assert max(latencies) < 0.9, f"a get waited {max(latencies):.2f}s"
    assert Scrape(r.scrape())["mcrouter_restarts_total", {"process": "sidecar"}] == 2


def test_scrapes_during_load_parse_and_a_slow_client_cannot_hold_the_endpoint(memcached, router):
    m = memcached()
    r = router(pool_config([m]), workers=2, metrics=True)
    idle = [socket.create_connection((HOST, r.metrics_port), timeout=5) for _ in range(3)]
    stop = threading.Event()
    done = [0]

    def load() -> None:
        with Client(r.port) as c:
            while not stop.is_set() and done[0] < 200_000:
                assert c.call(b"set s 0 0 1\r\nx\r\n") == b"STORED\r\n"
                done[0] += 1

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        counts = []
        for _ in range(10):
            t0 = time.monotonic()
            s = Scrape(r.scrape(timeout=2))        # parsed by prometheus-client's parser
            assert time.monotonic() - t0 < 1.5     # not held until an idle client is cut (2 s)
            counts.append(s["mcrouter_requests_total", {"cmd": "set"}])
            time.sleep(0.05)
        assert counts == sorted(counts) and counts[-1] > counts[0]
        assert {"mcrouter_requests", "mcrouter_request_duration_seconds",
                "mcrouter_upstream_request_duration_seconds", "mcrouter_upstream_errors",
                "mcrouter_healthy_hosts", "mcrouter_build_info"} <= s.names
        # the idle connections are cut by the server, not held open
        for sock in idle:
            sock.settimeout(10)
            assert sock.recv(100) == b""
    finally:
        stop.set()
        t.join(10)
        for sock in idle:
            sock.close()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://{HOST}:{r.metrics_port}/other", timeout=5)


def test_reloads_and_added_workers_are_counted(memcached, router):
    """SIGHUP with a valid config, then an invalid one: one success, one
    failure.  SIGTTIN: the new worker's requests are in the totals."""
    m = memcached()
    r = router(pool_config([m]), workers=1, metrics=True)
    started = Scrape(r.scrape())["mcrouter_config_last_reload_success_timestamp_seconds"]
    time.sleep(1.1)                              # the timestamp has a resolution of 1 s
    r.signal(signal.SIGHUP)
    assert wait_until(lambda: Scrape(r.scrape())["mcrouter_config_reloads_total",
                                                 {"result": "success"}] == 1, 10)
    assert Scrape(r.scrape())["mcrouter_config_last_reload_success_timestamp_seconds"] > started
    r.config_path.write_text("orderedPool: [nohostport]\nroute: {type: DefaultRoute}\n")
    r.signal(signal.SIGHUP)
    assert wait_until(lambda: Scrape(r.scrape())["mcrouter_config_reloads_total",
                                                 {"result": "failure"}] == 1, 10)

    r.signal(signal.SIGTTIN)
    assert wait_until(lambda: len(r.worker_pids()) == 2, 10)
    assert Scrape(r.scrape())["mcrouter_workers"] == 2
    before = Scrape(r.scrape())["mcrouter_requests_total", {"cmd": "get"}]
    clients = [Client(r.port) for _ in range(8)]     # the kernel spreads them over both
    for c in clients:
        assert c.call(b"get x\r\n") == b"END\r\n"
        c.close()
    assert Scrape(r.scrape())["mcrouter_requests_total", {"cmd": "get"}] == before + 8
    assert Scrape(r.scrape())["mcrouter_config_reloads_total", {"result": "success"}] == 1


def test_route_decisions_of_the_route_library(memcached, router):
    """FailoverRoute past a pool that is down, and AllSyncRoute's copies:
    one decision per request."""
    m1, m2 = memcached(), memcached()
    dead = memcached()
    dead.kill()                                     # connections are refused: down at once
    failover = router(f"""
pools:
  gone: {{servers: [{dead.addr}]}}
  live: {{servers: [{m1.addr}]}}
route: {{type: FailoverRoute, children: [PoolRoute|gone, PoolRoute|live]}}
""", workers=2, metrics=True)
    with failover.client() as c:
        for i in range(5):
            assert c.call(b"get f%d\r\n" % i) == b"END\r\n"
    s = Scrape(failover.scrape())
    assert s["mcrouter_route_decisions_total", {"decision": "failover"}] == 5
    assert s["mcrouter_host_up", {"host": dead.addr}] == 0

    fanout = router(f"""
pools:
  a: {{servers: [{m1.addr}]}}
  b: {{servers: [{m2.addr}]}}
route: {{type: AllSyncRoute, children: [PoolRoute|a, PoolRoute|b]}}
""", workers=2, metrics=True)
    with fanout.client() as c:
        for i in range(3):
            assert c.call(b"set s%d 0 0 1\r\nx\r\n" % i) == b"STORED\r\n"
    s = Scrape(fanout.scrape())
    assert s["mcrouter_route_decisions_total", {"decision": "fanout"}] == 3
    for m in (m1, m2):
        assert s["mcrouter_upstream_requests_total", {"cmd": "set", "host": m.addr}] == 3


# What one client's known traffic leaves in ``/metrics`` (host: @HOST@),
# every line in order; ``*`` stands for a value that depends on the clock
# (durations, timestamps) or the machine (the Python version), and a
# ``NAME.buckets{labels}`` line for the 17 bucket lines of one histogram.
METRICS_TEXT = """\
# HELP mcrouter_build_info The router's version.
# TYPE mcrouter_build_info gauge
mcrouter_build_info{python="*",version="0.1.0"} 1.0
# HELP mcrouter_start_time_seconds When the router started (unix time).
# TYPE mcrouter_start_time_seconds gauge
mcrouter_start_time_seconds *
# HELP mcrouter_workers Worker processes the master keeps running.
# TYPE mcrouter_workers gauge
mcrouter_workers 1.0
# HELP mcrouter_config_generation The config generation the master made current (a reload or a DNS change adds one).
# TYPE mcrouter_config_generation gauge
mcrouter_config_generation 1.0
# HELP mcrouter_workers_current Workers that confirmed the current config generation.
# TYPE mcrouter_workers_current gauge
mcrouter_workers_current 1.0
# HELP mcrouter_requests_total Client requests answered, by command (a multi-key get counts once).
# TYPE mcrouter_requests_total counter
mcrouter_requests_total{cmd="get"} 2.0
mcrouter_requests_total{cmd="set"} 1.0
mcrouter_requests_total{cmd="stats"} 2.0
# HELP mcrouter_request_duration_seconds From reading a client request to queueing its reply.
# TYPE mcrouter_request_duration_seconds histogram
mcrouter_request_duration_seconds.buckets{cmd="get"}
mcrouter_request_duration_seconds_count{cmd="get"} 2.0
mcrouter_request_duration_seconds_sum{cmd="get"} *
mcrouter_request_duration_seconds.buckets{cmd="set"}
mcrouter_request_duration_seconds_count{cmd="set"} 1.0
mcrouter_request_duration_seconds_sum{cmd="set"} *
mcrouter_request_duration_seconds.buckets{cmd="stats"}
mcrouter_request_duration_seconds_count{cmd="stats"} 2.0
mcrouter_request_duration_seconds_sum{cmd="stats"} *
# HELP mcrouter_client_connections Client connections open now.
# TYPE mcrouter_client_connections gauge
mcrouter_client_connections 0.0
# HELP mcrouter_client_connections_accepted_total Client connections accepted.
# TYPE mcrouter_client_connections_accepted_total counter
mcrouter_client_connections_accepted_total 2.0
# HELP mcrouter_client_connections_rejected_total Client connections refused: past -c, or out of file descriptors.
# TYPE mcrouter_client_connections_rejected_total counter
mcrouter_client_connections_rejected_total 0.0
# HELP mcrouter_client_received_bytes_total Bytes read from clients.
# TYPE mcrouter_client_received_bytes_total counter
mcrouter_client_received_bytes_total @SENT@.0
# HELP mcrouter_client_sent_bytes_total Bytes written to clients.
# TYPE mcrouter_client_sent_bytes_total counter
mcrouter_client_sent_bytes_total @RECEIVED@.0
# HELP mcrouter_router_replies_total Replies the router made itself, by reason.
# TYPE mcrouter_router_replies_total counter
mcrouter_router_replies_total{reason="no_healthy_upstream"} 0.0
mcrouter_router_replies_total{reason="upstream_timeout"} 0.0
mcrouter_router_replies_total{reason="upstream_error"} 0.0
mcrouter_router_replies_total{reason="upstream_queue_full"} 0.0
mcrouter_router_replies_total{reason="reply_too_large"} 0.0
mcrouter_router_replies_total{reason="not_handled_locally"} 0.0
mcrouter_router_replies_total{reason="not_supported"} 0.0
mcrouter_router_replies_total{reason="shutting_down"} 0.0
mcrouter_router_replies_total{reason="bad_request"} 0.0
# HELP mcrouter_route_decisions_total Route decisions: failover to a later host, another host asked after a miss, fan-out to several hosts.
# TYPE mcrouter_route_decisions_total counter
mcrouter_route_decisions_total{decision="failover"} 0.0
mcrouter_route_decisions_total{decision="miss_failover"} 0.0
mcrouter_route_decisions_total{decision="fanout"} 0.0
# HELP mcrouter_upstream_requests_total Requests queued to an upstream host.
# TYPE mcrouter_upstream_requests_total counter
mcrouter_upstream_requests_total{cmd="get",host="@HOST@"} 2.0
mcrouter_upstream_requests_total{cmd="set",host="@HOST@"} 1.0
# HELP mcrouter_upstream_request_duration_seconds Upstream round trips that got their reply in time.
# TYPE mcrouter_upstream_request_duration_seconds histogram
mcrouter_upstream_request_duration_seconds.buckets{cmd="get",host="@HOST@"}
mcrouter_upstream_request_duration_seconds_count{cmd="get",host="@HOST@"} 2.0
mcrouter_upstream_request_duration_seconds_sum{cmd="get",host="@HOST@"} *
mcrouter_upstream_request_duration_seconds.buckets{cmd="set",host="@HOST@"}
mcrouter_upstream_request_duration_seconds_count{cmd="set",host="@HOST@"} 1.0
mcrouter_upstream_request_duration_seconds_sum{cmd="set",host="@HOST@"} *
# HELP mcrouter_upstream_errors_total Upstream failures: requests timed out, connects failed, connections broken, replies that cannot answer their request (parse).
# TYPE mcrouter_upstream_errors_total counter
mcrouter_upstream_errors_total{host="@HOST@",reason="timeout"} 0.0
mcrouter_upstream_errors_total{host="@HOST@",reason="connect"} 0.0
mcrouter_upstream_errors_total{host="@HOST@",reason="reset"} 0.0
mcrouter_upstream_errors_total{host="@HOST@",reason="parse"} 0.0
# HELP mcrouter_upstream_connections Upstream connections up now.
# TYPE mcrouter_upstream_connections gauge
mcrouter_upstream_connections{host="@HOST@"} 2.0
# HELP mcrouter_get_hits_total Get-family replies with a value.
# TYPE mcrouter_get_hits_total counter
mcrouter_get_hits_total{host="@HOST@"} 1.0
# HELP mcrouter_get_misses_total Get-family replies without a value.
# TYPE mcrouter_get_misses_total counter
mcrouter_get_misses_total{host="@HOST@"} 1.0
# HELP mcrouter_host_up 1 while the shared verdict says the host is up.
# TYPE mcrouter_host_up gauge
mcrouter_host_up{host="@HOST@"} 1.0
# HELP mcrouter_healthy_hosts Upstream hosts up.
# TYPE mcrouter_healthy_hosts gauge
mcrouter_healthy_hosts 1.0
# HELP mcrouter_restarts_total Child processes the master restarted after they died.
# TYPE mcrouter_restarts_total counter
mcrouter_restarts_total{process="worker"} 0.0
mcrouter_restarts_total{process="sidecar"} 0.0
# HELP mcrouter_config_reloads_total Config reloads (a DNS pool's change counts as one), by result.
# TYPE mcrouter_config_reloads_total counter
mcrouter_config_reloads_total{result="success"} 0.0
mcrouter_config_reloads_total{result="failure"} 0.0
# HELP mcrouter_config_last_reload_success_timestamp_seconds When the config in force was loaded (unix time).
# TYPE mcrouter_config_last_reload_success_timestamp_seconds gauge
mcrouter_config_last_reload_success_timestamp_seconds *
# HELP mcrouter_tls_handshake_failures_total TLS handshakes that failed, by side (client: to the router's tls:// listener; upstream: to memcached) and reason.
# TYPE mcrouter_tls_handshake_failures_total counter
mcrouter_tls_handshake_failures_total{reason="expired",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="unknown_ca",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="hostname_mismatch",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="no_client_cert",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="handshake_timeout",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="protocol",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="other",side="client"} 0.0
mcrouter_tls_handshake_failures_total{reason="expired",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="unknown_ca",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="hostname_mismatch",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="no_client_cert",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="handshake_timeout",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="protocol",side="upstream"} 0.0
mcrouter_tls_handshake_failures_total{reason="other",side="upstream"} 0.0
"""
BUCKET_BOUNDS = ("5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
                 "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf")


def test_the_three_texts_from_a_running_router(memcached, router):
    """``stats servers``, ``stats mcrouter`` and ``/metrics`` after known
    traffic: every line, in order, byte for byte but for the values the
    clock decides (checked for range instead)."""
    m = memcached()
    r = router(pool_config([m]), workers=1, conns=2, metrics=True)

    def quiet() -> bool:            # the readiness probe's connection has come and gone
        s = Scrape(r.scrape())
        return s["mcrouter_client_connections_accepted_total"] == 1 and \
            s["mcrouter_client_connections"] == 0 and \
            s["mcrouter_upstream_connections", {"host": m.addr}] == 2
    assert wait_until(quiet, 10)
    started = time.time()
    c = Counted(r.port)
    assert c.do(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert c.do(b"get k\r\n", b"END\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    assert c.do(b"get none\r\n") == b"END\r\n"
    assert c.do(b"stats servers\r\n", b"END\r\n") == \
        f"STAT {m.addr} up 127.0.0.1 0 0.000 -\r\nEND\r\n".encode()
    written = c.received                    # the replies before the next: what it counts
    reply = c.do(b"stats mcrouter\r\n", b"END\r\n")
    sent, received = c.sent, c.received
    c.c.close()

    lines = reply.decode().split("\r\n")
    got = dict(line.split(" ")[1:] for line in lines[:-2])
    assert 0 <= int(got["uptime"]) < 120
    assert started - 1 <= int(got["time"]) <= time.time()
    assert int(got["time"]) - int(got["uptime"]) - 1 <= int(got["config_last_reload_success"]) \
        <= int(got["time"])
    clocked = {n: got[n] for n in ("uptime", "time", "config_last_reload_success")}
    values = {"pid": r.pid, "version": "0.1.0", "workers": 1, "curr_connections": 1,
              "total_connections": 2, "bytes_read": sent, "bytes_written": written,
              "cmd_get": 2, "cmd_set": 1, "cmd_stats": 1, "upstream_requests": 3,
              "upstream_connections": 2, "get_hits": 1, "get_misses": 1, "hosts": 1,
              "healthy_hosts": 1, **clocked}
    assert reply == ("".join(f"STAT {name} {values.get(name, 0)}\r\n" for name in STATS_NAMES)
                     + "END\r\n").encode()

    scraped = [""]

    def closed() -> bool:           # the worker has seen the client go
        scraped[0] = r.scrape()
        return Scrape(scraped[0])["mcrouter_client_connections"] == 0
    assert wait_until(closed, 10)
    text = scraped[0]
    masked = []
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith(("_bucket", "_sum")) or name in (
                "mcrouter_start_time_seconds",
                "mcrouter_config_last_reload_success_timestamp_seconds"):
            float(line.rsplit(" ", 1)[1])
            line = line.rsplit(" ", 1)[0] + " *"
        masked.append(re.sub(r'python="[^"]*"', 'python="*"', line))
    want = []
    for line in METRICS_TEXT.replace("@HOST@", m.addr).replace("@SENT@", str(sent)) \
            .replace("@RECEIVED@", str(received)).splitlines():
        if ".buckets{" in line:
            name, labels = line.split(".buckets{")
            want += [f'{name}_bucket{{{labels[:-1]},le="{le}"}} *' for le in BUCKET_BOUNDS]
        else:
            want.append(line)
    assert masked == want
    assert abs(Scrape(text)["mcrouter_start_time_seconds"]
               - (int(got["time"]) - int(got["uptime"]))) <= 1
