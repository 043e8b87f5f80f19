"""The job store: the only state the node's stages share.

One SQLite database per data directory, in three parts:

* :mod:`~spectnode.store.database`: the file, its connection policy (WAL,
  ``synchronous=FULL``, ``BEGIN IMMEDIATE``) and its numbered migrations;
* :mod:`~spectnode.store.jobs`: :class:`JobStore`, the studies, their objects,
  outputs and history, and every state transition (the state diagram is in
  its docstring);
* :mod:`~spectnode.store.outbox`: :class:`Outbox`, the durable queue of
  deliveries (``store.outbox``), in the same database so that a study's
  outputs are queued in the transaction that moves it on.
"""

from spectnode.peer import Peer
from spectnode.store.database import MIGRATIONS, SCHEMA_VERSION, Database, Migration, StoreError
from spectnode.store.jobs import (
    ACTIVE_STATES,
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    END_STATES,
    ERROR,
    NOT_ASSESSABLE,
    RECEIVED,
    REPORTED,
    STATES,
    InstanceRecord,
    JobStore,
    OutputRecord,
    Receipt,
    StoredOutcome,
    StudyRecord,
    StudyTransaction,
)
from spectnode.store.outbox import (
    DEFAULT_CLAIM_TIMEOUT_S,
    ITEM_STATES,
    RETRY_REQUESTED,
    UNDELIVERED_STATES,
    Outbox,
    OutboxItem,
)

__all__ = [
    "ACTIVE_STATES",
    "CLASSIFIED",
    "COMPLETE",
    "DEFAULT_CLAIM_TIMEOUT_S",
    "DISPATCHED",
    "END_STATES",
    "ERROR",
    "ITEM_STATES",
    "MIGRATIONS",
    "NOT_ASSESSABLE",
    "RECEIVED",
    "REPORTED",
    "RETRY_REQUESTED",
    "SCHEMA_VERSION",
    "STATES",
    "UNDELIVERED_STATES",
    "Database",
    "InstanceRecord",
    "JobStore",
    "Migration",
    "Outbox",
    "OutboxItem",
    "OutputRecord",
    "Peer",
    "Receipt",
    "StoreError",
    "StoredOutcome",
    "StudyRecord",
    "StudyTransaction",
]
