"""Test certificates (trustme): a CA, a server certificate for the loopback
names, client certificates signed by that CA, by another CA, and expired
ones, written as PEM files in a directory the tests pass to the router."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Pair:
    cert: str
    key: str


@dataclass
class Certs:
    dir: Path
    ca: trustme.CA
    ca_file: str                # the CA that signs the server and the good clients
    server: Pair                # for the loopback names, signed by ca
    client: Pair                # signed by ca
    other_ca_file: str          # another CA
    other_client: Pair          # signed by the other CA
    expired_client: Pair        # signed by ca, expired yesterday
    expired_server: Pair        # signed by ca, expired yesterday

    def issue_server(self, name: str, *identities: str) -> Pair:
        """A further server certificate signed by ``ca`` (a rotation)."""
        return _write(self.dir, name, self.ca.issue_cert(*(identities or LOOPBACK_NAMES)))


def _write(d: Path, name: str, leaf: trustme.LeafCert) -> Pair:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return Pair(str(cert), str(key))


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.crt"))
    other.cert_pem.write_to_path(str(d / "other-ca.crt"))
    now = datetime.datetime.now(datetime.timezone.utc)
    past = dict(not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1))
    return Certs(
        dir=d, ca=ca, ca_file=str(d / "ca.crt"),
        server=_write(d, "server", ca.issue_cert(*LOOPBACK_NAMES)),
        client=_write(d, "client", ca.issue_cert("client.example")),
        other_ca_file=str(d / "other-ca.crt"),
        other_client=_write(d, "other-client", other.issue_cert("client.example")),
        expired_client=_write(d, "expired-client", ca.issue_cert("client.example", **past)),
        expired_server=_write(d, "expired-server", ca.issue_cert(*LOOPBACK_NAMES, **past)),
    )
