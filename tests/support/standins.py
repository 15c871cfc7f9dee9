"""Stand-in destinations for the multi-key get's split and merge
(tests/unit/test_routing.py, test_multiget_merge.py): each answers a
sub-request as memcached would, from a table of what it holds, so every
merge case can be set up exactly and its reply predicted byte for byte."""
from __future__ import annotations

from mcrouter._parser import Owner as OwnerBase, Request
from mcrouter.protocol import ST_ERROR, ST_FAIL, ST_OK


class Owner(OwnerBase):
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, int]] = []

    def on_reply(self, req: Request) -> None:
        self.replies.append((req.reply, req.status))


class Holder:
    """A destination holding ``items`` {key: (flags, data, cas)}; or failing."""

    def __init__(self, items: dict[bytes, tuple[int, bytes, int]], fail: bytes = b"",
                 later: bool = False) -> None:
        self.items = items
        self.fail = fail
        self.later = later
        self.asked: list[bytes] = []
        self.pending: list[Request] = []

    def dispatch(self, req: Request) -> None:
        self.asked.append(req.wire)
        if self.later:
            self.pending.append(req)
        else:
            self.answer(req)

    def answer(self, req: Request) -> None:
        if self.fail:
            req.finish(self.fail, ST_ERROR)
            return
        gets = req.wire.startswith(b"gets")
        keys = req.keys if req.keys is not None else [req.key]
        body = b""
        for k in keys:                       # memcached answers in the order asked
            if k in self.items:
                flags, data, cas = self.items[k]
                cas_part = b" %d" % cas if gets else b""
                body += b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(data), cas_part, data)
        req.finish(body + b"END\r\n", ST_OK if body else ST_FAIL)


def v(key: bytes, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    c = b" %d" % cas if cas is not None else b""
    return b"VALUE %s %d %d%s\r\n%s\r\n" % (key, flags, len(data), c, data)
