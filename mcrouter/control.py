"""The control channel between the master and one worker (or the sidecar).

One unix socketpair per worker, made before the fork.  Messages are small
JSON objects framed by a 4-byte big-endian length, in both directions:

  master → worker  {"config": <text of router.yaml>, "path": ..., "generation": n,
                    "members": {pool: [[host, port, weight], ...]}}   (DNS pools)
  sidecar → master {"members": {pool: [...]}, "addresses": {"host:port": [family, ip]}}
  worker → master  {"ready": n, "holds": n}   booted on generation n, listening
                   {"applied": n, "holds": h}  now routing new requests with generation n;
                                               still holding hosts of generation h and later
                   {"holds": h}     the oldest generation whose hosts it holds moved to h
                                    (the master frees the slots no generation held names)
                   {"rejected": n, "error": "<one line>"}

Both ends are non-blocking and bounded: a frame may be at most
``MAX_FRAME`` bytes and at most ``MAX_OUTBOX`` bytes may wait unsent.  A
peer that stops reading makes ``send`` return False; the master then treats
the worker as wedged.  EOF means the peer is gone: a worker exits when its
master is, the master learns of a dead worker from SIGCHLD anyway.
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAX_FRAME = 8 << 20             # a config file is refused above half of this
MAX_OUTBOX = 3 * MAX_FRAME
_LEN = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other end closed the channel or sent something that is not a frame."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()

    @classmethod
    def pair(cls) -> tuple["Channel", "Channel"]:
        """(master end, worker end)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        """Queue ``msg`` and write what the socket takes now; False when the
        peer has left too much unread (the message is dropped)."""
        data = json.dumps(msg, separators=(",", ":")).encode()
        if len(data) > MAX_FRAME or len(self.outbox) + len(data) > MAX_OUTBOX:
            return False
        self.outbox += _LEN.pack(len(data)) + data
        self.flush()
        return True

    def flush(self) -> None:
        """Write queued bytes; call again when the socket is writable."""
        if not self.outbox:
            return
        try:
            sent = self.sock.send(self.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise ChannelClosed(str(e)) from None
        del self.outbox[:sent]

    def receive(self) -> list[dict[str, Any]]:
        """Every complete message readable now; ChannelClosed on EOF or garbage."""
        while True:
            try:
                data = self.sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise ChannelClosed(str(e)) from None
            if not data:
                raise ChannelClosed("closed by peer")
            self.inbox += data
            if len(self.inbox) > MAX_FRAME + _LEN.size:
                break           # parse what is complete before reading more
        out = []
        while len(self.inbox) >= _LEN.size:
            (n,) = _LEN.unpack_from(self.inbox)
            if n > MAX_FRAME:
                raise ChannelClosed(f"frame of {n} bytes")
            if len(self.inbox) < _LEN.size + n:
                break
            try:
                out.append(json.loads(self.inbox[_LEN.size:_LEN.size + n]))
            except ValueError:
                raise ChannelClosed("unreadable frame") from None
            del self.inbox[:_LEN.size + n]
        return out

    def close(self) -> None:
        self.sock.close()
