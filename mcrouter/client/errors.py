"""The client's one exception hierarchy.

Every error a call can raise is a ``MemcacheError``; its ``server`` is the
``host:port`` involved ("" when none was) and ``text`` what the server
said, when it said something (``CLIENT_ERROR bad data chunk`` gives
``text == "bad data chunk"``).
"""
from __future__ import annotations

from typing import Any, Mapping


class MemcacheError(Exception):
    """Base of every error mcrouter.client raises."""

    def __init__(self, message: str, *, server: str = "", text: str = "") -> None:
        super().__init__(f"{server}: {message}" if server else message)
        self.server = server
        self.text = text


class MemcacheConnectionError(MemcacheError):
    """No usable connection: refused, reset, closed by the server, TLS failed."""


class MemcacheServerDownError(MemcacheConnectionError):
    """The server is ejected (too many failures in a row) until its retry
    interval has passed: its keys fail fast rather than wait for a timeout."""


class MemcacheTimeoutError(MemcacheError):
    """No reply within the request (or connect) timeout.  The connection is
    kept: the late reply is read and dropped when it comes."""


class MemcacheServerError(MemcacheError):
    """``SERVER_ERROR <text>``: the server could not do it (out of memory,
    object too large for cache)."""


class MemcacheClientError(MemcacheError):
    """``CLIENT_ERROR <text>`` from the server, or a request the client
    refuses to send (a key with a space, a key too long, a bad argument)."""


class MemcacheIllegalInputError(MemcacheClientError):
    """A key or value the protocol cannot carry, refused before sending."""


class MemcacheUnknownCommandError(MemcacheClientError):
    """``ERROR``: the server does not know the command (an old memcached,
    or a router that does not allow it)."""


class MemcacheProtocolError(MemcacheConnectionError):
    """The server sent bytes that answer no request (the connection is
    dropped), or a meta reply framed as one but unreadable (a flag that is no
    letter, a number that is none: its connection is still in step)."""


class MemcachePartialError(MemcacheError):
    """A bulk call that reached some servers and not others: ``result`` is
    what the call returns for the keys that were served (a dict for
    ``get_many``, a list of failed keys for ``set_many``, ...), ``errors``
    the error of each key that was not."""

    def __init__(self, result: Any, errors: Mapping[Any, MemcacheError]) -> None:
        servers = sorted({e.server for e in errors.values()})
        first = next(iter(errors.values()))
        super().__init__(f"{len(errors)} keys failed on {', '.join(servers)}: {first}")
        self.result = result
        self.errors = dict(errors)
