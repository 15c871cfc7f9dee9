"""The request parser frames every numeric field exactly as memcached 1.6.18.

For each case of ``numeric_cases`` the reply memcached gave to the request
(recorded in ``numeric_expected``) says what the parser must do:

* memcached took the header: the parser forwards one request whose wire is
  the line and its data block, so memcached answers it;
* memcached refused a storage header (``CLIENT_ERROR ...`` then the 2-byte
  block ``mn`` ran as a command, answered ``MN``): the parser answers the
  error itself (nothing under ``noreply``) and parses the block as the next
  command line, exactly as memcached did.  Forwarding such a header would
  smuggle the block to the backend as a command (issue 10, defect 1);
* memcached framed the block with a truncated length (``bad data chunk``):
  the parser frames it the same way and forwards it, so memcached judges it;
* for a line with no data block, the reply is memcached's either way: the
  parser forwards it verbatim, or answers memcached's exact error itself.
"""
from __future__ import annotations


import pytest

from mcrouter._parser import RequestParser

from support.numeric_cases import CASES, DATA, Case
from support.numeric_expected import EXPECTED
from support.parser_events import events  # the corpus tests' own rendering

BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
STORAGE = {"set", "add", "replace", "append", "prepend", "cas", "ms"}
MN = b"MN\r\n"
KEYLESS = {"verbosity", "flush_all"}


def quiet(case: Case) -> bool:
    if case.cmd in ("mg", "ms", "md", "ma"):
        return any(tok == b"q" for tok in case.line.split()[2:])
    return case.noreply


def forwarded(case: Case) -> list[tuple]:
    wire = case.request + (b"mn\r\n" if quiet(case) else b"")
    key = b"" if case.cmd in KEYLESS else case.key
    return [("forward", case.cmd, key, wire, None)]


def storage_expectation(case: Case, reply: bytes) -> list[list[tuple]]:
    """The parser events that reproduce memcached's ``reply`` to a storage case."""
    block_as_command = events(RequestParser().feed(DATA))
    if reply.endswith(MN) and reply[:-len(MN)] in (BAD_FORMAT, b""):
        # the header was refused and the block ran as a command (the error
        # line is missing exactly when noreply suppressed it)
        refused = [("reply", BAD_FORMAT)] if reply[:-len(MN)] else []
        return [refused + block_as_command]
    if reply in (BAD_CHUNK + b"ERROR\r\n", b"ERROR\r\n"):
        # taken with length 0: the header and the 2-byte block "mn" go upstream
        # (memcached frames them the same way and answers "bad data chunk"),
        # and the "\r\n" left over is an empty line, answered here
        wire = case.line + DATA[:2] + (b"mn\r\n" if quiet(case) else b"")
        key = b"" if case.cmd in KEYLESS else case.key
        return [[("forward", case.cmd, key, wire, None), ("reply", b"ERROR\r\n")]]
    if case.cmd == "ms" and reply.startswith(b"CLIENT_ERROR ") and reply.count(b"\r\n") == 1:
        # a flag token memcached refuses after it read the size: the block is swallowed,
        # so forwarding the whole request is as good as answering locally
        return [forwarded(case), [("reply", reply)]]
    return [forwarded(case)]


def line_expectation(case: Case, reply: bytes) -> list[list[tuple]]:
    """A line without a data block: forwarded verbatim, or memcached's error answered here."""
    options = [forwarded(case)]
    is_error = reply.startswith((b"CLIENT_ERROR ", b"ERROR\r\n", b"SERVER_ERROR "))
    if is_error and reply.count(b"\r\n") == 1:
        options.append([("reply", reply)])
    if reply == b"" and case.noreply:
        options += [[], [("reply", b"")]]
    return options


def expectation(case: Case) -> list[list[tuple]]:
    reply, _check = EXPECTED[case.id]
    if case.cmd in STORAGE:
        return storage_expectation(case, reply)
    return line_expectation(case, reply)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_numeric_field(case: Case) -> None:
    got = events(RequestParser().feed(case.request))
    options = expectation(case)
    assert got in options, f"memcached answered {EXPECTED[case.id][0]!r}; parser gave {got!r}"


STORAGE_CASES = [c for c in CASES if c.cmd in STORAGE]


@pytest.mark.parametrize("case", STORAGE_CASES, ids=[c.id for c in STORAGE_CASES])
def test_numeric_field_byte_by_byte(case: Case) -> None:
    """Framing does not depend on how the bytes arrive."""
    parser = RequestParser()
    got = []
    for i in range(len(case.request)):
        got += parser.feed(case.request[i:i + 1])
    assert events(got) in expectation(case)


def test_all_storage_cases_as_one_stream() -> None:
    """Back to back on one connection: each case parses as it does alone, so
    none leaves the stream out of step for the next."""
    alone = [events(RequestParser().feed(c.request)) for c in STORAGE_CASES]
    bad = [c.id for c, got in zip(STORAGE_CASES, alone) if got not in expectation(c)]
    assert not bad, f"{len(bad)} cases misframed, e.g. {bad[:5]}"
    data = b"".join(c.request for c in STORAGE_CASES)
    assert events(RequestParser().feed(data)) == [e for got in alone for e in got]


def test_issue_example_smuggles_nothing() -> None:
    """Issue 10's line: the set is refused silently (noreply) and
    ``cache_memlimit 8`` is parsed as the command it is, exactly as it would
    be alone (the router's admin policy refuses it), never as a value."""
    got = events(RequestParser().feed(
        b"set x 0 99999999999999999999 16 noreply\r\ncache_memlimit 8\r\nmn\r\n"))
    assert got == (events(RequestParser().feed(b"cache_memlimit 8\r\n"))
                   + [("forward", "mn", b"", b"mn\r\n", None)])
    assert all(e[1] != "set" for e in got if e[0] == "forward")


def test_size_int_max_minus_2_is_too_large_and_int_max_minus_1_is_refused() -> None:
    """2147483645 passes memcached's header check (then is too large and
    swallowed); 2147483646 is refused and the next line is a command."""
    parser = RequestParser()
    got = events(parser.feed(b"set k 0 0 2147483645\r\nmn\r\n"))
    assert got[-1][0] == "forward" and got[-1][3].startswith(b"delete k noreply\r\n")
    assert got[-1][4] == b"SERVER_ERROR object too large for cache\r\n"
    assert parser.feed(b"mn\r\n") == []                     # still swallowing
    assert events(RequestParser().feed(b"set k 0 0 2147483646\r\nmn\r\n")) == [
        ("reply", BAD_FORMAT), ("forward", "mn", b"", b"mn\r\n", None)]
