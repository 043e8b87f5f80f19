"""The node's audit trail: its security-relevant events as DICOM audit messages to syslog.

:class:`NodeAudit` is what the node's parts call; every call only records or
queues (the XML is made in the syslog sender's thread), so a slow or dead
syslog server never reaches the pipeline:

* :meth:`~NodeAudit.application_started`, :meth:`~NodeAudit.application_stopped`:
  Application Activity;
* :meth:`~NodeAudit.association_refused`: a Security Alert for each peer
  refused by its address, AE title, TLS handshake, the connection limits or
  deadlines, at most one per reason and address a minute (a flood of refused
  connections must not become a flood of messages; the next one counts those
  left out);
* :meth:`~NodeAudit.instance_received` and :meth:`~NodeAudit.association_ended`:
  one DICOM Instances Transferred per study and association, when the
  association ends (the peer is the source): action C if an instance was new
  to the node, U if it replaced a changed copy, R if the node held them all;
  outcome minor failure (4) if some instances were refused, serious failure
  (8) if all were. (Objects a PACS sends back on this node's own C-GET come on
  an association the node opened, whose end the receive stage does not see:
  they are reported when the node stops, at the end of a backfill.);
* :meth:`~NodeAudit.instances_sent`: one DICOM Instances Transferred per
  delivered outbox item of a DICOM destination (the node is the source,
  action R). Folder destinations are not network transfers and are not audited.

Patient data: the Patient participant object (patient ID and name) is in a
message only when ``logging.patient_data`` allows patient data in the node's
logs. Otherwise it is left out, although PS3.15 A.5.3.7 makes it mandatory:
the node's promise that no log it writes names a patient holds for syslog too,
and a site whose audit record repository may hold patient data turns
``logging.patient_data`` on. (A hash would not hide a patient ID: they are
short enough to be found by trying every one.)

Identities (PS3.15 A.5.2): the node is UserID = its AE title, AlternativeUserID
``AETITLES=<AE title>``, UserName ``spectnode``, NetworkAccessPointID its host
name; a peer is its AE title (its IP address when no AE title is known yet)
with ``AETITLES=`` and its IP address. AuditSourceID is the node's AE title.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from pydicom.sr.codedict import codes

from spectnode.audit.messages import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    EventAction,
    Participant,
    PatientObject,
    StudyObject,
    application_activity,
    instances_transferred,
    security_alert,
)
from spectnode.audit.syslog import SyslogSender, Transport, syslog_message

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from pydicom.sr.coding import Code

    from spectnode.config import AuditConfig, DestinationConfig
    from spectnode.peer import Peer
    from spectnode.store import OutboxItem

__all__ = ["APP_NAME", "NodeAudit", "REFUSAL_INTERVAL_S"]

_log = logging.getLogger("spectnode.audit")

#: APP-NAME of the syslog messages and UserName of the node.
APP_NAME: Final = "spectnode"
#: At most one Security Alert per refusal reason and peer address in this many seconds.
REFUSAL_INTERVAL_S: Final = 60.0
#: Refusal reasons (the receive stage's) that are a failed authentication of the peer;
#: the others (``limit``, ``stalled``, ``pdu``, ``size``) are the node's limits cutting a peer off.
_AUTHENTICATION_REASONS: Final = frozenset({"calling_ae_title", "called_ae_title", "address", "tls"})
_SYSLOG_SEVERITY_NOTICE: Final = 5
_SYSLOG_SEVERITY_WARNING: Final = 4


@dataclass
class _StudyTransfer:
    """What one association sent of one study, until it ends."""

    peer_is_requestor: bool
    #: SOP Class UID -> the SOP Instance UIDs accepted (an instance sent twice counts once).
    instances: dict[str, set[str]] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)
    accepted: int = 0
    refused: int = 0
    patient: PatientObject | None = None


class NodeAudit:
    """Turns the node's events into DICOM audit messages on a :class:`~spectnode.audit.syslog.SyslogSender`.

    Args:
        sender: Sends the messages (started and closed by this object).
        ae_title: The node's AE title (its identity and the AuditSourceID).
        patient_data: Put the Patient participant object in transfer messages (``logging.patient_data``).
        hostname: The node's host name (default: the system's).
        now: The current time (tests).
    """

    def __init__(self, sender: SyslogSender, *, ae_title: str, patient_data: bool = False,
                 hostname: str | None = None, now: Callable[[], datetime] | None = None) -> None:
        self.sender = sender
        self.ae_title = ae_title.strip()
        self.patient_data = patient_data
        self.hostname = hostname or socket.gethostname() or "localhost"
        self._now = now or (lambda: datetime.now(UTC).astimezone())
        self._procid = str(os.getpid())
        self._lock = threading.Lock()
        self._transfers: dict[Peer, dict[str, _StudyTransfer]] = {}
        self._refusals: dict[tuple[str, str], tuple[float, int]] = {}
        self._started = False

    @classmethod
    def from_config(cls, audit: AuditConfig, ae_title: str, patient_data: bool) -> NodeAudit | None:
        """The audit trail an ``audit:`` section asks for, or None when it is off.

        Raises:
            OSError, ssl.SSLError: If the TLS files cannot be loaded.
        """
        if not audit.enabled or audit.host is None:
            return None
        transport = Transport.from_files(audit.transport, audit.host.strip(), audit.server_port,
                                         audit.tls_ca_certificates, audit.tls_certificate, audit.tls_private_key)
        return cls(SyslogSender(transport), ae_title=ae_title, patient_data=patient_data)

    # ------------------------------------------------------------------ identities

    @property
    def _node(self) -> Participant:
        return Participant(user_id=self.ae_title, user_is_requestor=False,
                           alternative_user_id=f"AETITLES={self.ae_title}", user_name=APP_NAME,
                           network_access_point=self.hostname)

    @staticmethod
    def _peer(ae_title: str, address: str, requestor: bool) -> Participant:
        return Participant(user_id=ae_title or address or "unknown", user_is_requestor=requestor,
                           alternative_user_id=f"AETITLES={ae_title}" if ae_title else None,
                           network_access_point=address or None)

    def _submit(self, make: Callable[[], bytes], failed: bool) -> None:
        severity = _SYSLOG_SEVERITY_WARNING if failed else _SYSLOG_SEVERITY_NOTICE
        hostname, procid = self.hostname, self._procid
        self.sender.submit(lambda: syslog_message(make(), severity=severity, hostname=hostname, app_name=APP_NAME,
                                                  procid=procid))

    # ------------------------------------------------------------------ application

    def application_started(self) -> None:
        """Start the sender and report Application Start."""
        self.sender.start()
        self._started = True
        self._application_activity(started=True)
        _log.info("audit: DICOM audit messages go to syslog at %s", self.sender.transport)

    def application_stopped(self, timeout: float = 5.0) -> None:
        """Report what open associations sent, then Application Stop, and close the sender (sending for up
        to ``timeout`` seconds)."""
        if not self._started:
            self.sender.close(0)
            return
        with self._lock:
            peers = list(self._transfers)
        for peer in peers:
            self.association_ended(peer)
        self._application_activity(started=False)
        self._started = False
        self.sender.close(timeout)

    def _application_activity(self, started: bool) -> None:
        when, node = self._now(), self._node
        try:
            launcher: Participant | None = Participant(user_id=getpass.getuser(), user_is_requestor=True)
        except (KeyError, OSError):  # no user name for this uid (a container)
            launcher = None
        source_id = self.ae_title
        self._submit(lambda: application_activity(started=started, when=when, application=node, launcher=launcher,
                                                  source_id=source_id), failed=False)

    # ------------------------------------------------------------------ security

    def association_refused(self, peer: Peer, reason: str, detail: str) -> None:
        """A connection or association from ``peer`` was refused for ``reason`` (the receive stage's
        ``on_refused`` reasons), ``detail`` saying why in words."""
        key = (reason, peer.address)
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._refusals.get(key, (-float("inf"), 0))
            if now - last < REFUSAL_INTERVAL_S:
                self._refusals[key] = (last, suppressed + 1)
                return
            self._refusals[key] = (now, 0)
            if len(self._refusals) > 4096:  # many distinct peers: forget the old ones
                self._refusals = {k: v for k, v in self._refusals.items() if now - v[0] < REFUSAL_INTERVAL_S}
        if suppressed:
            detail += f" ({suppressed} more like it from this address in the last {REFUSAL_INTERVAL_S:g} s not sent)"
        event_type: Code = (codes.DCM.NodeAuthentication if reason in _AUTHENTICATION_REASONS
                            else codes.DCM.UseOfRestrictedFunction)
        when, node, source_id = self._now(), self._node, self.ae_title
        performer = self._peer(peer.ae_title, peer.address, requestor=True)
        self._submit(lambda: security_alert(event_type=event_type, when=when, reporter=node, performer=performer,
                                            description=detail, source_id=source_id), failed=True)

    # ------------------------------------------------------------------ transfers

    def instance_received(self, peer: Peer, *, study_uid: str, sop_class_uid: str, sop_instance_uid: str,
                          stored: str | None, peer_is_requestor: bool = True, patient_id: str | None = None,
                          patient_name: str | None = None) -> None:
        """One C-STORE of ``study_uid`` from ``peer`` was answered.

        Args:
            peer: Who sent it (the association's remote side).
            study_uid: Its study.
            sop_class_uid: Its SOP class ('' if unknown).
            sop_instance_uid: Its SOP instance.
            stored: ``new``, ``changed``, ``duplicate`` or ``own_output`` when
                it was accepted; None when it was refused.
            peer_is_requestor: Whether the peer opened the association (False
                for a PACS answering this node's C-GET).
            patient_id, patient_name: The object's patient, when patient data may be logged.
        """
        with self._lock:
            transfer = self._transfers.setdefault(peer, {}).get(study_uid)
            if transfer is None:
                transfer = self._transfers[peer][study_uid] = _StudyTransfer(peer_is_requestor)
            if stored is None:
                transfer.refused += 1
            else:
                transfer.accepted += 1
                transfer.stored.add(stored)
                if sop_class_uid:
                    transfer.instances.setdefault(sop_class_uid, set()).add(sop_instance_uid)
            if self.patient_data and transfer.patient is None and patient_id:
                transfer.patient = PatientObject(patient_id, patient_name or None)

    def association_ended(self, peer: Peer) -> None:
        """``peer``'s association ended: one DICOM Instances Transferred for each study it sent."""
        with self._lock:
            studies = self._transfers.pop(peer, {})
        when, node, source_id = self._now(), self._node, self.ae_title
        for study_uid, transfer in studies.items():
            outcome, description = SUCCESS, None
            if transfer.refused:
                outcome = MINOR_FAILURE if transfer.accepted else SERIOUS_FAILURE
                description = f"{transfer.refused} of {transfer.refused + transfer.accepted} instance(s) refused"
            action: EventAction = "C" if "new" in transfer.stored else "U" if "changed" in transfer.stored else "R"
            source = self._peer(peer.ae_title, peer.address, requestor=transfer.peer_is_requestor)
            destination = dataclasses.replace(node, user_is_requestor=not transfer.peer_is_requestor)
            study = StudyObject(study_uid, {uid: len(sops) for uid, sops in transfer.instances.items()})

            def make(action: EventAction = action, outcome: int = outcome, description: str | None = description,
                     source: Participant = source, destination: Participant = destination,
                     study: StudyObject = study, patient: PatientObject | None = transfer.patient) -> bytes:
                return instances_transferred(action=action, outcome=outcome, when=when, source=source,
                                             destination=destination, study=study, source_id=source_id,
                                             patient=patient, outcome_description=description)

            self._submit(make, failed=outcome != SUCCESS)

    def instances_sent(self, destination: DestinationConfig, item: OutboxItem) -> None:
        """An outbox item was delivered: DICOM Instances Transferred from this node to a DICOM destination."""
        if destination.type == "folder":
            return
        if destination.type == "sender" and item.sender is not None:
            ae_title, host = destination.ae_title or item.sender.ae_title, item.sender.address
        else:
            ae_title, host = destination.ae_title or "", destination.host or ""
        when, source_id, patient_data = self._now(), self.ae_title, self.patient_data
        source = dataclasses.replace(self._node, user_is_requestor=True)
        receiver = self._peer(ae_title, host, requestor=False)
        files, study_uid = tuple(item.files), item.study_uid

        def make() -> bytes:
            sop_classes, patient = _describe_files(files, patient_data)
            return instances_transferred(action="R", outcome=SUCCESS, when=when, source=source, destination=receiver,
                                         study=StudyObject(study_uid, sop_classes), source_id=source_id,
                                         patient=patient)

        self._submit(make, failed=False)


def _describe_files(files: Sequence[Path], patient_data: bool) -> tuple[dict[str, int], PatientObject | None]:
    """SOP class UID -> count of the files that could be read, and their patient when ``patient_data``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    sop_classes: Counter[str] = Counter()
    patient = None
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "PatientID", "PatientName"])
        except (OSError, ValueError, InvalidDicomError):
            continue  # removed meanwhile: the message says what it can
        if uid := str(ds.get("SOPClassUID", "") or ""):
            sop_classes[uid] += 1
        if patient_data and patient is None and (patient_id := str(ds.get("PatientID", "") or "")):
            patient = PatientObject(patient_id, str(ds.get("PatientName", "") or "") or None)
    return dict(sop_classes), patient
