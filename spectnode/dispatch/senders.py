"""Send result files to one destination: a folder, a DICOM peer, or the peer that sent the study.

:func:`send_files` is the one entry point. It either delivers every file or
raises :class:`DispatchError` whose ``reason`` says, in words a PACS
administrator can act on, what went wrong::

    send_files(dest, [sr_path, sc_path], calling_ae_title="SPECTNODE")

Destination types (``DestinationConfig.type``):

``folder``
    Files are copied atomically (temporary file, fsync, rename) to
    ``<path>/<StudyInstanceUID>/<Modality>_<SOPInstanceUID>.dcm``; sending the
    same object twice overwrites it with identical bytes.
``dicom``
    C-STORE to ``ae_title`` at ``host``:``port``.
``sender``
    C-STORE back to the peer that sent the study: its calling AE title
    (or ``ae_title`` when the configuration overrides it) at the address the
    association came from, on the configured ``port`` (a peer's listening port
    cannot be learnt from its association, whose source port is ephemeral).

The C-STORE SCU proposes, for every SOP class among the files, the files' own
transfer syntaxes and Explicit + Implicit VR Little Endian. A file goes in its
own transfer syntax when the peer accepts it; a compressed file whose syntax
the peer refuses is decompressed first. Warning statuses (0xB000, 0xB006,
0xB007, ...) count as delivered and are logged.

A reason names a result file by its position among the item's files ("result
file 2 of 3"), never by its path or name, which hold its SOP Instance UID; of
an exception it keeps the class and errno name (:mod:`spectnode.errors`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import build_context
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from spectnode.config import Config, DestinationConfig, resolve_folder
from spectnode.dispatch.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReport,
    CommitmentRequest,
    event_report_handler,
    request_commitment,
)
from spectnode.dispatch.errors import DispatchError
from spectnode.errors import exception_name
from spectnode.fsutil import copy_durably, instance_file_name, safe_file_name
from spectnode.net.rejection import RejectionWatch
from spectnode.net.tls import client_context

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence

    from pydicom.dataset import Dataset

    from spectnode.peer import Peer

__all__ = [
    "SENDER_DESTINATION_TYPE",
    "DispatchError",
    "StoreTarget",
    "copy_to_folder",
    "destinations_by_name",
    "describe_store_status",
    "resolve_store_target",
    "send_files",
    "store_to_peer",
]

LOGGER = logging.getLogger("spectnode.dispatch")

#: Destination type that returns results to the peer that sent the study.
SENDER_DESTINATION_TYPE = "sender"

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# PS3.8 9.3.1: at most 128 presentation contexts (odd IDs 1-255) per association.
_MAX_CONTEXTS = 128
# Longest wait of the plain TCP probe that explains a failed connection.
_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class StoreTarget:
    """Where a C-STORE goes: called AE title, host and port; over TLS with ``tls_context``."""

    ae_title: str
    host: str
    port: int
    tls_context: ssl.SSLContext | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def destinations_by_name(cfg: Config) -> dict[str, DestinationConfig]:
    """The configured destinations by name, folder paths made absolute-or-cwd-relative.

    This is the mapping :meth:`spectnode.dispatch.Outbox.deliver_due` takes:
    relative folder paths in the configuration are relative to
    ``storage.data_dir``, which :func:`send_files` does not know.
    """
    resolved: dict[str, DestinationConfig] = {}
    for dest in cfg.destinations:
        if dest.type == "folder" and dest.path is not None:
            dest = dataclasses.replace(dest, path=resolve_folder(cfg, dest))
        resolved[dest.name] = dest
    return resolved


def resolve_store_target(destination: DestinationConfig, sender: Peer | None) -> StoreTarget:
    """The C-STORE target of a ``dicom`` or ``sender`` destination.

    Raises:
        DispatchError: (not retryable) if the destination is incomplete, or is
            a ``sender`` destination and no sender was recorded.
    """
    kind = getattr(destination, "type", None)
    if kind == SENDER_DESTINATION_TYPE:
        if sender is None:
            raise DispatchError(
                f"destination {destination.name!r} returns results to the sending peer, "
                "but no sender was recorded for this study",
                retryable=False,
            )
        port = getattr(destination, "port", None)
        if port is None:
            raise DispatchError(
                f"destination {destination.name!r} has no port: the port the sending peer listens on "
                "must be configured",
                retryable=False,
            )
        ae_title = getattr(destination, "ae_title", None) or sender.ae_title
        return StoreTarget(ae_title=ae_title, host=sender.address, port=int(port))
    missing = [key for key in ("ae_title", "host", "port") if getattr(destination, key, None) is None]
    if missing:
        raise DispatchError(
            f"destination {destination.name!r} lacks {', '.join(missing)}", retryable=False
        )
    assert destination.ae_title is not None and destination.host is not None and destination.port is not None
    context = None
    if getattr(destination, "tls", False):
        try:
            context = client_context(destination.tls_ca_certificates, destination.tls_certificate,
                                     destination.tls_private_key)
        except (OSError, ValueError) as exc:
            raise DispatchError(f"destination {destination.name!r}: its TLS files cannot be used: {exc}",
                                retryable=False) from None
    return StoreTarget(ae_title=destination.ae_title, host=destination.host, port=int(destination.port),
                       tls_context=context)


def send_files(
    destination: DestinationConfig,
    files: Sequence[Path],
    *,
    calling_ae_title: str,
    sender: Peer | None = None,
    timeout: float = 30,
    commitment: CommitmentRequest | None = None,
) -> None:
    """Deliver every one of ``files`` to ``destination``, or raise saying why not.

    Args:
        destination: A ``folder``, ``dicom`` or ``sender`` destination. Folder
            paths are used as given (see :func:`destinations_by_name`).
        files: DICOM Part 10 files.
        calling_ae_title: This node's AE title, used as calling AE title.
        sender: The peer that sent the study; needed by ``sender`` destinations.
        timeout: Seconds allowed for connecting, for association negotiation
            and for each C-STORE response.
        commitment: For a ``dicom`` or ``sender`` destination: request
            Storage Commitment of the files after storing them
            (:func:`store_to_peer`).

    Raises:
        DispatchError: With the reason; files already stored before a failure
            stay stored, so a retry sends them again (peers and folders treat a
            repeated SOP instance as the same object).
    """
    kind = getattr(destination, "type", None)
    if kind == "folder":
        if destination.path is None:
            raise DispatchError(f"folder destination {destination.name!r} has no path", retryable=False)
        if commitment is not None:
            raise DispatchError(f"folder destination {destination.name!r} cannot commit storage", retryable=False)
        copy_to_folder(files, Path(destination.path))
        return
    if kind in ("dicom", SENDER_DESTINATION_TYPE):
        target = resolve_store_target(destination, sender)
        store_to_peer(files, target, calling_ae_title=calling_ae_title, timeout=timeout, commitment=commitment)
        return
    raise DispatchError(f"destination {destination.name!r} has unknown type {kind!r}", retryable=False)


# ------------------------------------------------------------------------ folder


def _file_label(position: int, count: int) -> str:
    """``"result file 2 of 3"``: how a reason names a file (its name holds its SOP Instance UID)."""
    return f"result file {position} of {count}"


def _read_headers(files: Sequence[Path]) -> list[tuple[Path, str, Dataset]]:
    """Each file's path, label (:func:`_file_label`) and header."""
    read: list[tuple[Path, str, Dataset]] = []
    for position, path in enumerate(files, start=1):
        label = _file_label(position, len(files))
        try:
            read.append((Path(path), label, pydicom.dcmread(path, stop_before_pixels=True)))
        except FileNotFoundError:
            raise DispatchError(f"{label} does not exist", retryable=False) from None
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise DispatchError(f"{label} cannot be read as DICOM ({exception_name(exc)})", retryable=False) from None
    return read


def copy_to_folder(files: Sequence[Path], folder: Path) -> list[Path]:
    """Copy each file durably to ``folder/<StudyInstanceUID>/<Modality>_<SOPInstanceUID>.dcm``.

    Each copy is written like every durable file of the node
    (:func:`spectnode.fsutil.copy_durably`: temporary file, fsync, rename,
    fsync of the study folder and, for a new study folder, of ``folder``), so
    a reader never sees a partial file and a crash leaves either the old or
    the new one. Names follow :func:`spectnode.fsutil.instance_file_name`.

    Returns:
        The written paths, in the order of ``files``.

    Raises:
        DispatchError: If a file is missing or unreadable (not retryable) or
            the folder cannot be written (retryable: a full disk or an unmounted
            share can come back).
    """
    written: list[Path] = []
    for source, label, header in _read_headers(files):
        study_dir = folder / safe_file_name(str(header.get("StudyInstanceUID", "") or "unknown-study"))
        target = study_dir / instance_file_name(str(header.get("Modality", "") or ""),
                                                str(header.get("SOPInstanceUID", "") or source.stem))
        try:
            copy_durably(source, target)
        except FileNotFoundError as exc:
            if not source.exists():
                raise DispatchError(f"{label} does not exist", retryable=False) from None
            raise DispatchError(f"cannot write {label} into {str(study_dir)!r} ({exception_name(exc)})") from None
        except OSError as exc:
            raise DispatchError(f"cannot write {label} into {str(study_dir)!r} ({exception_name(exc)})") from None
        written.append(target)
    return written


# ------------------------------------------------------------------------ DICOM


def describe_store_status(code: int) -> str:
    """``"0xA700 (Refused: Out of Resources)"``: a C-STORE status code and its meaning."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, "unknown status"))[1]
    return f"0x{code:04X} ({meaning})"


def _connect_failure_reason(target: StoreTarget, timeout: float) -> str:
    """Find out why TCP to ``target`` fails, by trying once more with a plain socket.

    The probe waits at most :data:`_PROBE_TIMEOUT_S`: the association attempt
    has already waited its full timeout, and the dispatcher must not spend
    that twice on one unreachable destination while others wait.
    """
    probe_timeout = min(timeout, _PROBE_TIMEOUT_S)
    try:
        with socket.create_connection((target.host, target.port), timeout=probe_timeout):
            return f"could not open a TCP connection to {target} (it answered a later attempt)"
    except socket.gaierror as exc:
        return f"cannot resolve host {target.host!r}: {exc.strerror or exc}"
    except TimeoutError:
        return f"connection to {target} timed out after {timeout:g} s (and a {probe_timeout:g} s probe)"
    except ConnectionRefusedError:
        return f"connection refused by {target.host}:{target.port} (nothing listens there)"
    except OSError as exc:
        text = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
        return f"cannot connect to {target}: {text}"


def _presentation_contexts(headers: Sequence[Dataset]) -> list[Any]:
    """One context per (SOP class, non-default syntax) and one uncompressed context per SOP class."""
    contexts = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for header in headers:
        sop_class = UID(header.SOPClassUID)
        own = UID(header.file_meta.TransferSyntaxUID)
        wanted: list[tuple[UID, tuple[UID, ...]]] = [(sop_class, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
        if own not in _UNCOMPRESSED:
            wanted.insert(0, (sop_class, (own,)))
        for abstract, syntaxes in wanted:
            key = (str(abstract), tuple(str(s) for s in syntaxes))
            if key not in seen:
                seen.add(key)
                contexts.append(build_context(abstract, list(syntaxes)))
    return contexts


def _choose_encoding(assoc: Any, header: Dataset) -> str | None:
    """Return "as-is", "decompress", or None if the peer accepted no usable context."""
    sop_class = UID(header.SOPClassUID)
    own = UID(header.file_meta.TransferSyntaxUID)
    accepted = [UID(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
    if own in accepted:
        return "as-is"
    uncompressed_accepted = any(s in _UNCOMPRESSED for s in accepted)
    if own in _UNCOMPRESSED and uncompressed_accepted:
        return "as-is"  # pynetdicom converts between explicit and implicit VR
    if own.is_compressed and uncompressed_accepted:
        return "decompress"
    return None


def store_to_peer(
    files: Sequence[Path],
    target: StoreTarget,
    *,
    calling_ae_title: str,
    timeout: float = 30,
    commitment: CommitmentRequest | None = None,
) -> None:
    """C-STORE every file to ``target`` over one association.

    With ``commitment``, the association also proposes the Storage Commitment
    Push Model, and once every file is stored the N-ACTION of ``commitment``
    goes out on it (:func:`~spectnode.dispatch.commitment.request_commitment`);
    then the association stays open for up to ``commitment.wait_seconds`` for
    a report on it (given to ``commitment.on_report``) before it is released.
    Returning means the request was taken, not that the objects are committed.

    Raises:
        DispatchError: Connection refused or timed out, association rejected
            (with the peer's result, source and reason) or aborted, no
            presentation context accepted for a file's SOP class (not
            retryable: the peer does not take such objects), a C-STORE
            failure status (hex code and meaning); with ``commitment``, a peer
            that does not accept the Storage Commitment Push Model (not
            retryable, and nothing is stored), or an N-ACTION that fails.
    """
    read = _read_headers(files)
    for _, label, header in read:
        if "SOPClassUID" not in header or "TransferSyntaxUID" not in header.file_meta:
            raise DispatchError(f"{label} has no SOP Class UID or transfer syntax", retryable=False)
    contexts = _presentation_contexts([header for _, _, header in read])
    if commitment is not None:
        contexts.append(build_context(STORAGE_COMMITMENT_PUSH_MODEL, list(_UNCOMPRESSED)))
    if len(contexts) > _MAX_CONTEXTS:
        raise DispatchError(
            f"{len(contexts)} presentation contexts needed; one association allows {_MAX_CONTEXTS}",
            retryable=False,
        )

    ae = AE(ae_title=calling_ae_title)
    ae.requested_contexts = contexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    events: set[str] = set()
    connected_at: list[float] = []

    def on_connected(event: Any) -> None:
        events.add("connected")
        connected_at.append(time.monotonic())

    rejections = RejectionWatch()
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, on_connected),
        (evt.EVT_ACCEPTED, lambda event: events.add("accepted")),
        rejections.handler,
    ]
    answers = _ReportAnswers(commitment.on_report if commitment is not None else None)
    handlers += answers.handlers()
    started = time.monotonic()
    try:
        tls_args = (target.tls_context, target.host) if target.tls_context is not None else None
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, evt_handlers=handlers,
                             tls_args=tls_args)
    except socket.gaierror as exc:  # pynetdicom resolves the host before connecting
        raise DispatchError(
            f"cannot resolve host {target.host!r}: {exc.strerror or exc}", peer_unreachable=True
        ) from None
    if not assoc.is_established:
        raise _association_failure(assoc, target, events, timeout, started, connected_at, rejections)

    try:
        if commitment is not None and not any(cx.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL
                                              for cx in assoc.accepted_contexts):
            raise DispatchError(f"{target} does not accept the Storage Commitment Push Model; turn "
                                "storage_commitment off for this destination, or on at the peer", retryable=False)
        for path, label, header in read:
            encoding = _choose_encoding(assoc, header)
            sop_class = UID(header.SOPClassUID)
            if encoding is None:
                # The peer's configuration says it takes no such object: retrying cannot help.
                syntax = UID(header.file_meta.TransferSyntaxUID)
                raise DispatchError(
                    f"{target} accepted no presentation context for {sop_class.name} ({sop_class}) "
                    f"in {syntax.name} or an uncompressed transfer syntax",
                    retryable=False,
                )
            dataset = pydicom.dcmread(path)
            if encoding == "decompress":
                LOGGER.info("%s does not accept %s; sending %s decompressed", target,
                            UID(header.file_meta.TransferSyntaxUID).name, label)
                try:
                    # Same object in another encoding: keep its SOP Instance UID.
                    dataset.decompress(generate_instance_uid=False)
                except Exception as exc:  # decoder plugins raise assorted types
                    raise DispatchError(
                        f"cannot decompress {label} for {target} ({exception_name(exc)})", retryable=False
                    ) from None
            status = assoc.send_c_store(dataset)
            if not status or "Status" not in status:
                if assoc.is_aborted:
                    raise DispatchError(f"association with {target} aborted while storing {label}")
                raise DispatchError(f"no C-STORE response from {target} within {timeout:g} s for {label}")
            code = int(status.Status)
            category = code_to_category(code)
            if category == "Success":
                continue
            if category == "Warning":
                LOGGER.warning("%s stored %s with warning %s", target, label, describe_store_status(code))
                continue
            comment = f": {status.ErrorComment}" if status.get("ErrorComment") else ""
            raise DispatchError(f"{target} refused {label}: C-STORE status {describe_store_status(code)}{comment}")
        if commitment is not None:
            request_commitment(assoc, commitment, target, timeout)
            _wait_for_report(assoc, commitment, answers)
    finally:
        if assoc.is_established:
            assoc.release()


#: After the wait for a report on the association, how long more a report taken on it may take to be
#: answered before the association is released anyway.
ANSWER_GRACE_SECONDS = 2.0


class _ReportAnswers:
    """The N-EVENT-REPORTs taken on one association, and how many of their responses are on the wire.

    pynetdicom runs the report handler on the association's own thread and
    writes the response after it returns; a release from the sending thread
    in between would go out first, and the peer would not hear that its
    report was taken (and send it again).
    """

    def __init__(self, on_report: Callable[[CommitmentReport, Peer], int] | None) -> None:
        self._handle = event_report_handler(on_report) if on_report is not None else None
        self._lock = threading.Lock()
        self._taken = self._responses = self._written = 0

    def handlers(self) -> list[tuple[Any, Callable[[Any], Any]]]:
        """The pynetdicom event handlers that take the reports and count their responses."""
        if self._handle is None:
            return []
        return [(evt.EVT_N_EVENT_REPORT, self._take), (evt.EVT_DIMSE_SENT, self._response_encoded),
                (evt.EVT_PDU_SENT, self._pdu_written)]

    def _take(self, event: Any) -> tuple[int, None]:
        assert self._handle is not None
        with self._lock:
            self._taken += 1
        return self._handle(event)

    def _response_encoded(self, event: Any) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            with self._lock:
                self._responses += 1

    def _pdu_written(self, event: Any) -> None:
        # The response (a command without a data set) is one P-DATA-TF, written after its DIMSE_SENT event;
        # while the sender waits, nothing else is sent on the association.
        if isinstance(event.pdu, P_DATA_TF):
            with self._lock:
                self._written = min(self._written + 1, self._responses)

    @property
    def unanswered(self) -> bool:
        """A report was taken whose response is not yet written to the socket."""
        with self._lock:
            return self._written < self._taken


def _wait_for_report(assoc: Any, commitment: CommitmentRequest, answers: _ReportAnswers) -> None:
    """Keep the association open for a report on it, until one has come or ``commitment.wait_seconds`` pass,
    and until every report taken on it has its response written (at most :data:`ANSWER_GRACE_SECONDS` more).

    The association's own thread answers a report that comes meanwhile; this
    only decides when to release.
    """
    deadline = time.monotonic() + commitment.wait_seconds
    while assoc.is_established:
        now = time.monotonic()
        if answers.unanswered:
            if now >= deadline + ANSWER_GRACE_SECONDS:
                return
        elif now >= deadline or (commitment.settled is not None and commitment.settled()):
            return
        time.sleep(0.01)


def _association_failure(
    assoc: Any, target: StoreTarget, events: set[str], timeout: float, started: float,
    connected_at: list[float], rejections: RejectionWatch,
) -> DispatchError:
    rsp = rejections.rejection(assoc)
    if rsp is not None:
        return DispatchError(
            f"association rejected by {target}: {rsp.result_str}, source {rsp.source_str}, "
            f"reason {rsp.reason_str!r}",
            peer_unreachable=True,
            rejected_for_now=rsp.result == 0x02,
            asked_at=started,
        )
    if "connected" not in events:
        return DispatchError(_connect_failure_reason(target, timeout), peer_unreachable=True)
    if "accepted" in events:
        # The peer is up but takes none of these objects: a permanent refusal,
        # and other items (other SOP classes) for it may well go through.
        return DispatchError(
            f"{target} accepted the association but none of the proposed presentation contexts",
            retryable=False,
        )
    # pynetdicom stops waiting for the answer only after the whole ACSE timeout from the
    # connection, so an end sooner than that is the peer's doing.
    if time.monotonic() - connected_at[0] >= timeout:
        return DispatchError(f"no answer to the association request from {target} within {timeout:g} s",
                             peer_unreachable=True)
    return DispatchError(f"association with {target} aborted during negotiation", peer_unreachable=True)

