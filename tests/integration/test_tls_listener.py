"""The TLS listener (issue 14, client side), against a real memcached behind
the router and Python ``ssl`` clients: exact bytes through TLS 1.2 and 1.3
beside a plain listener; mTLS failures (no certificate, another CA,
expired) counted, logged once, while other clients are served; stalled
handshakes closed after the timeout; certificate rotation on SIGHUP under
load; 1 MB values and a client that never reads stay within the Limits."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509

import streamfuzz as sf
from support import HOST, pool_config, wait_until
from support.certs import Certs, make_certs
from support.hostile import PeakRss, rss_kib
from support.pki import SERVER_NAME
from support.processes import free_port
from support.scrape import Scrape

TIMEOUT = 10.0
MIB = 1024


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def start(router, memcached, certs: Certs, mtls: bool = True, extra: tuple = (),
          cert: str | None = None, key: str | None = None):
    """A router over one memcached with a plain listener (r.port) and a TLS
    one (returned port); handshake timeout 1 s."""
    m = memcached()
    port = free_port()
    args = ["-l", f"tls://{HOST}:{port}", "--tls-cert", cert or certs.server.cert,
            "--tls-key", key or certs.server.key, "--tls-handshake-timeout", "1s", *extra]
    if mtls:
        args += ["--tls-client-ca", certs.ca_file]
    r = router(pool_config([m]), extra=args, metrics=True)
    return r, port, m


def connect(port: int, certs: Certs, pair=None, version=None, ca=None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca or certs.ca_file)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_exact(s: socket.socket, size: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while len(got) < size and time.monotonic() < deadline:
        chunk = s.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def ask(s: socket.socket, request: bytes, expected: bytes) -> None:
    s.sendall(request)
    assert read_exact(s, len(expected)) == expected


PIPELINE = (b"set k1 5 0 3\r\nabc\r\nget k1 nokey\r\nmg k1 v f t\r\nms k2 2\r\nhi\r\n"
            b"mg k2 v\r\ndelete k1\r\nget k1\r\nmn\r\n")
EXPECTED = (b"STORED\r\nVALUE k1 5 3\r\nabc\r\nEND\r\nVA 3 f5 t-1\r\nabc\r\nHD\r\n"
            b"VA 2\r\nhi\r\nDELETED\r\nEND\r\nMN\r\n")


def failures(r, reason: str, side: str = "client") -> float:
    return Scrape(r.scrape())["mcrouter_tls_handshake_failures_total",
                                {"side": side, "reason": reason}]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_pipeline_through_tls_beside_plain(router, memcached, certs, version):
    r, port, m = start(router, memcached, certs)
    with connect(port, certs, certs.client, version) as s:
        assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                               ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        ask(s, PIPELINE, EXPECTED)
        with r.client() as plain:               # the plain listener beside it
            plain.send(b"get k2\r\n")
            assert plain.recv_until(b"END\r\n") == b"VALUE k2 0 2\r\nhi\r\nEND\r\n"
        # memcached's own bytes for the same pipeline
        with socket.create_connection((HOST, m.port), timeout=TIMEOUT) as direct:
            direct.sendall(b"flush_all\r\n")
            assert read_exact(direct, 4) == b"OK\r\n"
            ask(direct, PIPELINE, EXPECTED)
        s.sendall(b"quit\r\n")
        assert s.recv(100) == b""               # the router's close_notify, then end of file


@pytest.mark.parametrize("case,reason,detail", [
    ("none", "no_client_cert", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("other_ca", "unknown_ca", "unable to get local issuer certificate"),
    ("expired", "expired", "certificate has expired"),
])
def test_mtls_refusals(router, memcached, certs, case, reason, detail):
    r, port, _ = start(router, memcached, certs)
    pair = {"none": None, "other_ca": certs.other_client, "expired": certs.expired_client}[case]
    with connect(port, certs, certs.client) as good:
        ask(good, b"set a 0 0 1\r\nx\r\n", b"STORED\r\n")
        for _ in range(2):                      # twice: counted twice, logged once
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                with connect(port, certs, pair) as bad:
                    bad.sendall(b"get a\r\n")   # TLS 1.3: the refusal comes with the first read
                    assert bad.recv(100) == b"", "a refused client got a reply"
                    raise ConnectionResetError("closed without an alert")
            ask(good, b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n")
        assert wait_until(lambda: failures(r, reason) == 2, TIMEOUT), r.scrape()
    fix = {"no_client_cert": "the client must present a certificate signed by --tls-client-ca "
                             "(mTLS is required)",
           "unknown_ca": "the client certificate must be signed by --tls-client-ca",
           "expired": "the client must renew its certificate"}[reason]
    line = f"tls handshake with client {HOST} failed: {reason} [{detail}]; fix: {fix}"
    assert r.stderr().count(line) == 1, r.stderr()
    assert "Traceback" not in r.stderr()


def test_optional_client_certificates(router, memcached, certs):
    """--tls-client-cert optional: a client without a certificate is served;
    one presenting a certificate of another CA is still refused."""
    r, port, _ = start(router, memcached, certs, extra=("--tls-client-cert", "optional"))
    with connect(port, certs) as anonymous:
        ask(anonymous, b"set o 0 0 2\r\nok\r\nget o\r\n",
            b"STORED\r\nVALUE o 0 2\r\nok\r\nEND\r\n")
    with connect(port, certs, certs.client) as signed:
        ask(signed, b"get o\r\n", b"VALUE o 0 2\r\nok\r\nEND\r\n")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with connect(port, certs, certs.other_client) as bad:
            bad.sendall(b"get o\r\n")
            assert bad.recv(100) == b"", "a refused client got a reply"
            raise ConnectionResetError("closed without an alert")
    assert wait_until(lambda: failures(r, "unknown_ca") == 1, TIMEOUT), r.scrape()


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_stalled_handshakes_are_closed_after_the_timeout(router, memcached, certs):
    r, port, _ = start(router, memcached, certs)
    silent = socket.create_connection((HOST, port), timeout=TIMEOUT)
    half = socket.create_connection((HOST, port), timeout=TIMEOUT)
    hello = client_hello()
    half.sendall(hello[:len(hello) // 2])
    try:
        with connect(port, certs, certs.client) as good:
            ask(good, b"set b 0 0 1\r\ny\r\n", b"STORED\r\n")
            started = time.monotonic()
            assert silent.recv(100) == b""      # closed by the router, no bytes sent
            assert half.recv(100) == b""
            assert time.monotonic() - started < 5.0
            ask(good, b"get b\r\n", b"VALUE b 0 1\r\ny\r\nEND\r\n")
        assert wait_until(lambda: failures(r, "handshake_timeout") == 2, TIMEOUT)
    finally:
        silent.close()
        half.close()


def test_plain_text_to_the_tls_listener(router, memcached, certs):
    r, port, _ = start(router, memcached, certs)
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(b"get a\r\n")
        assert s.recv(100) == b""      # closed: OpenSSL sends no alert to what is not TLS
    assert wait_until(lambda: failures(r, "protocol") == 1, TIMEOUT)
    assert r.stderr().count(f"tls handshake with client {HOST} failed: protocol [") == 1


def serial_of(path: str) -> int:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def peer_serial(s: ssl.SSLSocket) -> int:
    return int(s.getpeercert()["serialNumber"], 16)


def test_certificate_rotation_on_sighup_under_load(router, memcached, certs, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    r, port, _ = start(router, memcached, certs, cert=str(cert), key=str(key))
    first = serial_of(certs.server.cert)
    conns = [connect(port, certs, certs.client) for _ in range(4)]
    assert all(peer_serial(c) == first for c in conns)
    errors: list[str] = []
    done = [0]
    stop = threading.Event()

    def load(c: ssl.SSLSocket, i: int) -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            body = b"%d-%d" % (i, n)
            req = b"set r%d 0 0 %d\r\n%s\r\nget r%d\r\n" % (i, len(body), body, i)
            want = b"STORED\r\nVALUE r%d 0 %d\r\n%s\r\nEND\r\n" % (i, len(body), body)
            try:
                c.sendall(req)
                got = read_exact(c, len(want))
            except OSError as e:
                errors.append(repr(e))
                return
            if got != want:
                errors.append(f"{got!r} != {want!r}")
                return
            n += 1
            done[0] += 1
    threads = [threading.Thread(target=load, args=(c, i), daemon=True)
               for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    try:
        rotated = certs.issue_server("rotated")
        for src, dst in ((rotated.cert, cert), (rotated.key, key)):
            shutil.copy(src, str(dst) + ".new")
            os.replace(str(dst) + ".new", dst)
        r.signal(signal.SIGHUP)
        assert r.wait_log("new TLS handshakes use the certificate files as re-read now")
        assert wait_until(lambda: peer_serial(connect(port, certs, certs.client))
                          == serial_of(rotated.cert), TIMEOUT)
        # a bad certificate refuses the reload, in one line; the rotated one stays
        cert.write_text("not a certificate\n")
        r.signal(signal.SIGHUP)
        line = (f"reload refused, still serving generation 2: --tls-cert {cert}: no PEM "
                "certificate in it (-----BEGIN CERTIFICATE-----); give the certificate in PEM")
        assert r.wait_log(line)
        with connect(port, certs, certs.client) as s:
            assert peer_serial(s) == serial_of(rotated.cert)
            ask(s, b"get nothing\r\n", b"END\r\n")
        before = done[0]
        assert wait_until(lambda: done[0] > before + 10, TIMEOUT)
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        for c in conns:
            c.close()
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    assert r.stderr().count(line) == 1 and "Traceback" not in r.stderr()


def test_one_megabyte_values_through_tls(router, memcached, certs):
    r, port, _ = start(router, memcached, certs)
    value = os.urandom(1_000_000)
    with connect(port, certs, certs.client) as s:
        ask(s, b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n")
        want = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        ask(s, b"get big\r\nget big\r\n", want * 2)


def test_a_tls_client_that_never_reads_stays_within_b(router, memcached, certs):
    """As a plain one (Limits: -b, the reply in progress, the reply budget):
    the session takes no more plaintext while its records wait for the
    kernel, so it adds at most one chunk of records."""
    r, port, m = start(router, memcached, certs, extra=("-b", "1048576"))
    value = b"v" * 500_000
    with connect(port, certs, certs.client) as s:
        ask(s, b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n")
    (worker,) = r.worker_pids()
    before = rss_kib(worker)
    s = connect(port, certs, certs.client)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        with PeakRss(worker) as peak:
            s.sendall(b"get big\r\n" * 200)       # 100 MB of replies, never read
            time.sleep(2.0)
        held = peak.peak - before
        assert held < 24 * MIB, f"worker grew by {held} KiB for a TLS client that never reads"
        with connect(port, certs, certs.client) as other:    # and others are served
            ask(other, b"get nothing\r\n", b"END\r\n")
    finally:
        s.close()


FUZZ_SECONDS = float(os.environ.get("MCROUTER_TLS_FUZZ_SECONDS", "8"))


def test_stream_fuzz_through_a_tls_listener(tls_memcached, router, pki, monkeypatch):
    """The differential session of test_stream_fuzz.py, short, with the
    fuzzer's clients speaking TLS (client certificates) to a tls:// listener:
    the same bytes as memcached in plain TCP, through a plain upstream and
    through a TLS one.  The client half-closes with a close_notify, then its
    TCP FIN.  Every memcached is started with -Z and read (or reached by the
    plain router) on its plain port, so that ``stats`` lists the same names."""
    monkeypatch.setattr(sf, "BIG_VALUE", 4000)      # memcached's TLS stall (streamfuzz.BIG_VALUE)
    reference, plain, secure = (tls_memcached("-m", "1024") for _ in range(3))
    for m in (reference, plain, secure):
        if m.proc.stderr is not None:
            m.proc.stderr.close()
    targets = []
    for name, cfg in (("tls-listener", {"orderedPool": [f"{HOST}:{plain.plain_port}"],
                                        "route": {"type": "DefaultRoute"}}),
                      ("tls-both", {"orderedPool": [secure.addr], "tls": pki.upstream_tls(),
                                    "route": {"type": "DefaultRoute"}})):
        port = free_port()
        router(cfg, extra=pki.listener_args(port))
        targets.append(sf.Target(name, port, tls=pki.client_context(), server_name=SERVER_NAME))
    stats = asyncio.run(sf.fuzz(11, reference.plain_port, targets,
                                [plain.plain_port, secure.plain_port], 3000, FUZZ_SECONDS,
                                concurrency=16))
    print(f"tls listener stream fuzz: {stats.cases} cases in {stats.elapsed:.1f}s")
    assert stats.cases >= 100
    assert not stats.divergences, "\n\n".join(d.report() for d in stats.divergences[:4])


def read_to_eof(s: socket.socket, limit: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while len(got) <= limit and time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_thousand_pipelined_requests_then_a_half_close(router, memcached, certs, version):
    """1000 requests in one write, then the client's TCP half-close (no
    close_notify): every reply, in order, then the router's end (memcached
    answers what it read before the end of file)."""
    r, port, _ = start(router, memcached, certs)
    with connect(port, certs, certs.client, version) as s:
        ask(s, b"set k 3 0 6\r\nVALUE \r\n", b"STORED\r\n")
        one = b"get k nokey\r\nmg k v f\r\nincr nokey 1\r\n"
        reply = b"VALUE k 3 6\r\nVALUE \r\nEND\r\nVA 6 f3\r\nVALUE \r\nNOT_FOUND\r\n"
        s.sendall(one * 334)
        socket.socket.shutdown(s, socket.SHUT_WR)        # TCP only: the TLS layer stays
        assert read_to_eof(s, len(reply) * 334 + 100) == reply * 334
