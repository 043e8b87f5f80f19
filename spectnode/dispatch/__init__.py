"""Dispatch: deliver classification results (SR, secondary capture) to their destinations.

- :func:`send_files` delivers files to one destination now, or raises
  :class:`DispatchError` with the reason.
- :class:`Outbox` keeps deliveries durable in the node's SQLite database and
  retries them with exponential backoff, dead-lettering what cannot be sent.
- :func:`format_outbox_status` renders the outbox for ``spectnode status``.
- :class:`~spectnode.store.Peer` (re-exported) is the peer a ``sender``
  destination returns results to.
"""

from spectnode.dispatch.outbox import ITEM_STATES, Outbox, OutboxItem, format_outbox_status
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
from spectnode.store import Peer

__all__ = [
    "ITEM_STATES",
    "SENDER_DESTINATION_TYPE",
    "DispatchError",
    "Outbox",
    "OutboxItem",
    "Peer",
    "StoreTarget",
    "copy_to_folder",
    "describe_store_status",
    "destinations_by_name",
    "format_outbox_status",
    "resolve_store_target",
    "send_files",
    "store_to_peer",
]
