"""Retrieving series from a PACS: C-GET or C-MOVE (Study Root model, SERIES level).

* **C-GET**: the PACS sends the objects back over the same association, as
  C-STORE requests to this SCU. They are stored by the receive stage's own
  handler (:meth:`spectnode.node.stages.receive.ReceiveStage.handle_store`),
  into the same spool and job store, with the same checks and statuses, as
  if they had been pushed. The association proposes one presentation context
  per storage SOP class *and transfer syntax* (:func:`get_storage_contexts`):
  the PACS can only send an object over a context accepted with a transfer
  syntax it has or can convert to (PS3.4 C.4.3.3), and an acceptor keeps one
  syntax of each context. With one context per SOP class listing every
  syntax, Orthanc accepts Explicit VR Little Endian, must decompress each
  compressed object to send it, and fails the sub-operation (0xC000, "Cannot
  transcode") where it has no codec, e.g. for JPEG 2000.
* **C-MOVE**: the PACS opens its own association to this node's AE title
  (``node.ae_title``, which the PACS must know with its host and port) and
  stores the objects to the node's listening receive stage.

Either way the final response comes only after every sub-operation (PS3.4
C.4.2.3/C.4.3.3), and the receive stage answers a C-STORE only after the
object is durable in the job store: once :func:`retrieve_series` returns
without raising, every object of the series is in the job store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from spectnode.backfill.query import PENDING, PacsClient, PacsRefused, PacsUnavailable, check_status
from spectnode.node.stages.receive import ACCEPTED_TRANSFER_SYNTAXES, RETIRED_STORAGE_SOP_CLASSES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["GET_STORAGE_CLASSES", "RetrieveOutcome", "get_storage_contexts", "retrieve_series"]

#: Storage SOP classes offered for C-GET: those an NM whole-body view comes in
#: (NM Image, the retired NM Image of older cameras, and Secondary Capture with
#: Modality NM, as GE exports do).
GET_STORAGE_CLASSES: Final = (
    NuclearMedicineImageStorage,
    *RETIRED_STORAGE_SOP_CLASSES,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
)


@dataclass(frozen=True)
class RetrieveOutcome:
    """Sub-operation counts of the retrieves of one study (summed over its series)."""

    completed: int
    failed: int
    warning: int


def get_storage_contexts() -> list[tuple[str, list[str]]]:
    """The storage presentation contexts a C-GET proposes: one per SOP class and transfer syntax.

    So that every object comes as the PACS holds it, without decompressing or
    re-encoding on its side (PS3.4 C.4.3.3: a sub-operation needs a context
    accepted with the object's syntax or one the PACS converts to). 6 classes
    by 13 syntaxes make 78 contexts, within the 128 an association may carry.
    """
    return [(uid, [syntax]) for uid in GET_STORAGE_CLASSES for syntax in ACCEPTED_TRANSFER_SYNTAXES]


def _count(status: Dataset, keyword: str) -> int:
    value = status.get(keyword)
    return int(value) if value not in (None, "") else 0


def retrieve_series(client: PacsClient, study_uid: str, series_uids: Sequence[str], *,
                    store_handler: Callable[[Any], int] | None = None) -> RetrieveOutcome:
    """Retrieve whole series of one study by the entry's method, on one association.

    Args:
        client: The PACS.
        study_uid, series_uids: What to retrieve.
        store_handler: For C-GET, the ``EVT_C_STORE`` handler that stores the
            objects (the receive stage's); unused for C-MOVE.

    Returns:
        The sub-operation counts.

    Raises:
        PacsUnavailable: The PACS could not be reached or stopped answering.
        PacsRefused: A failure status, or sub-operations that failed (the
            message says how many).
    """
    get = client.pacs.retrieve == "get"
    if get and store_handler is None:
        raise ValueError("C-GET needs a store handler")
    model = StudyRootQueryRetrieveInformationModelGet if get else StudyRootQueryRetrieveInformationModelMove
    contexts: list[tuple[str, Sequence[str] | None]] = [(model, None)]
    roles = []
    handlers = []
    if get:
        contexts += get_storage_contexts()
        roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE_CLASSES]
        handlers = [(evt.EVT_C_STORE, store_handler)]
    what = f"C-{'GET' if get else 'MOVE'} of a series"
    completed = failed = warning = 0
    with client.associate(contexts, roles=roles, handlers=handlers) as assoc:
        for series_uid in series_uids:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            if get:
                responses = assoc.send_c_get(query, model)
            else:
                responses = assoc.send_c_move(query, client.calling_ae_title, model)
            final: Dataset | None = None
            for status, _identifier in responses:
                value = check_status(status, what)
                if value not in PENDING:
                    final = status
            if final is None:
                raise PacsUnavailable(f"{what}: no final response (timed out or aborted)")
            completed += _count(final, "NumberOfCompletedSuboperations")
            failed += _count(final, "NumberOfFailedSuboperations")
            warning += _count(final, "NumberOfWarningSuboperations")
        if assoc.is_aborted:
            raise PacsUnavailable(f"{what}: {client} aborted the association")
    if failed:
        raise PacsRefused(f"{what}: {failed} object(s) failed to arrive ({completed} arrived)")
    return RetrieveOutcome(completed, failed, warning)
