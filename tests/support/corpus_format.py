"""Reads the corpus files: cases of exact input bytes and expected events."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "unit" / "corpus"
_REPEAT = re.compile(r"\{(.)\*(\d+)\}")


def decode(text: str) -> bytes:
    """Python escapes, plus {c*N} for N copies of the character c."""
    text = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


@dataclass
class Case:
    line: int
    data: bytes
    expect: list[tuple] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"line{self.line}:{self.data[:40]!r}"


def load(name: str) -> list[Case]:
    cases: list[Case] = []
    for no, raw in enumerate((CORPUS / name).read_text().splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("in: "):
            cases.append(Case(no, decode(line[4:])))
            continue
        if not line.startswith("-> "):
            raise ValueError(f"{name}:{no}: expected 'in:' or '->', got {line!r}")
        kind, _, rest = line[3:].partition(" ")
        if kind == "reply":
            cases[-1].expect.append(("reply", decode(rest)))
        elif kind == "close":
            cases[-1].expect.append(("close",))
        elif kind == "forward":
            head, _, wire = rest.partition(" | ")
            wire, _, override = wire.partition(" => ")
            cmd, key = head.split(" ")
            cases[-1].expect.append(("forward", cmd, b"" if key == "-" else decode(key),
                                     decode(wire), decode(override) if override else None))
        elif kind == "reply-kind":
            cases[-1].expect.append(("scan", rest))
        else:
            raise ValueError(f"{name}:{no}: unknown event {kind!r}")
    return cases
