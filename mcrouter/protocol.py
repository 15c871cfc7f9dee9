"""Wire constants in one place: command ids, reply kinds, limits, the router's own replies.

The numbers here are mirrored as C enums in ``_parser.pxd``; keep both in step
(``tests/unit/test_parser.py`` checks that they agree).
"""
from __future__ import annotations

# Limits (memcached.h and proto_text.c of memcached 1.6.18).
KEY_MAX_LENGTH = 250
LINE_LIMIT = 2048          # a request line with no \n in this many bytes closes the connection
MEMCACHED_PROTOCOL_LEVEL = "1.6.18"

# Command ids: what the parser tells the routes.
CMD_GET, CMD_GETS, CMD_GAT, CMD_GATS = 1, 2, 3, 4
CMD_SET, CMD_ADD, CMD_REPLACE, CMD_APPEND, CMD_PREPEND, CMD_CAS = 5, 6, 7, 8, 9, 10
CMD_DELETE, CMD_INCR, CMD_DECR, CMD_TOUCH = 11, 12, 13, 14
CMD_FLUSH_ALL, CMD_VERSION, CMD_VERBOSITY, CMD_STATS, CMD_QUIT = 15, 16, 17, 18, 19
CMD_MG, CMD_MS, CMD_MD, CMD_MA, CMD_MN, CMD_ME = 20, 21, 22, 23, 24, 25
CMD_LOCAL = 26             # not a command: a reply the parser made itself (an error)
CMD_ADMIN = 27             # memcached's admin commands (cache_memlimit, slabs, lru, ...), one id:
                           # RootRoute lets through only those the config's admin: section allows
CMD_LIMIT = 28             # every command id is below this: the size of tables by command id

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

# Reply kinds: how the upstream reader finds the end of one reply.
RK_NONE, RK_GET, RK_LINE, RK_STATS, RK_META, RK_QUIET = 0, 1, 2, 3, 4, 5

# Reply status, judged on the first token of the reply (ROUTES.md).
ST_OK, ST_FAIL, ST_ERROR = 0, 1, 2

# Replies the router makes itself.
NO_HEALTHY_UPSTREAM = b"SERVER_ERROR mcrouter: no healthy upstream\r\n"
UPSTREAM_TIMEOUT = b"SERVER_ERROR mcrouter: upstream timeout\r\n"
UPSTREAM_ERROR = b"SERVER_ERROR mcrouter: upstream error\r\n"
UPSTREAM_QUEUE_FULL = b"SERVER_ERROR mcrouter: upstream queue full\r\n"
REPLY_TOO_LARGE = b"SERVER_ERROR mcrouter: reply too large\r\n"       # mirrored in _ring.pyx
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
