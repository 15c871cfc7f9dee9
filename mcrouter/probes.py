"""Active health checks: one ``Probe`` per host, run by the sidecar.

Each host is probed once per router, not once per worker, and the verdict
reaches every worker through the shared HostTable.  A probe is a memcached
round trip (``version`` → ``VERSION ...``) over a kept connection, not a
bare connect: a host that accepts connections but never answers (SIGSTOP, a
wedged process) fails it.  The version a good probe reads goes into the
HostTable too: it is what the router answers to ``version`` itself
(LocalRoute), so clients see the backends' version, the lowest when they
differ.

A host reached over TLS is probed over TLS with the same settings
(certificates, server name): a probe that could not pass the handshake
the data path needs must not call the host up.  The handshake is a step
of the probe, inside its timeout; a failure is logged as the workers log
theirs (``mcrouter.tls``, once per interval per host).

A host is marked down after ``fail`` failed probes in a row and up after
``rise`` good ones; a worker's TKO (down at once) restarts the count, so
only ``rise`` probes after the TKO bring the host back.  Only the probes
mark a host up.
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from mcrouter.config import HealthPolicy, HostAddr
from mcrouter.hosttable import DOWN, UP, HostTable, sockaddr
from mcrouter.loop import EV_IN, EV_OUT, Handler, Loop

# the probes run in the sidecar process, and their lines carry its logger's name
log = logging.getLogger("mcrouter.sidecar")

PROBE = b"version\r\n"
MAX_PROBE_REPLY = 1024


class Probe(Handler):
    """One host's probe: connect if needed, send ``version``, judge the reply."""

    def __init__(self, loop: Loop, table: HostTable, slot: int, addr: HostAddr,
                 policy: HealthPolicy, interval: float, tls_context: Any = None,
                 tls_name: str = "") -> None:
        self.loop = loop
        self.table = table
        self.slot = slot
        self.addr = addr
        self.policy = policy
        self.interval = interval
        self.sock: Any = None
        self.generation = -1           # address generation the socket was made for
        self.buf = b""
        self.token = 0                 # which probe a timeout belongs to
        self.running = False
        self.good = self.bad = 0
        self.seen = table.state(slot)
        self.tls_context = tls_context  # an ssl.SSLContext, or the ConfigError that prevented one
        self.tls_name = tls_name
        self.tls: Any = None            # the session on the socket, once connected

    def begin(self) -> None:
        self.loop.call_later(self.interval, self.begin)
        if self.running:
            return                      # the previous probe has not ended yet
        self.running = True
        self.token += 1
        token = self.token
        self.loop.call_later(self.policy.probe_timeout_ms / 1000.0, lambda: self._expire(token))
        gen = self.table.generation(self.slot)
        if self.sock is not None and gen != self.generation:
            self._close()               # the name moved: probe the new address
        if self.sock is not None:
            self._send()
            return
        found = self.table.address(self.slot)
        if found is None:
            self.end(False, "probe: no address for the host name")
            return
        self.generation = gen
        self.sock = socket.socket(found[0], socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex(sockaddr(found[0], found[1], self.addr.port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.end(False, f"probe: connect: {errno.errorcode.get(err, err)}")
            return
        self.loop.add(self.sock.fileno(), EV_OUT, self)

    def _expire(self, token: int) -> None:
        if self.token == token and self.running:
            self.end(False, f"probe: no reply within {self.policy.probe_timeout_ms} ms")

    def _send(self) -> None:
        self.buf = b""
        try:
            if self.tls is not None:
                if self.tls.send(PROBE) != len(PROBE) or not self.tls.flush():
                    raise OSError("the socket did not take the probe at once")
            else:
                self.sock.send(PROBE)
        except OSError as e:
            self.end(False, f"probe: send: {e.strerror or e}")

    def _start_tls(self) -> bool:
        """TLS on the connected socket; True once the probe may be sent."""
        from mcrouter import tls
        if isinstance(self.tls_context, Exception):
            self.end(False, f"probe: {self.tls_context}")
            return False
        self.tls = tls.TlsSession(self.tls_context, self.sock, "upstream", str(self.addr),
                                  server_hostname=self.tls_name)
        try:
            return self.tls.start()
        except OSError as e:
            self.end(False, f"probe: {e.strerror or e}")
            return False

    def _recv(self) -> bytes | None:
        """What the socket (or the TLS session) has; None when nothing yet."""
        if self.tls is None:
            try:
                return self.sock.recv(MAX_PROBE_REPLY)
            except (BlockingIOError, InterruptedError):
                return None
        buf = bytearray(MAX_PROBE_REPLY)
        try:
            n = self.tls.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None
        return bytes(buf[:n])

    def on_event(self, mask: int) -> None:
        if not self.running:
            self.end(False, "probe: unexpected bytes or close")
            return
        if mask & EV_OUT:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.end(False, f"probe: connect: {errno.errorcode.get(err, err)}")
                return
            self.loop.modify(self.sock.fileno(), EV_IN)
            if self.tls_context is None or self._start_tls():
                self._send()
            return
        handshaking = self.tls is not None and not self.tls.handshake_done
        try:
            data = self._recv()
        except OSError as e:
            self.end(False, f"probe: {'' if handshaking else 'recv: '}{e.strerror or e}")
            return
        if data is None:
            if handshaking and self.tls.handshake_done:
                self._send()
            return
        if not data:
            self.end(False, "probe: connection closed by server")
            return
        if handshaking:
            self.end(False, "probe: bytes before the probe was sent")
            return
        self.buf += data
        if b"\r\n" in self.buf:
            line = self.buf.split(b"\r\n", 1)[0]
            if line.startswith(b"VERSION ") and self.buf.endswith(b"\r\n"):
                self.table.set_version(self.slot, line[8:])     # only a strict x.y.z is kept
                self.end(True, "probe ok")
            else:
                self.end(False, "probe: unexpected reply " + line[:60].decode("ascii", "replace"))
        elif len(self.buf) > MAX_PROBE_REPLY:
            self.end(False, "probe: reply too long")

    def end(self, ok: bool, reason: str) -> None:
        """One verdict: count it, and flip the shared state when the count says so."""
        self.running = False
        if not ok:
            self._close()
        state = self.table.state(self.slot)
        if state != self.seen:          # a worker marked it down (TKO): count afresh
            self.good = self.bad = 0
        if ok:
            self.good, self.bad = self.good + 1, 0
        else:
            self.good, self.bad = 0, self.bad + 1
        if state == DOWN and self.good >= self.policy.rise:
            self._set(UP, f"{self.good} good probes in a row")
        elif state == UP and self.bad >= self.policy.fail:
            self._set(DOWN, f"{self.bad} failed probes in a row, last: {reason}")
        self.seen = self.table.state(self.slot)

    def _set(self, state: int, why: str) -> None:
        if self.table.set_state(self.slot, state, why):
            log.warning("host %s: %s -> %s (%s)", self.addr, "down" if state == UP else "up",
                        "up" if state == UP else "down", why)

    def _close(self) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            if self.tls is not None:
                self.tls.close_notify()
            self.sock.close()
            self.sock = None
            self.tls = None

    def abort(self) -> None:
        self.running = False
        self._close()
