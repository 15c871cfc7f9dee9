"""Every config in examples/ loads, and each one serves a set and a get
over real memcached servers (its 127.0.0.1:1121N addresses replaced by
live ones)."""
from __future__ import annotations

import re

import pytest

from conftest import REPO
from mcrouter.config import ROUTE_OPTIONS, load_config

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
    assert set(ROUTE_OPTIONS) <= used, set(ROUTE_OPTIONS) - used


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
