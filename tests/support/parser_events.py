"""The parser's requests rendered as the corpus's expected events (the
parser, fuzz and numeric-limit unit tests compare these)."""
from __future__ import annotations

from mcrouter import protocol

MAX_ITEM = 100          # the corpus's "too large" cases assume this limit


def events(requests: list) -> list[tuple]:
    out = []
    for r in requests:
        if r.cmd == protocol.CMD_QUIT:
            out.append(("close",))
        elif r.cmd == protocol.CMD_LOCAL:
            out.append(("reply", r.reply))
        else:
            out.append(("forward", protocol.COMMAND_NAMES[r.cmd], r.key, r.wire, r.override))
    return out
