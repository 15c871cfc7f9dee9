"""mcrouter.client's encoding and decoding: the exact bytes each call sends,
and what each reply becomes (no server needed)."""
from __future__ import annotations

import pytest

from mcrouter._ring import Ring
from mcrouter.client import (Client, Ma, Md, Me, MemcacheClientError, MemcacheIllegalInputError,
                             MemcacheServerError, MemcacheUnknownCommandError, Mg, Mn, Ms,
                             PickleSerde, Placement)
from mcrouter.client.codec import line_error, parse_stats, parse_values
from mcrouter.client.meta import parse_me, parse_meta
from mcrouter.config import ConfigError, parse_config
from mcrouter.protocol import CMD_MA, CMD_MG, CMD_MS, ST_OK
from mcrouter.routes import pool_hasher
from support import python_apart


def wire(plan) -> bytes:
    return b"".join(req.wire for _, req in plan.reqs)


@pytest.fixture
def c() -> Client:
    return Client(["127.0.0.1:1"], key_prefix="p:")       # never connects: plans only


def test_text_requests_exact_bytes(c):
    assert wire(c.plan_get("k")) == b"get p:k\r\n"
    assert wire(c.plan_gets(b"k")) == b"gets p:k\r\n"
    assert wire(c.plan_gat("k", 30)) == b"gat 30 p:k\r\n"
    assert wire(c.plan_gats("k", 0)) == b"gats 0 p:k\r\n"
    assert wire(c.plan_store("set", "k", b"vv", 10, None)) == b"set p:k 0 10 2\r\nvv\r\n"
    assert wire(c.plan_store("set", "k", "é", 0, True, flags=7)) == \
        b"set p:k 7 0 2 noreply\r\n\xc3\xa9\r\nmn\r\n"
    for name in ("add", "replace", "append", "prepend"):
        assert wire(c.plan_store(name, "k", 12, 0, False)) == b"%s p:k 0 0 2\r\n12\r\n" % name.encode()
    assert wire(c.plan_store("cas", "k", b"x", 0, True, cas=b"99")) == b"cas p:k 0 0 1 99\r\nx\r\n"
    assert wire(c.plan_delete("k", None)) == b"delete p:k\r\n"
    assert wire(c.plan_delete("k", True)) == b"delete p:k noreply\r\nmn\r\n"
    from mcrouter.protocol import CMD_DECR, CMD_INCR
    assert wire(c.plan_arith(CMD_INCR, "k", 2**64 - 1, False)) == b"incr p:k 18446744073709551615\r\n"
    assert wire(c.plan_arith(CMD_DECR, "k", 3, True)) == b"decr p:k 3 noreply\r\nmn\r\n"
    assert wire(c.plan_touch("k", 5, None)) == b"touch p:k 5\r\n"
    assert wire(c.plan_flush_all(0, None, None)) == b"flush_all 0\r\n"
    assert wire(c.plan_version(None)) == b"version\r\n"
    assert wire(c.plan_stats(("slabs",), None)) == b"stats slabs\r\n"
    assert wire(c.plan_stats((), None)) == b"stats\r\n"


def test_get_many_one_line_per_server_chunked_and_deduplicated(c):
    plan = c.plan_get_many(["a", "b", "a", b"c"])
    assert wire(plan) == b"get p:a p:b p:c\r\n"
    big = c.plan_get_many([f"k{i}" for i in range(2500)])
    assert [len(req.keys) for _, req in big.reqs] == [1000, 1000, 500]
    assert big.reqs[2][1].wire == b"get " + b" ".join(b"p:k%d" % i for i in range(2000, 2500)) + b"\r\n"


def test_set_many_pipelines_one_set_per_key(c):
    plan = c.plan_set_many({"a": b"1", "b": "22"}, 3, None)
    assert wire(plan) == b"set p:a 0 3 1\r\n1\r\nset p:b 0 3 2\r\n22\r\n"


@pytest.mark.parametrize("key", ["", "a b", "a\r\nb", "tab\tkey", "nul\x00", "x" * 249, b"\x7f"])
def test_keys_the_text_protocol_cannot_carry_are_refused(c, key):
    with pytest.raises(MemcacheIllegalInputError):
        c.plan_get(key)          # "p:" + 249 bytes is 251


def test_bad_numbers_are_refused(c):
    with pytest.raises(MemcacheIllegalInputError):
        c.plan_store("set", "k", b"v", -1, None)
    with pytest.raises(MemcacheIllegalInputError):
        c.plan_store("set", "k", b"v", 0, None, flags=2**32)
    from mcrouter.protocol import CMD_INCR
    with pytest.raises(MemcacheIllegalInputError):
        c.plan_arith(CMD_INCR, "k", 2**64, False)
    with pytest.raises(MemcacheIllegalInputError):
        c.plan_store("set", "k", object(), 0, None)


@pytest.mark.parametrize("option,value,words", [
    ("timeout", 0, "timeout=0: give seconds above 0 and at most 31536000"),
    ("timeout", -1.0, "timeout=-1.0: give seconds above 0"),
    ("timeout", float("nan"), "timeout=nan: give seconds above 0"),
    ("timeout", 1e9, "timeout=1000000000.0: give seconds above 0 and at most 31536000"),
    ("connect_timeout", "1", "connect_timeout='1': give seconds"),
    ("retry_interval", True, "retry_interval=True: give seconds"),
    ("backoff_initial", float("inf"), "backoff_initial=inf: give seconds"),
    ("tko", 0, "tko 0 is not an integer from 1 to 1000000"),
    ("max_pool_size", 0, "max_pool_size 0 is not an integer from 1 to 10000"),
    ("max_pool_size", 2.5, "max_pool_size 2.5 is not an integer"),
])
def test_client_options_are_checked(option, value, words):
    """A timeout of 0, NaN, a string or 30 years, a pool of 0:
    each refused when the client is made, in one line naming it."""
    with pytest.raises(MemcacheIllegalInputError) as e:
        Client(["127.0.0.1:11211"], **{option: value})
    assert str(e.value).startswith(words)


def test_meta_requests_every_flag():
    def w(m, prefix=b""):
        return m.build(prefix)[1].wire
    assert w(Mg("k")) == b"mg k v\r\n"
    assert w(Mg("k", value=False, cas=True, client_flags=True, ttl=True, size=True,
                last_access=True, hit_before=True, return_key=True, no_bump=True, touch=30,
                vivify=60, recache=10, opaque="op1")) == \
        b"mg k Oop1 c f t s l h k u T30 N60 R10\r\n"
    assert w(Mg("k", quiet=True)) == b"mg k v q\r\nmn\r\n"
    assert w(Mg(b"\x00bin key", base64=True)) == b"mg AGJpbiBrZXk= b v\r\n"
    assert w(Ms("k", b"data", ttl=-1, client_flags=5, cas=77, mode="append", invalidate=True,
                return_cas=True, return_key=True, return_size=True, vivify=9, opaque="o",
                quiet=True)) == \
        b"ms k 4 Oo T-1 F5 C77 MA I c k s N9 q\r\ndata\r\nmn\r\n"
    for mode, letter in (("set", b"S"), ("add", b"E"), ("replace", b"R"), ("prepend", b"P")):
        assert w(Ms("k", b"", mode=mode)) == b"ms k 0 M%s\r\n\r\n" % letter
    assert w(Md("k", cas=3, invalidate=True, ttl=30, return_key=True, quiet=True)) == \
        b"md k C3 I T30 k q\r\nmn\r\n"
    assert w(Ma("k")) == b"ma k v\r\n"
    assert w(Ma("k", mode="decr", delta=5, initial=10, vivify=0, ttl=60, cas=4,
                return_value=False, return_ttl=True, return_cas=True, return_key=True)) == \
        b"ma k MD D5 J10 N0 T60 C4 t c k\r\n"
    assert w(Mn()) == b"mn\r\n"
    assert w(Me("k")) == b"me k\r\n"
    assert w(Me(b"k", base64=True)) == b"me aw== b\r\n"
    assert w(Mg("k", extra=["E5", "P/x"])) == b"mg k E5 P/x v\r\n"
    assert w(Mg("k"), b"pre:") == b"mg pre:k v\r\n"
    # base64: placed by the raw key (as the router decodes it), sent encoded
    assert Mg(b"\xff", base64=True).build(b"p")[0] == b"p\xff"


@pytest.mark.parametrize("bad", [Mg("k", opaque="x" * 32), Mg("k", opaque="a b"),
                                 Mg("k", touch=2**31), Ms("k", b"v", mode="upsert"),
                                 Ma("k", mode="mul"), Ms("k", "text"),  # type: ignore[arg-type]
                                 Mg("k", extra=["two words"]), Mg(b"x" * 190, base64=True)])
def test_meta_inputs_refused(bad):
    with pytest.raises(MemcacheIllegalInputError):
        bad.build(b"")


def test_meta_replies_typed():
    r = parse_meta(CMD_MG, b"VA 3 c15 t30 f7 s3 l2 h1 kfoo O9 X W Z\r\nabc\r\n", False, "s")
    assert (r.status, r.value, r.cas, r.ttl, r.client_flags, r.size, r.last_access) == \
        ("VA", b"abc", 15, 30, 7, 3, 2)
    assert (r.hit_before, r.key, r.opaque, r.stale, r.won, r.win_sent, r.ok) == \
        (True, b"foo", "9", True, True, True, True)
    assert parse_meta(CMD_MG, b"EN\r\n", False, "s").miss
    miss = parse_meta(CMD_MG, b"", True, "s")
    assert (miss.status, miss.quiet) == ("EN", True)
    assert parse_meta(CMD_MS, b"", True, "s").status == "HD"
    assert parse_meta(CMD_MS, b"HD kZm9vYmFy b\r\n", False, "s").key == b"foobar"
    assert parse_meta(CMD_MA, b"VA 2 t-1 c8\r\n10\r\n", False, "s").number == 10
    assert parse_meta(CMD_MS, b"NS O7\r\n", False, "s").opaque == "7"
    with pytest.raises(MemcacheClientError) as e:
        parse_meta(CMD_MG, b"CLIENT_ERROR bad token in command line format\r\n", False, "h:1")
    assert (e.value.text, e.value.server) == ("bad token in command line format", "h:1")
    d = parse_me(b"ME k exp=-1 la=1 cas=11 fetch=yes cls=1 size=68\r\n", "s")
    assert d is not None and (d.key, d.fields["cas"], d.fields["fetch"]) == (b"k", "11", "yes")
    assert parse_me(b"EN\r\n", "s") is None


def test_text_replies():
    reply = b"VALUE a 5 3 9\r\nabc\r\nVALUE b 0 0 10\r\n\r\nEND\r\n"
    assert parse_values(reply, "s") == [(b"a", 5, b"abc", b"9"), (b"b", 0, b"", b"10")]
    assert parse_values(b"VALUE a 1 1\r\nx\r\nEND\r\n", "s") == [(b"a", 1, b"x", None)]
    with pytest.raises(MemcacheServerError) as e:
        parse_values(b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n", "s")
    assert e.value.text == "out of memory"
    assert isinstance(line_error(b"ERROR\r\n", "s"), MemcacheUnknownCommandError)
    assert line_error(b"STORED\r\n", "s") is None
    # pymemcache's conversions: int by default, its named types, else the bytes
    assert parse_stats(b"STAT pid 12\r\nSTAT version 1.6.18\r\nSTAT rusage_user 0.5\r\n"
                       b"STAT rusage_system 1:25\r\nSTAT umask 700\r\nSTAT cas_enabled yes\r\n"
                       b"STAT hash_is_expanding 0\r\nSTAT auth_enabled_sasl yes\r\n"
                       b"STAT evictions on\r\nSTAT empty\r\nSTAT inter 10.0.0.1\r\n"
                       b"ITEM k [5 b; 0 s]\r\nEND\r\n") == \
        {b"pid": 12, b"version": b"1.6.18", b"rusage_user": 0.5, b"rusage_system": 1.25,
         b"umask": 0o700, b"cas_enabled": b"yes", b"hash_is_expanding": False,
         b"auth_enabled_sasl": True, b"evictions": b"on", b"empty": b"", b"inter": b"10.0.0.1",
         b"k": b"[5 b; 0 s]"}


def test_replies_through_the_ring_decode_per_request(c):
    """The Ring (the router's upstream queue) cuts each reply for its request;
    done() makes the call's result."""
    plans = [c.plan_get("a"), c.plan_store("add", "b", b"x", 0, None), c.plan_gets("z")]
    ring = Ring()

    class Sink:
        def send(self, data: bytes) -> int:
            return len(data)
    from mcrouter._parser import Owner

    class Quiet(Owner):
        def on_reply(self, req):
            pass
    owner = Quiet()
    for p in plans:
        for _, req in p.reqs:
            req.owner = owner
            assert ring.push(req, 0.0)
    ring.write_to(Sink())
    stream = b"VALUE p:a 3 2\r\nhi\r\nEND\r\nNOT_STORED\r\nEND\r\n"
    for i in range(len(stream)):                 # a byte at a time: framing is the Ring's
        assert ring.feed(stream[i:i + 1]) == 0
    assert [p.done([None]) for p in plans] == [b"hi", False, (None, None)]
    assert plans[0].reqs[0][1].status == ST_OK


def test_pickle_serde_matches_pymemcache_flags():
    s = PickleSerde()
    assert s.serialize("k", b"b") == (b"b", 0)
    assert s.serialize("k", "t") == (b"t", 16)
    assert s.serialize("k", 12) == (b"12", 2)
    data, flags = s.serialize("k", {"a": 1})
    assert flags == 1 and s.deserialize("k", data, flags) == {"a": 1}
    assert s.deserialize("k", b"12", 2) == 12 and s.deserialize("k", b"t", 16) == "t"


def test_placement_is_the_routers():
    text = ("pools:\n  main:\n    servers: [10.0.0.1:11211, 10.0.0.2:11212, 10.0.0.3:11213]\n"
            "    weights: [1, 2, 3]\n"
            "    hash: {function: crc32, distribution: rendezvous, salt: x, hash_tags: '{}'}\n"
            "route: PoolRoute|main\n")
    router = pool_hasher(parse_config(text).pools["main"])
    client = Client(["10.0.0.1:11211", ("10.0.0.2", 11212), "10.0.0.3:11213"], weights=[1, 2, 3],
                    hash={"function": "crc32", "distribution": "rendezvous", "salt": "x",
                          "hash_tags": "{}"})
    keys = [b"k%d{t%d}" % (i, i % 50) for i in range(3000)]
    assert [client.slot(k) for k in keys] == [router.index(k) for k in keys]


@pytest.mark.parametrize("options, message", [
    ({"hash": {"function": "sha1"}}, "unknown hash function 'sha1'"),
    ({"hash": {"distribution": "jump"}, "weights": [1, 2]}, "jump hashing cannot weigh servers"),
    ({"weights": [1]}, "has 2 servers but 1 weights"),
    ({"hash": {"hash_tags": "{"}}, "hash_tags must be two characters"),
    ({"on_down": "rehash", "hash": {"distribution": "jump"}}, "jump hashing has no next host"),
])
def test_placement_errors_are_the_routers_one_line(options, message):
    with pytest.raises(ConfigError) as e:
        Placement.from_values(["h:1", "h:2"], **options)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("Client(servers, hash=...): ")


def test_fast_parse_get_into_matches_parse_values():
    from mcrouter.client._fast import parse_get_into, parse_one
    reply = b"VALUE a 5 3 9\r\nabc\r\nVALUE b 0 0 10\r\n\r\nEND\r\n"
    out: dict = {}
    assert parse_get_into(reply, {b"a": "a"}, out, None, True) == -1
    assert out == {"a": (b"abc", b"9"), b"b": (b"", b"10")}
    out = {}
    got = parse_get_into(reply, {}, out, lambda k, d, f: (k, d, f), False)
    assert got == -1 and out == {b"a": (b"a", b"abc", 5), b"b": (b"b", b"", 0)}
    err = b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n"
    out = {}
    assert parse_get_into(err, {}, out, None, False) == 16 and out == {b"a": b"x"}
    assert parse_get_into(b"CLIENT_ERROR bad\r\n", {}, {}, None, False) == 0
    assert parse_one(b"END\r\n") is None
    assert parse_one(b"VALUE k 7 2 123\r\nhi\r\nEND\r\n") == (7, b"hi", b"123")
    assert parse_one(b"VALUE k 4294967295 2\r\nhi\r\nEND\r\n") == (4294967295, b"hi", None)
    assert parse_one(b"VALUE k 0 1\r\nx\r\nSERVER_ERROR oom\r\n") == 16
    assert parse_one(b"SERVER_ERROR oom\r\n") == 0


def test_fast_group_keys_checks_and_places_as_the_codec():
    from mcrouter._hash import Hasher
    from mcrouter.client._fast import group_keys
    from mcrouter.client.codec import key_bytes
    h = Hasher(["a:1", "b:2", "c:3"])
    keys = ["k%d" % i for i in range(50)] + [b"k1", "k1"]
    given, groups = group_keys(keys, b"p:", h, 3, None, key_bytes)
    assert list(given) == [b"p:k%d" % i for i in range(50)]
    assert given[b"p:k1"] == "k1"                   # the first occurrence is kept
    assert sorted(k for g in groups for k in g) == sorted(given)
    assert all(h.index(k) == i for i, g in enumerate(groups) for k in g)
    assert group_keys([b"x"], b"", None, 1, None, key_bytes) == ({b"x": b"x"}, [[b"x"]])
    assert group_keys(["x", "y"], b"", h, 3, lambda k: 2, key_bytes)[1] == [[], [], [b"x", b"y"]]
    for bad in ("", "a b", "a\x00", "k" * 251, b"\x7f"):
        with pytest.raises(MemcacheIllegalInputError):
            group_keys(["ok", bad], b"", None, 1, None, key_bytes)
    with pytest.raises(MemcacheIllegalInputError):
        group_keys(["k" * 249], b"pp", None, 1, None, key_bytes)


def test_fast_group_keys_holds_the_keys_it_has_yet_to_place():
    """group_keys places new keys 8 at a time; those waiting were held only
    by ``given``.  Code of the caller's runs in between (a generator of
    keys), and ``given`` is within its reach once a value in it is tracked
    by the gc (a memoryview key): clearing it freed the waiting keys, and
    the groups held freed memory (other objects' bytes)."""
    code = """if True:
        import gc
        from mcrouter._hash import Hasher
        from mcrouter.client._fast import group_keys
        from mcrouter.client.codec import key_bytes
        h = Hasher(["a:1", "b:2", "c:3"], None, "md5")
        hold = []
        def keys():
            yield memoryview(b"m0")
            for i in range(3):
                yield b"key%d" % i
            for o in gc.get_objects():
                if type(o) is dict and b"p:m0" in o:
                    o.clear()
            hold.extend(bytes([65 + i % 26]) * 7 for i in range(10000))
        given, groups = group_keys(keys(), b"p:", h, 3, None, key_bytes)
        ks = [b"p:m0", b"p:key0", b"p:key1", b"p:key2"]
        print(given, groups == [[k for k in ks if h.index(k) == i] for i in range(3)])
    """
    assert python_apart(code) == (0, "{} True\n")


def test_fast_group_keys_size_hint_runs_nothing_of_the_callers():
    """The ``given`` dict is presized from a length hint: PyObject_LengthHint
    called the keys' __len__/__length_hint__, so an iterable whose hint was
    wrong (negative, huge, not an int, raising) made get_many raise where
    iterating it works.  Only the builtin collections' C lengths are used."""
    from mcrouter._hash import Hasher
    from mcrouter.client._fast import group_keys
    from mcrouter.client.codec import key_bytes
    h = Hasher(["a:1", "b:2", "c:3"], None, "md5")
    calls = []

    class Keys:
        def __init__(self, hint):
            self.hint = hint

        def __iter__(self):
            return iter([b"a", b"b", b"a"])

        def __len__(self):
            calls.append("len")
            return self.hint

        def __length_hint__(self):
            calls.append("hint")
            if isinstance(self.hint, Exception):
                raise self.hint
            return self.hint

    want = ({b"a": b"a", b"b": b"b"}, [[k for k in (b"a", b"b") if h.index(k) == i]
                                       for i in range(3)])
    for hint in (-1, 2 ** 70, "x", RuntimeError("hint")):
        keys = Keys(hint)
        assert group_keys(keys, b"", h, 3, None, key_bytes) == want
    assert calls == []
    assert group_keys({b"a": 1, b"b": 2}, b"", h, 3, None, key_bytes) == want
    assert group_keys((b"a", b"b", b"a"), b"", h, 3, None, key_bytes) == want


def test_fast_group_keys_refuses_slots_past_its_groups():
    """A hasher of more servers than ``nservers``, or a ``slot`` placing a
    key past them, indexed past the list of groups (the process died)."""
    code = """if True:
        from mcrouter._hash import Hasher
        from mcrouter.client._fast import group_keys
        from mcrouter.client.codec import key_bytes
        h = Hasher(["s%d:1" % i for i in range(8)], None, "md5")
        keys = [b"k%d" % i for i in range(50)]
        for args in ((h, 2, None), (h, 8, lambda k: 8), (h, 8, lambda k: -1), (None, 0, None)):
            try:
                group_keys(keys, b"", args[0], args[1], args[2], key_bytes)
            except (IndexError, ValueError) as e:
                print(type(e).__name__, e)
    """
    assert python_apart(code) == (0, (
        "ValueError group_keys: 2 server slots for a hasher of 8; give one slot per server "
        "of the hasher\n"
        "IndexError group_keys: slot() placed b'k0' at 8, past the 8 servers\n"
        "IndexError group_keys: slot() placed b'k0' at -1, past the 8 servers\n"
        "ValueError group_keys: 0 server slots for a hasher of 1; give one slot per server "
        "of the hasher\n"))
