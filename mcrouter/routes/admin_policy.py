"""The admin policy: which requests that change or expose a backend may pass.

memcached takes any command from any client.  Behind a router that is a
hole: one client could shrink every backend's memory (``cache_memlimit``),
reset the counters the operators graph (``stats reset``), dump other clients'
keys (``stats cachedump``, ``me``), or stop a backend.  So RootRoute, the one
entry every request passes and a thing rebuilt at every reload, asks
``AdminGate`` first about exactly these requests (the bits of
``ServiceDispatch.gated``, plus ``stats`` subcommands) and lets through only
what the config's ``admin: allow:`` lists (``config.ADMIN_COMMANDS``; by
default ``flush_all`` and ``verbosity``).  Everything else gets
``SERVER_ERROR mcrouter: command not supported``, and no byte of it reaches a
backend.  ``config.ADMIN_NEVER`` are refused whatever the config says: their
replies cannot be framed, so letting them through would hand one client's
reply to another.

Names are read from the request line the way memcached reads it (up to the
first LF, without the CR before it, up to a NUL, split on spaces), so a
command cannot pass disguised as something memcached would not run.
"""
from __future__ import annotations

from typing import Callable

from mcrouter._parser import Request
from mcrouter.config import AdminPolicy
from mcrouter.protocol import CMD_ADMIN, CMD_FLUSH_ALL, CMD_ME, CMD_STATS, CMD_VERBOSITY, NOT_SUPPORTED

_BY_COMMAND = {CMD_FLUSH_ALL: "flush_all", CMD_VERBOSITY: "verbosity", CMD_ME: "me"}
_STATS_SUBCOMMANDS = {b"detail", b"reset", b"cachedump", b"sizes_enable", b"sizes_disable"}
# When memcached answers a line ending in noreply with nothing at all
# (set_noreply_maybe in 1.6.18's proto_text.c, reached only past the token
# count checks before it), by the line's words; refusing such a line must be
# as silent, or the client would read the refusal as its next request's reply.
_HONOURS_NOREPLY: dict[str, Callable[[list[bytes]], bool]] = {
    "flush_all": lambda w: True,                   # the parser checked the counts
    "verbosity": lambda w: True,
    "cache_memlimit": lambda w: len(w) in (2, 3),  # WANT_TOKENS_OR(ntokens, 3, 4)
    "lru": lambda w: len(w) >= 2,                  # WANT_TOKENS_MIN(ntokens, 3)
    "extstore": lambda w: len(w) >= 2,
    # only "slabs automove"; "slabs reassign" answers whatever the line ends with
    "slabs": lambda w: len(w) >= 3 and w[1] == b"automove",
    # not refresh_certs: its error, the usual reply, is sent whatever the noreply
}


def memcached_words(wire: bytes) -> list[bytes]:
    """The tokens memcached reads from a request line."""
    line = wire.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    return [w for w in line.split(b"\0", 1)[0].split(b" ") if w]


def admin_name(req: Request) -> str | None:
    """The name ``admin: allow:`` knows this request by, or None if it is no
    admin request (a plain ``stats``, ``stats items``, ...)."""
    name = _BY_COMMAND.get(req.cmd)
    if name is not None:
        return name
    if req.cmd == CMD_STATS:
        words = memcached_words(req.wire)
        if len(words) > 1 and words[1] in _STATS_SUBCOMMANDS:
            return "stats_" + words[1].decode()
        return None
    if req.cmd == CMD_ADMIN:
        words = memcached_words(req.wire)
        name = words[0].decode("ascii", "replace")
        if name == "lru_crawler" and len(words) > 1 and words[1] in (b"metadump", b"mgdump"):
            return "lru_crawler_metadump"
        return name
    return None


def honours_noreply(name: str, req: Request) -> bool:
    """Would memcached answer this noreply line with nothing?"""
    rule = _HONOURS_NOREPLY.get(name)
    return rule is not None and rule(memcached_words(req.wire))


class AdminGate:
    """One config's admin policy, asked by RootRoute."""

    def __init__(self, policy: AdminPolicy) -> None:
        self.allow = policy.allow

    def gated(self) -> int:
        """The command ids whose every request needs asking (ServiceDispatch.gated):
        CMD_ADMIN always, and each of flush_all, verbosity, me unless allowed.
        ``stats`` is asked in serve_stats, which every ``stats`` passes anyway."""
        bits = 1 << CMD_ADMIN
        for cmd, name in _BY_COMMAND.items():
            if name not in self.allow:
                bits |= 1 << cmd
        return bits

    def refusal(self, req: Request) -> bytes | None:
        """None when ``req`` may pass, else the reply that refuses it."""
        name = admin_name(req)
        if name is None or name in self.allow:
            return None
        if req.quiet and honours_noreply(name, req):
            return b""
        return NOT_SUPPORTED
