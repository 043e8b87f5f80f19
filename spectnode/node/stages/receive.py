"""Stage 1, receive: a C-STORE / C-ECHO SCP with a durable spool.

Every object a peer sends is

1. parsed far enough to know its study and instance (never its pixels),
2. written to the spool (:meth:`spectnode.node.datadir.DataDir.spooled_object`) exactly as
   it was received (the encoded dataset with a file meta header), through a
   temporary file that is fsynced, renamed into place, and followed by an
   fsync of the folder, and
3. recorded in the job store (committed),

and only then answered with status Success. A peer that gets Success can
forget the object: it survives a crash or power loss of the node. A changed
object (the same SOP Instance UID with other bytes) is spooled under a name of
its own (the name holds the SHA-256 of its bytes), so the copy the job store
records is never overwritten, not even by a crash before the new record is
committed; the replaced copy stays until the retention policy removes the
study's files, or the node's next start removes what no record names.

Failures answer with the status a peer can act on:

* 0xA700 (Refused: out of resources) when the spool or the job store cannot be
  written (disk full, file size limit, read-only file system ...; a new
  object whose record fails is removed from the spool again);
  and when the object is larger than ``node.max_object_bytes`` (a deflated
  one counted after inflating, which stops as soon as the limit is passed,
  so a deflate bomb never takes more memory than the limit);
* 0xA900 (Error: data set does not match SOP class) when one of the UIDs
  every stored object has (Type 1 in the SOP Common, General Study and
  General Series modules: SOPClassUID, SOPInstanceUID, StudyInstanceUID,
  SeriesInstanceUID) is missing, empty or not a valid UID (PS3.5 9.1: digits
  and dots, at most 64 characters, no empty component): such a dataset is
  not a conformant instance of any SOP class, and the node could not file it;
* 0xC210 (Error: cannot understand) when the dataset cannot be parsed or is
  malformed: encoded in another VR encoding than its transfer syntax says,
  or truncated (an element, pixel data included, running past its end), or
  an element that describes the pixel data (Rows, Columns, Bits Allocated
  ...) has the wrong VR or length, so the image cannot be decoded, or any
  standard top-level element has another VR than the data dictionary's
  (UN allowed), so its value would be misread; and when
  the request's own Affected SOP Instance UID is empty or invalid (the
  command, not the dataset, is what cannot be understood). The checks are
  explicit and thread-safe; they do not rely on pydicom's warnings.

Leading zeros in a UID component are tolerated: real cameras write them, and
they harm neither matching nor file names.

Connections from addresses outside ``node.allowed_addresses``, and beyond
the connection limits, are closed unread; every connection and PDU has a
deadline, and DICOM TLS is optional or required (:mod:`spectnode.net`).
Associations are refused (A-ASSOCIATE-RJ, rejected-permanent, service user)
when the calling AE title is not allowed (reason 3, calling AE title not
recognised) or the called AE title is not this node's (reason 7). Every
storage SOP class of the current standard (pynetdicom's list), and the retired
NM Image Storage of older cameras, is accepted, in the uncompressed and the
common compressed transfer syntaxes: what an object is gets decided by its content later, so a
CT ends as "not assessable" rather than as a refused association.

It is also the Storage Commitment SCU's receiver of reports: it accepts the
Storage Commitment Push Model with the peer in the SCP role (SCP/SCU Role
Selection, PS3.4 J.3.3), as a PACS proposes when it opens an association of
its own to send the N-EVENT-REPORT for a commitment the dispatch stage asked
for, and hands each report to
:func:`spectnode.node.stages.dispatch.record_commitment_report` (committed to
the job store before the answer goes back).

Log lines name an object by its Modality, SOP class, SeriesNumber and
InstanceNumber, and name neither its SOP Instance UID nor a value it was
refused for, nor what a parser said of it (a value may be patient data, and a
UID finds the patient's image in any PACS), unless ``logging.patient_data``
is on; the audit receipt keeps the UID (``spectnode status STUDY_UID``).

Like every stage, it knows nothing of the stages after it: it calls
``on_stored`` with the study UID after each newly stored object, which the
node uses to wake the assemble stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any, Final, Protocol

from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filereader import (
    _read_file_meta_info,
    data_element_generator,
    read_preamble,
)
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid  # type: ignore[attr-defined]

from spectnode.dispatch.commitment import STORAGE_COMMITMENT_PUSH_MODEL, CommitmentReport, event_report_handler
from spectnode.errors import exception_name
from spectnode.fsutil import write_durably
from spectnode.imaging.safe_text import MODALITY_TERMS, instance_numbers, term
from spectnode.net.inflate import InflatedTooLarge, inflate_bounded
from spectnode.net.server import ConnectionPolicy, start_guarded_server
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, unguarded
from spectnode.node.stages.dispatch import record_commitment_report
from spectnode.peer import Peer
from spectnode.store import InstanceRecord, JobStore, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from pynetdicom.events import Event

    from spectnode.node.datadir import DataDir

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "RETIRED_STORAGE_SOP_CLASSES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DOES_NOT_MATCH_SOP_CLASS",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "ReceiveAudit",
    "ReceiveStage",
    "uid_problem",
]

_log = logging.getLogger("spectnode.receive")

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF

STATUS_SUCCESS: Final = 0x0000
#: Refused: out of resources (PS3.4 B.2.3), for disk and OS errors.
STATUS_OUT_OF_RESOURCES: Final = 0xA700
#: Error: data set does not match SOP class, for a missing study/instance UID.
STATUS_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: cannot understand (the C000-CFFF range), for an unparseable dataset.
STATUS_CANNOT_UNDERSTAND: Final = 0xC210

#: Transfer syntaxes accepted for every storage SOP class: the uncompressed
#: ones, deflate, and the compressed ones scanners and PACS commonly send.
ACCEPTED_TRANSFER_SYNTAXES: Final = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: Retired storage SOP classes accepted besides pynetdicom's current ones (UID -> keyword): the
#: retired NM Image Storage (PS3.6), which older gamma cameras still send.
RETIRED_STORAGE_SOP_CLASSES: Final = {"1.2.840.10008.5.1.4.1.1.5": "NuclearMedicineImageStorageRetired"}

# Values longer than this are skipped, not loaded, while a received dataset is
# checked (pixel data); that they lie whole within the dataset is still checked.
_DEFER_BYTES: Final = 1024


#: Default for ``max_object_bytes``: the configuration's ``node.max_object_bytes``.
DEFAULT_MAX_OBJECT_BYTES: Final = 256 * 1024 * 1024

_UID_CHARS: Final = re.compile(r"[0-9.]+")
#: C-STOREs of one object are serialised on one of this many locks (chosen by the object's UIDs).
_OBJECT_LOCK_STRIPES: Final = 64

#: Type 1 UIDs every stored object carries, and that the node files it by.
_REQUIRED_UIDS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Elements of the Image Pixel module that say how to decode the pixel data:
#: keyword -> (VR, value length of a single value).
_PIXEL_DESCRIPTION: Final = {
    "Rows": ("US", 2), "Columns": ("US", 2), "SamplesPerPixel": ("US", 2), "BitsAllocated": ("US", 2),
    "BitsStored": ("US", 2), "HighBit": ("US", 2), "PixelRepresentation": ("US", 2),
}
_PIXEL_DESCRIPTION_TAGS: Final = {Tag(k): (k, v) for k, v in _PIXEL_DESCRIPTION.items()}


#: The audit trail's outcome of a refusal, by the status answered (when no more precise one is known).
_OUTCOMES: Final = {
    STATUS_OUT_OF_RESOURCES: "refused: out of resources",
    STATUS_DOES_NOT_MATCH_SOP_CLASS: "refused: a required UID is missing or invalid",
    STATUS_CANNOT_UNDERSTAND: "refused: cannot be parsed",
}


class ReceiveAudit(Protocol):
    """What the receive stage tells the audit trail (:class:`spectnode.audit.NodeAudit` is one)."""

    def association_refused(self, peer: Peer, reason: str, detail: str) -> None:
        """A connection or association was refused; ``reason`` as for ``on_refused``, ``detail`` in words."""

    def instance_received(self, peer: Peer, *, study_uid: str, sop_class_uid: str, sop_instance_uid: str,
                          stored: str | None, peer_is_requestor: bool = True, patient_id: str | None = None,
                          patient_name: str | None = None) -> None:
        """A C-STORE of ``study_uid`` was answered; ``stored`` is None when it was refused."""

    def association_ended(self, peer: Peer) -> None:
        """``peer``'s association ended."""


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 9.1), or None if it is.

    Digits and dots only, at most 64 characters, no empty component (so no
    leading, trailing or double dot). Leading zeros in a component are
    tolerated (see the module's docstring).
    """
    if not value:
        return "is empty"
    if len(value) > 64:
        return f"is {len(value)} characters long; a UID has at most 64"
    if not _UID_CHARS.fullmatch(value):
        return "holds characters other than digits and dots"
    if "" in value.split("."):
        return "has an empty component"
    return None


@dataclass(frozen=True)
class _Identity:
    study_uid: str
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    patient_name: str
    patient_id: str
    series_number: str = ""
    instance_number: str = ""


#: Modules whose checks of a received object raise messages that name tags, VRs, lengths and offsets, never a
#: value: their messages are logged; a parser's (pydicom's) may quote a value, so only its class is.
_OWN_CHECKS: Final = frozenset({__name__, "spectnode.net.inflate"})


def _raised_by_own_checks(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") in _OWN_CHECKS


def _check_pixel_description(element: Any, implicit: bool) -> None:
    """Refuse an Image Pixel module element with the wrong VR or length (single US values).

    Raises:
        ValueError: If ``element`` cannot be what its tag says.
    """
    keyword, (vr, length) = _PIXEL_DESCRIPTION_TAGS[element.tag]
    if not implicit and element.VR not in (vr, "UN"):
        raise ValueError(f"{keyword} has VR {element.VR}; it must be {vr}, so the pixel data cannot be decoded")
    if element.length != length:
        raise ValueError(f"{keyword} is {element.length} bytes long; a single {vr} value is {length}, so the "
                         "pixel data cannot be decoded")


#: Every VR of PS3.5 Table 6.2-1.
_KNOWN_VRS: Final = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN",
    "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
})


def _check_vr(element: Any) -> None:
    """Refuse a top-level element of explicit VR whose VR is unknown, or not its tag's VR in the data dictionary.

    A VR lie makes the value decode as something else (a text as floats, a
    name as a number), which breaks whoever reads it later; UN is always
    allowed (PS3.5 6.2.2), and private and unknown tags need only a known VR.

    Raises:
        ValueError: Saying which element has which VR, and which it must have.
    """
    vr = element.VR
    if vr is None or vr == "UN":
        return
    if vr not in _KNOWN_VRS:
        raise ValueError(f"element {element.tag} has VR {vr!r}, which is not a DICOM VR")
    tag = element.tag
    if tag.is_private or int(tag) not in DicomDictionary:
        return
    expected = dictionary_VR(tag)
    allowed = {v.strip() for v in expected.split(" or ")}
    if vr not in allowed and expected != "NONE":
        raise ValueError(f"element {tag} has VR {vr}; the data dictionary says {expected}")


class ReceiveStage:
    """The node's DICOM listener: C-STORE into the spool and job store, C-ECHO.

    Args:
        store: The job store objects are recorded in.
        data_dir: The data directory whose spool takes the objects.
        ae_title: This node's AE title; associations calling another title
            are refused.
        bind_address: Address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        allowed_calling_ae_titles: Calling AE titles allowed to associate;
            ``"*"`` among them allows any.
        on_stored: Called with the study UID after each new or changed object
            is durable (not for duplicates); exceptions in it are logged only.
        transfer_syntaxes: Accepted transfer syntaxes (see
            :data:`ACCEPTED_TRANSFER_SYNTAXES`).
        policy: Address allow-list, connection limits, timeouts and TLS
            (:class:`spectnode.net.server.ConnectionPolicy`; its defaults
            are the configuration's).
        max_object_bytes: Largest object accepted (a deflated one after
            inflating); larger ones are answered 0xA700.
        disk: The data directory's free space: an object that would leave
            less than its floor free is answered 0xA700 (default: no floor).
        on_answer: Called with the peer, the status answered, a short outcome,
            the study UID (if read) and the seconds the C-STORE took, for each
            C-STORE (metrics, audit); exceptions in it are logged only.
        on_refused: Called with the reason of each refused association (metrics, audit).
        log_patient_data: Add the object's PatientName and PatientID to the
            log record of each stored object (fields ``patient_name`` and
            ``patient_id``; ``logging.patient_data``, off by default), and name
            objects by their SOP Instance UID, refused values and a parser's
            message in log lines. Without it no log record of the node holds
            patient names, IDs or SOP Instance UIDs.
        audit: Told of each refused association, each C-STORE of a study
            received over the network, and each association's end (DICOM
            audit messages); exceptions in it are logged only.
    """

    def __init__(
        self,
        store: JobStore,
        data_dir: DataDir,
        *,
        ae_title: str,
        bind_address: str = "127.0.0.1",
        port: int = 11112,
        allowed_calling_ae_titles: Sequence[str] = ("*",),
        on_stored: Callable[[str], None] | None = None,
        transfer_syntaxes: Sequence[str] = ACCEPTED_TRANSFER_SYNTAXES,
        policy: ConnectionPolicy | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        disk: DiskSpace | None = None,
        on_answer: Callable[[Peer, int, str, str | None, float], None] | None = None,
        on_refused: Callable[[Peer, str], None] | None = None,
        log_patient_data: bool = False,
        audit: ReceiveAudit | None = None,
    ) -> None:
        self.log_patient_data = log_patient_data
        self.audit = audit
        self.disk = disk if disk is not None else unguarded(data_dir.root)
        self.on_answer = on_answer
        self.on_refused = on_refused
        self.store = store
        self.data_dir = data_dir
        self.ae_title = ae_title
        self.bind_address = bind_address
        self._requested_port = port
        self.allowed_calling_ae_titles = tuple(t.strip() for t in allowed_calling_ae_titles)
        self.on_stored = on_stored
        self._transfer_syntaxes = list(transfer_syntaxes)
        self.policy = policy if policy is not None else ConnectionPolicy()
        self.max_object_bytes = max_object_bytes
        self._server: Any = None
        self._lock = threading.Lock()
        self._object_locks = tuple(threading.Lock() for _ in range(_OBJECT_LOCK_STRIPES))

    # ----------------------------------------------------------------- lifecycle

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        # Reject unknown callers and callers that ask for another AE title in
        # the association negotiation itself (A-ASSOCIATE-RJ reasons 3 and 7).
        if "*" not in self.allowed_calling_ae_titles:
            ae.require_calling_aet = list(self.allowed_calling_ae_titles)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, self._transfer_syntaxes)
        for sop_class, keyword in RETIRED_STORAGE_SOP_CLASSES.items():
            # Without a registered service class pynetdicom accepts the context but aborts at the C-STORE.
            register_uid(sop_class, keyword, StorageServiceClass)
            ae.add_supported_context(sop_class, self._transfer_syntaxes)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # Storage commitment reports: the peer that opens the association is the SCP of the class.
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                 scu_role=False, scp_role=True)
        # Limits, timeouts and the maximum PDU size come from the policy (start_guarded_server).
        return ae

    def start(self) -> None:
        """Start listening (in background threads); returns once bound.

        Raises:
            OSError: If the address cannot be bound (port in use ...).
        """
        self.data_dir.spool.mkdir(parents=True, exist_ok=True)
        ae = self._application_entity()
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_DIMSE_RECV, self._answer_malformed_store),
            (evt.EVT_N_EVENT_REPORT, event_report_handler(self.handle_commitment_report)),
        ]
        with self._lock:
            self._server = start_guarded_server(ae, (self.bind_address, self._requested_port), self.policy,
                                                handlers)
            self._count_connection_refusals(self._server)
            if self.audit is not None:
                self._server.on_association_end = self._association_ended
        policy = self.policy
        _log.info(
            "listening as %s on %s:%d (calling AE titles allowed: %s; addresses allowed: %s; TLS %s; at most %d "
            "associations, %d per address)",
            self.ae_title, self.bind_address, self.port, ", ".join(self.allowed_calling_ae_titles),
            policy.allowed_addresses, policy.tls_mode, policy.max_associations, policy.max_associations_per_peer,
        )

    def _count_connection_refusals(self, server: Any) -> None:
        """Pass every connection the guard refuses (address, limits, TLS, stalled, oversized PDU or message) to
        ``on_refused``, with the reason's kind; the guard's own log lines stay throttled."""
        refusals = getattr(server, "refusals", None)
        if (self.on_refused is None and self.audit is None) or refusals is None:
            return
        log_refusal = refusals.warning
        on_refused, audit = self.on_refused, self.audit

        def counted(key: str, message: str, *args: object) -> None:
            reason, _, address = key.partition(":")
            peer = Peer("", address, 0)
            try:
                if on_refused is not None:
                    on_refused(peer, reason)
                if audit is not None:
                    audit.association_refused(peer, reason, message % args)
            except Exception:  # noqa: BLE001 - metrics and audit are best effort
                _log.exception("on_refused callback failed")
            log_refusal(key, message, *args)

        refusals.warning = counted

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop listening at once; let open associations finish for up to ``grace_seconds``, then abort them.

        New connections are refused from the first moment (the listening
        socket is closed); an association in flight can still send its objects
        and release normally within the grace period.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        port = server.server_address[1]
        server.shutdown()  # stops accepting and closes the listening socket
        deadline = time.monotonic() + max(0.0, grace_seconds)
        active = server.active_associations
        if active and grace_seconds > 0:
            _log.info("listener on port %d closed; waiting up to %g s for %d association(s) in flight", port,
                      grace_seconds, len(active))
        while active and time.monotonic() < deadline:
            time.sleep(0.1)
            active = server.active_associations
        for assoc in active:
            assoc.abort()
        if active:
            _log.warning("%d association(s) still open after the %g s grace period were aborted", len(active),
                         grace_seconds)
        _log.info("listener on port %d stopped", port)

    def _object_lock(self, study_uid: str, sop_instance_uid: str) -> threading.Lock:
        """The lock that C-STOREs of one object take from their check of the job store to its record."""
        return self._object_locks[hash((study_uid, sop_instance_uid)) % len(self._object_locks)]

    def _discard_unrecorded(self, study_uid: str, sop_instance_uid: str, digest: str, path: Path) -> None:
        """Delete a spooled copy whose record failed, unless the job store records this very copy (another
        process's C-STORE of the same bytes, whose check ran first, recorded it meanwhile); kept if the store
        cannot say."""
        try:
            recorded = self.store.known_instance(study_uid, sop_instance_uid) == digest
        except (sqlite3.Error, StoreError):
            return
        if not recorded:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ handlers

    def _object(self, identity: _Identity) -> str:
        """How a log line names an object: ``"NM instance (NuclearMedicineImageStorage, SeriesNumber 1,
        InstanceNumber 2)"``, its SOP Instance UID added only under ``logging.patient_data``."""
        parts = [UID(identity.sop_class_uid).keyword or identity.sop_class_uid,
                 *instance_numbers(identity.series_number, identity.instance_number)]
        if self.log_patient_data:
            parts.append(identity.sop_instance_uid)
        modality = term(identity.modality, None, MODALITY_TERMS) if identity.modality else "?"
        return f"{modality} instance ({', '.join(parts)})"

    def _shown(self, value: str) -> str:
        """``" '1.2.3'"``: a UID or value a log line names, under ``logging.patient_data`` only; else ``""``."""
        return f" {value[:80]!r}" if self.log_patient_data else ""

    @staticmethod
    def _peer(event: Event) -> Peer:
        return Peer.from_association(event.assoc)

    def _handle_accepted(self, event: Event) -> None:
        peer = self._peer(event)
        _log.debug("association accepted from %s@%s:%d", peer.ae_title, peer.address, peer.port,
                   extra={"calling_ae": peer.ae_title})

    def _handle_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        allowed = "*" in self.allowed_calling_ae_titles or calling in self.allowed_calling_ae_titles
        reason = "called_ae_title" if allowed else "calling_ae_title"
        peer = self._peer(event)
        try:
            if self.on_refused is not None:
                self.on_refused(peer, reason)
            if self.audit is not None:
                why = (f"called AE title {peer.called_ae_title!r} is not {self.ae_title!r}" if allowed
                       else f"calling AE title {calling!r} is not in node.allowed_calling_ae_titles")
                self.audit.association_refused(peer, reason, f"association from {calling}@{requestor.address} "
                                               f"refused (A-ASSOCIATE-RJ): {why}")
        except Exception:  # noqa: BLE001 - metrics and audit are best effort
            _log.exception("on_refused callback failed")
        _log.warning(
            "association from %s@%s refused: allowed calling AE titles are %s, and the called AE title must be %s",
            calling, requestor.address, ", ".join(self.allowed_calling_ae_titles), self.ae_title,
            extra={"calling_ae": calling},
        )

    def _association_ended(self, assoc: Any) -> None:
        """The server's ``on_association_end``: the audit trail reports what the association sent."""
        if self.audit is not None:
            self.audit.association_ended(Peer.from_association(assoc))

    def _answer_malformed_store(self, event: Event) -> None:
        """Answer 0xC210 to a C-STORE-RQ that pynetdicom would leave unanswered.

        pynetdicom drops a request that lacks a required command element
        (an empty Affected SOP Instance UID is encoded as no element) with
        a warning and no response, so the sender waits for its DIMSE timeout
        and cannot tell why. This runs when the message is decoded, before
        pynetdicom drops it, and sends the failure itself.
        """
        message = event.message
        if type(message).__name__ != "C_STORE_RQ":
            return
        try:
            request = message.message_to_primitive()
        except Exception:  # noqa: BLE001 - pynetdicom itself then ends the association (event 19)
            return
        if not isinstance(request, C_STORE) or request.is_valid_request or request.MessageID is None:
            return
        context_id = message.context_id
        if context_id is None:
            return
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.MessageID
        if request.AffectedSOPClassUID:
            response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.Status = STATUS_CANNOT_UNDERSTAND
        peer = self._peer(event)
        _log.error("C-STORE from %s@%s: the request lacks a required command element (Affected SOP Instance UID "
                   "%s); answered 0x%04X (cannot understand)", peer.ae_title, peer.address,
                   "missing" if not request.AffectedSOPInstanceUID else "present", STATUS_CANNOT_UNDERSTAND,
                   extra={"calling_ae": peer.ae_title})
        event.assoc.dimse.send_msg(response, context_id)
        self._answered(peer, STATUS_CANNOT_UNDERSTAND,
                       {"outcome": "refused: the request lacks its Affected SOP Instance UID"}, time.monotonic())

    def handle_commitment_report(self, report: CommitmentReport, peer: Peer) -> int:
        """Record a storage commitment report that came on an association the peer opened; returns the
        N-EVENT-REPORT status to answer (a store that cannot be written answers 0x0110, processing failure)."""
        _log.info("storage commitment report from %s@%s: transaction %s, event type %d, %d committed, %d failed",
                  peer.ae_title, peer.address, report.transaction_uid, report.event_type, len(report.committed),
                  len(report.failed), extra={"calling_ae": peer.ae_title})
        return record_commitment_report(self.store.outbox, report, peer, self.store.clock())

    def _handle_echo(self, event: Event) -> int:
        peer = self._peer(event)
        _log.debug("C-ECHO from %s@%s", peer.ae_title, peer.address, extra={"calling_ae": peer.ae_title})
        return STATUS_SUCCESS

    def _identify(self, data: bytes, transfer_syntax: str) -> _Identity:
        """Check a received object's structure; return its UIDs, SOP class and modality.

        pydicom is lenient (it reads garbage as some dataset, guessing the VR
        encoding, and stops quietly where the data ends), so the structure is
        checked here explicitly, without relying on warnings (whose state is
        shared by every thread of the process):

        * the first element's encoding (explicit or implicit VR) must be the
          one of the negotiated ``transfer_syntax``;
        * every top-level element must lie whole within the dataset (pixel
          data included, without loading it), an undefined-length value must
          end with its delimiter, and nothing but zero padding may follow the
          last element;
        * the dataset must hold at least one element;
        * the elements that describe the pixel data have their VR and length;
        * in explicit VR, every top-level element has a DICOM VR, its tag's VR
          in the data dictionary when the tag is a standard one (or UN).

        A deflated dataset is inflated up to :attr:`max_object_bytes` only.

        Raises:
            InflatedTooLarge: If a deflated dataset inflates to more than
                :attr:`max_object_bytes`.
            ValueError: (or another exception of pydicom's reader) if the
                dataset is not a well-formed dataset in ``transfer_syntax``.
        """
        fp = BytesIO(data)
        read_preamble(fp, force=True)
        _read_file_meta_info(fp)  # leaves fp at the first element of the dataset
        syntax = UID(transfer_syntax)
        if not syntax.is_transfer_syntax:
            raise ValueError(f"{syntax} is not a known transfer syntax")
        body: BytesIO = fp
        if syntax.is_deflated:
            body = BytesIO(inflate_bounded(fp.read(), self.max_object_bytes))
        implicit, little_endian = syntax.is_implicit_VR, syntax.is_little_endian
        start = body.tell()
        end = body.seek(0, os.SEEK_END)
        body.seek(start)
        head = body.read(6)
        body.seek(start)
        if len(head) == 6:
            # pydicom's own test: an explicit VR element has two capital letters after its tag.
            found_explicit = 0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B
            if found_explicit == implicit:
                found, expected = ("explicit", "implicit") if found_explicit else ("implicit", "explicit")
                raise ValueError(f"the dataset is encoded in {found} VR, but its transfer syntax "
                                 f"{syntax.name} is {expected} VR")
        elements: dict[BaseTag, Any] = {}
        complete_up_to = start
        for element in data_element_generator(body, implicit, little_endian, defer_size=_DEFER_BYTES):
            length = getattr(element, "length", 0)
            if isinstance(element, RawDataElement) and length not in (0, _UNDEFINED_LENGTH):
                available = end - element.value_tell
                loaded = len(element.value) if element.value is not None else min(length, available)
                if loaded != length:
                    raise ValueError(f"element {element.tag} declares {length} bytes but the dataset "
                                     f"ends after {max(available, 0)}")
            if element.tag in _PIXEL_DESCRIPTION_TAGS:
                _check_pixel_description(element, implicit)
            elif not implicit:
                _check_vr(element)
            elements[element.tag] = element
            complete_up_to = body.tell()
        body.seek(complete_up_to)
        rest = body.read()
        if rest.strip(b"\0"):
            raise ValueError(f"{len(rest)} byte(s) after the last complete element at offset "
                             f"{complete_up_to - start} are not a data element")
        if not elements:
            raise ValueError("the dataset holds no data elements")

        def text(keyword: str) -> str:
            # The raw bytes, not pydicom's value: a backslash would make a UID a list.
            element = elements.get(Tag(keyword))
            if element is None or not isinstance(element, RawDataElement) or element.length in (0, _UNDEFINED_LENGTH):
                return ""
            raw = element.value
            if raw is None:  # deferred (long): read enough of it to tell what it is
                body.seek(element.value_tell)
                raw = body.read(min(element.length, 4096))
            # Trailing NUL or space is padding (space is wrong for UI, but common).
            return raw.decode("ascii", "replace").rstrip(" \x00")

        return _Identity(
            study_uid=text("StudyInstanceUID"),
            sop_instance_uid=text("SOPInstanceUID"),
            series_uid=text("SeriesInstanceUID"),
            sop_class_uid=text("SOPClassUID"),
            modality=text("Modality").strip(),
            patient_name=text("PatientName").strip(),
            patient_id=text("PatientID").strip(),
            series_number=text("SeriesNumber"),
            instance_number=text("InstanceNumber"),
        )

    def handle_store(self, event: Event) -> int:
        """The ``EVT_C_STORE`` handler: store the object, answer its status.

        Also the handler of this node's C-GET SCU (``spectnode backfill``):
        objects a PACS sends back over an association this node opened go
        through exactly the same checks into the same spool and job store.
        """
        peer = self._peer(event)
        started = time.monotonic()
        receipt: dict[str, str] = {}
        status = self._store_object(event, peer, receipt)
        status = self._answered(peer, status, receipt, started)
        if self.audit is not None and receipt.get("study_uid"):
            try:
                self.audit.instance_received(
                    peer, study_uid=receipt["study_uid"], sop_class_uid=receipt.get("sop_class_uid", ""),
                    sop_instance_uid=receipt.get("sop_instance_uid", ""),
                    stored=receipt.get("stored") if status == STATUS_SUCCESS else None,
                    peer_is_requestor=not event.assoc.is_requestor, patient_id=receipt.get("patient_id"),
                    patient_name=receipt.get("patient_name"))
            except Exception:  # noqa: BLE001 - the audit is best effort
                _log.exception("audit of a C-STORE failed")
        return status

    def _answered(self, peer: Peer, status: int, receipt: dict[str, str], started: float) -> int:
        """Record the audit receipt of one object and report its answer; returns ``status``."""
        outcome = receipt.get("outcome") or _OUTCOMES.get(status, "refused")
        try:
            self.store.record_receipt(peer, receipt.get("study_uid"), receipt.get("sop_instance_uid"), status,
                                      outcome)
        except Exception as exc:  # noqa: BLE001 - the audit row is best effort (a full disk must not change the answer)
            _log.warning("C-STORE from %s@%s: audit receipt not recorded: %s", peer.ae_title, peer.address,
                         exception_name(exc), extra={"calling_ae": peer.ae_title})
        if self.on_answer is not None:
            try:
                self.on_answer(peer, status, outcome, receipt.get("study_uid"), time.monotonic() - started)
            except Exception:  # noqa: BLE001 - metrics and audit are best effort
                _log.exception("on_answer callback failed")
        return status

    def _store_object(self, event: Event, peer: Peer, receipt: dict[str, str]) -> int:
        """Check, spool and record one C-STORE; ``receipt`` gets its UIDs and outcome for the audit trail."""
        who = {"calling_ae": peer.ae_title}
        request_sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "").rstrip(" \x00")
        receipt["sop_instance_uid"] = request_sop[:64]
        if (problem := uid_problem(request_sop)) is not None:
            _log.error("C-STORE from %s@%s: the request's Affected SOP Instance UID%s %s; answered 0x%04X "
                       "(cannot understand)", peer.ae_title, peer.address, self._shown(request_sop), problem,
                       STATUS_CANNOT_UNDERSTAND, extra=who)
            return STATUS_CANNOT_UNDERSTAND
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - a broken request must not kill the association
            _log.error("C-STORE from %s: request without a usable dataset: %s", peer.ae_title, exception_name(exc),
                       extra=who)
            return STATUS_CANNOT_UNDERSTAND
        return self._store_data(data, str(event.context.transfer_syntax), peer, request_sop, receipt)

    def store_object(self, data: bytes, transfer_syntax: str, peer: Peer, request_sop: str = "") -> int:
        """Check, spool and record one encoded object (file meta + dataset) from ``peer``, with its receipt.

        What :meth:`handle_store` does after reading the request; ``spectnode
        classify DIR --send`` calls it for files on disk. Returns the C-STORE
        status (see the module docstring).
        """
        started = time.monotonic()
        receipt = {"sop_instance_uid": request_sop[:64]}
        return self._answered(peer, self._store_data(data, transfer_syntax, peer, request_sop, receipt), receipt,
                              started)

    def _store_data(self, data: bytes, transfer_syntax: str, peer: Peer, request_sop: str,
                    receipt: dict[str, str]) -> int:
        """Check, spool and record one encoded object; ``receipt`` gets its UIDs and outcome for the audit trail."""
        who = {"calling_ae": peer.ae_title}
        if len(data) > self.max_object_bytes:
            _log.error("C-STORE from %s@%s: object%s is %d bytes, more than node.max_object_bytes (%d); answered "
                       "0x%04X (out of resources)", peer.ae_title, peer.address, self._shown(request_sop), len(data),
                       self.max_object_bytes, STATUS_OUT_OF_RESOURCES, extra=who)
            return STATUS_OUT_OF_RESOURCES
        try:
            identity = self._identify(data, transfer_syntax)
        except InflatedTooLarge as exc:
            _log.error("C-STORE from %s@%s: object%s (%d bytes deflated): %s, node.max_object_bytes; answered "
                       "0x%04X (out of resources)", peer.ae_title, peer.address, self._shown(request_sop), len(data),
                       exc, STATUS_OUT_OF_RESOURCES, extra=who)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - pydicom fails in many ways on garbage
            own = _raised_by_own_checks(exc)
            _log.error(
                "C-STORE from %s@%s: object%s (transfer syntax %s, %d bytes) cannot be parsed: %s; "
                "answered 0x%04X (cannot understand)",
                peer.ae_title, peer.address, self._shown(request_sop), transfer_syntax, len(data),
                f"{type(exc).__name__}: {exc}" if own else exception_name(exc), STATUS_CANNOT_UNDERSTAND, extra=who,
            )
            if not own and self.log_patient_data:
                _log.debug("C-STORE from %s: the parser said (logging.patient_data is on): %s", peer.ae_title, exc,
                           extra=who)
            return STATUS_CANNOT_UNDERSTAND
        values = {"SOPClassUID": identity.sop_class_uid, "SOPInstanceUID": identity.sop_instance_uid,
                  "StudyInstanceUID": identity.study_uid, "SeriesInstanceUID": identity.series_uid}
        missing = [name for name in _REQUIRED_UIDS if not values[name]]
        invalid = [f"{name}{self._shown(values[name])} {problem}" for name in _REQUIRED_UIDS
                   if values[name] and (problem := uid_problem(values[name])) is not None]
        if missing or invalid:
            _log.error(
                "C-STORE from %s@%s: object%s (SOP class %s) %s; it cannot be filed; answered 0x%04X "
                "(data set does not match SOP class)", peer.ae_title, peer.address, self._shown(request_sop),
                identity.sop_class_uid if uid_problem(identity.sop_class_uid) is None else "?",
                "; ".join(([f"has no {' and no '.join(missing)}"] if missing else []) + invalid),
                STATUS_DOES_NOT_MATCH_SOP_CLASS, extra=who,
            )
            return STATUS_DOES_NOT_MATCH_SOP_CLASS
        study_uid = identity.study_uid
        receipt.update(study_uid=study_uid, sop_instance_uid=identity.sop_instance_uid,
                       sop_class_uid=identity.sop_class_uid)
        if self.log_patient_data:  # only then may the audit trail name the patient
            receipt.update(patient_id=identity.patient_id, patient_name=identity.patient_name)
        where = {**who, "study_uid": study_uid}
        if request_sop and request_sop != identity.sop_instance_uid:
            _log.warning("study %s from %s: the C-STORE request names another SOP Instance UID%s than the "
                         "dataset's%s; using the dataset's", study_uid, peer.ae_title, self._shown(request_sop),
                         self._shown(identity.sop_instance_uid), extra=where)
        digest = hashlib.sha256(data).hexdigest()
        # Named by its content: a changed copy goes to a file of its own, and the file the job store
        # records is never overwritten, whatever happens before the record is committed.
        path = self.data_dir.spooled_object(study_uid, identity.sop_instance_uid, digest)
        # Copies of the same bytes share the file name: one at a time per object, so that one whose record
        # fails never deletes the file another C-STORE recorded (and answered Success for).
        with self._object_lock(study_uid, identity.sop_instance_uid):
            try:
                known = self.store.known_instance(study_uid, identity.sop_instance_uid)
                if known == "own_output":
                    receipt.update(outcome="own result sent back; not re-processed", stored="own_output")
                    _log.info("study %s from %s: %s is one of this node's own results, sent back; not re-processed",
                              study_uid, peer.ae_title, self._object(identity), extra=where)
                    return STATUS_SUCCESS
                if known == digest:
                    receipt.update(outcome="identical copy received before; nothing to do", stored="duplicate")
                    _log.info("study %s from %s: %s received again, identical; nothing to do",
                              study_uid, peer.ae_title, self._object(identity), extra=where)
                    return STATUS_SUCCESS
                if self.disk.below_floor(len(data)):
                    receipt["outcome"] = "refused: free space below storage.min_free_bytes"
                    _log.error("study %s from %s: %s (%d bytes) refused: it would leave less than "
                               "storage.min_free_bytes (%d) free on %s; answered 0x%04X (out of resources)", study_uid,
                               peer.ae_title, self._object(identity), len(data), self.disk.min_free_bytes,
                               self.disk.path, STATUS_OUT_OF_RESOURCES, extra=where)
                    return STATUS_OUT_OF_RESOURCES
                write_durably(path, data)
                try:
                    outcome = self.store.record_instance(
                        InstanceRecord(
                            study_uid=study_uid,
                            sop_instance_uid=identity.sop_instance_uid,
                            series_uid=identity.series_uid,
                            sop_class_uid=identity.sop_class_uid,
                            modality=identity.modality,
                            transfer_syntax=transfer_syntax,
                            path=path,
                            sha256=digest,
                            size=len(data),
                        ),
                        peer,
                    )
                except BaseException:
                    # No spooled file without a record; a changed object's recorded copy is another file.
                    self._discard_unrecorded(study_uid, identity.sop_instance_uid, digest, path)
                    raise
            except (OSError, sqlite3.Error, StoreError) as exc:
                receipt["outcome"] = f"refused: cannot be stored ({type(exc).__name__})"
                _log.error(
                    "study %s from %s: %s cannot be stored (%s); answered 0x%04X (out of resources)",
                    study_uid, peer.ae_title, self._object(identity), exception_name(exc),
                    STATUS_OUT_OF_RESOURCES, extra=where,
                )
                return STATUS_OUT_OF_RESOURCES
        if self.log_patient_data:
            where = {**where, "patient_name": identity.patient_name, "patient_id": identity.patient_id}
        _log.info("study %s from %s@%s: stored %s (%s, %d bytes)%s",
                  study_uid, peer.ae_title, peer.address, self._object(identity),
                  transfer_syntax, len(data), " - it differs from the copy received before" if outcome == "changed"
                  else "", extra=where)
        receipt["outcome"] = {"new": "stored", "changed": "stored; it differs from the copy received before",
                              "duplicate": "identical copy received before; nothing to do",
                              "own_output": "own result sent back; not re-processed"}[outcome]
        receipt["stored"] = outcome
        if outcome in ("new", "changed") and self.on_stored is not None:
            try:
                self.on_stored(study_uid)
            except Exception:  # noqa: BLE001 - the object is safe; waking a stage is best effort
                _log.exception("study %s: on_stored callback failed", study_uid, extra=where)
        return STATUS_SUCCESS
