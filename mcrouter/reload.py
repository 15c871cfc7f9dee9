"""The master's side of a config reload: read and validate, notice changes.

``--watch-config`` polls the file from the master loop: a change of its
modification time, size or inode (an editor that saves by rename makes a
new inode) is reloaded once the file has kept still for ``SETTLE`` seconds,
so a save written in several steps is read once, complete.  Polling needs
no dependency and sees files replaced under a Kubernetes ConfigMap mount,
where inotify on the file itself does not.
"""
from __future__ import annotations

import os

from mcrouter.config import RouterConfig, parse_config, read_config_text

SETTLE = 0.5           # seconds a changed file must keep still before it is read
POLL = 0.25            # seconds between two looks at the file


def load(path: str) -> tuple[RouterConfig, str]:
    """The validated config and the exact text it came from; ConfigError if
    invalid, or if a certificate or key of its ``tls:`` settings cannot be
    used (each worker reads them again when it applies the config)."""
    from mcrouter.upstream import tls_contexts
    text = read_config_text(path)
    config = parse_config(text, path)
    tls_contexts(config)
    return config, text


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileWatch:
    """Tells the master loop when the file has changed and settled."""

    def __init__(self, path: str, now: float) -> None:
        self.path = path
        self.seen = _signature(path)
        self.changed_at = 0.0         # when a change not yet reloaded was seen
        self.next_look = now

    def due(self, now: float) -> bool:
        """True once per settled change."""
        if now < self.next_look:
            return False
        self.next_look = now + POLL
        sig = _signature(self.path)
        if sig != self.seen:
            self.seen = sig
            self.changed_at = now     # (re)start the settle delay
            return False
        if self.changed_at and now - self.changed_at >= SETTLE:
            self.changed_at = 0.0
            return True
        return False

    def timeout(self, now: float) -> float:
        """How long the master may sleep before the next look."""
        return max(0.0, self.next_look - now)
