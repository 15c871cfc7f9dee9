"""TLS for both sides (issue 14): contexts, a non-blocking session, failure reasons.

Cold code: a plain connection never comes here (its ``tls`` is None and the
compiled seam calls libc on the descriptor).  An encrypted one has a
``TlsSession`` in ``tls``; the seam calls ``recv_into``/``send`` on it as it
would on a socket, and nothing else of the router sees TLS.

Why ``ssl.MemoryBIO`` + ``SSLObject`` and not a non-blocking ``SSLSocket``
(DESIGN: one worker, one level-triggered epoll loop, nothing may stall it):

* The descriptor stays the connection's: it keeps its socket, its place in
  the epoll set and its close path; the session only turns bytes into
  records and back.  ``wrap_socket`` would take the descriptor over
  (detaching the connection's socket object), and an upstream connection
  connects before it knows whether the handshake can start.
* Every byte OpenSSL wants to send is visible: after any call (a handshake
  step, a read that produced a TLS 1.3 ticket or key update, a write) it
  sits in the outgoing BIO, and the session writes it to the descriptor
  then and there.  Whatever the kernel refuses is kept (``want_write``) and
  the connection asks for EPOLLOUT; no "SSLWantWriteError during a read"
  case has to remember which call to retry, and a read never blocks on a
  write or the other way round.
* Decrypted bytes OpenSSL still holds after a read do not make the
  descriptor readable, so level-triggered epoll would never wake us for
  them.  The session reads the descriptor at most once per ``recv_into``,
  then decrypts into the caller's buffer until it is full or OpenSSL needs
  more bytes.  If it stopped because the buffer was full, ``more`` is set
  and the connection reads again on the next loop turn without waiting
  for epoll; otherwise everything complete was delivered and whatever is
  left is part of a record whose rest the kernel will report.
* Memory is bounded by what the connection asks for: one descriptor read
  (at most ``HANDSHAKE_READ`` bytes until the handshake is done, the
  caller's read size after), plus at most one ``WRITE_CHUNK`` of records
  the kernel has not taken yet; a ``send`` while those wait takes nothing
  (BlockingIOError), so a client that never reads holds no more than a
  plain one.  A stalled handshake holds the SSLObject and a record.

The costs: one more copy each way (BIO ↔ bytes), and the record layer in
Python calls; TLS is priced by bench, not hidden.

Errors: a bad certificate or key is a ``TlsConfigError``, one line naming
the file and the setting to fix.  A failed handshake is classified
(``classify``) into a reason, counted in ``mcrouter_tls_handshake_failures``
by side and reason, and logged once per ``LOG_INTERVAL`` per peer with the
setting that fixes it; the connection then closes (client side) or fails
(upstream side) as on any other I/O error.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Callable, cast

from mcrouter import _metrics

log = logging.getLogger("mcrouter.tls")

HANDSHAKE_READ = 17 * 1024      # one TLS record (16 KiB + overhead) per read while shaking hands
WRITE_CHUNK = 64 * 1024         # plaintext turned into records per send
LOG_INTERVAL = 10.0             # at most one failure line per peer (and side) in this many seconds
LOG_PEERS = 1024                # peers remembered for that; the oldest are forgotten first
HANDSHAKE_TIMEOUT = 5.0         # default --tls-handshake-timeout (seconds)

SIDES = ("client", "upstream")
REASONS = ("expired", "unknown_ca", "hostname_mismatch", "no_client_cert",
           "handshake_timeout", "protocol", "other")
assert len(SIDES) * _metrics.NTLS_REASON == _metrics.NTLS
assert len(REASONS) <= _metrics.NTLS_REASON


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; one line for the operator."""


class TlsError(ConnectionError):
    """A handshake that failed (already counted and logged): the connection ends."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"tls handshake failed ({reason}): {detail}")
        self.reason = reason
        self.strerror = f"tls handshake failed ({reason}): {detail}"


# -- contexts ----------------------------------------------------------------

def _readable(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsConfigError(f"{setting} {path}: cannot read it ({e.strerror or e}); "
                             f"give a readable PEM file") from None


def _no_password() -> bytes:
    raise TlsConfigError("encrypted")     # never prompt on a terminal: see _load_chain


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, cert_setting: str,
                key_setting: str) -> None:
    cert_pem = _readable(cert, cert_setting)
    key_pem = _readable(key, key_setting)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TlsConfigError(f"{cert_setting} {cert}: no PEM certificate in it "
                             "(-----BEGIN CERTIFICATE-----); give the certificate in PEM")
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsConfigError(f"{key_setting} {key}: no PEM private key in it "
                             "(-----BEGIN ... PRIVATE KEY-----); give the key in PEM")
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except TlsConfigError:
        raise TlsConfigError(f"{key_setting} {key}: the key is encrypted; give an "
                             "unencrypted key (openssl pkey -in KEY -out KEY.plain)") from None
    except ssl.SSLError as e:
        what = getattr(e, "reason", None) or str(e)
        if what == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"{key_setting} {key} does not match {cert_setting} {cert}; "
                                 "give the key the certificate was issued for") from None
        if b"ENCRYPTED" in key_pem:
            raise TlsConfigError(f"{key_setting} {key}: the key is encrypted; give an "
                                 "unencrypted key (openssl pkey -in KEY -out KEY.plain)") from None
        raise TlsConfigError(f"{cert_setting} {cert} / {key_setting} {key}: not a usable "
                             f"certificate and key ({what}); give PEM files that openssl "
                             "x509/pkey can read") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, setting: str) -> None:
    pem = _readable(ca, setting)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TlsConfigError(f"{setting} {ca}: no PEM certificate in it "
                             "(-----BEGIN CERTIFICATE-----); give the CA certificate(s) in PEM")
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise TlsConfigError(f"{setting} {ca}: not a usable CA certificate "
                             f"({getattr(e, 'reason', None) or e}); give the CA certificate(s) in PEM") from None


def _base(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2      # 1.3 allowed (the maximum is OpenSSL's)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert: str, key: str, client_ca: str | None = None,
                   require_client_cert: bool = True, *, cert_setting: str = "--tls-cert",
                   key_setting: str = "--tls-key",
                   ca_setting: str = "--tls-client-ca") -> ssl.SSLContext:
    """The listener's context: our certificate and key; with ``client_ca``,
    client certificates signed by it are verified, and required unless
    ``require_client_cert`` is False.  TlsConfigError (one line) when a file
    is unreadable or wrong.  An expired certificate loads: the clients
    refuse it, and that is reported at each handshake (reason ``expired``)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, cert, key, cert_setting, key_setting)
    if client_ca:
        _load_ca(ctx, client_ca, ca_setting)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None,
                   verify: bool = True, *, ca_setting: str = "tls.ca",
                   cert_setting: str = "tls.cert",
                   key_setting: str = "tls.key") -> ssl.SSLContext:
    """The context to reach a TLS server (memcached -Z): verify its
    certificate against ``ca`` (the system's CAs without one) and its name,
    unless ``verify`` is False; present ``cert``/``key`` when given (mTLS).
    TlsConfigError (one line) when a file is unreadable or wrong."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    if (cert is None) != (key is None):
        given, missing = (cert_setting, key_setting) if key is None else (key_setting, cert_setting)
        raise TlsConfigError(f"{given} is given without {missing}; give both or neither")
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, cert_setting, key_setting)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca:
        _load_ca(ctx, ca, ca_setting)
    else:
        ctx.load_default_certs()
    return ctx


# -- failures ----------------------------------------------------------------

# verify codes (X509_V_ERR_*) of the peer's certificate
_EXPIRED_CODES = {9, 10}                    # not yet valid, expired
_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21, 24, 27, 28}
_HOSTNAME_CODES = {62, 63, 64}
# OpenSSL reason names (ssl.SSLError.reason)
_REASON_NAMES = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "unknown_ca",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unknown_ca",
    "TLSV1_ALERT_DECRYPT_ERROR": "unknown_ca",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_cert",
    "WRONG_VERSION_NUMBER": "protocol", "HTTP_REQUEST": "protocol",
    "UNSUPPORTED_PROTOCOL": "protocol", "TLSV1_ALERT_PROTOCOL_VERSION": "protocol",
    "NO_SHARED_CIPHER": "protocol", "NO_CIPHERS_AVAILABLE": "protocol",
    "UNEXPECTED_MESSAGE": "protocol", "UNEXPECTED_RECORD": "protocol",
    "RECORD_LAYER_FAILURE": "protocol", "PACKET_LENGTH_TOO_LONG": "protocol",
    "VERSION_TOO_LOW": "protocol", "WRONG_SSL_VERSION": "protocol",
    "UNKNOWN_PROTOCOL": "protocol", "SSLV3_ALERT_HANDSHAKE_FAILURE": "protocol",
    "TLSV1_ALERT_INTERNAL_ERROR": "protocol", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "protocol",
    "BAD_RECORD_MAC": "protocol", "LENGTH_MISMATCH": "protocol",
    "UNEXPECTED_EOF_WHILE_READING": "protocol",
}


def classify(e: BaseException) -> tuple[str, bool]:
    """A handshake failure → (reason, ours): ``ours`` when the peer refused
    our certificate (an alert it sent), else the peer's certificate or the
    protocol is at fault."""
    if isinstance(e, ssl.SSLCertVerificationError) or getattr(e, "verify_code", None):
        code = getattr(e, "verify_code", 0) or 0
        if code in _EXPIRED_CODES:
            return "expired", False
        if code in _HOSTNAME_CODES:
            return "hostname_mismatch", False
        if code in _UNKNOWN_CA_CODES:
            return "unknown_ca", False
        return "other", False
    if isinstance(e, ssl.SSLError):
        name = getattr(e, "reason", None) or ""
        reason = _REASON_NAMES.get(name)
        if reason is not None:
            ours = "ALERT" in name and reason in ("expired", "unknown_ca")
            return reason, ours
        return "other", False
    return "other", False


# (side, reason, ours) → what to fix; fix_for falls back to ours=False where one row serves
_FIXES: dict[tuple[str, str, bool], str] = {
    ("client", "expired", True): "renew the router's certificate (--tls-cert)",
    ("client", "expired", False): "the client must renew its certificate",
    ("client", "unknown_ca", True): "the client must trust the CA that signed --tls-cert",
    ("client", "unknown_ca", False): "the client certificate must be signed by --tls-client-ca",
    ("client", "hostname_mismatch", False): "the client's server name must match --tls-cert",
    ("client", "no_client_cert", False): "the client must present a certificate signed by "
                                         "--tls-client-ca (mTLS is required)",
    ("client", "handshake_timeout", False): "the client must speak TLS to a tls:// listener "
                                            "(--tls-handshake-timeout)",
    ("client", "protocol", False): "the client must speak TLS 1.2 or 1.3 to a tls:// listener "
                                   "(plain text belongs on a plain -l)",
    ("client", "other", False): "check --tls-cert, --tls-key and --tls-client-ca",
    ("upstream", "expired", True): "renew the pool's client certificate (tls.cert)",
    ("upstream", "expired", False): "the server's certificate has expired: renew it on memcached",
    ("upstream", "unknown_ca", True): "memcached must trust the CA that signed the pool's "
                                      "tls.cert (ssl_ca_cert)",
    ("upstream", "unknown_ca", False): "the pool's tls.ca must be the CA that signed the "
                                       "server's certificate",
    ("upstream", "hostname_mismatch", False): "set the pool's tls.server_name to a name in the "
                                              "server's certificate",
    ("upstream", "no_client_cert", False): "the server requires a client certificate: set the "
                                           "pool's tls.cert and tls.key",
    ("upstream", "handshake_timeout", False): "the server does not answer TLS: is it started "
                                              "with -Z?",
    ("upstream", "protocol", False): "the server must speak TLS 1.2 or 1.3 (memcached -Z), or "
                                     "remove the pool's tls:",
    ("upstream", "other", False): "check the pool's tls: settings",
}


def fix_for(side: str, reason: str, ours: bool) -> str:
    return _FIXES.get((side, reason, ours)) or _FIXES[(side, reason, False)]


class FailureLog:
    """Counts every failure; logs one line per peer and side at most once per
    ``interval`` (the next line says how many were not logged), so a
    misconfigured fleet cannot flood the log.  Remembers at most LOG_PEERS
    peers."""

    def __init__(self, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.peers: dict[tuple[str, str], tuple[float, int]] = {}   # → (logged at, unlogged)

    def failed(self, side: str, peer: str, reason: str, ours: bool = False,
               detail: str = "") -> None:
        _metrics.local().count(_metrics.G_TLS_FAILURES + SIDES.index(side) * _metrics.NTLS_REASON
                               + REASONS.index(reason))
        now = self.clock()
        key = (side, peer)
        logged_at, unlogged = self.peers.pop(key, (float("-inf"), 0))
        if now - logged_at < self.interval:
            self.peers[key] = (logged_at, unlogged + 1)
            return
        if len(self.peers) >= LOG_PEERS:
            del self.peers[next(iter(self.peers))]
        self.peers[key] = (now, 0)
        more = f" ({unlogged} more from this peer since the last such line)" if unlogged else ""
        log.warning("%s", line(side, peer, reason, ours, detail) + more)


def line(side: str, peer: str, reason: str, ours: bool, detail: str) -> str:
    """The operator's line: who, why, what to fix."""
    who = f"client {peer}" if side == "client" else f"upstream {peer}"
    said = f" [{detail}]" if detail else ""
    return f"tls handshake with {who} failed: {reason}{said}; fix: {fix_for(side, reason, ours)}"


failures = FailureLog()


def _detail(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return str(e.verify_message)
    if isinstance(e, ssl.SSLError) and getattr(e, "reason", None):
        return str(e.reason)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# -- the session ---------------------------------------------------------------

class TlsSession:
    """One connection's TLS over its non-blocking socket (see the module
    docstring): socket-like ``recv_into``/``send`` for the compiled seam.

    ``recv_into`` returns plaintext bytes read (0: the peer closed), raises
    BlockingIOError when there are none now, TlsError when the handshake
    fails, other OSError when the connection broke.  ``send`` returns the
    plaintext bytes taken, or raises BlockingIOError while records the
    kernel refused are still waiting.  ``want_write``: records wait; the
    connection keeps EPOLLOUT until ``flush`` has written them.  ``more``:
    the last read filled the caller's buffer and more plaintext may be
    ready without the descriptor becoming readable."""

    __slots__ = ("obj", "incoming", "outgoing", "sock", "side", "peer", "deadline",
                 "handshake_done", "more", "pending_out", "failed", "closed")

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket, side: str, peer: str,
                 deadline: float = 0.0, server_hostname: str | None = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=(side == "client"),
                                server_hostname=server_hostname)
        self.sock = sock
        self.side = side                # whose handshake: "client" (we serve) or "upstream"
        self.peer = peer
        self.deadline = deadline        # loop time by which the handshake must be done
        self.handshake_done = False
        self.more = False
        self.pending_out = b""          # records the kernel has not taken yet
        self.failed = False
        self.closed = False

    @property
    def want_write(self) -> bool:
        return bool(self.pending_out) or self.outgoing.pending > 0

    def flush(self) -> bool:
        """Write waiting records to the descriptor; whether all went.
        OSError (not BlockingIOError) when the connection broke."""
        while True:
            if not self.pending_out:
                if not self.outgoing.pending:
                    return True
                self.pending_out = self.outgoing.read()
            try:
                sent = self.sock.send(self.pending_out)
            except (BlockingIOError, InterruptedError):
                return False
            self.pending_out = self.pending_out[sent:]
            if self.pending_out:
                return False

    def _fail(self, e: BaseException) -> TlsError:
        reason, ours = classify(e)
        detail = _detail(e)
        self.failed = True
        failures.failed(self.side, self.peer, reason, ours, detail)
        return TlsError(reason, detail)

    def timed_out(self) -> None:
        """The handshake passed its deadline (the caller closes the connection)."""
        if not self.failed:
            self.failed = True
            failures.failed(self.side, self.peer, "handshake_timeout", False,
                            "no complete handshake in time")

    def start(self) -> bool:
        """The first handshake step of a client (upstream) session: the
        ClientHello goes out now; True if the handshake is already done."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            self.flush()
            raise self._fail(e) from None
        else:
            self.handshake_done = True
        self.flush()
        return self.handshake_done

    def _fill(self, size: int) -> int:
        """One read from the descriptor into the incoming BIO: bytes read,
        0 at end of file; BlockingIOError when none.  The end of file is not
        passed to OpenSSL: a TCP close without close_notify is a fatal error
        there, after which nothing more can be written, and a client that
        half-closes after its requests is owed their replies (memcached
        answers what it read before the end)."""
        data = self.sock.recv(size)
        if data:
            self.incoming.write(data)
        return len(data)

    def _handshake(self) -> bool:
        """One non-blocking handshake step; True once done.  Reads the
        descriptor only when OpenSSL asks for bytes.  TlsError on failure."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            if self._fill(HANDSHAKE_READ) == 0:
                raise _Eof() from None
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                return False
            except ssl.SSLError as e:
                self.flush()            # the alert that tells the peer why
                raise self._fail(e) from None
        except ssl.SSLError as e:
            self.flush()
            raise self._fail(e) from None
        self.handshake_done = True
        self.flush()
        return True

    def recv_into(self, buf: bytearray | memoryview, size: int = 0) -> int:
        """Up to ``size`` (default: all of ``buf``) plaintext bytes into the
        start of ``buf``; see the class docstring."""
        if self.pending_out:
            self.flush()
        try:
            if not self.handshake_done and not self._handshake():
                raise BlockingIOError
        except _Eof:
            return 0
        view = memoryview(buf)
        if size <= 0 or size > len(view):
            size = len(view)
        total = 0
        read_fd = True
        while total < size:
            try:
                # with a buffer, read returns a count (typeshed says bytes)
                n = cast(int, self.obj.read(size - total, view[total:size]))
            except ssl.SSLWantReadError:
                if read_fd:
                    read_fd = False
                    try:
                        if self._fill(size) == 0:       # the peer's end of file
                            if total:
                                break       # the end again on the next call
                            self.more = False
                            return 0
                    except (BlockingIOError, InterruptedError):
                        break
                    continue
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                if total:
                    break       # the end again on the next call
                self.more = False
                return 0
            except ssl.SSLWantWriteError:       # cannot happen with a memory BIO
                break
            if n == 0:          # the peer's close_notify (OpenSSL's zero return)
                if total:
                    break       # the end again on the next call
                self.more = False
                return 0
            total += n
        if self.outgoing.pending:      # a TLS 1.3 ticket, key update, or an alert
            self.flush()
        self.more = total == size
        if not total:
            raise BlockingIOError
        return total

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt up to WRITE_CHUNK bytes of ``data`` and write the records;
        the plaintext bytes taken (see the class docstring)."""
        if self.pending_out or self.outgoing.pending:
            if not self.flush():
                raise BlockingIOError
        if not self.handshake_done:
            raise BlockingIOError       # replies wait for the handshake (cannot happen: no request yet)
        n = len(data)
        if n > WRITE_CHUNK:
            data = memoryview(data)[:WRITE_CHUNK]
            n = WRITE_CHUNK
        self.obj.write(data)
        self.flush()
        return n

    def close_notify(self) -> None:
        """Tell the peer we end (a TLS close_notify), best effort, never blocking."""
        if self.closed or not self.handshake_done:
            return
        self.closed = True
        try:
            self.obj.unwrap()
        except (ssl.SSLError, OSError):
            pass
        try:
            self.flush()
        except OSError:
            pass


class _Eof(Exception):
    """The peer closed during the handshake (not counted as a failure: a
    port check, a load balancer's probe)."""


def peer_name(sock: socket.socket) -> str:
    """The client's address for the log (its IP: one line per host, not per port)."""
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        return str(addr[0])
    return str(addr) or "unix"
