"""Dispatch: deliver result files (SR, secondary capture) to one destination.

A library: :func:`send_files` delivers files to one destination now, or
raises :class:`DispatchError` with the reason and whether trying again can
help; with a :class:`CommitmentRequest` it also asks a DICOM peer for
Storage Commitment of them (:mod:`spectnode.dispatch.commitment`). It knows
nothing of the job store: the durable queue is
:class:`spectnode.store.Outbox`, and the retry policy is the node's dispatch
stage (:mod:`spectnode.node.stages.dispatch`).
"""

from spectnode.dispatch.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReport,
    CommitmentRequest,
    ReportError,
    parse_event_report,
)
from spectnode.dispatch.errors import DispatchError
from spectnode.dispatch.senders import (
    SENDER_DESTINATION_TYPE,
    StoreTarget,
    copy_to_folder,
    describe_store_status,
    destinations_by_name,
    resolve_store_target,
    send_files,
    store_to_peer,
)

__all__ = [
    "SENDER_DESTINATION_TYPE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "CommitmentReport",
    "CommitmentRequest",
    "DispatchError",
    "ReportError",
    "StoreTarget",
    "copy_to_folder",
    "describe_store_status",
    "destinations_by_name",
    "parse_event_report",
    "resolve_store_target",
    "send_files",
    "store_to_peer",
]
