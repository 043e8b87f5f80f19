"""RFC 5424 syslog messages, sent over UDP, TCP or TLS by one background thread.

:func:`syslog_message` writes the header IHE ATNA's Record Audit Event
(ITI-20) asks for: PRI with facility 10 (security/authorization), severity 5
(notice) or 4 (warning) for a failure, VERSION 1, an RFC 3339 UTC TIMESTAMP,
HOSTNAME, APP-NAME, PROCID, MSGID ``IHE+RFC-3881``, no STRUCTURED-DATA, and
the audit message as MSG (UTF-8, without a BOM, as ITI CP-477 prefers).

Transports (:class:`Transport`):

* ``udp``: one message per datagram (RFC 5426); nothing is retried;
* ``tcp``: octet-counted frames, ``LENGTH SP MSG`` (RFC 6587 3.4.1);
* ``tls``: the same frames over TLS 1.2 or later (RFC 5425), the server's
  certificate verified against its host name or IP address.

:class:`SyslogSender` is what keeps a dead syslog server from touching the
node: :meth:`~SyslogSender.submit` only puts a message on a bounded queue,
never blocks, and drops it (counted, with a throttled warning) when the queue
is full; one sender thread renders and sends. A stream transport that fails
is reconnected with a doubling pause (1 s to 30 s), the message in hand sent
again; meanwhile the queue fills and then drops. :meth:`~SyslogSender.close`
sends what is queued within its deadline and says how many it could not.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from spectnode.net.access import ThrottledLog

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

__all__ = [
    "AUDIT_FACILITY",
    "DEFAULT_QUEUE_SIZE",
    "MSGID",
    "SyslogSender",
    "Transport",
    "frame",
    "syslog_message",
]

_log = logging.getLogger("spectnode.audit")

#: Facility 10, security/authorization messages (ITI TF-2 3.20.4.1.2).
AUDIT_FACILITY: Final = 10
#: MSGID of an audit message (ITI TF-2 3.20.4.1.2).
MSGID: Final = "IHE+RFC-3881"
#: Messages waiting at most; beyond it new ones are dropped.
DEFAULT_QUEUE_SIZE: Final = 4096
#: Seconds to connect (and TLS handshake) and to send one message on a stream transport.
IO_TIMEOUT_S: Final = 10.0
_RETRY_FIRST_S: Final = 1.0
_RETRY_MAX_S: Final = 30.0

TransportKind = Literal["udp", "tcp", "tls"]

_NOT_PRINTUSASCII: Final = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, ``-`` if empty."""
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or "-"


def syslog_message(msg: bytes, *, severity: int, hostname: str, app_name: str, procid: str,
                   when: datetime | None = None, msgid: str = MSGID, facility: int = AUDIT_FACILITY) -> bytes:
    """One RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``.

    Header fields are cut to their RFC 5424 lengths (255, 48, 128, 32) and
    their characters outside printable US-ASCII replaced, so no value can
    break the header; ``when`` (default now) is written in UTC.
    """
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"facility {facility} / severity {severity} out of range")
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = (f"<{facility * 8 + severity}>1 {stamp} {_header_field(hostname, 255)} {_header_field(app_name, 48)} "
              f"{_header_field(procid, 128)} {_header_field(msgid, 32)} -")
    return header.encode("ascii") + b" " + msg


def frame(message: bytes) -> bytes:
    """The octet-counting frame of a stream transport: ``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 4.3, RFC 6587 3.4.1)."""
    return str(len(message)).encode("ascii") + b" " + message


class Transport:
    """A connection to one syslog server.

    Args:
        kind: ``udp``, ``tcp`` or ``tls``.
        host, port: The server.
        tls_context: For ``tls``: the client context (it verifies the server).
    """

    def __init__(self, kind: TransportKind, host: str, port: int, tls_context: ssl.SSLContext | None = None) -> None:
        if kind == "tls" and tls_context is None:
            raise ValueError("a tls transport needs a TLS context")
        self.kind = kind
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self._sock: socket.socket | None = None
        self._udp_address: tuple[int, tuple[object, ...]] | None = None

    def __str__(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}"

    @classmethod
    def from_files(cls, kind: TransportKind, host: str, port: int, ca_certificates: Path | None = None,
                   certificate: Path | None = None, private_key: Path | None = None) -> Transport:
        """A transport whose ``tls`` context verifies the server with ``ca_certificates`` (or the system's
        CAs) and its host name, presenting ``certificate`` when one is given.

        Raises:
            OSError, ssl.SSLError: If the TLS files cannot be loaded.
        """
        context = None
        if kind == "tls":
            from spectnode.net.tls import client_context

            context = client_context(ca_certificates, certificate, private_key)
            context.check_hostname = True  # unlike a DICOM peer, a syslog server is named by its certificate
        return cls(kind, host, port, context)

    def send(self, message: bytes) -> None:
        """Send one SYSLOG-MSG, connecting first if needed.

        Raises:
            OSError: If it could not be sent (the connection is then closed).
        """
        try:
            if self.kind == "udp":
                family, address = self._resolve_udp()
                if self._sock is None:
                    self._sock = socket.socket(family, socket.SOCK_DGRAM)
                self._sock.sendto(message, address)
                return
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(frame(message))
        except OSError:
            self.close()
            raise

    def _resolve_udp(self) -> tuple[int, tuple[object, ...]]:
        if self._udp_address is None:
            family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._udp_address = (family, address)
        return self._udp_address

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT_S)
        if self.kind == "tls":
            assert self.tls_context is not None
            try:
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        sock.settimeout(IO_TIMEOUT_S)  # a server that stops reading blocks only this thread, and not for long
        return sock

    def close(self) -> None:
        """Close the connection (the next :meth:`send` opens a new one)."""
        sock, self._sock = self._sock, None
        self._udp_address = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


#: What the queue holds: a function that renders one SYSLOG-MSG when it is sent.
Render = Callable[[], bytes]


class SyslogSender:
    """Sends rendered syslog messages from a bounded queue in one daemon thread.

    Args:
        transport: Where to.
        capacity: Messages waiting at most; :meth:`submit` drops beyond it.
    """

    def __init__(self, transport: Transport, capacity: int = DEFAULT_QUEUE_SIZE) -> None:
        self.transport = transport
        self._queue: queue.Queue[Render] = queue.Queue(maxsize=capacity)
        self._finishing = threading.Event()  # no new messages; the thread ends once the queue is empty
        self._abort = threading.Event()  # the thread ends now
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._warnings = ThrottledLog(_log)
        self._lock = threading.Lock()
        self._down = False
        #: Messages dropped: the queue was full, a datagram failed, or they were still queued at :meth:`close`.
        self.dropped = 0
        #: Messages handed to the transport.
        self.sent = 0

    def start(self) -> None:
        """Start the sender thread."""
        self._thread.start()

    def submit(self, render: Render) -> bool:
        """Queue one message (``render`` makes it, in the sender thread); never blocks.

        Returns:
            False if it was dropped: the queue is full, or the sender is closing.
        """
        if self._finishing.is_set():
            self._count_dropped(1)
            return False
        try:
            self._queue.put_nowait(render)
        except queue.Full:
            self._count_dropped(1)
            self._warnings.warning("full", "audit: %d audit messages wait for the syslog server %s, the most the "
                                   "node keeps; new ones are dropped (%d dropped so far)",
                                   self._queue.maxsize, self.transport, self.dropped)
            return False
        return True

    def pending(self) -> int:
        """Messages queued and not yet sent."""
        return self._queue.qsize()

    @property
    def down(self) -> bool:
        """Whether the last send to a stream transport failed (the sender waits to try again)."""
        return self._down

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def _drop_queued(self) -> None:
        n = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            n += 1
        self._count_dropped(n)

    def _run(self) -> None:
        while True:
            try:
                render = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._finishing.is_set() or self._abort.is_set():
                    return
                continue
            try:
                message = render()
            except Exception:  # noqa: BLE001 - one message that cannot be made must not stop the audit
                _log.exception("audit: an audit message could not be made; it is not sent")
                self._count_dropped(1)
                continue
            if not self._send(message):
                self._count_dropped(1)  # aborted with this message in hand: it goes with the queue
                self._drop_queued()
                return

    def _send(self, message: bytes) -> bool:
        """Send one message, retrying a stream transport until it goes; False if aborted first."""
        delay = _RETRY_FIRST_S
        while True:
            try:
                self.transport.send(message)
            except OSError as exc:
                if self.transport.kind == "udp":  # a datagram is not retried: lost, as UDP loses it
                    self._count_dropped(1)
                    self._warnings.warning("udp", "audit: syslog datagram to %s not sent: %s (%d dropped so far)",
                                           self.transport, exc, self.dropped)
                    return True
                self._down = True
                self._warnings.warning("down", "audit: syslog server %s cannot be reached: %s; %d audit message(s) "
                                       "wait, trying again in %g s", self.transport, exc, self._queue.qsize() + 1,
                                       delay)
                if self._abort.wait(delay):
                    return False
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if self._down:
                self._down = False
                _log.info("audit: syslog server %s reached again", self.transport)
            with self._lock:
                self.sent += 1
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking messages, send what is queued for up to ``timeout`` seconds, close the connection.

        A server that is down is not waited for. Messages unsent then are
        dropped, and the log says how many.
        """
        self._finishing.set()
        if self._thread.is_alive():
            deadline = time.monotonic() + max(0.0, timeout)
            while self._thread.is_alive() and time.monotonic() < deadline and not self._down:
                self._thread.join(0.05)
            self._abort.set()
            self._thread.join(1.0)
        self._abort.set()
        self._drop_queued()
        self.transport.close()
        if self.dropped:
            _log.warning("audit: %d audit message(s) could not be sent to %s (%d sent)", self.dropped,
                         self.transport, self.sent)
