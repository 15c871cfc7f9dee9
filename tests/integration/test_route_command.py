"""``mcrouter route``: the route path and servers of a key, without a router;
and the same answer from a running router through the reserved key."""
from __future__ import annotations

from mcrouter._hash import Hasher, ketama_name
from support.cli import assert_one_line_error, run_cli, write

CONFIG = """
pools:
  main:
    servers: [127.0.0.1:11211, 127.0.0.1:21212, 127.0.0.1:21213]
    hash: {function: md5}
  backup:
    servers: [127.0.0.1:21300]
route:
  type: OperationSelectorRoute
  operation_policies:
    get: {type: FailoverRoute, children: [PoolRoute|main, PoolRoute|backup]}
  default_policy: PoolRoute|main
"""
MAIN = ["127.0.0.1:11211", "127.0.0.1:21212", "127.0.0.1:21213"]


def main_server(key: bytes) -> str:
    h = Hasher([ketama_name(*s.split(":")[:1], int(s.split(":")[1])) for s in MAIN], function="md5")
    return MAIN[h.index(key)]


def test_route_prints_path_and_servers(tmp_path):
    cfg = write(tmp_path, CONFIG)
    for key in ("user:1", "user:2", "session:abc"):
        proc = run_cli("route", "-f", str(cfg), "get", key)
        assert proc.returncode == 0, proc.stderr
        host = main_server(key.encode())
        assert proc.stdout.decode() == (
            "OperationSelectorRoute (get)\n  FailoverRoute\n    PoolRoute|main\n"
            f"      {host}\n    PoolRoute|backup\n      127.0.0.1:21300\n"
            f"servers: {host} 127.0.0.1:21300\n")
    proc = run_cli("route", "-f", str(cfg), "delete", "user:1")
    assert proc.stdout.decode().splitlines()[-1] == f"servers: {main_server(b'user:1')}"
    proc = run_cli("route", "-f", str(cfg), "flush_all")
    assert proc.stdout.decode().splitlines()[-1] == "servers: " + " ".join(MAIN)
    proc = run_cli("route", "-f", str(cfg), "version")
    assert proc.stdout.decode().splitlines()[-1] == "servers: none (answered by the router)"


def test_route_mistakes_are_one_line(tmp_path):
    cfg = write(tmp_path, CONFIG)
    assert_one_line_error(run_cli("route", "-f", str(cfg), "frobnicate", "k"), "unknown command")
    assert_one_line_error(run_cli("route", "-f", str(cfg), "get", "a b"), "not a valid")
    bad = write(tmp_path, "route: PoolRoute|nope\n", "bad.yaml")
    assert_one_line_error(run_cli("route", "-f", str(bad), "get", "k"), f"{bad}:1:8:")


def test_running_router_gives_the_same_answer(memcached, router, tmp_path):
    ms = [memcached() for _ in range(4)]
    text = CONFIG
    for old, m in zip(MAIN + ["127.0.0.1:21300"], ms):
        text = text.replace(old, m.addr)
    cfg = write(tmp_path, text, "live.yaml")
    r = router(text)
    for key in ("user:1", "session:abc"):
        cli = run_cli("route", "-f", str(cfg), "get", key).stdout.decode().splitlines()
        with r.client() as c:
            got = c.call(f"get __mcrouter__.route(get,{key})\r\n".encode(), b"END\r\n")
            servers = got.split(b"\r\n", 1)[1].rsplit(b"\r\nEND\r\n", 1)[0].decode().split("\r\n")
            assert cli[-1] == "servers: " + " ".join(servers)
            got = c.call(f"get __mcrouter__.route_handles(get,{key})\r\n".encode(), b"END\r\n")
            path = got.split(b"\r\n", 1)[1].rsplit(b"\r\nEND\r\n", 1)[0].decode().split("\r\n")
            assert path == cli[:-1]
