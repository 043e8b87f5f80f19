"""The job store's SQLite database: one connection policy, one schema version.

Every table the node keeps (studies, instances, outputs, events and the
outbox) lives in one SQLite file, opened here and nowhere else:

* WAL mode, so that ``spectnode status`` and ``spectnode retry`` read and
  write while the node runs;
* ``synchronous=FULL``: a commit is on disk before the SCP answers Success
  or an outbox row is trusted;
* ``BEGIN IMMEDIATE`` for every write transaction, so a writer takes the lock
  up front instead of failing when it upgrades a read lock; a transaction
  whose COMMIT fails is rolled back;
* one connection per operation from a small pool (each association of the
  SCP has its own thread); a connection is never pooled inside a transaction.

The schema is a numbered list of migrations (:data:`MIGRATIONS`); the
database records the number of the last one applied in ``store_meta``. A
database at an older number is brought up to date when it is opened, in one
transaction; one at a newer number (written by a later spectnode) is refused
rather than misread.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["Database", "Migration", "MIGRATIONS", "SCHEMA_VERSION", "StoreError"]


class StoreError(Exception):
    """The job store cannot be opened or used (its message says why)."""


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema.

    Attributes:
        version: The schema version the database has after this step.
        summary: What the step does, for the log and for readers.
        apply: Runs the step inside the open transaction of the upgrade.
    """

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _create_job_tables(db: sqlite3.Connection) -> None:
    for statement in _JOB_TABLES:
        db.execute(statement)


_JOB_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS studies (
        study_uid TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 1,
        reason TEXT,
        error_stage TEXT,
        report_pending INTEGER NOT NULL DEFAULT 0,
        calling_ae TEXT,
        peer_address TEXT,
        peer_port INTEGER,
        called_ae TEXT,
        instance_count INTEGER NOT NULL DEFAULT 0,
        first_received REAL NOT NULL,
        last_received REAL NOT NULL,
        content_version INTEGER NOT NULL DEFAULT 0,
        checked_version INTEGER NOT NULL DEFAULT 0,
        completed_by TEXT,
        result TEXT,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS studies_by_state ON studies(state)",
    """CREATE TABLE IF NOT EXISTS instances (
        study_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        series_uid TEXT,
        sop_class_uid TEXT,
        modality TEXT,
        transfer_syntax TEXT,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        calling_ae TEXT,
        received_at REAL NOT NULL,
        PRIMARY KEY (study_uid, sop_instance_uid)
    )""",
    """CREATE TABLE IF NOT EXISTS outputs (
        study_uid TEXT NOT NULL,
        generation INTEGER NOT NULL,
        kind TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        is_current INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (study_uid, sop_instance_uid)
    )""",
    "CREATE INDEX IF NOT EXISTS outputs_by_uid ON outputs(sop_instance_uid)",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_uid TEXT NOT NULL,
        at REAL NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_study ON events(study_uid)",
)

_OUTBOX_TABLE: Final = """CREATE TABLE {name} (
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
)"""

# Columns of the outbox table of spectnode's first releases (no generation, no 'superseded').
_OUTBOX_V1_COLUMNS: Final = (
    "id", "study_uid", "destination", "kind", "files_json", "files_key", "sender_ae_title", "sender_host", "state",
    "attempts", "next_attempt_at", "last_error", "created_at", "updated_at", "claimed_at", "delivered_at",
)


def _create_outbox_table(db: sqlite3.Connection) -> None:
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox_items'").fetchone()
    if row is None:
        db.execute(_OUTBOX_TABLE.format(name="outbox_items"))
    elif "generation" not in row[0]:
        # A table of the first releases: rebuilt with the generation column and the
        # 'superseded' state; each item takes the generation its study has now.
        db.execute(_OUTBOX_TABLE.format(name="outbox_items_v2"))
        columns = ", ".join(_OUTBOX_V1_COLUMNS)
        selected = ", ".join(f"o.{c}" for c in _OUTBOX_V1_COLUMNS)
        db.execute(
            f"INSERT INTO outbox_items_v2 ({columns}, generation) SELECT {selected}, "
            "COALESCE((SELECT s.generation FROM studies s WHERE s.study_uid = o.study_uid), 1) FROM outbox_items o"
        )
        db.execute("DROP TABLE outbox_items")
        db.execute("ALTER TABLE outbox_items_v2 RENAME TO outbox_items")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_due ON outbox_items (state, next_attempt_at)")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_study ON outbox_items (study_uid, generation)")


def _add_audit_and_retention(db: sqlite3.Connection) -> None:
    # Every C-STORE answered (accepted or refused), for the audit trail: who sent what, when, and the answer.
    db.execute("""CREATE TABLE IF NOT EXISTS receipts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        calling_ae TEXT,
        peer_address TEXT,
        peer_port INTEGER,
        called_ae TEXT,
        study_uid TEXT,
        sop_instance_uid TEXT,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL
    )""")
    db.execute("CREATE INDEX IF NOT EXISTS receipts_by_study ON receipts(study_uid)")
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox_items)")}
    if "acknowledgement" not in columns:
        # What the destination answered when it took the item (C-STORE status, folder written).
        db.execute("ALTER TABLE outbox_items ADD COLUMN acknowledgement TEXT")
    columns = {row[1] for row in db.execute("PRAGMA table_info(studies)")}
    if "purged_at" not in columns:
        # When the retention policy removed the study's files (its rows stay, for the audit trail).
        db.execute("ALTER TABLE studies ADD COLUMN purged_at REAL")


# The outbox table from schema version 4 on: the 'awaiting_commitment' state and the Storage
# Commitment transaction of an item (its UID, the SOP references asked for, the deadline, and
# the failure a report gave, for the dispatch stage to act on).
_OUTBOX_V4_TABLE: Final = """CREATE TABLE outbox_items_v4 (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid             TEXT    NOT NULL,
    generation            INTEGER NOT NULL DEFAULT 1,
    destination           TEXT    NOT NULL,
    kind                  TEXT    NOT NULL,
    files_json            TEXT    NOT NULL,
    files_key             TEXT    NOT NULL,
    sender_ae_title       TEXT,
    sender_host           TEXT,
    state                 TEXT    NOT NULL CHECK (state IN
                              ('pending', 'sending', 'awaiting_commitment', 'delivered', 'dead', 'superseded')),
    attempts              INTEGER NOT NULL DEFAULT 0,
    next_attempt_at       REAL    NOT NULL,
    last_error            TEXT,
    created_at            REAL    NOT NULL,
    updated_at            REAL    NOT NULL,
    claimed_at            REAL,
    delivered_at          REAL,
    acknowledgement       TEXT,
    commitment_uid        TEXT,
    commitment_refs_json  TEXT,
    commitment_deadline   REAL,
    commitment_failure    TEXT,
    UNIQUE (study_uid, destination, kind, files_key)
)"""

# Columns of the outbox table of schema version 3.
_OUTBOX_V3_COLUMNS: Final = (*_OUTBOX_V1_COLUMNS, "generation", "acknowledgement")


def _add_storage_commitment(db: sqlite3.Connection) -> None:
    # SQLite cannot change a CHECK constraint in place: the table is rebuilt, every row kept,
    # and its id sequence carried over (ids are what ``spectnode retry ID`` names).
    (sequence,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox_items'"
                             ).fetchone()
    db.execute(_OUTBOX_V4_TABLE)
    columns = ", ".join(_OUTBOX_V3_COLUMNS)
    db.execute(f"INSERT INTO outbox_items_v4 ({columns}) SELECT {columns} FROM outbox_items")
    db.execute("DROP TABLE outbox_items")
    db.execute("ALTER TABLE outbox_items_v4 RENAME TO outbox_items")
    (current,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox_items'"
                            ).fetchone()
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox_items'")
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox_items', ?)", (max(sequence, current),))
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_due ON outbox_items (state, next_attempt_at)")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_study ON outbox_items (study_uid, generation)")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_commitment ON outbox_items (commitment_uid)")


#: The schema, step by step. Version 1 is the job tables of spectnode 0.1.0,
#: which kept the outbox as a table of its own, created (and upgraded) by the
#: outbox itself; version 2 makes the outbox part of the schema, taking over
#: such a table as it is, or one of the first releases with its rows upgraded;
#: version 3 adds the audit trail (receipts, acknowledgements) and the retention mark;
#: version 4 adds Storage Commitment to the outbox (the ``awaiting_commitment`` state).
MIGRATIONS: Final = (
    Migration(1, "job tables: studies, instances, outputs, events", _create_job_tables),
    Migration(2, "outbox_items: the durable outbox, part of the job store", _create_outbox_table),
    Migration(3, "receipts, outbox acknowledgements, studies.purged_at: audit trail and retention",
              _add_audit_and_retention),
    Migration(4, "outbox_items: Storage Commitment transactions and the awaiting_commitment state",
              _add_storage_commitment),
)
#: The schema version this spectnode reads and writes.
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


class Database:
    """The job store's SQLite file, its connection pool and its migrations.

    Args:
        path: The database file (created, with every table, if missing).
        busy_timeout_s: How long a write waits for another writer (another
            thread or process) before failing.

    Raises:
        StoreError: If the file cannot be opened as a job store, or was
            written by a newer spectnode.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._migrate()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.path}: cannot open the job store: {exc}") from exc
        except StoreError:
            self.close()
            raise

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        return db

    def _version(self, db: sqlite3.Connection) -> int:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'").fetchone()
        if not has_meta:
            return 0
        row = db.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        return int(row["value"]) if row is not None else 0

    def _migrate(self) -> None:
        with self.borrow() as db:
            if self._version(db) == SCHEMA_VERSION:
                return  # up to date: no write lock (``spectnode status`` while the node is busy)
        with self.write() as db:
            version = self._version(db)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: job store schema version {version} is newer than "
                                 f"{SCHEMA_VERSION}, the version this spectnode reads")
            db.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for migration in MIGRATIONS:
                if migration.version > version:
                    migration.apply(db)
            db.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextmanager
    def borrow(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, from the pool (autocommit: no transaction is open)."""
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: the job store is closed")
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db
        finally:
            # A connection still inside a transaction (one whose COMMIT or ROLLBACK failed) is closed,
            # which rolls it back: pooled, it would hold the write lock and run the next user's work in it.
            with self._lock:
                pooled = not self._closed and not db.in_transaction
                if pooled:
                    self._idle.append(db)
            if not pooled:
                db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back if it
        raises or if the COMMIT itself fails (the error of the block or of the COMMIT is raised)."""
        with self.borrow() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (an I/O error, a full disk); a failed COMMIT
                # (a deferred constraint, SQLITE_BUSY) leaves the transaction open.
                if db.in_transaction:
                    with suppress(sqlite3.Error):  # then borrow() discards the connection
                        db.execute("ROLLBACK")
                raise

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one query, outside any transaction."""
        with self.borrow() as db:
            return db.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        """Close the pooled connections; later calls raise :class:`StoreError`."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()
