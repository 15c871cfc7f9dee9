"""Every config in examples/ loads, and each one serves a set and a get
over real memcached servers (its 127.0.0.1:1121N addresses replaced by
live ones)."""
from __future__ import annotations

import re

import pytest

from support import REPO, wait_until
from mcrouter.config import ROUTE_TYPES, load_config

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
HIT = b"VALUE user:1 0 5\r\nhello\r\nEND\r\n"
# example → (reply to "set user:1", reply to "get user:1" right after)
EXPECT = {
    "all_async": (b"NOT_STORED\r\n", b"END\r\n"),       # answers before the copies land
    "error": (b"SERVER_ERROR mcrouter: cache is under maintenance\r\n",) * 2,
    "null": (b"NOT_STORED\r\n", b"END\r\n"),
}
# RandomRoute: the get may pick another replica than the set did
EITHER = {"random": (HIT, b"END\r\n")}


def test_every_route_has_an_example():
    used = set()
    for path in EXAMPLES:
        used |= set(re.findall(r"\b([A-Za-z]+Route)\b", path.read_text()))
    assert set(ROUTE_TYPES) <= used, set(ROUTE_TYPES) - used


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_and_serves(path, memcached, router):
    load_config(str(path))
    text = path.read_text()
    ports = sorted(set(re.findall(r"127\.0\.0\.1:(1121\d)", text)))
    servers = {p: memcached() for p in ports}
    for p, m in servers.items():
        text = text.replace(f"127.0.0.1:{p}", m.addr)
    r = router(text)
    set_reply, get_reply = EXPECT.get(path.stem, (b"STORED\r\n", HIT))
    with r.client() as c:
        assert c.request(b"set user:1 0 0 5\r\nhello\r\n", set_reply) == set_reply
        if path.stem in EITHER:
            c.send(b"get user:1\r\n")
            assert c.recv_one_of(EITHER[path.stem]) in EITHER[path.stem]
        else:
            assert c.request(b"get user:1\r\n", get_reply) == get_reply


# gomcrouter's own example config (its README, "Example Router Configuration",
# byte for byte; also its examples/docker/gomcrouter.yaml): the README
# promises that schema verbatim, quit: LocalRoute included.
GOMCROUTER_README = REPO / "tests" / "integration" / "configs" / "gomcrouter_readme.yaml"


def test_gomcrouter_readme_example_loads_and_serves(memcached, router):
    text = GOMCROUTER_README.read_text()
    config = load_config(str(GOMCROUTER_README))
    assert config.route.options["operation_policies"]["quit"].type == "LocalRoute"
    m1, m2 = memcached(), memcached()
    r = router(text.replace("memcache1:11211", m1.addr).replace("memcache2:11211", m2.addr))
    with m1.client() as c:
        version = c.call(b"version\r\n")
    assert re.fullmatch(rb"VERSION \d+\.\d+\.\d+\r\n", version)
    with r.client() as c:
        assert c.request(b"version\r\n", version) == version                  # LocalRoute
        assert c.request(b"set k 0 0 1\r\n5\r\n", b"STORED\r\n") == b"STORED\r\n"
        for m in (m1, m2):                                                   # AllFastestRoute
            assert wait_until(lambda: m.get_raw("k") == b"VALUE k 0 1\r\n5\r\nEND\r\n", 5)
        for req, exp in [
            (b"get k\r\n", b"VALUE k 0 1\r\n5\r\nEND\r\n"),                    # MissFailoverRoute
            (b"add k 0 0 1\r\n6\r\n", b"NOT_STORED\r\n"),
            (b"incr k 10\r\n", b"15\r\n"),
            (b"decr k 3\r\n", b"12\r\n"),
            (b"append k 0 0 1\r\n0\r\n", b"STORED\r\n"),
            (b"prepend k 0 0 1\r\n1\r\n", b"STORED\r\n"),
            (b"get k\r\n", b"VALUE k 0 4\r\n1120\r\nEND\r\n"),
            (b"replace k 0 0 2\r\nok\r\n", b"STORED\r\n"),
            (b"delete k\r\n", b"DELETED\r\n"),
            (b"get k\r\n", b"END\r\n"),
        ]:
            assert c.request(req, exp) == exp, req
    with r.client() as c:               # quit: every earlier reply, then the close
        c.send(b"get nope\r\nversion\r\nquit\r\nget nope\r\n")
        assert c.recv_idle(0.5) == b"END\r\n" + version
        assert c.is_closed()
