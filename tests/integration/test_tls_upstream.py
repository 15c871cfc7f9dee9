"""The router → memcached over TLS (issue 14, upstream side), against real
``memcached -Z`` requiring a client certificate (``ssl_verify_mode=2``).

Certificates are made per test by ``trustme`` (tests/support/pki.py).
Every memcached here also listens in plain TCP on a side port, through
which the tests look at what the router stored over TLS.
"""
from __future__ import annotations

import ssl

import pytest

from support.pki import SERVER_NAME, tls_call


def test_fixture_memcached_requires_a_client_certificate(tls_memcached, pki):
    m = tls_memcached()
    assert tls_call(m.port, pki.client_context(), b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|EOF occurred"):   # alert or close:
        tls_call(m.port, pki.client_context(cert=False), b"version\r\n", b"\r\n")
    with m.client() as c:                                  # the plain side port
        assert c.call(b"version\r\n", b"\r\n") == b"VERSION 1.6.18\r\n"
    assert SERVER_NAME == "memcached.test"
