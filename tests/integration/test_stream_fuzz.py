"""Stream-level differential fuzz (issue 10): memcached directly vs. the router.

The engine, the known-differences table and the normalisations are in
tests/streamfuzz.py.  Here: one bounded CI run over DefaultRoute and a
2-server PoolRoute with a fixed seed, plus checks that the comparison
itself rejects what it must (a test that cannot fail proves nothing).
Short sessions through TLS: test_tls_upstream.py (a TLS host behind the
router) and test_tls_listener.py (TLS clients, ``Target.tls``, to a tls://
listener, with a plain and with a TLS host).

Bounds: MCROUTER_FUZZ_SECONDS (default 25) and MCROUTER_FUZZ_CASES
(default 20000), whichever comes first; MCROUTER_FUZZ_SEED (default 1).
"""
from __future__ import annotations

import asyncio
import os
import threading

import pytest

import streamfuzz as sf

SECONDS = float(os.environ.get("MCROUTER_FUZZ_SECONDS", "25"))
CASES = int(os.environ.get("MCROUTER_FUZZ_CASES", "20000"))
SEED = int(os.environ.get("MCROUTER_FUZZ_SEED", "1"))


def drain(m) -> None:
    """Read a memcached's stderr so that ``verbosity`` output never fills the pipe."""
    if m.proc.stderr is not None:
        threading.Thread(target=lambda: [None for _ in iter(lambda: m.proc.stderr.read(65536), b"")],
                         daemon=True).start()


@pytest.fixture
def fuzz_setup(memcached, router):
    ms = [memcached("-m", "1024") for _ in range(4)]
    for m in ms:
        drain(m)
    cfgs = sf.router_configs([ms[2].addr, ms[3].addr], ms[1].addr)
    targets = [sf.Target("default", router(cfgs["default"]).port),
               sf.Target("pool", router(cfgs["pool"]).port, local_version=True)]
    return ms, targets


def test_stream_fuzz(fuzz_setup):
    ms, targets = fuzz_setup
    stats = asyncio.run(sf.fuzz(SEED, ms[0].port, targets, [m.port for m in ms[1:]],
                                CASES, SECONDS, concurrency=64))
    rate = stats.cases / max(stats.elapsed, 1e-9)
    print(f"stream fuzz: {stats.cases} cases in {stats.elapsed:.1f}s ({rate:.0f}/s)")
    assert stats.cases >= min(CASES, 200)
    classes: dict[str, sf.Divergence] = {}
    for d in stats.divergences:
        classes.setdefault(sf.divergence_class(d), d)
    if classes:
        pytest.fail(f"{len(stats.divergences)} divergences in {len(classes)} classes "
                    f"(of {stats.cases} cases):\n" + "\n".join(classes) + "\n\n"
                    + "\n\n".join(d.report() for d in list(classes.values())[:6]), pytrace=False)


# --- the comparison itself ---------------------------------------------------

def case(stream: bytes, admin: int = -1) -> sf.Case:
    return sf.Case(0, stream, stream, admin_mn=admin)


def test_comparison_rejects_an_extra_reply():
    c = case(b"get a\r\nmn\r\n")
    ref = sf.Outcome(b"END\r\nMN\r\n", True)
    assert sf.diverges(c, ref, sf.Outcome(b"END\r\nMN\r\n", True), False) is None
    assert sf.diverges(c, ref, sf.Outcome(b"END\r\nEND\r\nMN\r\n", True), False)
    assert sf.diverges(c, ref, sf.Outcome(b"END\r\n", True), False)           # trailing mn lost


def test_comparison_normalises_only_the_listed_fields():
    c = case(b"x")
    ref = sf.Outcome(b"STAT pid 1\r\nVALUE k 0 1 77\r\nx\r\nEND\r\nHD c5 t10 l3 s1\r\nMN\r\n", True)
    same = sf.Outcome(b"STAT pid 2\r\nVALUE k 0 1 99\r\nx\r\nEND\r\nHD c6 t9 l0 s1\r\nMN\r\n", True)
    assert sf.diverges(c, ref, same, False) is None
    for other in (b"STAT pidx 1\r\nVALUE k 0 1 77\r\nx\r\nEND\r\nHD c5 t10 l3 s1\r\nMN\r\n",
                  b"STAT pid 1\r\nVALUE k 1 1 77\r\nx\r\nEND\r\nHD c5 t10 l3 s1\r\nMN\r\n",
                  b"STAT pid 1\r\nVALUE k 0 1 77\r\nx\r\nEND\r\nHD c5 t-1 l3 s1\r\nMN\r\n",
                  b"STAT pid 1\r\nVALUE k 0 1 77\r\nx\r\nEND\r\nHD c5 t10 l3 s2\r\nMN\r\n"):
        assert sf.diverges(c, ref, sf.Outcome(other, True), False), other


def test_comparison_allows_exactly_the_table():
    # 1: admin line refused in place of memcached's reply (MN stands for it in the reference)
    c = case(b"cache_memlimit 8\r\nmn\r\n", admin=0)
    ref = sf.Outcome(b"MN\r\nMN\r\n", True)
    assert sf.diverges(c, ref, sf.Outcome(sf.NOT_SUPPORTED + b"MN\r\n", True), False) is None
    assert sf.diverges(c, ref, sf.Outcome(b"OK\r\nMN\r\n", True), False)
    # ... with noreply: its MN is dropped, and then the router's reply need not end in MN
    n = case(b"get a\r\ncache_memlimit 8 noreply\r\n" + b"x" * 3000 + b"\r\nmn\r\n", admin=1)
    ref = sf.Outcome(b"END\r\nMN\r\n", True)
    assert sf.diverges(n, ref, sf.Outcome(b"END\r\n", True), False) is None
    assert sf.diverges(n, ref, sf.Outcome(b"END\r\nMN\r\n", True), False)
    # 2: binary protocol: closed, nothing written
    b = case(b"\x80\x01\x00\x00mn\r\n")
    assert sf.diverges(b, sf.Outcome(b"\x81", True), sf.Outcome(b"", True), False) is None
    assert sf.diverges(b, sf.Outcome(b"\x81", True), sf.Outcome(b"ERROR\r\n", True), False)
    # 3: version form, only where LocalRoute answers it
    v = case(b"version\r\nmn\r\n")
    ref = sf.Outcome(b"VERSION 1.6.18\r\nMN\r\n", True)
    assert sf.diverges(v, ref, sf.Outcome(b"VERSION 1.6.19\r\nMN\r\n", True), True) is None
    assert sf.diverges(v, ref, sf.Outcome(b"VERSION 1.6.19\r\nMN\r\n", True), False)
    assert sf.diverges(v, ref, sf.Outcome(b"VERSION 1.6.18 mcrouter/0.1.0\r\nMN\r\n", True), True)
    # 4: memcached closed early: the router closes too, a prefix-extension without the MN
    h = case(b"get a\r\nGET / HTTP/1.1\r\nmn\r\n")
    ref = sf.Outcome(b"", True)
    assert sf.diverges(h, ref, sf.Outcome(b"END\r\n", True), False) is None
    assert sf.diverges(h, ref, sf.Outcome(b"END\r\n", False), False)
    assert sf.diverges(h, ref, sf.Outcome(b"END\r\nERROR\r\nMN\r\n", True), False)
    # 5: a line over 2048 bytes: the router closes there, after exactly memcached's
    # replies to the stream before it (the reference ran that cut stream)
    stream = b"get a\r\nverbosity 1" + b" " * 3000 + b"\r\nmn\r\n"
    cut = sf.long_line_cut(stream)
    assert cut == len(b"get a\r\n")
    assert sf.long_line_cut(b"get a\r\nverbosity 1" + b" " * 2030 + b"\r\nmn\r\n") is None
    assert sf.long_line_cut(b"get a" + b" b" * 2000 + b"\r\nmn\r\n") is None     # a multiget may
    assert sf.long_line_cut(b"set a 0 0 3000\r\n" + b"v" * 3000 + b"\r\nmn\r\n") is None
    assert sf.long_line_cut(b"set a 0 0 3000\r\n" + b"v" * 3000 + b"\r\nGET / HTTP/1.1\r\n") is None
    assert sf.long_line_cut(b"set a 0 0 3\r\nabcXX" + b"y" * 3000 + b"\r\nmn\r\n") == 18   # after a block
    ll = case(stream)
    ref = sf.Outcome(b"END\r\n", True)
    assert sf.diverges(ll, ref, sf.Outcome(b"END\r\n", True), False, cut) is None
    assert sf.diverges(ll, ref, sf.Outcome(b"END\r\n", False), False, cut)
    assert sf.diverges(ll, ref, sf.Outcome(b"", True), False, cut)
    assert sf.diverges(ll, ref, sf.Outcome(b"END\r\nOK\r\nMN\r\n", True), False, cut)


def test_cases_are_reproducible():
    for n in (0, 1, 77, 12345):
        assert sf.make_case(SEED, n).stream == sf.make_case(SEED, n).stream
    assert sf.make_case(SEED, 5, 0).stream != sf.make_case(SEED, 5, 1).stream   # fresh keys per retry


def test_reference_is_cut_before_a_long_key_retrieval_even_after_a_data_block():
    """memcached drops the replies it has queued when a retrieval names a key
    over 250 bytes: the reference pauses before one, wherever it starts."""
    long_get = b"gets " + b"k" * 251 + b"\r\n"
    stream = b"set a 0 0 0\r\n\r\n" + long_get + b"append a 0 0 0\r\nXX" + long_get + b"mn\r\n"
    pieces = sf.split_reference(stream)
    assert b"".join(pieces) == stream
    assert [p[:5] for p in pieces[1:]] == [b"gets ", b"gets "]
