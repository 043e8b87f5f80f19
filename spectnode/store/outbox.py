"""The durable outbox: result files waiting to reach their destinations.

Only the queue: every delivery is one row of table ``outbox_items`` in the
job store's database, committed before :meth:`Outbox.enqueue` returns, so
results survive a crash or restart. When to try an item again, when to give
it up, and which destinations are down is the dispatch stage's policy
(:mod:`spectnode.node.stages.dispatch`); the queue only records what the
stage decided. State changes are conditional updates under ``BEGIN
IMMEDIATE``, so two workers never claim the same item.

Life of an item::

    enqueue ──► pending ──claim──► sending ──delivered()──► delivered
                  ▲  ▲ │              │  ▲                      ▲
                  │  │ │              │  │ end_commitment()     │ commitment_confirmed()
                  │  │ │              │  │ (refused, timed out) │
                  │  │ │              │  awaiting_commitment ───┘
                  │  │ │              │  ▲
                  │  │ │              │  └── await_commitment() (Storage Commitment requested)
                  │  │ │              ├── failed(): pending again, due at the time the stage chose
                  │  │ │              ▼
                  │  └─┼── retry() ◄─ dead  (given up: dead())
                  │    ▼                │
                  │   superseded ◄──────┘   (a later generation of the study exists)
                  └── recover_interrupted() (``sending`` at start-up: its process died)

An item for a destination with Storage Commitment carries the transaction
(:meth:`Outbox.begin_commitment`) from before the N-ACTION goes out, so a
report that arrives at once, on any association, finds it; it stays
``awaiting_commitment`` across restarts until the report or its deadline.

Every item carries the ``generation`` of the study result it delivers.
Enqueueing a generation supersedes the study's older pending and dead items,
so an outdated result never reaches a destination after its successor.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from spectnode.peer import Peer

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from spectnode.config import DestinationConfig
    from spectnode.store.database import Database

__all__ = ["DEFAULT_CLAIM_TIMEOUT_S", "ITEM_STATES", "RETRY_REQUESTED", "UNDELIVERED_STATES", "Outbox", "OutboxItem"]

T = TypeVar("T")

#: Every state an outbox item can be in.
ITEM_STATES: Final = ("pending", "sending", "awaiting_commitment", "delivered", "dead", "superseded")

#: The states of an item not yet delivered and still on its way.
UNDELIVERED_STATES: Final = ("pending", "sending", "awaiting_commitment")

# Clears an item's Storage Commitment transaction (in an UPDATE's SET list).
_NO_COMMITMENT: Final = ("commitment_uid = NULL, commitment_refs_json = NULL, commitment_deadline = NULL,"
                         " commitment_failure = NULL")

#: How the last_error of an item that an operator retried begins.
RETRY_REQUESTED: Final = "retry requested after: "

#: An item left in ``sending`` this long is due again (its worker died mid-send).
DEFAULT_CLAIM_TIMEOUT_S: Final = 900.0


@dataclass(frozen=True)
class OutboxItem:
    """One delivery of one study's output of one kind to one destination.

    Attributes:
        id: Row id, stable for the item's life (``spectnode retry ID``).
        study_uid: StudyInstanceUID of the classified study.
        generation: The study's generation whose result the item delivers.
        destination: Destination name, as in the configuration.
        kind: Output kind, ``"sr"`` or ``"sc"``.
        files: The files to deliver, in sending order.
        sender: The peer that sent the study, for ``sender`` destinations.
        state: One of :data:`ITEM_STATES`.
        attempts: Failed attempts so far (reset by :meth:`Outbox.retry`).
        next_attempt_at: Epoch seconds from which a pending item is due.
        last_error: Why the last attempt failed; for a dead item, why it was given up.
        created_at: Epoch seconds of :meth:`Outbox.enqueue`.
        updated_at: Epoch seconds of the last state change.
        delivered_at: Epoch seconds of delivery, or None.
        acknowledgement: What the destination answered when it took the item
            (e.g. its C-STORE status, or its storage commitment), or None.
        commitment_uid: Transaction UID of the Storage Commitment request in
            flight (``sending`` or ``awaiting_commitment``), or None.
        commitment_references: The (SOP Class UID, SOP Instance UID) pairs that
            request asks the destination to commit.
        commitment_deadline: Epoch seconds by which the report must have come.
        commitment_failure: Why a report refused the commitment, until the
            dispatch stage sends the item again.
    """

    id: int
    study_uid: str
    generation: int
    destination: str
    kind: str
    files: tuple[Path, ...]
    sender: Peer | None
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    acknowledgement: str | None = None
    commitment_uid: str | None = None
    commitment_references: tuple[tuple[str, str], ...] = ()
    commitment_deadline: float | None = None
    commitment_failure: str | None = None

    @property
    def retrying(self) -> bool:
        """Pending after at least one failed attempt."""
        return self.state == "pending" and self.attempts > 0

    @property
    def retry_requested(self) -> bool:
        """An operator asked for it to be sent again (:meth:`Outbox.retry`)."""
        return (self.last_error or "").startswith(RETRY_REQUESTED)


def _item_from_row(row: sqlite3.Row) -> OutboxItem:
    sender = None
    if row["sender_ae_title"] is not None and row["sender_host"] is not None:
        sender = Peer(ae_title=row["sender_ae_title"], address=row["sender_host"], port=0)
    return OutboxItem(
        id=row["id"],
        study_uid=row["study_uid"],
        generation=row["generation"],
        destination=row["destination"],
        kind=row["kind"],
        files=tuple(Path(p) for p in json.loads(row["files_json"])),
        sender=sender,
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        delivered_at=row["delivered_at"],
        acknowledgement=row["acknowledgement"],
        commitment_uid=row["commitment_uid"],
        commitment_references=tuple((str(c), str(i)) for c, i in json.loads(row["commitment_refs_json"] or "[]")),
        commitment_deadline=row["commitment_deadline"],
        commitment_failure=row["commitment_failure"],
    )


class Outbox:
    """The outbox items of a job store's database.

    Made by :class:`spectnode.store.JobStore` (``store.outbox``), which owns
    the connections; safe to use from several threads and processes.

    Args:
        db: The job store's database.
        clock: Current time in epoch seconds (the job store's clock); every
            method that changes an item also takes an explicit ``now``.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._db.write() as conn:
            return int(conn.execute(sql, params).rowcount)

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[OutboxItem]:
        return [_item_from_row(row) for row in self._db.read(sql, params)]

    # ---------------------------------------------------------------- enqueue

    @staticmethod
    def _files_key(files: Sequence[Path]) -> tuple[list[str], str]:
        paths = [str(Path(p).absolute()) for p in files]
        return paths, hashlib.sha256(json.dumps(sorted(paths)).encode("utf-8")).hexdigest()

    def _in_transaction(self, connection: sqlite3.Connection | None, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the caller's transaction on ``connection``, or in one of its own."""
        if connection is not None:
            return work(connection)
        with self._db.write() as conn:
            return work(conn)

    def _insert(self, conn: sqlite3.Connection, study_uid: str, generation: int, destination: str, kind: str,
                files: Sequence[Path], sender: Peer | None, now: float) -> int:
        if not files:
            raise ValueError("an outbox item needs at least one file")
        paths, files_key = self._files_key(files)
        conn.execute(
            "INSERT INTO outbox_items (study_uid, generation, destination, kind, files_json, files_key,"
            " sender_ae_title, sender_host, state, attempts, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
            " ON CONFLICT (study_uid, destination, kind, files_key) DO NOTHING",
            (
                study_uid, generation, destination, kind, json.dumps(paths), files_key,
                sender.ae_title if sender else None, sender.address if sender else None,
                now, now, now,
            ),
        )
        row = conn.execute(
            "SELECT id FROM outbox_items WHERE study_uid = ? AND destination = ? AND kind = ? AND files_key = ?",
            (study_uid, destination, kind, files_key),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _supersede_older(conn: sqlite3.Connection, study_uid: str, generation: int, now: float) -> int:
        return conn.execute(
            "UPDATE outbox_items SET state = 'superseded', claimed_at = NULL, updated_at = ?,"
            " last_error = 'superseded by generation ' || ? || ' of the study'"
            " WHERE study_uid = ? AND generation < ? AND state IN ('pending', 'dead')",
            (now, generation, study_uid, generation),
        ).rowcount

    def enqueue(
        self,
        study_uid: str,
        destination: str,
        kind: str,
        files: Sequence[Path],
        sender: Peer | None = None,
        *,
        generation: int = 1,
        connection: sqlite3.Connection | None = None,
        now: float | None = None,
    ) -> int:
        """Add a delivery, due now, and return its id.

        Idempotent: enqueueing the same study, destination, kind and set of
        files again returns the existing item's id and changes nothing (so a
        study processed again after a crash is not sent twice). The study's
        pending and dead items of older generations become ``superseded``.

        Args:
            generation: The study's generation whose result ``files`` are.
            connection: Run in the caller's open transaction on this
                connection to the same database (so that the job store can
                queue and move the study on atomically); by default the
                outbox commits on its own.
        """
        now = self._now(now)

        def work(conn: sqlite3.Connection) -> int:
            self._supersede_older(conn, study_uid, generation, now)
            return self._insert(conn, study_uid, generation, destination, kind, files, sender, now)

        return int(self._in_transaction(connection, work))

    def enqueue_outputs(
        self,
        study_uid: str,
        outputs: Mapping[str, Sequence[Path]],
        destinations: Iterable[DestinationConfig],
        sender: Peer | None = None,
        *,
        generation: int = 1,
        connection: sqlite3.Connection | None = None,
        now: float | None = None,
    ) -> list[int]:
        """Enqueue each output kind for every destination whose ``outputs`` name it, in one transaction.

        Args:
            outputs: Files by kind, e.g. ``{"sr": [sr_path], "sc": [sc_path]}``;
                kinds with no files are skipped.
            destinations: The configured destinations (``cfg.destinations``).
            generation, connection: As for :meth:`enqueue`.

        Returns:
            The item ids, destinations in configuration order, kinds in
            ``outputs`` order.
        """
        now = self._now(now)
        routes = [(dest.name, kind, files) for dest in destinations for kind, files in outputs.items()
                  if files and kind in dest.outputs]

        def work(conn: sqlite3.Connection) -> list[int]:
            self._supersede_older(conn, study_uid, generation, now)
            return [self._insert(conn, study_uid, generation, name, kind, files, sender, now)
                    for name, kind, files in routes]

        return list(self._in_transaction(connection, work))

    # ---------------------------------------------------------------- queries

    def get(self, item_id: int) -> OutboxItem | None:
        """The item with this id, or None."""
        items = self._select("SELECT * FROM outbox_items WHERE id = ?", (item_id,))
        return items[0] if items else None

    def due(self, now: float | None = None, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S) -> list[OutboxItem]:
        """Pending items whose time has come, and items stuck in ``sending`` for ``claim_timeout_s``
        (their worker died mid-send while the node kept running)."""
        now = self._now(now)
        return self._select(
            "SELECT * FROM outbox_items WHERE (state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'sending' AND claimed_at <= ?) ORDER BY next_attempt_at, id",
            (now, now - claim_timeout_s),
        )

    def list_items(
        self,
        states: Iterable[str] = ITEM_STATES,
        *,
        study_uid: str | None = None,
        destination: str | None = None,
        generation: int | None = None,
    ) -> list[OutboxItem]:
        """Items in any of ``states`` (all by default), optionally of one study, destination or
        study generation, by id."""
        states = list(states)
        unknown = [s for s in states if s not in ITEM_STATES]
        if unknown:
            raise ValueError(f"unknown outbox state(s) {unknown}; states are {', '.join(ITEM_STATES)}")
        sql = f"SELECT * FROM outbox_items WHERE state IN ({', '.join('?' * len(states))})"
        params: list[Any] = list(states)
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        if generation is not None:
            sql += " AND generation = ?"
            params.append(generation)
        return self._select(sql + " ORDER BY id", params)

    def dead_letters(self) -> list[OutboxItem]:
        """Items given up on, oldest first."""
        return self.list_items(["dead"])

    def counts(self) -> dict[str, int]:
        """Number of items in each state (every state present, zero if none)."""
        counts = dict.fromkeys(ITEM_STATES, 0)
        for row in self._db.read("SELECT state, COUNT(*) AS n FROM outbox_items GROUP BY state"):
            counts[row["state"]] = int(row["n"])
        return counts

    def study_delivered(self, study_uid: str, generation: int) -> bool:
        """True if ``generation`` of the study has at least one item and every one of them is delivered.

        Items of other generations do not count: a superseded or dead item of
        an older result neither holds a study back nor stands in for the
        current one.
        """
        (row,) = self._db.read(
            "SELECT COUNT(*) AS n, COALESCE(SUM(state = 'delivered'), 0) AS delivered FROM outbox_items"
            " WHERE study_uid = ? AND generation = ?",
            (study_uid, generation),
        )
        return bool(row["n"] > 0 and row["n"] == row["delivered"])

    # ---------------------------------------------------------------- state changes

    def recover_interrupted(self, now: float | None = None) -> int:
        """Make every ``sending`` item pending and due now; returns how many.

        Call once at node start-up, before any worker runs: an item still in
        ``sending`` then belongs to a process that died mid-send. (While
        workers run, :meth:`due` picks such items up after the claim timeout.)
        A Storage Commitment it may have requested is forgotten (a late report
        of it is ignored): the item is sent again. Items ``awaiting_commitment``
        keep waiting for their report.
        """
        now = self._now(now)
        # Keep the item's place in the queue: it was already due when claimed.
        return self._write(
            "UPDATE outbox_items SET state = 'pending', next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?,"
            f" claimed_at = NULL, {_NO_COMMITMENT} WHERE state = 'sending'",
            (now, now),
        )

    def retry(self, item_id: int | None = None, study_uid: str | None = None, now: float | None = None) -> int:
        """Move dead and waiting-to-retry items back to pending, due now, with attempts reset.

        Args:
            item_id: Only this item.
            study_uid: Only this study's items. With neither, every dead or
                retrying item.

        Returns:
            How many items were moved. Delivered items and items being sent
            are left alone.
        """
        now = self._now(now)
        sql = (
            "UPDATE outbox_items SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?,"
            " last_error = CASE WHEN COALESCE(last_error, '') LIKE ? || '%' THEN last_error"
            " ELSE ? || COALESCE(last_error, '') END"
            " WHERE (state = 'dead' OR (state = 'pending' AND attempts > 0))"
        )
        params: list[Any] = [now, now, RETRY_REQUESTED, RETRY_REQUESTED]
        if item_id is not None:
            sql += " AND id = ?"
            params.append(item_id)
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        return self._write(sql, params)

    def claim(self, item_id: int, now: float | None = None,
              claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S) -> bool:
        """Atomically move a due item to ``sending``; False if another worker got it first."""
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'sending', claimed_at = ?, updated_at = ?"
            " WHERE id = ? AND ((state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'sending' AND claimed_at <= ?))",
            (now, now, item_id, now, now - claim_timeout_s),
        ) == 1

    def delivered(self, item_id: int, now: float | None = None, acknowledgement: str | None = None) -> bool:
        """Record that the destination acknowledged a ``sending`` item (``acknowledgement``: what it answered).

        False (and nothing changes) if the item is no longer ``sending``.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'delivered', delivered_at = ?, updated_at = ?, claimed_at = NULL,"
            " acknowledgement = ? WHERE id = ? AND state = 'sending'",
            (now, now, acknowledgement, item_id),
        ) == 1

    # ---------------------------------------------------------------- storage commitment

    def begin_commitment(self, item_id: int, transaction_uid: str, references: Sequence[tuple[str, str]],
                         now: float | None = None) -> bool:
        """Record the Storage Commitment request about to be sent for a ``sending`` item.

        Committed before the N-ACTION goes out, so that a report arriving at
        once (on any association) finds the item. False if the item is not
        ``sending``.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET commitment_uid = ?, commitment_refs_json = ?, commitment_deadline = NULL,"
            " commitment_failure = NULL, updated_at = ? WHERE id = ? AND state = 'sending'",
            (transaction_uid, json.dumps([list(r) for r in references]), now, item_id),
        ) == 1

    def await_commitment(self, item_id: int, transaction_uid: str, deadline: float, now: float | None = None) -> bool:
        """The destination took the request: the item waits for the report until ``deadline``.

        False (and nothing changes) if a report already settled the item.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'awaiting_commitment', commitment_deadline = ?, claimed_at = NULL,"
            " updated_at = ? WHERE id = ? AND state = 'sending' AND commitment_uid = ?",
            (deadline, now, item_id, transaction_uid),
        ) == 1

    def committing(self, transaction_uid: str) -> OutboxItem | None:
        """The item whose Storage Commitment request has this transaction UID, while it is in flight."""
        items = self._select(
            "SELECT * FROM outbox_items WHERE commitment_uid = ? AND state IN ('sending', 'awaiting_commitment')",
            (transaction_uid,),
        )
        return items[0] if items else None

    def commitment_confirmed(self, item_id: int, transaction_uid: str, acknowledgement: str,
                             now: float | None = None) -> bool:
        """The report confirmed every object: the item is delivered, with ``acknowledgement``.

        False if the transaction is no longer in flight (timed out, settled already).
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'delivered', delivered_at = ?, updated_at = ?, claimed_at = NULL,"
            f" acknowledgement = ?, {_NO_COMMITMENT}"
            " WHERE id = ? AND commitment_uid = ? AND state IN ('sending', 'awaiting_commitment')",
            (now, now, acknowledgement, item_id, transaction_uid),
        ) == 1

    def commitment_refused(self, item_id: int, transaction_uid: str, reason: str, now: float | None = None) -> bool:
        """The report did not confirm every object: the dispatch stage sends the item again (its policy).

        False if the transaction is no longer in flight.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET commitment_failure = ?, updated_at = ?"
            " WHERE id = ? AND commitment_uid = ? AND state IN ('sending', 'awaiting_commitment')",
            (reason, now, item_id, transaction_uid),
        ) == 1

    def end_commitment(self, item_id: int, transaction_uid: str, now: float | None = None) -> bool:
        """Take an ``awaiting_commitment`` item back to ``sending`` (refused or timed out), forgetting
        its transaction, so the stage can record the failed attempt; False if a report settled it first."""
        now = self._now(now)
        return self._write(
            f"UPDATE outbox_items SET state = 'sending', claimed_at = ?, updated_at = ?, {_NO_COMMITMENT}"
            " WHERE id = ? AND state = 'awaiting_commitment' AND commitment_uid = ?",
            (now, now, item_id, transaction_uid),
        ) == 1

    # ---------------------------------------------------------------- failures

    # A failed attempt changes only an item still ``sending``: a storage commitment report may have
    # delivered it meanwhile (the N-ACTION response timed out, but the peer took the request).

    def failed(self, item_id: int, attempts: int, next_attempt_at: float, reason: str,
               now: float | None = None) -> bool:
        """Record a failed attempt of a ``sending`` item: it is pending again, due at ``next_attempt_at``.

        False (and nothing changes) if the item is no longer ``sending``.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'pending', attempts = ?, next_attempt_at = ?, last_error = ?,"
            f" updated_at = ?, claimed_at = NULL, {_NO_COMMITMENT} WHERE id = ? AND state = 'sending'",
            (attempts, next_attempt_at, reason, now, item_id),
        ) == 1

    def dead(self, item_id: int, attempts: int, reason: str, now: float | None = None) -> bool:
        """Give a ``sending`` item up: a dead letter until :meth:`retry`.

        False (and nothing changes) if the item is no longer ``sending``.
        """
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'dead', attempts = ?, last_error = ?, updated_at = ?, claimed_at = NULL,"
            f" {_NO_COMMITMENT} WHERE id = ? AND state = 'sending'",
            (attempts, reason, now, item_id),
        ) == 1

    def supersede(self, item_id: int, current_generation: int, now: float | None = None) -> bool:
        """Never send a pending or dead item: its study is at ``current_generation`` now."""
        now = self._now(now)
        return self._write(
            "UPDATE outbox_items SET state = 'superseded', claimed_at = NULL, updated_at = ?,"
            " last_error = 'superseded by generation ' || ? || ' of the study'"
            " WHERE id = ? AND state IN ('pending', 'dead')",
            (now, current_generation, item_id),
        ) == 1
