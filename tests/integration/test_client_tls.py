"""mcrouter.client over TLS through an ``ssl.SSLContext`` (issue 15): Client
and AsyncClient (on asyncio's loop and on uvloop, the ``run`` fixture)
against real memcached 1.6.18 speaking TLS.

* TLS: the server's certificate checked against the context's CA.
* mTLS: memcached requires a client certificate of the test CA
  (``ssl_verify_mode=2``, the ``tls_memcached`` fixture): the context's
  ``load_cert_chain`` certificate gets exact values back; none, or one of
  another CA, is a ``MemcacheConnectionError`` naming the server, the
  refused request is not executed, and a client with a good context is
  served afterwards.

Each mTLS refusal runs under TLS 1.2 and TLS 1.3, two different paths in
the clients: under 1.2 memcached refuses during the handshake, so the
connect fails; under 1.3 the client's handshake completes before memcached
has checked its certificate, so the refusal is an alert read after the
first request was written (a connection lost with a request out).
"""
from __future__ import annotations

import ssl

import pytest

from mcrouter.client import AsyncClient, Client, MemcacheConnectionError

# exact values back: empty, binary (every byte value), and larger than a
# TLS record (16 KB) so that one reply spans several records
VALUES = {"empty": b"", "bytes": bytes(range(256)), "big": bytes(range(256)) * 400}

VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}

# what the client presents to a memcached requiring a certificate of the test CA
REFUSED = {"no client certificate": None, "certificate of another CA": "foreign_client"}


def context(pki, version: str, cert: str | None = "client") -> ssl.SSLContext:
    """A context trusting the test CA, speaking only ``version``, presenting
    pki's ``<cert>_cert`` (none if ``cert`` is None)."""
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    if cert is not None:
        ctx.load_cert_chain(getattr(pki, f"{cert}_cert"), getattr(pki, f"{cert}_key"))
    return ctx


# -- TLS: the server's certificate ---------------------------------------------------

def test_tls(memcached, tmp_path):
    from support.certs import make_certs
    certs = make_certs(tmp_path / "certs")
    m = memcached("-Z", "-o", f"ssl_chain_cert={certs.server.cert},ssl_key={certs.server.key}")
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    with Client([m.addr], tls_context=ctx) as c:
        assert c.set("k", b"v" * 100_000) and c.get("k") == b"v" * 100_000
        assert c.get_many(["k", "x"]) == {"k": b"v" * 100_000}
    other = ssl.create_default_context(cafile=certs.other_ca_file)
    with Client([m.addr], tls_context=other) as bad:
        with pytest.raises(MemcacheConnectionError) as e:
            bad.get("k")
        assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_tls_async(memcached, tmp_path, run):
    from support.certs import make_certs
    certs = make_certs(tmp_path / "certs")
    m = memcached("-Z", "-o", f"ssl_chain_cert={certs.server.cert},ssl_key={certs.server.key}")
    ctx = ssl.create_default_context(cafile=certs.ca_file)

    async def main() -> None:
        async with AsyncClient([m.addr], tls_context=ctx) as c:
            assert await c.set("k", b"v" * 100_000)
            assert await c.get("k") == b"v" * 100_000
    run(main())


# -- mTLS: memcached requires a client certificate ------------------------------------

@pytest.mark.parametrize("version", list(VERSIONS))
def test_mtls_round_trip(tls_memcached, pki, version):
    m = tls_memcached()
    with Client([m.addr], tls_context=context(pki, version)) as c:
        for k, v in VALUES.items():
            assert c.set(k, v) is True
        for k, v in VALUES.items():
            assert c.get(k) == v
        assert c.get_many([*VALUES, "missing"]) == VALUES
    assert m.get_raw("bytes") == b"VALUE bytes 0 256\r\n" + VALUES["bytes"] + b"\r\nEND\r\n"


@pytest.mark.parametrize("version", list(VERSIONS))
def test_mtls_round_trip_async(tls_memcached, pki, version, run):
    m = tls_memcached()

    async def main() -> None:
        async with AsyncClient([m.addr], tls_context=context(pki, version)) as c:
            for k, v in VALUES.items():
                assert await c.set(k, v) is True
            for k, v in VALUES.items():
                assert await c.get(k) == v
            assert await c.get_many([*VALUES, "missing"]) == VALUES
    run(main())
    assert m.get_raw("bytes") == b"VALUE bytes 0 256\r\n" + VALUES["bytes"] + b"\r\nEND\r\n"


def assert_refused(e: pytest.ExceptionInfo, m, version: str) -> None:
    """The refusal: a connection error (not a timeout, not an ejection)
    naming memcached's address, at connect under TLS 1.2 only (the client's
    own wording; OpenSSL's after it varies); the set was not executed."""
    assert type(e.value) is MemcacheConnectionError, repr(e.value)
    assert e.value.server == m.addr and str(e.value).startswith(f"{m.addr}: ")
    assert str(e.value).startswith(f"{m.addr}: connect failed: ") == (version == "tls1.2"), \
        repr(e.value)
    assert m.get_raw("k") == b"END\r\n"


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_mtls_refused(tls_memcached, pki, case, version):
    m = tls_memcached()
    with Client([m.addr], tls_context=context(pki, version, REFUSED[case]), timeout=5.0) as c:
        with pytest.raises(MemcacheConnectionError) as e:
            c.set("k", b"refused")
        assert_refused(e, m, version)
        with pytest.raises(MemcacheConnectionError):     # and again: no hang, no stale reply
            c.get("k")
    with Client([m.addr], tls_context=context(pki, version)) as good:
        assert good.set("k", b"ok") is True and good.get("k") == b"ok"


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_mtls_refused_async(tls_memcached, pki, case, version, run):
    m = tls_memcached()

    async def refused() -> None:
        async with AsyncClient([m.addr], tls_context=context(pki, version, REFUSED[case]),
                               timeout=5.0) as c:
            with pytest.raises(MemcacheConnectionError) as e:
                await c.set("k", b"refused")
            assert_refused(e, m, version)
            with pytest.raises(MemcacheConnectionError):
                await c.get("k")

    async def served() -> None:
        async with AsyncClient([m.addr], tls_context=context(pki, version)) as good:
            assert await good.set("k", b"ok") is True and await good.get("k") == b"ok"
    run(refused())
    run(served())
