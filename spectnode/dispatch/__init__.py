"""Dispatch: deliver result files (SR, secondary capture) to one destination.

A library: :func:`send_files` delivers files to one destination now, or
raises :class:`DispatchError` with the reason and whether trying again can
help. It knows nothing of the job store: the durable queue is
:class:`spectnode.store.Outbox`, and the retry policy is the node's dispatch
stage (:mod:`spectnode.node.stages.dispatch`).
"""

from spectnode.dispatch.senders import (
    SENDER_DESTINATION_TYPE,
    DispatchError,
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
    "DispatchError",
    "StoreTarget",
    "copy_to_folder",
    "describe_store_status",
    "destinations_by_name",
    "resolve_store_target",
    "send_files",
    "store_to_peer",
]
