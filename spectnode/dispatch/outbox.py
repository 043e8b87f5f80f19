"""A durable outbox: result files waiting to reach their destinations, with retries.

Every delivery is one row of table ``outbox_items`` in the node's SQLite job
store database (WAL mode). A row is committed before :meth:`Outbox.enqueue`
returns, so results survive a crash or restart and are sent when the node comes
back; state changes use ``BEGIN IMMEDIATE`` so that two workers never send the
same item twice.

Life of an item::

    enqueue ──► pending ──claim──► sending ──ok──► delivered
                  ▲  ▲ │              │
                  │  │ │  failure, ───┤ attempts < max_attempts:
                  │  │ │  backoff     │ next_attempt_at = now + min(base·2^(n-1), max)
                  │  │ │              ▼
                  │  └─┼── retry() ◄─ dead  (max_attempts reached, a local problem
                  │    │                │    such as a missing file, a peer that takes
                  │    │                │    no such object, or a destination no
                  │    ▼                ▼    longer in the configuration)
                  │   superseded ◄──────┘   (a later generation of the study exists)

Every item carries the ``generation`` of the study result it delivers (the job
store's generation of the study). Enqueueing a generation supersedes the
study's older pending and dead items, and :meth:`Outbox.deliver_due`, given
the studies' current generations, supersedes instead of sending an item whose
study has been re-opened since: an outdated result never reaches a
destination after (or instead of) its successor.

Typical use in the node::

    outbox = Outbox(data_dir / "jobs.sqlite")
    outbox.recover_interrupted()                     # once, at start-up
    outbox.enqueue_outputs(study_uid, {"sr": [sr], "sc": [sc]}, cfg.destinations, sender=peer, generation=2)
    ...
    outbox.deliver_due(destinations_by_name(cfg), cfg.node.ae_title,
                       current_generation=lambda uid: store.study(uid).generation)   # in a worker loop
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectnode.config import DestinationConfig
from spectnode.dispatch.senders import DispatchError, send_files
from spectnode.store import Peer, StoreError

__all__ = ["ITEM_STATES", "Outbox", "OutboxItem", "SendFunction", "format_outbox_status"]

LOGGER = logging.getLogger("spectnode.dispatch")

#: Every state an outbox item can be in.
ITEM_STATES: tuple[str, ...] = ("pending", "sending", "delivered", "dead", "superseded")

# How the last_error of an item that an operator retried begins.
_RETRY_REQUESTED = "retry requested after: "

#: What :meth:`Outbox.deliver_due` calls to deliver one item (:func:`send_files` by default).
SendFunction = Callable[..., None]

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid        TEXT    NOT NULL,
    generation       INTEGER NOT NULL DEFAULT 1,
    destination      TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    files_json       TEXT    NOT NULL,
    files_key        TEXT    NOT NULL,
    sender_ae_title  TEXT,
    sender_host      TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead', 'superseded')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    last_error       TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    claimed_at       REAL,
    delivered_at     REAL,
    UNIQUE (study_uid, destination, kind, files_key)
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_items_due ON outbox_items (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_items_study ON outbox_items (study_uid, generation);
"""
# Columns of the first version of the table (no generation, no 'superseded' state).
_V1_COLUMNS = (
    "id, study_uid, destination, kind, files_json, files_key, sender_ae_title, sender_host, state, attempts, "
    "next_attempt_at, last_error, created_at, updated_at, claimed_at, delivered_at"
)


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

    @property
    def retrying(self) -> bool:
        """Pending after at least one failed attempt."""
        return self.state == "pending" and self.attempts > 0


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
    )


class Outbox:
    """Durable, retrying delivery of result files, kept in SQLite.

    Safe to use from several threads (one SQLite connection per thread) and
    from several processes on the same database (e.g. ``spectnode retry``
    while the node runs).

    Args:
        db_path: The SQLite database (the node's job store); created if needed.
        max_attempts: Failed attempts after which an item is dead-lettered.
        base_delay_s: Wait after the first failure; it doubles with every
            further failure ...
        max_delay_s: ... up to this cap.
        claim_timeout_s: An item left in ``sending`` this long (its worker
            died mid-send) is due again.
        clock: Returns the current time in epoch seconds; tests pass a fake one.

    Raises:
        StoreError: If the outbox table cannot be created or brought up to
            date in ``db_path`` (not an SQLite file, locked, read-only ...).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        max_attempts: int = 8,
        base_delay_s: float = 5,
        max_delay_s: float = 600,
        claim_timeout_s: float = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if base_delay_s < 0 or max_delay_s < base_delay_s:
            raise ValueError(f"need 0 <= base_delay_s <= max_delay_s, got {base_delay_s}, {max_delay_s}")
        self.db_path = Path(db_path)
        self.max_attempts = max_attempts
        self.base_delay_s = float(base_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.claim_timeout_s = float(claim_timeout_s)
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Destinations found unreachable, and until when their items are left alone.
        self._unreachable_until: dict[str, float] = {}
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create_or_upgrade_table()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.db_path}: cannot set up the outbox table: {exc}") from exc

    # ---------------------------------------------------------------- plumbing

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed outbox row survives power loss, not just a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _create_or_upgrade_table(self) -> None:
        conn = self._connection()
        table = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox_items'").fetchone()
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox_items'")}
        if table is not None and "generation" in table[0] and {"outbox_items_due", "outbox_items_study"} <= indexes:
            return  # up to date: no write lock needed (``spectnode status`` while the node is busy)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox_items'").fetchone()
            if row is not None and "generation" not in row[0]:
                # A table of the first version: rebuild it with the generation column and
                # the 'superseded' state; an item takes the generation its study has now.
                conn.execute(_TABLE.format(name="outbox_items_v2"))
                has_studies = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone()
                generation = ("COALESCE((SELECT s.generation FROM studies s WHERE s.study_uid = o.study_uid), 1)"
                              if has_studies else "1")
                conn.execute(f"INSERT INTO outbox_items_v2 ({_V1_COLUMNS}, generation) "
                             f"SELECT {', '.join('o.' + c.strip() for c in _V1_COLUMNS.split(','))}, {generation} "
                             "FROM outbox_items o")
                conn.execute("DROP TABLE outbox_items")
                conn.execute("ALTER TABLE outbox_items_v2 RENAME TO outbox_items")
                LOGGER.info("outbox table of %s upgraded: items now carry their study's generation", self.db_path)
            else:
                conn.execute(_TABLE.format(name="outbox_items"))
            for statement in filter(str.strip, _INDEXES.split(";")):
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cursor

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[OutboxItem]:
        return [_item_from_row(row) for row in self._connection().execute(sql, params).fetchall()]

    def close(self) -> None:
        """Close every connection this object opened (no call may be running)."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure: ``min(base · 2^(attempts-1), max)``."""
        return min(self.base_delay_s * 2 ** max(attempts - 1, 0), self.max_delay_s)

    # ---------------------------------------------------------------- enqueue

    @staticmethod
    def _files_key(files: Sequence[Path]) -> tuple[list[str], str]:
        paths = [str(Path(p).absolute()) for p in files]
        return paths, hashlib.sha256(json.dumps(sorted(paths)).encode("utf-8")).hexdigest()

    def _in_transaction(self, connection: sqlite3.Connection | None, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` in the caller's transaction on ``connection``, or in one of its own."""
        if connection is not None:
            return work(connection)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

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
        now = self.clock()

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
        now = self.clock()
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

    def due(self, now: float | None = None) -> list[OutboxItem]:
        """Pending items whose time has come, and items stuck in ``sending`` past the claim timeout."""
        now = self.clock() if now is None else now
        return self._select(
            "SELECT * FROM outbox_items WHERE (state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'sending' AND claimed_at <= ?) ORDER BY next_attempt_at, id",
            (now, now - self.claim_timeout_s),
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
        for state, n in self._connection().execute("SELECT state, COUNT(*) FROM outbox_items GROUP BY state"):
            counts[state] = n
        return counts

    def study_delivered(self, study_uid: str, generation: int) -> bool:
        """True if ``generation`` of the study has at least one item and every one of them is delivered.

        Items of other generations do not count: a superseded or dead item of
        an older result neither holds a study back nor stands in for the
        current one.
        """
        row = self._connection().execute(
            "SELECT COUNT(*), COALESCE(SUM(state = 'delivered'), 0) FROM outbox_items"
            " WHERE study_uid = ? AND generation = ?",
            (study_uid, generation),
        ).fetchone()
        return row[0] > 0 and row[0] == row[1]

    # ---------------------------------------------------------------- state changes

    def recover_interrupted(self) -> int:
        """Make every ``sending`` item pending and due now; returns how many.

        Call once at node start-up, before any worker runs: an item still in
        ``sending`` then belongs to a process that died mid-send. (While
        workers run, :meth:`due` picks such items up after ``claim_timeout_s``.)
        """
        now = self.clock()
        cursor = self._write(
            # Keep the item's place in the queue: it was already due when claimed.
            "UPDATE outbox_items SET state = 'pending', next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?,"
            " claimed_at = NULL WHERE state = 'sending'",
            (now, now),
        )
        return cursor.rowcount

    def retry(self, item_id: int | None = None, study_uid: str | None = None) -> int:
        """Move dead and waiting-to-retry items back to pending, due now, with attempts reset.

        Args:
            item_id: Only this item.
            study_uid: Only this study's items. With neither, every dead or
                retrying item.

        Returns:
            How many items were moved. Delivered items and items being sent
            are left alone.
        """
        now = self.clock()
        sql = (
            "UPDATE outbox_items SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?,"
            " last_error = CASE WHEN COALESCE(last_error, '') LIKE ? || '%' THEN last_error"
            " ELSE ? || COALESCE(last_error, '') END"
            " WHERE (state = 'dead' OR (state = 'pending' AND attempts > 0))"
        )
        params: list[Any] = [now, now, _RETRY_REQUESTED, _RETRY_REQUESTED]
        if item_id is not None:
            sql += " AND id = ?"
            params.append(item_id)
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        return self._write(sql, params).rowcount

    def _claim(self, item_id: int, now: float) -> bool:
        """Atomically move a due item to ``sending``; False if another worker got it first."""
        cursor = self._write(
            "UPDATE outbox_items SET state = 'sending', claimed_at = ?, updated_at = ?"
            " WHERE id = ? AND ((state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'sending' AND claimed_at <= ?))",
            (now, now, item_id, now, now - self.claim_timeout_s),
        )
        return cursor.rowcount == 1

    def _mark_delivered(self, item_id: int) -> None:
        now = self.clock()
        self._write(
            "UPDATE outbox_items SET state = 'delivered', delivered_at = ?, updated_at = ?, claimed_at = NULL"
            " WHERE id = ?",
            (now, now, item_id),
        )

    def _mark_dead(self, item_id: int, reason: str, attempts: int) -> None:
        now = self.clock()
        self._write(
            "UPDATE outbox_items SET state = 'dead', attempts = ?, last_error = ?, updated_at = ?, claimed_at = NULL"
            " WHERE id = ?",
            (attempts, reason, now, item_id),
        )

    def _record_failure(self, item: OutboxItem, reason: str, retryable: bool) -> None:
        attempts = item.attempts + 1
        if not retryable:
            LOGGER.error("outbox item %d (%s to %s) dead: %s", item.id, item.kind, item.destination, reason)
            self._mark_dead(item.id, f"not retryable: {reason}", attempts)
            return
        if attempts >= self.max_attempts:
            LOGGER.error(
                "outbox item %d (%s to %s) dead after %d attempts: %s",
                item.id, item.kind, item.destination, attempts, reason,
            )
            self._mark_dead(item.id, f"gave up after {attempts} attempts: {reason}", attempts)
            return
        now = self.clock()
        delay = self.backoff_delay(attempts)
        LOGGER.warning(
            "outbox item %d (%s to %s) attempt %d/%d failed, next in %g s: %s",
            item.id, item.kind, item.destination, attempts, self.max_attempts, delay, reason,
        )
        self._write(
            "UPDATE outbox_items SET state = 'pending', attempts = ?, next_attempt_at = ?, last_error = ?,"
            " updated_at = ?, claimed_at = NULL WHERE id = ?",
            (attempts, now + delay, reason, now, item.id),
        )

    # ---------------------------------------------------------------- delivery

    def _supersede(self, item: OutboxItem, current: int) -> bool:
        now = self.clock()
        moved = self._write(
            "UPDATE outbox_items SET state = 'superseded', claimed_at = NULL, updated_at = ?,"
            " last_error = 'superseded by generation ' || ? || ' of the study'"
            " WHERE id = ? AND state IN ('pending', 'dead')",
            (now, current, item.id),
        ).rowcount
        if moved:
            LOGGER.info("outbox item %d (%s of %s, generation %d, to %s) not sent: the study is at generation %d now",
                        item.id, item.kind, item.study_uid, item.generation, item.destination, current)
        return bool(moved)

    def supersede_outdated(self, current_generation: Callable[[str], int | None]) -> int:
        """Supersede every pending or dead item whose study has a later generation now.

        Args:
            current_generation: The job store's current generation of a study
                (None if unknown, which leaves its items alone).

        Returns:
            How many items were superseded.
        """
        superseded = 0
        currents: dict[str, int | None] = {}
        for item in self.list_items(["pending", "dead"]):
            if item.study_uid not in currents:
                currents[item.study_uid] = current_generation(item.study_uid)
            current = currents[item.study_uid]
            if current is not None and item.generation < current:
                superseded += self._supersede(item, current)
        return superseded

    def deliver_due(
        self,
        destinations: Mapping[str, DestinationConfig],
        calling_ae_title: str,
        send: SendFunction = send_files,
        *,
        timeout: float = 30,
        current_generation: Callable[[str], int | None] | None = None,
    ) -> list[OutboxItem]:
        """Try every due item once and return the items tried, in their new state.

        Each item is claimed with ``BEGIN IMMEDIATE`` first, so concurrent
        workers (threads or processes) never send one item twice. When a
        destination cannot be reached at all (connection refused, timed out,
        association rejected), the other due items for it in this pass are
        not tried: they fail with the same reason and back off together; and
        until that backoff is over, items that become due for it meanwhile
        (a new study's results) are left alone, not even claimed, so that one
        unreachable destination does not hold up the others pass after pass.
        Items an operator retried (:meth:`retry`) are tried at once.

        Args:
            destinations: Destinations by name (:func:`destinations_by_name`);
                an item whose destination is missing is dead-lettered.
            calling_ae_title: This node's AE title.
            send: Called as ``send(destination, files, calling_ae_title=...,
                sender=..., timeout=...)``; it raises :class:`DispatchError`
                on failure.
            timeout: Passed to ``send``.
            current_generation: The job store's current generation of a study
                (None if unknown); items of an older generation, due or not,
                are superseded (:meth:`supersede_outdated`), never sent.
        """
        if current_generation is not None:
            self.supersede_outdated(current_generation)
        now = self.clock()
        unreachable: dict[str, str] = {}
        tried: list[OutboxItem] = []
        for item in self.due(now):
            if (item.destination not in unreachable and self._unreachable_until.get(item.destination, now) > now
                    and not (item.last_error or "").startswith(_RETRY_REQUESTED)):
                continue  # its destination is backing off (an operator's retry is tried at once)
            if current_generation is not None:
                current = current_generation(item.study_uid)
                if current is not None and item.generation < current:
                    self._supersede(item, current)
                    continue
            if not self._claim(item.id, now):
                continue
            dest = destinations.get(item.destination)
            if dest is None:
                known = ", ".join(sorted(destinations)) or "none"
                reason = f"destination {item.destination!r} is not in the configuration (configured: {known})"
                LOGGER.error("outbox item %d dead: %s", item.id, reason)
                self._mark_dead(item.id, reason, item.attempts)
            elif item.destination in unreachable:
                self._record_failure(item, unreachable[item.destination], retryable=True)
            else:
                try:
                    send(dest, item.files, calling_ae_title=calling_ae_title, sender=item.sender, timeout=timeout)
                except DispatchError as exc:
                    self._record_failure(item, exc.reason, exc.retryable)
                    if exc.peer_unreachable:
                        unreachable[item.destination] = exc.reason
                        retry_at = (self.get(item.id) or item).next_attempt_at
                        self._unreachable_until[item.destination] = retry_at
                    else:
                        self._unreachable_until.pop(item.destination, None)
                except Exception as exc:  # a bug must not stop the worker; keep the item retrying
                    LOGGER.exception("outbox item %d: unexpected error while sending", item.id)
                    self._record_failure(item, f"unexpected error: {type(exc).__name__}: {exc}", retryable=True)
                else:
                    LOGGER.info("outbox item %d delivered: %s of %s to %s", item.id, item.kind, item.study_uid,
                                item.destination)
                    self._mark_delivered(item.id)
                    self._unreachable_until.pop(item.destination, None)
            updated = self.get(item.id)
            if updated is not None:
                tried.append(updated)
        return tried


# ------------------------------------------------------------------------ CLI text


def _relative_time(seconds: float) -> str:
    if seconds <= 0:
        return "due now"
    if seconds < 120:
        return f"in {seconds:.0f} s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


def format_outbox_status(
    items: Sequence[OutboxItem],
    *,
    now: float | None = None,
    max_attempts: int | None = None,
    show_delivered: bool = False,
    counts: Mapping[str, int] | None = None,
) -> str:
    """Text for ``spectnode status``: a summary line, then one block per undelivered item.

    Example::

        outbox: 1 pending (1 retrying), 0 sending, 4 delivered, 1 dead
        ID  STATE     DESTINATION  KIND  ATTEMPTS  NEXT TRY  STUDY
        7   retrying  pacs         sr    2/8       in 35 s   1.2.826.0.1.3680043.8.498.1
            connection refused by 127.0.0.1:4242 (nothing listens there)
        9   dead      pacs         sc    8/8       -         1.2.826.0.1.3680043.8.498.2
            gave up after 8 attempts: association rejected by ...
        dead items can be sent again with: spectnode retry ID | STUDY_UID | --all

    Superseded items (results of an older generation of their study, never
    to be sent) are counted when there are any, not listed.

    Args:
        items: Items to show, e.g. ``outbox.list_items()``.
        now: Epoch seconds for "next try" (default: the current time).
        max_attempts: Shown as the denominator of ATTEMPTS when given.
        show_delivered: List delivered items too, not only count them.
        counts: Items per state for the summary line (``Outbox.counts()``),
            when ``items`` are not all the items (e.g. undelivered ones only);
            by default ``items`` are counted.
    """
    now = time.time() if now is None else now
    if counts is None:
        counts = dict.fromkeys(ITEM_STATES, 0)
        for item in items:
            counts[item.state] = counts.get(item.state, 0) + 1
    retrying = sum(1 for item in items if item.retrying)
    lines = [
        f"outbox: {counts.get('pending', 0)} pending ({retrying} retrying), {counts.get('sending', 0)} sending, "
        f"{counts.get('delivered', 0)} delivered, {counts.get('dead', 0)} dead"
        + (f", {counts['superseded']} superseded" if counts.get("superseded") else "")
    ]
    shown = [item for item in items
             if item.state != "superseded" and (show_delivered or item.state != "delivered")]
    if not shown:
        return lines[0]

    def state_of(item: OutboxItem) -> str:
        return "retrying" if item.retrying else item.state

    def next_try(item: OutboxItem) -> str:
        return _relative_time(item.next_attempt_at - now) if item.state == "pending" else "-"

    def attempts(item: OutboxItem) -> str:
        return f"{item.attempts}/{max_attempts}" if max_attempts else str(item.attempts)

    header = ("ID", "STATE", "DESTINATION", "KIND", "ATTEMPTS", "NEXT TRY", "STUDY")
    rows = [
        (str(i.id), state_of(i), i.destination, i.kind, attempts(i), next_try(i), i.study_uid) for i in shown
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header) - 1)]

    def render(row: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1]

    lines.append(render(header))
    indent = " " * (widths[0] + 2)
    for item, row in zip(shown, rows):
        lines.append(render(row))
        if item.last_error and item.state != "delivered":
            lines.append(indent + item.last_error)
    if any(item.state == "dead" for item in shown):
        lines.append("dead items can be sent again with: spectnode retry ID | STUDY_UID | --all")
    return "\n".join(lines)
