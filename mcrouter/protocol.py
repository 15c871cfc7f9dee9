"""Wire constants for the Python layer: command ids, reply kinds, the router's own replies.

Command ids, reply kinds and statuses are defined once, as a ``cpdef enum``
in ``_parser.pxd`` (the parser and the other Cython modules use them as C
constants); this module re-exports them.  The router's own replies are
defined here only: the Cython modules that send one (``_ring``,
``_routing``) or count one (``_metrics``) import it from here at load.
``tests/unit/test_parser.py`` fails if a copy appears anywhere else.
"""
from __future__ import annotations

from mcrouter._parser import (  # noqa: F401 (re-exported)
    CMD_ADD, CMD_ADMIN, CMD_APPEND, CMD_CAS, CMD_DECR, CMD_DELETE, CMD_FLUSH_ALL, CMD_GAT,
    CMD_GATS, CMD_GET, CMD_GETS, CMD_INCR, CMD_LIMIT, CMD_LOCAL, CMD_MA, CMD_MD, CMD_ME,
    CMD_MG, CMD_MN, CMD_MS, CMD_PREPEND, CMD_QUIT, CMD_REPLACE, CMD_SET, CMD_STATS,
    CMD_TOUCH, CMD_VERBOSITY, CMD_VERSION, RK_GET, RK_LINE, RK_META, RK_NONE, RK_QUIET,
    RK_STATS, ST_ERROR, ST_FAIL, ST_OK,
)

MEMCACHED_PROTOCOL_LEVEL = "1.6.18"     # the memcached whose replies the router reproduces

COMMAND_IDS: dict[str, int] = {
    "get": CMD_GET, "gets": CMD_GETS, "gat": CMD_GAT, "gats": CMD_GATS,
    "set": CMD_SET, "add": CMD_ADD, "replace": CMD_REPLACE, "append": CMD_APPEND,
    "prepend": CMD_PREPEND, "cas": CMD_CAS, "delete": CMD_DELETE, "incr": CMD_INCR,
    "decr": CMD_DECR, "touch": CMD_TOUCH, "flush_all": CMD_FLUSH_ALL,
    "version": CMD_VERSION, "verbosity": CMD_VERBOSITY, "stats": CMD_STATS,
    "quit": CMD_QUIT, "mg": CMD_MG, "ms": CMD_MS, "md": CMD_MD, "ma": CMD_MA,
    "mn": CMD_MN, "me": CMD_ME,
}
COMMAND_NAMES: dict[int, str] = {**{v: k for k, v in COMMAND_IDS.items()}, CMD_ADMIN: "admin"}

# A meta command with no policy of its own follows the policy of its text twin.
META_TWIN: dict[str, str] = {"mg": "get", "ms": "set", "md": "delete", "ma": "incr"}

# Replies the router makes itself.
NO_HEALTHY_UPSTREAM = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
UPSTREAM_TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
UPSTREAM_ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
UPSTREAM_QUEUE_FULL = b"SERVER_ERROR mcrouter: upstream queue full\r\n"
REPLY_TOO_LARGE = b"SERVER_ERROR mcrouter: reply too large\r\n"
NOT_HANDLED_LOCALLY = b"SERVER_ERROR mcrouter: command not handled locally\r\n"
NOT_SUPPORTED = b"SERVER_ERROR mcrouter: command not supported\r\n"
SHUTTING_DOWN = b"SERVER_ERROR mcrouter: shutting down\r\n"
ERROR_ROUTE = b"SERVER_ERROR mcrouter: error route\r\n"
UNKNOWN_SERVICE_KEY = b"SERVER_ERROR mcrouter: unknown __mcrouter__ key\r\n"


def router_error(text: str) -> bytes:
    """The router's own error reply with an operator-chosen text (ErrorRoute)."""
    return f"SERVER_ERROR mcrouter: {text}\r\n".encode()


# NullRoute's reply to each command (and AllAsyncRoute's, which answers at
# once): what memcached says when nothing was found or stored.
NULL_REPLIES: dict[int, tuple[bytes, int]] = {
    **{c: (b"END\r\n", ST_FAIL) for c in (CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS, CMD_STATS)},
    **{c: (b"NOT_STORED\r\n", ST_FAIL) for c in (CMD_SET, CMD_ADD, CMD_REPLACE, CMD_APPEND,
                                                 CMD_PREPEND, CMD_CAS)},
    **{c: (b"NOT_FOUND\r\n", ST_FAIL) for c in (CMD_DELETE, CMD_INCR, CMD_DECR, CMD_TOUCH)},
    CMD_FLUSH_ALL: (b"OK\r\n", ST_OK), CMD_VERBOSITY: (b"OK\r\n", ST_OK),
    CMD_MG: (b"EN\r\n", ST_FAIL), CMD_ME: (b"EN\r\n", ST_FAIL), CMD_MS: (b"NS\r\n", ST_FAIL),
    CMD_MD: (b"NF\r\n", ST_FAIL), CMD_MA: (b"NF\r\n", ST_FAIL), CMD_MN: (b"MN\r\n", ST_OK),
}
