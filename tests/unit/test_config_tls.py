"""The ``tls:`` settings of pools (issue 14, upstream side): what loads, and
the one-line error, with file:line:col, for what does not."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcrouter.config import ConfigError, HostAddr, TlsSettings, load_config


def write(tmp_path: Path, text: str) -> str:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "router.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_pool_tls_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    cfg = load_config(write(tmp_path, """
        pools:
          secure:
            servers: [127.0.0.1:11211, 127.0.0.1:11212]
            tls: {ca: ca.pem, cert: client.pem, key: client.key, server_name: memcached.test}
          plain:
            servers: [127.0.0.1:11213]
        route: PoolRoute|secure
        """))
    want = TlsSettings(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"),
                       str(tmp_path / "client.key"), "memcached.test", True)
    assert cfg.pools["secure"].tls == want
    assert cfg.tls_of(HostAddr("127.0.0.1", 11212)) == want
    assert cfg.tls_of(HostAddr("127.0.0.1", 11213)) is None
    assert cfg.tls_settings() == (want,)
    assert cfg.pools["secure"].tls.where == f"{tmp_path}/router.yaml:5:10"


def test_top_level_tls_is_ordered_pools(tmp_path):
    cfg = load_config(write(tmp_path, """
        orderedPool: [127.0.0.1:11211]
        tls: {verify: false}
        route: DefaultRoute
        """))
    assert cfg.tls_of(HostAddr("127.0.0.1", 11211)) == TlsSettings(verify=False)


INVALID = {
    "missing file": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {ca: nope.pem}}
        route: PoolRoute|a
        """, "router.yaml:3:41: tls.ca {dir}/nope.pem: cannot read it (No such file or "
             "directory); give a readable PEM file (a relative path is relative to the config file)"),
    "unknown key": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {cafile: ca.pem}}
        route: PoolRoute|a
        """, "router.yaml:3:37: unknown tls key 'cafile'; valid: ca, cert, key, server_name, verify"),
    "verify not a bool": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {verify: maybe}}
        route: PoolRoute|a
        """, "router.yaml:3:45: tls.verify must be true or false (got 'maybe'); write verify: "
             "true (or false to accept any server certificate)"),
    "key without cert": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {key: client.key}}
        route: PoolRoute|a
        """, "router.yaml:3:37: tls.key without tls.cert; add cert: FILE (the client "
             "certificate the key belongs to)"),
    "tls: true": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: true}
        route: PoolRoute|a
        """, "router.yaml:3:36: tls: takes its settings, not true; write e.g. tls: {ca: ca.pem} "
             "(or tls: {} for the system's CAs)"),
    "bad server name": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {server_name: "a b"}}
        route: PoolRoute|a
        """, "router.yaml:3:50: tls.server_name 'a b' is not a host name; write the name in the "
             "servers' certificates, e.g. server_name: memcached.internal"),
    "a host with and without tls": ("""
        pools:
          a: {servers: [127.0.0.1:1], tls: {ca: ca.pem}}
          b: {servers: [127.0.0.1:1]}
        route: PoolRoute|a
        """, "router.yaml:4:6: server 127.0.0.1:1 is listed with tls in pool 'a' and without "
             "in pool 'b'; a host is one set of connections: give every pool that lists it the "
             "same tls: settings"),
    "a host with two tls settings": ("""
        orderedPool: [127.0.0.1:1]
        tls: {ca: ca.pem}
        pools:
          b: {servers: [127.0.0.1:1], tls: {verify: false}}
        route: PoolRoute|b
        """, "router.yaml:5:6: server 127.0.0.1:1 has different tls settings in orderedPool "
             "and pool 'b'; a host is one set of connections: give every pool that lists it "
             "the same tls: settings"),
    "top-level tls without orderedPool": ("""
        pools:
          a: {servers: [127.0.0.1:1]}
        tls: {ca: ca.pem}
        route: PoolRoute|a
        """, "router.yaml:4:1: the top-level tls: is for orderedPool, which is empty; move it "
             "into the pools that need it (pools: NAME: tls:)"),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_tls_settings_are_one_line(tmp_path, name):
    text, want = INVALID[name]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{tmp_path}/" + want.replace("{dir}", str(tmp_path))
