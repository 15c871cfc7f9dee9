"""Test certificates (made by ``trustme``, never checked in) and a TLS client.

``Pki(directory)`` writes, as PEM files: a CA, a server certificate for
127.0.0.1 and the name ``memcached.test``, a client certificate, an expired
server certificate, and a second CA that signed nothing the router trusts.
``memcached_tls_args`` are the options that make Debian's memcached
(1.6.18) speak TLS with them, requiring a client certificate
(``ssl_verify_mode=2``).
"""
from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

from .client import HOST

SERVER_NAME = "memcached.test"


class Pki:
    """PEM files under ``root``; attributes are their paths (str)."""

    def __init__(self, root: Path) -> None:
        import trustme     # a test dependency only (pyproject's test extra)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca = trustme.CA(organization_name="mcrouter test CA")
        self.other_ca = trustme.CA(organization_name="some other CA")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        self.server_cert, self.server_key = self._leaf("server", self.ca.issue_cert(
            HOST, SERVER_NAME, common_name=SERVER_NAME))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.expired_cert, self.expired_key = self._leaf("expired", self.ca.issue_cert(
            HOST, SERVER_NAME, not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1)))
        self.client_cert, self.client_key = self._leaf("client", self.ca.issue_cert(
            "mcrouter.test", common_name="mcrouter"))
        self.foreign_client_cert, self.foreign_client_key = self._leaf(
            "foreign-client", self.other_ca.issue_cert("intruder.test"))

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def _leaf(self, name: str, leaf: "object") -> tuple[str, str]:
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)   # type: ignore[attr-defined]
        return (self._write(f"{name}.pem", chain),
                self._write(f"{name}.key", leaf.private_key_pem.bytes()))   # type: ignore[attr-defined]

    def memcached_tls_args(self, cert: str = "", key: str = "", verify: int = 2) -> list[str]:
        """memcached options: TLS with ``cert`` (the server certificate by
        default), client certificates of the test CA required (verify 2)."""
        return ["-Z", "-o", f"ssl_chain_cert={cert or self.server_cert},"
                f"ssl_key={key or self.server_key},ssl_ca_cert={self.ca_file},"
                f"ssl_verify_mode={verify}"]

    def upstream_tls(self, **over: object) -> dict:
        """A router pool's ``tls:`` mapping: the test CA, the client
        certificate, the name in the server certificate; ``over`` replaces
        or (None) removes keys."""
        t: dict[str, object] = {"ca": self.ca_file, "cert": self.client_cert,
                                "key": self.client_key, "server_name": SERVER_NAME}
        t.update(over)
        return {k: v for k, v in t.items() if v is not None}

    def listener_args(self, port: int) -> list[str]:
        """Router options for a ``tls://`` listener on ``port`` with the
        server certificate, requiring client certificates of the test CA."""
        return ["-l", f"tls://{HOST}:{port}", "--tls-cert", self.server_cert,
                "--tls-key", self.server_key, "--tls-client-ca", self.ca_file]

    def client_context(self, cert: bool = True) -> ssl.SSLContext:
        """A client context trusting the test CA, with the client certificate."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def tls_call(port: int, ctx: ssl.SSLContext, request: bytes, until: bytes,
             server_name: str = SERVER_NAME, timeout: float = 5.0) -> bytes:
    """One request over a fresh TLS connection; the bytes read up to and
    including ``until`` (or what came before the peer closed)."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(request)
            data = b""
            while until not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
