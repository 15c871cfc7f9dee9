"""tls.py: context builders' one-line errors, the non-blocking session over
a socket pair (handshake, bounded reads and ``more``, writes the kernel
refuses), the failure classifier on real failed handshakes, and the
rate-limited log line and its counter."""
from __future__ import annotations

import logging
import os
import socket
import ssl

import pytest

from mcrouter import _metrics, tls
from mcrouter._metrics import G_TLS_FAILURES, NTLS_REASON
from mcrouter.metrics import MetricsBlock
from support.certs import Certs, make_certs

STEPS = 2000            # bound on handshake / transfer steps in these tests


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def counters():
    """A real metrics slot installed as this process's, read back by word."""
    saved = _metrics.local()
    block = MetricsBlock(workers=1, hosts=4)
    block.use_slot(0)
    _metrics.install(block.counters(0))
    tls.failures.peers.clear()
    yield lambda side, reason: block.snapshot(0).value(
        G_TLS_FAILURES + tls.SIDES.index(side) * NTLS_REASON + tls.REASONS.index(reason))
    _metrics.install(saved)
    tls.failures.peers.clear()


# -- context builders -----------------------------------------------------------

def test_server_context_loads_and_requires_client_certs(certs):
    ctx = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    optional = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file,
                                  require_client_cert=False)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert tls.server_context(certs.server.cert, certs.server.key).verify_mode == ssl.CERT_NONE


def test_expired_certificate_loads(certs):
    """Reported at each handshake instead (the peers refuse it)."""
    tls.server_context(certs.expired_server.cert, certs.expired_server.key)


def test_unreadable_file_names_file_and_setting(certs, tmp_path):
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(missing, certs.server.key)
    assert str(e.value) == (f"--tls-cert {missing}: cannot read it (No such file or directory); "
                            "give a readable PEM file")


def test_not_pem(certs, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(str(junk), certs.server.key)
    assert str(e.value) == (f"--tls-cert {junk}: no PEM certificate in it "
                            "(-----BEGIN CERTIFICATE-----); give the certificate in PEM")
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(certs.server.cert, str(junk))
    assert str(e.value) == (f"--tls-key {junk}: no PEM private key in it "
                            "(-----BEGIN ... PRIVATE KEY-----); give the key in PEM")
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(certs.server.cert, certs.server.key, str(junk))
    assert str(e.value) == (f"--tls-client-ca {junk}: no PEM certificate in it "
                            "(-----BEGIN CERTIFICATE-----); give the CA certificate(s) in PEM")


def test_corrupt_pem(certs, tmp_path):
    bad = tmp_path / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(str(bad), certs.server.key)
    assert str(e.value).startswith(f"--tls-cert {bad} / --tls-key {certs.server.key}: "
                                   "not a usable certificate and key (")
    assert "\n" not in str(e.value)


def test_key_not_matching_cert(certs):
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(certs.server.cert, certs.client.key)
    assert str(e.value) == (f"--tls-key {certs.client.key} does not match --tls-cert "
                            f"{certs.server.cert}; give the key the certificate was issued for")


def test_encrypted_key_never_prompts(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(open(certs.server.key, "rb").read(), None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(tls.TlsConfigError) as e:
        tls.server_context(certs.server.cert, str(enc))
    assert str(e.value) == (f"--tls-key {enc}: the key is encrypted; give an unencrypted key "
                            "(openssl pkey -in KEY -out KEY.plain)")


def test_client_context_settings(certs):
    ctx = tls.client_context(certs.ca_file, certs.client.cert, certs.client.key)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert tls.client_context(verify=False).verify_mode == ssl.CERT_NONE
    with pytest.raises(tls.TlsConfigError) as e:
        tls.client_context(certs.ca_file, cert=certs.client.cert)
    assert str(e.value) == "tls.cert is given without tls.key; give both or neither"
    with pytest.raises(tls.TlsConfigError) as e:
        tls.client_context(certs.client.key)
    assert str(e.value).startswith(f"tls.ca {certs.client.key}: no PEM certificate in it")


# -- the session ------------------------------------------------------------------

def pair(server_ctx, client_ctx, hostname="localhost"):
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    server = tls.TlsSession(server_ctx, a, "client", "peer-a")
    client = tls.TlsSession(client_ctx, b, "upstream", "peer-b", server_hostname=hostname)
    return server, client, (a, b)


def step(session, buf, size=0):
    """One read attempt: bytes, b'' at end of file, None for nothing now."""
    try:
        n = session.recv_into(buf, size)
    except BlockingIOError:
        return None
    return bytes(buf[:n])


def shake(server, client):
    """Drive both handshakes to the end, as the loop would; the exception
    either side raised, if one failed."""
    buf = bytearray(4096)
    client.start()
    for _ in range(STEPS):
        for s in (server, client):
            if not s.handshake_done:
                step(s, buf)
            elif s.want_write:
                s.flush()
        if server.handshake_done and client.handshake_done:
            return
    raise AssertionError("handshake did not finish")


def contexts(certs, version=None):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file)
    client_ctx = tls.client_context(certs.ca_file, certs.client.cert, certs.client.key)
    if version is not None:
        client_ctx.maximum_version = version
    return server_ctx, client_ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_handshake_and_echo(certs, version):
    server, client, socks = pair(*contexts(certs, version))
    try:
        shake(server, client)
        assert server.obj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                        ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert server.obj.getpeercert()["subject"] == ((("commonName", "client.example"),),) \
            or server.obj.getpeercert()
        assert client.send(b"get k\r\n") == 7
        buf = bytearray(1024)
        got = None
        for _ in range(STEPS):
            got = step(server, buf)
            if got:
                break
        assert got == b"get k\r\n"
        assert not server.more          # the buffer was not filled: nothing held back
    finally:
        for s in socks:
            s.close()


def test_session_bounded_reads_report_more(certs):
    """A read never returns more than asked; what the session still holds is
    announced by ``more`` (the descriptor will not be readable for it), and
    every byte arrives in order."""
    server, client, socks = pair(*contexts(certs))
    try:
        shake(server, client)
        payload = os.urandom(300_000)
        sent = 0
        received = bytearray()
        buf = bytearray(8192)
        saw_more = False
        for _ in range(STEPS * 10):
            if sent < len(payload):
                try:
                    sent += client.send(memoryview(payload)[sent:])
                except BlockingIOError:
                    pass
            elif client.want_write:
                client.flush()
            got = step(server, buf, 1000)
            if got:
                assert len(got) <= 1000
                received += got
                saw_more |= server.more
            if len(received) == len(payload):
                break
        assert received == payload
        assert saw_more
        assert tls.WRITE_CHUNK <= 64 * 1024
    finally:
        for s in socks:
            s.close()


def test_send_holds_at_most_one_chunk_when_peer_never_reads(certs):
    """A peer that never reads: the session takes nothing more once the
    kernel refuses its records (BlockingIOError), so it holds at most one
    chunk of records however much the caller offers."""
    server, client, socks = pair(*contexts(certs))
    try:
        shake(server, client)
        data = b"x" * (1 << 20)
        taken = 0
        blocked = False
        for _ in range(STEPS):
            try:
                taken += server.send(data)
            except BlockingIOError:
                blocked = True
                break
        assert blocked and server.want_write
        assert len(server.pending_out) + server.outgoing.pending <= tls.WRITE_CHUNK + 4096
        # the peer reads now: every byte taken arrives
        received = 0
        buf = bytearray(65536)
        for _ in range(STEPS * 10):
            server.flush()
            got = step(client, buf)
            if got:
                received += len(got)
            if received == taken and not server.want_write:
                break
        assert received == taken
    finally:
        for s in socks:
            s.close()


def test_end_of_file_is_zero(certs):
    server, client, socks = pair(*contexts(certs))
    try:
        shake(server, client)
        client.close_notify()
        buf = bytearray(100)
        got = None
        for _ in range(STEPS):
            got = step(server, buf)
            if got is not None:
                break
        assert got == b""
    finally:
        for s in socks:
            s.close()


def test_peer_closing_mid_handshake_is_not_a_failure(certs, counters):
    server, client, socks = pair(*contexts(certs))
    socks[1].close()
    assert step(server, bytearray(100)) == b""
    assert sum(counters("client", r) for r in tls.REASONS) == 0
    socks[0].close()


# -- failures: reasons, the line, the counter -----------------------------------

def failed_handshake(server_ctx, client_ctx, hostname="localhost"):
    """Run a handshake that fails; the (server error, client error) raised."""
    server, client, socks = pair(server_ctx, client_ctx, hostname)
    errors: list[BaseException | None] = [None, None]
    buf = bytearray(4096)
    try:
        try:
            client.start()
        except tls.TlsError as e:
            errors[1] = e
        for _ in range(STEPS):
            for i, s in enumerate((server, client)):
                if errors[i] is not None:
                    continue
                try:
                    if s.handshake_done:
                        # TLS 1.3: a client learns of its refusal on its first read
                        s.recv_into(buf)
                    else:
                        s.recv_into(buf)
                except BlockingIOError:
                    pass
                except tls.TlsError as e:
                    errors[i] = e
                except OSError as e:
                    errors[i] = e
            if errors[0] is not None and (errors[1] is not None or client.handshake_done):
                break
        return errors
    finally:
        for s in socks:
            s.close()


def test_no_client_cert(certs, counters, caplog):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file)
    client_ctx = tls.client_context(certs.ca_file)
    with caplog.at_level(logging.WARNING, "mcrouter.tls"):
        server_err, _ = failed_handshake(server_ctx, client_ctx)
    assert isinstance(server_err, tls.TlsError) and server_err.reason == "no_client_cert"
    assert counters("client", "no_client_cert") == 1
    assert [r.getMessage() for r in caplog.records if r.name == "mcrouter.tls"] == [
        "tls handshake with client peer-a failed: no_client_cert "
        "[PEER_DID_NOT_RETURN_A_CERTIFICATE]; fix: the client must present a certificate "
        "signed by --tls-client-ca (mTLS is required)"]


def test_client_cert_from_another_ca(certs, counters):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file)
    client_ctx = tls.client_context(certs.ca_file, certs.other_client.cert, certs.other_client.key)
    server_err, _ = failed_handshake(server_ctx, client_ctx)
    assert isinstance(server_err, tls.TlsError) and server_err.reason == "unknown_ca"
    assert counters("client", "unknown_ca") == 1


def test_expired_client_cert(certs, counters):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key, certs.ca_file)
    client_ctx = tls.client_context(certs.ca_file, certs.expired_client.cert,
                                    certs.expired_client.key)
    server_err, _ = failed_handshake(server_ctx, client_ctx)
    assert isinstance(server_err, tls.TlsError) and server_err.reason == "expired"


def test_upstream_reasons(certs, counters):
    """The router as a client: the server's certificate expired, from an
    unknown CA, for another name; and the server refusing ours."""
    server_ctx = tls.server_context(certs.expired_server.cert, certs.expired_server.key)
    _, err = failed_handshake(server_ctx, tls.client_context(certs.ca_file))
    assert isinstance(err, tls.TlsError) and err.reason == "expired"
    server_ctx = tls.server_context(certs.server.cert, certs.server.key)
    _, err = failed_handshake(server_ctx, tls.client_context(certs.other_ca_file))
    assert isinstance(err, tls.TlsError) and err.reason == "unknown_ca"
    _, err = failed_handshake(server_ctx, tls.client_context(certs.ca_file), "cache.example")
    assert isinstance(err, tls.TlsError) and err.reason == "hostname_mismatch"
    assert [counters("upstream", r) for r in ("expired", "unknown_ca", "hostname_mismatch")] == \
        [1, 1, 1]


def test_server_certificate_refused_by_client_is_ours(certs, counters):
    """The client's alert about our certificate: the fix names --tls-cert."""
    server_ctx = tls.server_context(certs.server.cert, certs.server.key)
    server_err, _ = failed_handshake(server_ctx, tls.client_context(certs.other_ca_file))
    assert isinstance(server_err, tls.TlsError)
    assert tls.classify(ssl.SSLError(1, "x")) == ("other", False)
    assert server_err.reason == "unknown_ca"
    assert tls.line("client", "p", "unknown_ca", True, "") == (
        "tls handshake with client p failed: unknown_ca; fix: the client must trust the CA "
        "that signed --tls-cert")


def test_plain_text_to_tls_is_protocol(certs, counters):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        session = tls.TlsSession(server_ctx, a, "client", "peer-a")
        b.sendall(b"get foo\r\n")
        with pytest.raises(tls.TlsError) as e:
            for _ in range(STEPS):
                try:
                    session.recv_into(bytearray(100))
                except BlockingIOError:
                    pass
        assert e.value.reason == "protocol"
        assert counters("client", "protocol") == 1
    finally:
        a.close()
        b.close()


def test_log_once_per_interval_per_peer(counters, caplog):
    now = [100.0]
    flog = tls.FailureLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "mcrouter.tls"):
        for _ in range(5):
            flog.failed("client", "10.0.0.1", "expired")
        flog.failed("client", "10.0.0.2", "expired")
        now[0] += 10.0
        flog.failed("client", "10.0.0.1", "expired")
    assert [r.getMessage() for r in caplog.records] == [
        "tls handshake with client 10.0.0.1 failed: expired; fix: the client must renew "
        "its certificate",
        "tls handshake with client 10.0.0.2 failed: expired; fix: the client must renew "
        "its certificate",
        "tls handshake with client 10.0.0.1 failed: expired; fix: the client must renew "
        "its certificate (4 more from this peer since the last such line)"]
    assert counters("client", "expired") == 7


def test_log_remembers_bounded_peers(counters):
    flog = tls.FailureLog(interval=10.0, clock=lambda: 0.0)
    for i in range(tls.LOG_PEERS + 50):
        flog.failed("upstream", f"h{i}", "other")
    assert len(flog.peers) == tls.LOG_PEERS


def test_handshake_timeout_is_counted_once(certs, counters, caplog):
    server_ctx = tls.server_context(certs.server.cert, certs.server.key)
    a, b = socket.socketpair()
    try:
        session = tls.TlsSession(server_ctx, a, "client", "peer-a", deadline=1.0)
        with caplog.at_level(logging.WARNING, "mcrouter.tls"):
            session.timed_out()
            session.timed_out()
        assert counters("client", "handshake_timeout") == 1
        assert [r.getMessage() for r in caplog.records] == [
            "tls handshake with client peer-a failed: handshake_timeout [no complete handshake "
            "in time]; fix: the client must speak TLS to a tls:// listener "
            "(--tls-handshake-timeout)"]
    finally:
        a.close()
        b.close()
