"""The router → memcached over TLS (issue 14, upstream side), against real
``memcached -Z`` requiring a client certificate (``ssl_verify_mode=2``).

Certificates are made per test by ``trustme`` (tests/support/pki.py).
Every memcached here also listens in plain TCP on a side port, through
which the tests look at what the router stored over TLS.  Keys under
``s:`` go to the TLS pool, the rest to a plain one (PrefixSelectorRoute),
so a broken TLS pool can be seen not to disturb the others.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
from pathlib import Path

import pytest

import streamfuzz as sf
from support.pki import tls_call
from support.processes import wait_until
from support.scrape import Scrape

NO_HEALTHY = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"


def split_config(tls_hosts: list, plain_hosts: list, tls: dict) -> dict:
    return {"pools": {"secure": {"servers": [m.addr for m in tls_hosts], "tls": tls},
                      "plain": {"servers": [m.addr for m in plain_hosts]}},
            "route": {"type": "PrefixSelectorRoute", "policies": {"s:": "PoolRoute|secure"},
                      "wildcard": "PoolRoute|plain"}}


def pipeline(prefix: str) -> bytes:
    """Text and meta commands, pipelined; ends with mn."""
    k = prefix + "k"
    return (f"set {k}1 5 0 5\r\nhello\r\nget {k}1\r\nadd {k}1 0 0 1\r\nx\r\n"
            f"append {k}1 0 0 3\r\n!!!\r\nget {k}1 {k}2\r\nincr {k}n 1\r\n"
            f"set {k}n 0 0 2\r\n41\r\nincr {k}n 1\r\ndelete {k}1\r\nget {k}1\r\n"
            f"ms {k}m 3 T0 F7\r\nabc\r\nmg {k}m v f k s\r\nma {k}m\r\nmg {k}miss v\r\n"
            f"md {k}m q\r\nmg {k}m v\r\n" + "".join(f"set {k}b{i} 0 0 {1000 * i}\r\n"
                                                   f"{'v' * (1000 * i)}\r\nget {k}b{i}\r\n"
                                                   for i in range(1, 4)) + "mn\r\n").encode()


def test_fixture_memcached_requires_a_client_certificate(tls_memcached, pki):
    m = tls_memcached()
    assert tls_call(m.port, pki.client_context(), b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|EOF occurred"):   # alert or close
        tls_call(m.port, pki.client_context(cert=False), b"version\r\n", b"\r\n")
    with m.client() as c:                                  # the plain side port
        assert c.call(b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"


def test_pipelines_through_a_tls_pool_are_memcacheds_bytes(tls_memcached, memcached, router, pki):
    secure, plain, reference = tls_memcached(), memcached(), memcached()
    r = router(split_config([secure], [plain], pki.upstream_tls()))
    with reference.client() as c:
        want = c.pipeline(pipeline("s:"), b"MN\r\n")
    assert want.endswith(b"MN\r\n") and b"VALUE s:k1 5 8\r\nhello!!!\r\n" in want
    with r.client() as c:
        assert c.pipeline(pipeline("s:"), b"MN\r\n") == want
        assert c.pipeline(pipeline("p:"), b"MN\r\n") == want.replace(b"s:k", b"p:k")
    # the TLS pool's keys are in the TLS memcached, the others are not
    assert secure.get_raw("s:kn", "p:kn") == b"VALUE s:kn 0 2\r\n42\r\nEND\r\n"
    assert plain.get_raw("s:kn", "p:kn") == b"VALUE p:kn 0 2\r\n42\r\nEND\r\n"


def test_pool_route_over_two_tls_hosts(tls_memcached, router, pki):
    ms = [tls_memcached(), tls_memcached()]
    r = router({"pools": {"secure": {"servers": [m.addr for m in ms], "tls": pki.upstream_tls(),
                                     "hash": {"function": "md5"}}},
                "route": "PoolRoute|secure"}, conns=2)
    keys = [f"user:{i}:profile" for i in range(100)]
    with r.client() as c:
        stream = b"".join(f"set {k} 0 0 {len(k)}\r\n{k}\r\n".encode() for k in keys)
        assert c.pipeline(stream, b"STORED\r\n" * 100) == b"STORED\r\n" * 100
        got = c.call(f"get {' '.join(keys)}\r\n".encode(), b"END\r\n")
    assert got == b"".join(f"VALUE {k} 0 {len(k)}\r\n{k}\r\n".encode() for k in keys) + b"END\r\n"
    held = [m.get_raw(*keys).count(b"VALUE ") for m in ms]
    assert sum(held) == 100 and min(held) > 0, held      # both hosts, each key once


# one row per failure: the pool's tls: changes, memcached's certificate, the
# reason in the log and the metric, the setting the log line names
FAILURES = {
    "unknown CA": ({"ca": "pki.other_ca_file"}, "", "unknown_ca", "tls.ca"),
    "expired server certificate": ({}, "expired", "expired", "renew it on memcached"),
    "wrong server name": ({"server_name": "wrong.test"}, "", "hostname_mismatch",
                          "tls.server_name"),
    "no client certificate": ({"cert": None, "key": None}, "", "no_client_cert",
                              "tls.cert and tls.key"),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failed_handshake_is_a_host_down_with_one_log_line(tls_memcached, memcached, router,
                                                             pki, name):
    over, server, reason, fix = FAILURES[name]
    over = {k: getattr(pki, v[4:]) if isinstance(v, str) and v.startswith("pki.") else v
            for k, v in over.items()}
    secure = tls_memcached(cert=pki.expired_cert, key=pki.expired_key) if server else tls_memcached()
    plain = memcached()
    r = router(split_config([secure], [plain], pki.upstream_tls(**over)), metrics=True)
    assert r.wait_log(f"host {secure.addr}: up -> down (tls handshake failed ({reason})")
    with r.client() as c:
        assert c.request(b"get s:a\r\n", NO_HEALTHY) == NO_HEALTHY
        assert c.request(b"mg s:a v\r\n", NO_HEALTHY) == NO_HEALTHY
        # the router keeps serving the other pool
        assert c.request(b"set p:a 0 0 1\r\nx\r\n", b"STORED\r\n") == b"STORED\r\n"
        assert c.call(b"get p:a\r\n", b"END\r\n") == b"VALUE p:a 0 1\r\nx\r\nEND\r\n"
    worker = r.worker_pids()[0]
    line = re.compile(rf"mcrouter\[{worker}\]: tls handshake with upstream {re.escape(secure.addr)}"
                      rf" failed: {reason}\b.*; fix: .*{re.escape(fix)}")
    assert wait_until(lambda: len(line.findall(r.stderr())) >= 1, 5), r.stderr()
    assert len(line.findall(r.stderr())) == 1, r.stderr()     # the host is down: no retry storm
    assert wait_until(lambda: Scrape(r.scrape())[
        "mcrouter_tls_handshake_failures_total", {"side": "upstream", "reason": reason}] >= 1, 5)


def test_probes_use_tls_and_bring_the_host_back(tls_memcached, router, pki):
    m = tls_memcached()
    r = router({"pools": {"secure": {"servers": [m.addr], "tls": pki.upstream_tls()}},
                "route": "PoolRoute|secure"}, extra=("-H", "100ms"))
    with r.client() as c:
        assert c.request(b"set a 0 0 1\r\nx\r\n", b"STORED\r\n") == b"STORED\r\n"
    m.kill()
    assert r.wait_log(f"host {m.addr}: up -> down")
    m.restart()
    # only a probe that passed the TLS handshake and got VERSION can say up
    assert r.wait_log(f"host {m.addr}: down -> up")
    with r.client() as c:
        assert c.request(b"set a 0 0 1\r\ny\r\n", b"STORED\r\n") == b"STORED\r\n"
        assert c.call(b"get a\r\n", b"END\r\n") == b"VALUE a 0 1\r\ny\r\nEND\r\n"


def test_reload_rereads_certificates_for_new_connections_only(tls_memcached, router, pki,
                                                              tmp_path: Path):
    ca = tmp_path / "trusted.pem"
    ca.write_bytes(Path(pki.ca_file).read_bytes())
    m = tls_memcached()
    # probes every second: the new CA's failed probes take 2 s to call the host down
    r = router({"pools": {"secure": {"servers": [m.addr], "tls": pki.upstream_tls(ca=str(ca))}},
                "route": "PoolRoute|secure"}, extra=("-H", "1s"))
    worker = r.worker_pids()[0]
    with r.client() as c:
        assert c.request(b"set a 0 0 1\r\nx\r\n", b"STORED\r\n") == b"STORED\r\n"
        # a bad certificate file refuses the reload, one line; the old one serves on
        good = Path(pki.client_cert).read_bytes()
        Path(pki.client_cert).write_text("not a certificate\n")
        r.signal(signal.SIGHUP)
        assert r.wait_log("reload refused, still serving generation 1: ")
        refusal = [ln for ln in r.stderr().splitlines() if "reload refused" in ln][0]
        assert f"{pki.client_cert}: no PEM certificate in it" in refusal, refusal
        Path(pki.client_cert).write_bytes(good)
        # now trust only another CA: the reload is valid, the connection up is untouched
        # (a new one would fail its handshake, and the worker would say so)
        ca.write_bytes(Path(pki.other_ca_file).read_bytes())
        r.signal(signal.SIGHUP)
        assert r.wait_log("generation 2")
        assert c.call(b"get a\r\n", b"END\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"
        assert f"mcrouter[{worker}]: tls handshake" not in r.stderr()
    # a new connection uses the new CA, which did not sign memcached's certificate
    # (the worker's, or the probes' when the restart's refused connects called
    # the host down first: then only probes connect until a handshake passes)
    m.kill()
    m.restart()
    assert r.wait_log(f"tls handshake with upstream {m.addr} failed: unknown_ca")
    # trust the test CA again: the next reload's probes and connections succeed
    ca.write_bytes(Path(pki.ca_file).read_bytes())
    r.signal(signal.SIGHUP)
    assert r.wait_log("generation 3")
    assert r.wait_log(f"host {m.addr}: down -> up")

    def stored() -> bool:
        with r.client() as c:
            return c.request(b"set b 0 0 1\r\nz\r\n", b"STORED\r\n") == b"STORED\r\n"
    assert wait_until(stored, 10)


FUZZ_SECONDS = float(os.environ.get("MCROUTER_TLS_FUZZ_SECONDS", "8"))


def test_stream_fuzz_through_a_tls_upstream(tls_memcached, router, pki, monkeypatch):
    """The differential session of test_stream_fuzz.py, short, with the
    router's only host behind TLS: the same bytes as memcached in plain TCP.
    The reference is a memcached started the same way (-Z), read on its
    plain port, so that ``stats`` lists the same names (ssl_*)."""
    monkeypatch.setattr(sf, "BIG_VALUE", 4000)      # memcached's TLS stall (streamfuzz.BIG_VALUE)
    reference, secure = tls_memcached("-m", "1024"), tls_memcached("-m", "1024")
    for m in (reference, secure):
        if m.proc.stderr is not None:
            m.proc.stderr.close()
    cfg = {"orderedPool": [secure.addr], "tls": pki.upstream_tls(), "route": {"type": "DefaultRoute"}}
    target = sf.Target("tls", router(cfg).port)
    stats = asyncio.run(sf.fuzz(7, reference.plain_port, [target], [secure.plain_port], 3000,
                                FUZZ_SECONDS, concurrency=16))
    print(f"tls stream fuzz: {stats.cases} cases in {stats.elapsed:.1f}s")
    assert stats.cases >= 100
    assert not stats.divergences, "\n\n".join(d.report() for d in stats.divergences[:4])
