"""pynetdicom's association server, made safe against peers that hold connections open.

What pynetdicom 3.0 does by itself, measured against the node (issue 15):
its DUL thread reads a PDU with blocking ``recv`` calls and no socket timeout,
so a peer that sends 3 bytes and goes quiet holds a thread and an association
slot for as long as it likes; the acceptor then waits ``acse_timeout`` for an
A-ASSOCIATE-RQ even after the peer has closed; the TLS handshake runs in the
accept loop itself, so one silent TLS client stops every other connection;
and the association limit counts those dead connections too, so ten of them
refuse every sender ("Local Limit Exceeded").

:class:`GuardedAssociationServer` keeps pynetdicom's association handling and
changes only the transport around it:

* each accepted connection is checked against the IP allow-list and the
  connection limits (:mod:`spectnode.net.access`) before anything is read;
* the TLS handshake (or, in ``optional`` mode, the peek that tells TLS from
  plain DICOM) runs in the connection's own thread, within the
  association-request deadline;
* every PDU read has a deadline: the whole PDU must arrive within
  ``pdu_timeout`` of its first byte, and everything up to a complete
  A-ASSOCIATE-RQ within ``association_request_timeout`` of the connection
  (the ARTIM timer of PS3.8 9.1.5); a PDU longer than the node accepts ends
  the connection, and so does a message whose data set grows past
  ``max_message_bytes`` as it arrives (pynetdicom holds a message in memory
  until its last fragment, so without this one peer streaming a data set
  that never ends fills the node's memory). pynetdicom has no hook for this,
  so the connection's :class:`~pynetdicom.transport.AssociationSocket` gets
  its ``recv`` replaced
  (:func:`_install_read_deadlines`);
* a connection that ends before its A-ASSOCIATE-RQ frees its slot at once,
  instead of after ``acse_timeout``.

Idle established associations are ended by pynetdicom's own network timeout
(``idle_timeout``), which :class:`ConnectionPolicy` sets on the AE.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_recv_handler
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from spectnode.net.access import AddressAllowList, ConnectionLimiter, ThrottledLog

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ConnectionPolicy", "GuardedAssociationServer", "TlsMode", "policy_from_config", "start_guarded_server"]

_log = logging.getLogger("spectnode.receive")

TlsMode = Literal["off", "optional", "required"]

#: First byte of a TLS record carrying a handshake (the ClientHello); a DICOM
#: connection starts with an A-ASSOCIATE-RQ, PDU type 0x01.
_TLS_HANDSHAKE_RECORD: Final = 0x16
_A_ASSOCIATE_RQ: Final = 0x01
_P_DATA_TF: Final = 0x04
#: How much more than ``node.max_object_bytes`` a message's data set may grow before the
#: connection ends (below it, an oversized object is received whole and refused with a status).
_MESSAGE_MARGIN_BYTES: Final = 1024 * 1024
_PDU_HEADER: Final = 6


@dataclass(frozen=True)
class ConnectionPolicy:
    """The limits and timeouts the storage SCP applies to every connection.

    Attributes:
        allowed_addresses: Who may connect at all.
        max_associations: Connections open at once, in total.
        max_associations_per_peer: Connections open at once from one address.
        association_request_timeout: Seconds from TCP connect (TLS handshake
            included) to a complete A-ASSOCIATE-RQ; also pynetdicom's ACSE timeout.
        pdu_timeout: Seconds a PDU may take from its first byte to its last
            (and a send to the peer, before it counts as stuck).
        idle_timeout: Seconds an established association may stay silent.
        dimse_timeout: Seconds to wait for a DIMSE message.
        max_pdu_bytes: Largest PDU the node accepts (and advertises as its
            maximum PDU length); a longer one ends the connection.
        max_message_bytes: Largest data set of one DIMSE message (a C-STORE's
            object) the node takes in; the connection ends as soon as more has
            arrived. ``None``: no limit.
        tls_mode: ``off``, ``optional`` (TLS and plain DICOM on the same port,
            told apart by the first byte) or ``required``.
        tls_context: The server context, for ``optional`` and ``required``.
    """

    allowed_addresses: AddressAllowList = field(default_factory=lambda: AddressAllowList(["*"]))
    max_associations: int = 16
    max_associations_per_peer: int = 4
    association_request_timeout: float = 30.0
    pdu_timeout: float = 60.0
    idle_timeout: float = 30.0
    dimse_timeout: float = 30.0
    max_pdu_bytes: int = 131072
    max_message_bytes: int | None = None
    tls_mode: TlsMode = "off"
    tls_context: ssl.SSLContext | None = None

    def apply_to(self, ae: Any) -> None:
        """Set the AE's own limits and timeouts to this policy's."""
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = self.association_request_timeout
        ae.network_timeout = self.idle_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.maximum_pdu_size = self.max_pdu_bytes


def _read_until(sock: socket.socket, nr_bytes: int, deadline: float) -> tuple[bytearray, str | None]:
    """Read ``nr_bytes`` before ``deadline``; return what was read and why it stopped short."""
    data = bytearray()
    while len(data) < nr_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, "timeout"
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(min(65536, nr_bytes - len(data)))
        except TimeoutError:
            return data, "timeout"
        except OSError as exc:
            return data, f"read failed: {exc.strerror or exc}"
        if not chunk:
            return data, "closed"
        data.extend(chunk)
    return data, None


def _install_read_deadlines(assoc: Any, policy: ConnectionPolicy, connected_at: float,
                            refusals: ThrottledLog) -> None:
    """Give the association's socket reads the deadlines of ``policy``.

    pynetdicom's DUL reads each PDU as ``recv(6)`` (the header) and then
    ``recv(length)`` (the rest), and treats a short read as a closed
    connection (event 17, which ends the association). This ``recv`` returns
    short when the deadline passes or the PDU is too long, so pynetdicom's
    own state machine closes the connection.
    """
    transport = assoc.dul.socket
    peer = assoc.requestor.address
    artim_deadline = connected_at + policy.association_request_timeout
    pending: dict[str, Any] = {"body": None, "deadline": 0.0, "rq_seen": False, "type": 0, "data_set": 0}

    def wake_acceptor() -> None:
        # The acceptor thread waits on this queue for the A-ASSOCIATE-RQ; None is
        # what it gets when its ACSE timeout expires, so it ends the connection now.
        if not pending["rq_seen"]:
            assoc.dul.to_user_queue.put(None)

    def message_too_long(body: bytearray) -> bool:
        """Count the data set fragments of a P-DATA-TF body (PS3.8 9.3.5.1); True past the limit."""
        offset = 0
        while offset + 6 <= len(body):
            item_length = struct.unpack_from(">L", body, offset)[0]
            control = body[offset + 5]
            if not control & 0x01:  # a data set fragment, not a command one
                pending["data_set"] += max(item_length - 2, 0)
                if pending["data_set"] > policy.max_message_bytes:
                    return True
                if control & 0x02:  # its last fragment: the next message starts from nothing
                    pending["data_set"] = 0
            offset += 4 + item_length
        return False

    def recv(nr_bytes: int) -> bytearray:
        sock = transport.socket
        if pending["body"] is not None and nr_bytes == pending["body"]:
            deadline, header = pending["deadline"], False
        else:
            deadline, header = time.monotonic() + policy.pdu_timeout, True
        pending["body"] = None
        if not pending["rq_seen"]:
            deadline = min(deadline, artim_deadline)
        data, stopped = _read_until(sock, nr_bytes, deadline)
        if stopped is not None:
            if stopped == "timeout":
                what = ("an A-ASSOCIATE-RQ" if not pending["rq_seen"] else "a PDU")
                refusals.warning(f"stalled:{peer}", "connection from %s closed: %s was not complete within "
                                 "its deadline (%d of %d bytes of this read arrived)", peer, what, len(data), nr_bytes)
            wake_acceptor()
            return data[: _PDU_HEADER - 1] if header else data
        if header:
            pdu_type, _, length = struct.unpack(">BBL", data)
            if length > policy.max_pdu_bytes + 64:  # 64: room for the PDU's fixed fields
                refusals.warning(f"pdu:{peer}", "connection from %s closed: it sent a PDU of %d bytes; the node "
                                 "accepts at most %d", peer, length, policy.max_pdu_bytes)
                wake_acceptor()
                return data[: _PDU_HEADER - 1]  # a short header: pynetdicom closes the connection
            pending["body"], pending["deadline"], pending["type"] = length, deadline, pdu_type
            if pdu_type == _A_ASSOCIATE_RQ:
                pending["rq_seen"] = True
        elif pending["type"] == _P_DATA_TF and policy.max_message_bytes is not None and message_too_long(data):
            refusals.warning(f"size:{peer}", "connection from %s closed: the data set of its message grew past "
                             "%d bytes (node.max_object_bytes and 1 MiB) before its end", peer,
                             policy.max_message_bytes)
            return data[:-1]  # a short read: pynetdicom closes the connection
        return data

    transport.recv = recv


class _GuardedRequestHandler(RequestHandler):
    """One connection: TLS if asked, then pynetdicom's association, in this thread."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        policy = self.server.policy
        connected_at = time.monotonic()
        self.request.settimeout(policy.association_request_timeout)
        if policy.tls_mode != "off":
            wrapped = self.server.start_tls(self.request, self.client_address[0])
            if wrapped is None:
                return
            self.request = wrapped
        self.request.settimeout(policy.pdu_timeout)  # bounds sends to a peer that stops reading
        assoc = self._create_association()
        # pynetdicom's standard DIMSE log handler (INFO level) raises on a C-STORE-RQ
        # without an Affected SOP Instance UID, and an exception in one notification
        # handler skips the handlers after it: the node's answer to that request.
        assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
        _install_read_deadlines(assoc, policy, connected_at, self.server.refusals)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        try:
            assoc.start()
            assoc.join()
        finally:
            self.server.association_ended(assoc)


class GuardedAssociationServer(ThreadedAssociationServer):
    """A :class:`~pynetdicom.transport.ThreadedAssociationServer` that applies a :class:`ConnectionPolicy`.

    Built by :func:`start_guarded_server`; ``ssl_context`` of pynetdicom's
    server stays None (the handshake happens in :meth:`start_tls`).
    """

    # Connection threads wait for their association; shutting down must not wait for them.
    daemon_threads = True
    block_on_close = False

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any, ssl_context: Any = None,
                 evt_handlers: Any = None, *, policy: ConnectionPolicy) -> None:
        self.policy = policy
        self.limiter = ConnectionLimiter(policy.max_associations, policy.max_associations_per_peer)
        self.refusals = ThrottledLog(_log)
        #: Called with each association once it has ended, however it ended (released, aborted, the
        #: connection lost: pynetdicom has no event for the last).
        self.on_association_end: Callable[[Any], None] | None = None
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers=evt_handlers,
                         request_handler=_GuardedRequestHandler)

    def association_ended(self, assoc: Any) -> None:
        """Tell :attr:`on_association_end` that ``assoc`` has ended (its exceptions are logged only)."""
        if self.on_association_end is not None:
            try:
                self.on_association_end(assoc)
            except Exception:  # noqa: BLE001 - the connection is over; the audit is best effort
                _log.exception("on_association_end callback failed")

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, without any TLS handshake (that would block the accept loop)."""
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """The allow-list and the connection limits; a refused connection is closed unread."""
        address = str(client_address[0])
        if not self.policy.allowed_addresses.allows(address):
            self.refusals.warning(f"address:{address}", "connection from %s refused: the address is not in "
                                  "node.allowed_addresses (%s)", address, self.policy.allowed_addresses)
            return False
        problem = self.limiter.acquire(address)
        if problem is not None:
            self.refusals.warning(f"limit:{address}", "connection from %s refused: %s", address, problem)
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.shutdown_request(request)
            self.limiter.release(str(client_address[0]))

    def start_tls(self, sock: socket.socket, address: str) -> socket.socket | None:
        """Run the TLS handshake (``required``), or detect and run it (``optional``).

        Returns:
            The socket to speak DICOM on, or None if the connection was closed.
        """
        context = self.policy.tls_context
        assert context is not None
        try:
            if self.policy.tls_mode == "optional":
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    return None
                if first[0] != _TLS_HANDSHAKE_RECORD:
                    return sock
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            tls.do_handshake()
            return tls
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.refusals.warning(f"tls:{address}", "connection from %s closed: no TLS session (%s)%s", address,
                                  reason, "; node.tls.mode is required, so plain DICOM is refused"
                                  if self.policy.tls_mode == "required" else "")
            self.shutdown_request(sock)
            return None


def start_guarded_server(ae: Any, address: tuple[str, int], policy: ConnectionPolicy,
                         evt_handlers: list[Any]) -> GuardedAssociationServer:
    """Start a :class:`GuardedAssociationServer` for ``ae`` in a background thread, as
    ``AE.start_server(block=False)`` does; ``ae.shutdown()`` and the server's
    ``shutdown()`` stop it as they stop pynetdicom's own."""
    policy.apply_to(ae)
    server = ae.make_server(address, evt_handlers=evt_handlers, server_class=GuardedAssociationServer,
                            policy=policy)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)  # where AE.start_server keeps its servers; shutdown() removes it there
    return server


def policy_from_config(node: Any) -> ConnectionPolicy:
    """The :class:`ConnectionPolicy` of a :class:`spectnode.config.NodeConfig`.

    Raises:
        OSError, ssl.SSLError: If the TLS files cannot be loaded (the
            configuration check has loaded them once already).
    """
    from spectnode.net.tls import server_context

    tls = node.tls
    context = None
    if tls.mode != "off":
        context = server_context(tls.certificate, tls.private_key, tls.ca_certificates,
                                 tls.require_client_certificate)
    timeouts = node.timeouts
    return ConnectionPolicy(
        # an object up to 1 MiB over the limit still arrives whole and is answered 0xA700
        max_message_bytes=node.max_object_bytes + _MESSAGE_MARGIN_BYTES,
        allowed_addresses=AddressAllowList(node.allowed_addresses),
        max_associations=node.max_associations,
        max_associations_per_peer=node.max_associations_per_peer,
        association_request_timeout=timeouts.association_request_seconds,
        pdu_timeout=timeouts.pdu_seconds,
        idle_timeout=timeouts.idle_seconds,
        dimse_timeout=timeouts.dimse_seconds,
        tls_mode=tls.mode,
        tls_context=context,
    )
