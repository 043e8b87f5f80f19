"""Storage Commitment Push Model (PS3.4 Annex J), the side that asks: request it, read the answer.

A library like :mod:`spectnode.dispatch.senders`, knowing nothing of the job
store. After its C-STOREs a sender asks the peer to take responsibility for
the objects with an N-ACTION (Action Type 1, "Request Storage Commitment",
a fresh Transaction UID and the SOP Class and Instance UID of each object);
the peer answers later with an N-EVENT-REPORT, Event Type 1 (every object
committed) or 2 (failures exist, each with its Failure Reason). The report
comes on the same association while it is open, or on an association of
its own that the peer opens to this node's AE title, proposing the SCP role
by SCP/SCU Role Selection (PS3.4 J.3.3; Orthanc always does the latter).

* :func:`request_commitment` sends the N-ACTION and checks its status;
* :func:`parse_event_report` reads an N-EVENT-REPORT into a
  :class:`CommitmentReport`, refusing a malformed one with the N-EVENT-REPORT
  status to answer (:class:`ReportError`);
* :meth:`CommitmentReport.problem` says whether a report commits every object
  of a request;
* :func:`event_report_handler` is the pynetdicom ``EVT_N_EVENT_REPORT``
  handler, for the node's SCP and for the association of the request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.status import GENERAL_STATUS

from spectnode.dispatch.errors import DispatchError
from spectnode.errors import exception_name
from spectnode.peer import Peer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = [
    "EVENT_FAILURES_EXIST",
    "EVENT_SUCCESSFUL",
    "STATUS_INVALID_ARGUMENT_VALUE",
    "STATUS_NO_SUCH_EVENT_TYPE",
    "STATUS_PROCESSING_FAILURE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE",
    "CommitmentReport",
    "CommitmentRequest",
    "ReportError",
    "describe_failure_reason",
    "event_report_handler",
    "parse_event_report",
    "request_commitment",
    "sop_references",
]

_log = logging.getLogger("spectnode.dispatch")

#: Storage Commitment Push Model SOP Class, and its well-known SOP Instance (PS3.4 J.3.1).
STORAGE_COMMITMENT_PUSH_MODEL: Final = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE: Final = UID("1.2.840.10008.1.20.1.1")
#: N-ACTION Action Type ID "Request Storage Commitment" (PS3.4 J.3.2).
ACTION_REQUEST_COMMITMENT: Final = 1
#: N-EVENT-REPORT Event Type IDs (PS3.4 J.3.3): every object committed; failures exist.
EVENT_SUCCESSFUL: Final = 1
EVENT_FAILURES_EXIST: Final = 2

#: N-EVENT-REPORT response statuses (PS3.7 10.1.1.1.8).
STATUS_SUCCESS: Final = 0x0000
STATUS_PROCESSING_FAILURE: Final = 0x0110
STATUS_NO_SUCH_EVENT_TYPE: Final = 0x0113
STATUS_INVALID_ARGUMENT_VALUE: Final = 0x0115

#: Failure Reason (0008,1197) values of a storage commitment (PS3.3 C.14.1.1).
_FAILURE_REASONS: Final = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP Class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}

SopReference = tuple[str, str]


def describe_failure_reason(code: int | None) -> str:
    """``"0x0112 (no such object instance)"``: a Failure Reason and its meaning."""
    if code is None:
        return "no failure reason given"
    return f"0x{code:04X} ({_FAILURE_REASONS.get(code, 'unknown failure reason')})"


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT of the Storage Commitment Push Model.

    Attributes:
        transaction_uid: Transaction UID of the request it answers.
        event_type: 1 (successful) or 2 (failures exist).
        committed: (SOP Class UID, SOP Instance UID) of each object committed
            (Referenced SOP Sequence).
        failed: (SOP Class UID, SOP Instance UID, Failure Reason or None) of
            each object not committed (Failed SOP Sequence).
    """

    transaction_uid: str
    event_type: int
    committed: tuple[SopReference, ...]
    failed: tuple[tuple[str, str, int | None], ...]

    def problem(self, references: Sequence[SopReference]) -> str | None:
        """Why the report does not commit every one of ``references``, or None if it does.

        Each object must be in the Referenced SOP Sequence with its SOP Class;
        one in the Failed SOP Sequence, or in neither, is not committed. Objects
        are named by their position among ``references`` ("object 2 of 3"), the
        order of the item's files: the reason is stored and shown, and a SOP
        Instance UID is patient data.
        """
        committed = set(self.committed)
        failures = {(c, i): reason for c, i, reason in self.failed}
        problems = []
        for n, ref in enumerate(references, start=1):
            if ref in committed:
                continue
            name = f"object {n} of {len(references)}"
            if ref in failures:
                problems.append(f"{name} failed: {describe_failure_reason(failures[ref])}")
            else:
                problems.append(f"{name} is not in the report")
        if not problems:
            return None
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return (f"storage commitment not confirmed for {len(problems)} of {len(references)} object(s) "
                f"(N-EVENT-REPORT event type {self.event_type}, transaction {self.transaction_uid}): {shown}")


class ReportError(ValueError):
    """An N-EVENT-REPORT that cannot be read as a storage commitment result.

    Attributes:
        status: The N-EVENT-REPORT response status to answer with.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _uid(item: Dataset, keyword: str) -> str:
    return str(item.get(keyword, "") or "").rstrip("\0 ")


def parse_event_report(event_type: int | None, information: Dataset | None) -> CommitmentReport:
    """Read an N-EVENT-REPORT's Event Type ID and Event Information (PS3.4 Table J.3-2).

    Raises:
        ReportError: For an event type other than 1 or 2 (status 0x0113), and
            for event information without a Transaction UID or with a
            sequence item that lacks its SOP Class or Instance UID (0x0115).
    """
    if event_type not in (EVENT_SUCCESSFUL, EVENT_FAILURES_EXIST):
        raise ReportError(f"event type {event_type} is not a storage commitment result (1 or 2)",
                          STATUS_NO_SUCH_EVENT_TYPE)
    if information is None:
        raise ReportError("the report has no event information", STATUS_INVALID_ARGUMENT_VALUE)
    transaction_uid = _uid(information, "TransactionUID")
    if not transaction_uid:
        raise ReportError("the event information has no Transaction UID", STATUS_INVALID_ARGUMENT_VALUE)

    def references(keyword: str) -> list[tuple[str, str, Dataset]]:
        found = []
        for n, item in enumerate(information.get(keyword) or [], start=1):
            sop_class, sop_instance = _uid(item, "ReferencedSOPClassUID"), _uid(item, "ReferencedSOPInstanceUID")
            if not sop_class or not sop_instance:
                raise ReportError(f"item {n} of the {keyword} lacks its Referenced SOP Class or Instance UID",
                                  STATUS_INVALID_ARGUMENT_VALUE)
            found.append((sop_class, sop_instance, item))
        return found

    committed = tuple((c, i) for c, i, _ in references("ReferencedSOPSequence"))
    failed = []
    for sop_class, sop_instance, item in references("FailedSOPSequence"):
        reason = item.get("FailureReason")
        failed.append((sop_class, sop_instance, int(reason) if isinstance(reason, int) else None))
    return CommitmentReport(transaction_uid, int(event_type), committed, tuple(failed))


@dataclass(frozen=True)
class CommitmentRequest:
    """A Storage Commitment request to make after the C-STOREs of one delivery.

    Attributes:
        transaction_uid: A UID used for no other request.
        references: (SOP Class UID, SOP Instance UID) of each object to commit.
        on_report: Takes a report that comes on the same association and
            returns the status to answer it with.
        settled: True once the report has come, on whatever association: ends
            the wait for it on this one early.
        wait_seconds: How long the association stays open after the N-ACTION
            response for a report on it; a peer reports on an association of
            its own after that.
    """

    transaction_uid: str
    references: tuple[SopReference, ...]
    on_report: Callable[[CommitmentReport, Peer], int] | None = None
    settled: Callable[[], bool] | None = None
    wait_seconds: float = 1.0


def sop_references(files: Sequence[Path]) -> tuple[SopReference, ...]:
    """(SOP Class UID, SOP Instance UID) of each file, in order.

    Raises:
        DispatchError: (not retryable) if a file is missing, unreadable or lacks
            the UIDs; it names the file by its position (a result file's name
            holds its SOP Instance UID) and an exception by its class.
    """
    found = []
    for n, path in enumerate(files, start=1):
        name = f"result file {n} of {len(files)} of the item"
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except FileNotFoundError:
            raise DispatchError(f"{name} does not exist", retryable=False) from None
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise DispatchError(f"{name} cannot be read as DICOM ({exception_name(exc)})", retryable=False) from None
        sop_class, sop_instance = _uid(header, "SOPClassUID"), _uid(header, "SOPInstanceUID")
        if not sop_class or not sop_instance:
            raise DispatchError(f"{name} has no SOP Class or Instance UID", retryable=False)
        found.append((sop_class, sop_instance))
    return tuple(found)


def request_commitment(assoc: Any, request: CommitmentRequest, target: object, timeout: float) -> None:
    """Send the N-ACTION of ``request`` on an established association and check its response.

    Raises:
        DispatchError: If the association ends instead (Orthanc aborts it when
            the calling AE title is not one of its ``DicomModalities``), no
            response comes within ``timeout``, the response cannot be read
            (pynetdicom then aborts), or it is not Success.
    """
    info = Dataset()
    info.TransactionUID = request.transaction_uid
    items = []
    for sop_class, sop_instance in request.references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    # pynetdicom returns no status both for a DIMSE timeout and for an association the peer
    # ended. It gives up waiting only after the whole timeout (a monotonic queue wait), so an
    # answerless return sooner than that is the peer's doing.
    # An invalid response returns no status either. EVT_DIMSE_RECV fires on the DUL thread
    # before the message is queued for this one, so it has been seen when send_n_action returns.
    # Ours goes first: pynetdicom's own logging handler raises on a response without Status, and
    # the handlers after one that raises are skipped.
    responses: list[list[str]] = []  # per N-ACTION-RSP received: the required elements it lacks

    def on_received(event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            command = event.message.command_set
            responses.append([k for k in ("Status", "MessageIDBeingRespondedTo") if command.get(k) is None])

    assoc.bind(evt.EVT_DIMSE_RECV, on_received)
    for handler, args in list(assoc.get_handlers(evt.EVT_DIMSE_RECV)):
        if handler is not on_received:  # moved behind ours; the list is never empty meanwhile
            assoc.unbind(evt.EVT_DIMSE_RECV, handler)
            assoc.bind(evt.EVT_DIMSE_RECV, handler, args)
    started = time.monotonic()
    try:
        status, _reply = assoc.send_n_action(info, ACTION_REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH_MODEL,
                                             STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE)
    finally:
        assoc.unbind(evt.EVT_DIMSE_RECV, on_received)
    if not status or "Status" not in status:
        early = time.monotonic() - started < timeout
        # A valid answer decoded just after the wait ran out is a timeout, not a broken answer.
        if responses and early:
            missing = ", ".join(sorted({k for lacking in responses for k in lacking}))
            why = f"it lacks {missing}" if missing else "it could not be decoded"
            raise DispatchError(f"{target} answered the storage commitment request with an N-ACTION response that "
                                f"cannot be read ({why}); the association was aborted")
        if early:
            raise DispatchError(f"{target} ended the association when asked for storage commitment (N-ACTION); "
                                "the peer may not know this node's AE title")
        raise DispatchError(f"no N-ACTION response from {target} within {timeout:g} s to the storage commitment "
                            "request")
    code = int(status.Status)
    if code != STATUS_SUCCESS:
        meaning = GENERAL_STATUS.get(code, ("", "unknown status"))[1]
        comment = f": {status.ErrorComment}" if status.get("ErrorComment") else ""
        raise DispatchError(f"{target} refused storage commitment: N-ACTION status 0x{code:04X} ({meaning}){comment}")


def event_report_handler(on_report: Callable[[CommitmentReport, Peer], int]) -> Callable[[Any], tuple[int, None]]:
    """A pynetdicom ``EVT_N_EVENT_REPORT`` handler that gives each storage commitment report to ``on_report``.

    ``on_report`` returns the status to answer; a malformed report is answered
    with :attr:`ReportError.status`, and an exception in ``on_report`` with
    0x0110 (processing failure), so the peer knows the report was not taken.
    """

    def handle(event: Any) -> tuple[int, None]:
        peer = Peer.from_association(event.assoc)
        who = {"calling_ae": peer.ae_title}
        if str(event.request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH_MODEL:
            return STATUS_PROCESSING_FAILURE, None  # not a context this node accepts for reports
        try:
            report = parse_event_report(event.request.EventTypeID, event.event_information)
        except ReportError as exc:
            _log.warning("N-EVENT-REPORT from %s@%s refused: %s; answered 0x%04X", peer.ae_title, peer.address, exc,
                         exc.status, extra=who)
            return exc.status, None
        except Exception as exc:  # noqa: BLE001 - pydicom fails in many ways on a broken dataset
            # The message may quote the dataset's values (SOP Instance UIDs): its class only.
            _log.warning("N-EVENT-REPORT from %s@%s: its event information cannot be read (%s); answered "
                         "0x%04X", peer.ae_title, peer.address, exception_name(exc),
                         STATUS_INVALID_ARGUMENT_VALUE, extra=who)
            return STATUS_INVALID_ARGUMENT_VALUE, None
        try:
            return on_report(report, peer), None
        except Exception:  # noqa: BLE001 - the peer must hear that the report was not taken
            _log.exception("N-EVENT-REPORT from %s@%s (transaction %s) could not be recorded; answered 0x%04X",
                           peer.ae_title, peer.address, report.transaction_uid, STATUS_PROCESSING_FAILURE, extra=who)
            return STATUS_PROCESSING_FAILURE, None

    return handle
