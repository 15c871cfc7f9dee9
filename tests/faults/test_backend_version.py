"""The router's own ``version`` reply (LocalRoute): exactly ``VERSION x.y.z``,
the lowest version the health probes read from the backends, 1.6.18 while
none is known (issue 10, defect 7).  A fake upstream stands in for backends
of other versions, and for a hostile one."""
from __future__ import annotations

import pytest

from support import Client, wait_until

DEFAULT = b"VERSION 1.6.18\r\n"


def local_route(*hosts) -> dict:
    return {"orderedPool": [h.addr for h in hosts], "route": {"type": "LocalRoute"}}


def version_of(port: int) -> bytes:
    with Client(port, timeout=5) as c:
        return c.call(b"version\r\n")


def becomes(port: int, expect: bytes, timeout: float = 10.0) -> bytes:
    """The router's version reply once it equals ``expect`` (or the last one seen)."""
    seen = [b""]

    def check() -> bool:
        seen[0] = version_of(port)
        return seen[0] == expect
    wait_until(check, timeout, interval=0.1)
    return seen[0]


def test_no_probe_yet_answers_1_6_18(fake, router):
    f = fake()
    f.version = b"1.4.5"
    r = router(local_route(f), extra=["-H", "60s"])       # the first probe is 30 s away
    assert version_of(r.port) == DEFAULT
    assert b"version\r\n" not in f.requests


def test_no_backend_at_all_answers_1_6_18(router):
    r = router({"orderedPool": [], "route": {"type": "LocalRoute"}})
    with r.client() as c:
        assert c.request(b"version\r\nversion\r\n", DEFAULT * 2) == DEFAULT * 2


def test_a_real_memcached_probed_gives_its_own_version(memcached, fake, router):
    m = memcached()
    with m.client() as c:
        own = c.call(b"version\r\n")                        # read from memcached directly
    r = router(local_route(m), extra=["-H", "100ms"])
    assert becomes(r.port, own) == own
    # with a second backend: the lowest of the two, whichever it is
    f = fake()
    f.version = b"1.4.5"
    r2 = router(local_route(m, f), extra=["-H", "100ms"])
    assert becomes(r2.port, b"VERSION 1.4.5\r\n") == b"VERSION 1.4.5\r\n"
    f.version = b"99.0.0"
    # memcached's own version, which only its probe can have told the router
    assert becomes(r2.port, own) == own


def test_the_version_follows_the_backend(fake, router):
    f = fake()
    f.version = b"1.5.22"
    r = router(local_route(f), extra=["-H", "100ms"])
    assert becomes(r.port, b"VERSION 1.5.22\r\n") == b"VERSION 1.5.22\r\n"
    f.version = b"1.6.21"                                    # upgraded in place
    assert becomes(r.port, b"VERSION 1.6.21\r\n") == b"VERSION 1.6.21\r\n"


@pytest.mark.parametrize("hostile", [
    b"1.6.18 mcrouter/0.1.0", b"1.4.5 extra", b"1.6", b"1.6.18.1", b"x.y.z", b"1.4.5-rc1",
    b"v1.4.5", b"12345.1.1", b"1.4.5\x00", b"\xff\xfe", b"",
])
def test_a_version_that_is_not_strict_never_reaches_a_client(fake, router, hostile):
    f = fake()
    f.version = b"1.4.5"
    r = router(local_route(f), extra=["-H", "100ms"])
    assert becomes(r.port, b"VERSION 1.4.5\r\n") == b"VERSION 1.4.5\r\n"
    f.version = hostile
    # the hostile version makes the backend's version unknown again: back to 1.6.18
    assert becomes(r.port, DEFAULT) == DEFAULT
    seen = {version_of(r.port) for _ in range(5)}
    assert seen == {DEFAULT}
