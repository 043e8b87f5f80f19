"""The job store: the only state the node's stages share.

A small SQLite database (WAL mode, ``synchronous=FULL``) in the data directory
follows every study from its first received object to its end::

    received -> complete -> classified -> reported -> dispatched
                         \\-> not_assessable            (end, with its reason)
    any stage ------------> error                      (end, with the message;
                                                        ``spectnode retry`` resumes)

* ``received``: objects are arriving; the assemble stage decides when the
  study is complete (by content, or by the idle timeout as a fallback).
* ``complete``: ready for the classify stage.
* ``classified``: the classifier's result is stored; ready for the report stage.
* ``not_assessable``: the study is not a usable whole-body bone scan; the
  reason says why. If the node also sends an SR saying so, ``report_pending``
  is 1 until the report stage has queued it.
* ``reported``: SR/SC files are written and queued in the outbox, per
  destination; the dispatch stage sets ``dispatched`` once all are delivered.
* ``error``: a stage failed; ``error_stage`` is the state the study returns to
  when it is retried.

Every transition is conditional on the state *and* the study's
``generation``: an NM object that arrives for a study that is being (or has
been) processed re-opens it (back to ``received``, generation + 1; other
objects, such as a reader's SR or a later CT, are only recorded), and a stage that
was working on the old generation then finds its update refused and drops its
work. So a study is never processed twice at once and never lost.

The database and its connections are :class:`~spectnode.store.database.Database`'s;
other processes (``spectnode status``, ``spectnode retry``) open the same file
concurrently, which WAL allows.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from spectnode.errors import exception_name
from spectnode.peer import Peer
from spectnode.result import StudyResult
from spectnode.store.database import Database
from spectnode.store.outbox import Outbox

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = [
    "STATES",
    "ACTIVE_STATES",
    "END_STATES",
    "RECEIVED",
    "COMPLETE",
    "CLASSIFIED",
    "REPORTED",
    "DISPATCHED",
    "NOT_ASSESSABLE",
    "ERROR",
    "InstanceRecord",
    "StudyRecord",
    "OutputRecord",
    "StoredOutcome",
    "JobStore",
    "StudyTransaction",
    "Receipt",
]

_log = logging.getLogger("spectnode.store")

RECEIVED: Final = "received"
COMPLETE: Final = "complete"
CLASSIFIED: Final = "classified"
REPORTED: Final = "reported"
DISPATCHED: Final = "dispatched"
NOT_ASSESSABLE: Final = "not_assessable"
ERROR: Final = "error"

#: Every study state, in pipeline order.
STATES: Final = (RECEIVED, COMPLETE, CLASSIFIED, REPORTED, DISPATCHED, NOT_ASSESSABLE, ERROR)
#: States a running node still has work for.
ACTIVE_STATES: Final = (RECEIVED, COMPLETE, CLASSIFIED, REPORTED)
#: States where the pipeline has stopped (until a new object or a retry).
END_STATES: Final = (DISPATCHED, NOT_ASSESSABLE, ERROR)

StoredOutcome = Literal["new", "duplicate", "changed", "own_output"]

@dataclass(frozen=True)
class InstanceRecord:
    """One received object, already durable in the spool."""

    study_uid: str
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    #: The spooled file.
    path: Path
    #: sha256 hex digest of the file as spooled (file meta + dataset).
    sha256: str
    size: int


@dataclass(frozen=True)
class StudyRecord:
    """A study as the store sees it."""

    study_uid: str
    state: str
    generation: int
    #: Why the study is not assessable, or the error message.
    reason: str | None
    #: For ``error``: the state a retry returns the study to.
    error_stage: str | None
    #: For ``not_assessable``: 1 while its "not assessable" SR is still to be made.
    report_pending: bool
    calling_ae: str | None
    peer_address: str | None
    peer_port: int | None
    called_ae: str | None
    instance_count: int
    first_received: float
    last_received: float
    #: Increases with every new or changed object; the assembler compares it
    #: with ``checked_version`` to know whether the study needs another look.
    content_version: int
    checked_version: int
    #: ``content`` (both views present) or ``timeout`` (idle fallback).
    completed_by: str | None
    #: The classify stage's result, if any.
    result: StudyResult | None
    updated_at: float
    #: When the retention policy removed the study's files (None: they are kept).
    purged_at: float | None = None

    @property
    def peer(self) -> Peer | None:
        """The peer that last sent an object of this study."""
        if not self.calling_ae or not self.peer_address:
            return None
        return Peer(self.calling_ae, self.peer_address, int(self.peer_port or 0), self.called_ae or "")


@dataclass(frozen=True)
class OutputRecord:
    """One result object the node made for a study (an SR or an SC)."""

    study_uid: str
    generation: int
    #: ``sr`` or ``sc``.
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    path: Path
    #: False once a later generation's output of the study supersedes it.
    is_current: bool
    created_at: float


@dataclass(frozen=True)
class Receipt:
    """One C-STORE the node answered, accepted or refused: who sent what, when, and the answer."""

    at: float
    calling_ae: str | None
    peer_address: str | None
    peer_port: int | None
    called_ae: str | None
    #: The dataset's StudyInstanceUID, when the node could read it.
    study_uid: str | None
    #: The dataset's SOP Instance UID (or the request's, if the dataset could not be read).
    sop_instance_uid: str | None
    #: The C-STORE status answered.
    status: int
    #: What the node did with the object, in words (no patient data).
    outcome: str


def _can_hold_view(record: InstanceRecord) -> bool:
    return record.modality.strip().upper() == "NM"


def _study(row: sqlite3.Row) -> StudyRecord:
    return StudyRecord(
        study_uid=row["study_uid"],
        state=row["state"],
        generation=int(row["generation"]),
        reason=row["reason"],
        error_stage=row["error_stage"],
        report_pending=bool(row["report_pending"]),
        calling_ae=row["calling_ae"],
        peer_address=row["peer_address"],
        peer_port=row["peer_port"],
        called_ae=row["called_ae"],
        instance_count=int(row["instance_count"]),
        first_received=float(row["first_received"]),
        last_received=float(row["last_received"]),
        content_version=int(row["content_version"]),
        checked_version=int(row["checked_version"]),
        completed_by=row["completed_by"],
        result=_result(row),
        updated_at=float(row["updated_at"]),
        purged_at=row["purged_at"],
    )


def _result(row: sqlite3.Row) -> StudyResult | None:
    """The stored result of a study row; one that cannot be read is logged and taken as none, so that
    one damaged row cannot stop every stage and ``spectnode status``."""
    if not row["result"]:
        return None
    try:
        return StudyResult.from_json(json.loads(row["result"]))
    except (ValueError, KeyError, TypeError) as exc:
        # Its class only: a parser's message may quote the value it failed on.
        _log.error("study %s: its stored result cannot be read (%s); taken as none", row["study_uid"],
                   exception_name(exc))
        return None


def _output(row: sqlite3.Row) -> OutputRecord:
    return OutputRecord(
        study_uid=row["study_uid"],
        generation=int(row["generation"]),
        kind=row["kind"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        series_uid=row["series_uid"],
        path=Path(row["path"]),
        is_current=bool(row["is_current"]),
        created_at=float(row["created_at"]),
    )


class StudyTransaction:
    """Changes to one study inside :meth:`JobStore.transaction`; all or none are committed.

    Attributes:
        db: The transaction's connection, for writes to other tables of the
            job store database (the outbox) that must commit with the study's.
        study_uid: The study.
        generation: Its generation, as checked when the transaction began.
    """

    def __init__(self, store: JobStore, db: sqlite3.Connection, study_uid: str, generation: int,
                 now: float) -> None:
        self._store = store
        self.db = db
        self.study_uid = study_uid
        self.generation = generation
        self._now = now

    def move(
        self,
        to_state: str,
        message: str,
        *,
        reason: str | None = None,
        result: StudyResult | None = None,
        completed_by: str | None = None,
        report_pending: bool | None = None,
    ) -> None:
        """Move the study to ``to_state`` (arguments as for :meth:`JobStore.advance`)."""
        sets = ["state = ?", "updated_at = ?", "error_stage = NULL"]
        values: list[Any] = [to_state, self._now]
        if reason is not None or to_state in (DISPATCHED, CLASSIFIED, REPORTED, COMPLETE):
            sets.append("reason = ?")
            values.append(reason)
        if result is not None:
            sets.append("result = ?")
            values.append(json.dumps(result.to_json()))
        if completed_by is not None:
            sets.append("completed_by = ?")
            values.append(completed_by)
        if report_pending is not None:
            sets.append("report_pending = ?")
            values.append(int(report_pending))
        self.db.execute(f"UPDATE studies SET {', '.join(sets)} WHERE study_uid = ?", (*values, self.study_uid))
        self._store._event(self.db, self.study_uid, to_state, message, self._now)

    def set_report_pending(self, pending: bool) -> None:
        """Set or clear ``report_pending`` (the SR of a not-assessable study is queued)."""
        self.db.execute("UPDATE studies SET report_pending = ?, updated_at = ? WHERE study_uid = ?",
                        (int(pending), self._now, self.study_uid))


class JobStore:
    """The SQLite job store of one data directory.

    Args:
        path: The database file (created with its tables if missing).
        busy_timeout_s: How long a write waits for another writer (another
            thread or process) before failing.

    Raises:
        StoreError: If the file cannot be opened as a job store.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = Database(path, busy_timeout_s)
        self.path = self.db.path
        #: Current time in epoch seconds, for every time stamp the store writes (tests pass a fake one).
        self.clock = clock
        #: The durable outbox: its items live in the same database.
        self.outbox = Outbox(self.db, clock)

    def close(self) -> None:
        """Close the store's connections; later calls raise :class:`StoreError`."""
        self.db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _event(db: sqlite3.Connection, study_uid: str, state: str, message: str, now: float) -> None:
        db.execute("INSERT INTO events (study_uid, at, state, message) VALUES (?, ?, ?, ?)",
                    (study_uid, now, state, message))

    # ------------------------------------------------------------------- receive

    def record_instance(self, record: InstanceRecord, peer: Peer, now: float | None = None) -> StoredOutcome:
        """Record a spooled object; commit before returning.

        Returns:
            ``new`` for an object not seen before, ``duplicate`` for the same
            SOP Instance UID with identical bytes (nothing changes),
            ``changed`` for the same SOP Instance UID with different bytes, and
            ``own_output`` for an object this node made itself (an SR or SC
            echoed back by a PACS), which is not added to the study.

            A ``new`` or ``changed`` object with Modality NM (any SOP class)
            for a study past ``received`` re-opens it: state ``received``,
            generation + 1. Other objects are added to the study without
            re-opening it.
        """
        now = self.clock() if now is None else now
        with self.db.write() as db:
            if db.execute("SELECT 1 FROM outputs WHERE sop_instance_uid = ?",
                          (record.sop_instance_uid,)).fetchone():
                return "own_output"
            existing = db.execute(
                "SELECT sha256 FROM instances WHERE study_uid = ? AND sop_instance_uid = ?",
                (record.study_uid, record.sop_instance_uid),
            ).fetchone()
            if existing is not None and existing["sha256"] == record.sha256:
                return "duplicate"
            outcome: StoredOutcome = "new" if existing is None else "changed"
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.study_uid, record.sop_instance_uid, record.series_uid, record.sop_class_uid,
                 record.modality, record.transfer_syntax, str(record.path), record.sha256, record.size,
                 peer.ae_title, now),
            )
            study = db.execute("SELECT state, generation FROM studies WHERE study_uid = ?",
                               (record.study_uid,)).fetchone()
            if study is None:
                db.execute(
                    "INSERT INTO studies (study_uid, state, calling_ae, peer_address, peer_port, called_ae, "
                    "instance_count, first_received, last_received, content_version, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, 1, ?)",
                    (record.study_uid, RECEIVED, peer.ae_title, peer.address, peer.port, peer.called_ae_title,
                     now, now, now),
                )
                self._event(db, record.study_uid, RECEIVED, f"first object from {peer.ae_title}@{peer.address}", now)
                return outcome
            # Only an object that can hold a view (Modality NM, whatever its SOP
            # class) can change the result; an SR, KOS or GSPS from a reader or
            # another AI, or a later CT, is kept with the study but does not
            # make the node process it (and report on it) again.
            reopen = study["state"] != RECEIVED and _can_hold_view(record)
            db.execute(
                "UPDATE studies SET calling_ae = ?, peer_address = ?, peer_port = ?, called_ae = ?, "
                "instance_count = (SELECT COUNT(*) FROM instances WHERE study_uid = ?), "
                "last_received = ?, content_version = content_version + 1, updated_at = ?, purged_at = NULL "
                "WHERE study_uid = ?",
                (peer.ae_title, peer.address, peer.port, peer.called_ae_title, record.study_uid, now, now,
                 record.study_uid),
            )
            if reopen:
                db.execute(
                    "UPDATE studies SET state = ?, generation = generation + 1, reason = NULL, "
                    "error_stage = NULL, report_pending = 0, completed_by = NULL, result = NULL "
                    "WHERE study_uid = ?",
                    (RECEIVED, record.study_uid),
                )
                # The object is not named: its SOP Instance UID is in its receipt, and Modality may hold any text.
                what = "changed object" if outcome == "changed" else "new object"
                self._event(db, record.study_uid, RECEIVED, f"re-opened from {study['state']} by a {what}", now)
            elif study["state"] != RECEIVED:
                self._event(db, record.study_uid, study["state"],
                            "an object that is not NM recorded; not re-opened (only NM objects can hold a view)", now)
            return outcome

    def record_receipt(self, peer: Peer, study_uid: str | None, sop_instance_uid: str | None, status: int,
                       outcome: str, now: float | None = None) -> None:
        """Add one answered C-STORE to the audit trail (:meth:`receipts`)."""
        now = self.clock() if now is None else now
        with self.db.write() as db:
            db.execute(
                "INSERT INTO receipts (at, calling_ae, peer_address, peer_port, called_ae, study_uid, "
                "sop_instance_uid, status, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, peer.ae_title, peer.address, peer.port, peer.called_ae_title, study_uid or None,
                 sop_instance_uid or None, status, outcome),
            )

    def receipts(self, study_uid: str | None = None) -> list[Receipt]:
        """The answered C-STOREs of a study (all if None), oldest first."""
        sql = "SELECT * FROM receipts" + (" WHERE study_uid = ?" if study_uid is not None else "") + " ORDER BY id"
        rows = self.db.read(sql, () if study_uid is None else (study_uid,))
        return [Receipt(float(r["at"]), r["calling_ae"], r["peer_address"], r["peer_port"], r["called_ae"],
                        r["study_uid"], r["sop_instance_uid"], int(r["status"]), r["outcome"]) for r in rows]

    # ------------------------------------------------------------------- queries

    def known_instance(self, study_uid: str, sop_instance_uid: str) -> str | None:
        """What the store knows of an object before it is spooled.

        Returns:
            ``"own_output"`` if this node made the object, the sha256 of the
            spooled copy if it was received before, else None.
        """
        if self.db.read("SELECT 1 FROM outputs WHERE sop_instance_uid = ?", (sop_instance_uid,)):
            return "own_output"
        rows = self.db.read("SELECT sha256 FROM instances WHERE study_uid = ? AND sop_instance_uid = ?",
                          (study_uid, sop_instance_uid))
        return rows[0]["sha256"] if rows else None

    def study(self, study_uid: str) -> StudyRecord | None:
        """One study, or None if the store has never seen it."""
        rows = self.db.read("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
        return _study(rows[0]) if rows else None

    def studies(self, states: Sequence[str] | None = None) -> list[StudyRecord]:
        """Studies in ``states`` (all if None), oldest first."""
        if states is None:
            rows = self.db.read("SELECT * FROM studies ORDER BY first_received, study_uid")
        else:
            marks = ",".join("?" * len(states))
            rows = self.db.read(f"SELECT * FROM studies WHERE state IN ({marks}) ORDER BY first_received, study_uid",
                              states)
        return [_study(r) for r in rows]

    def instance_paths(self, study_uid: str) -> list[Path]:
        """Spooled files of a study, in the order they were first received."""
        rows = self.db.read("SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at, sop_instance_uid",
                          (study_uid,))
        return [Path(r["path"]) for r in rows]

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The instance rows of a study (for status and tests)."""
        rows = self.db.read("SELECT * FROM instances WHERE study_uid = ? ORDER BY received_at, sop_instance_uid",
                          (study_uid,))
        return [dict(r) for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        """Number of studies in each state (every state present, zero if none)."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.db.read("SELECT state, COUNT(*) AS n FROM studies GROUP BY state"):
            counts[row["state"]] = int(row["n"])
        return counts

    def events(self, study_uid: str) -> list[tuple[float, str, str]]:
        """(time, state, message) history of a study, oldest first."""
        rows = self.db.read("SELECT at, state, message FROM events WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [(float(r["at"]), r["state"], r["message"]) for r in rows]

    # --------------------------------------------------------------- transitions

    def mark_checked(self, study_uid: str, content_version: int) -> None:
        """Remember that the assembler looked at ``content_version`` of a study."""
        with self.db.write() as db:
            db.execute("UPDATE studies SET checked_version = MAX(checked_version, ?) WHERE study_uid = ?",
                       (content_version, study_uid))

    @contextmanager
    def transaction(
        self,
        study_uid: str,
        generation: int,
        from_states: str | Iterable[str],
        *,
        content_version: int | None = None,
        now: float | None = None,
    ) -> Iterator[StudyTransaction | None]:
        """A write transaction on a study that is still in ``from_states`` at ``generation``.

        Yields a :class:`StudyTransaction`, or None if the study has changed
        meanwhile (a new object re-opened it, or another stage or a retry
        moved it), in which case the caller drops its work. Everything done
        through the transaction, including writes of other tables of the same
        database through :attr:`StudyTransaction.db` (the outbox), is
        committed together when the block ends, or rolled back if it raises.

        ``content_version``, when given, must also still match (see
        :meth:`advance`).
        """
        now = self.clock() if now is None else now
        states = (from_states,) if isinstance(from_states, str) else tuple(from_states)
        with self.db.write() as db:
            row = db.execute("SELECT state, generation, content_version FROM studies WHERE study_uid = ?",
                             (study_uid,)).fetchone()
            current = (row is not None and row["generation"] == generation and row["state"] in states
                       and (content_version is None or row["content_version"] == content_version))
            yield StudyTransaction(self, db, study_uid, generation, now) if current else None

    def advance(
        self,
        study_uid: str,
        generation: int,
        from_states: str | Iterable[str],
        to_state: str,
        message: str,
        *,
        reason: str | None = None,
        result: StudyResult | None = None,
        completed_by: str | None = None,
        report_pending: bool | None = None,
        content_version: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Move a study to ``to_state`` if it is still in ``from_states`` at ``generation``.

        ``content_version``, when given, must also still match: the assembler
        passes the version it judged complete, so an object that arrived in
        the meantime makes it look again instead.

        Returns:
            True if the study moved; False if it had changed meanwhile (a new
            object re-opened it, or another stage or a retry moved it), in
            which case the caller drops its work.
        """
        with self.transaction(study_uid, generation, from_states, content_version=content_version,
                              now=now) as tx:
            if tx is None:
                return False
            tx.move(to_state, message, reason=reason, result=result, completed_by=completed_by,
                    report_pending=report_pending)
            return True

    def set_report_pending(self, study_uid: str, generation: int, pending: bool) -> bool:
        """Set or clear ``report_pending`` of a study still at ``generation``."""
        with self.db.write() as db:
            return bool(db.execute(
                "UPDATE studies SET report_pending = ?, updated_at = ? WHERE study_uid = ? AND generation = ?",
                (int(pending), self.clock(), study_uid, generation),
            ).rowcount)

    def fail(self, study_uid: str, generation: int, stage_state: str, message: str,
             now: float | None = None) -> bool:
        """Put a study in the visible ``error`` state.

        Args:
            stage_state: The state the study was in when the stage failed; a
                retry returns it there.
            message: What went wrong (shown by ``spectnode status``).

        Returns:
            False if the study had meanwhile moved on (re-opened by a new
            object); the failure is then moot.
        """
        now = self.clock() if now is None else now
        with self.db.write() as db:
            moved = db.execute(
                "UPDATE studies SET state = ?, error_stage = ?, reason = ?, updated_at = ? "
                "WHERE study_uid = ? AND generation = ? AND state = ?",
                (ERROR, stage_state, message, now, study_uid, generation, stage_state),
            ).rowcount
            if moved:
                self._event(db, study_uid, ERROR, f"{stage_state}: {message}", now)
        return bool(moved)

    def retry_study(self, study_uid: str, now: float | None = None) -> str | None:
        """Send a study in ``error`` back to the stage that failed.

        Returns:
            The state the study returned to, or None if it is not in ``error``.
        """
        now = self.clock() if now is None else now
        with self.db.write() as db:
            row = db.execute("SELECT state, error_stage, result FROM studies WHERE study_uid = ?",
                             (study_uid,)).fetchone()
            if row is None or row["state"] != ERROR:
                return None
            stage = row["error_stage"] or COMPLETE
            # A not-assessable study keeps its reason (the error message replaced it).
            reason = json.loads(row["result"]).get("reason") if stage == NOT_ASSESSABLE and row["result"] else None
            db.execute(
                "UPDATE studies SET state = ?, error_stage = NULL, reason = ?, updated_at = ? WHERE study_uid = ?",
                (stage, reason, now, study_uid),
            )
            self._event(db, study_uid, stage, "retried by an operator", now)
            return stage

    # -------------------------------------------------------------------- outputs

    def record_outputs(self, study_uid: str, generation: int, outputs: Sequence[OutputRecord],
                       now: float | None = None) -> bool:
        """Record the SR/SC objects made for ``generation`` of a study as current.

        Outputs of earlier generations stop being current (they are superseded;
        the new SR names the old one in Predecessor Documents). Recording the
        same generation again replaces its earlier, never sent, outputs.

        Returns:
            False, recording nothing, if the study is no longer at
            ``generation`` (a new object re-opened it): its outputs would never
            be sent, so no later SR may name them as its predecessor.
        """
        now = self.clock() if now is None else now
        with self.db.write() as db:
            row = db.execute("SELECT generation FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None or row["generation"] != generation:
                return False
            db.execute("DELETE FROM outputs WHERE study_uid = ? AND generation = ?", (study_uid, generation))
            db.execute("UPDATE outputs SET is_current = 0 WHERE study_uid = ?", (study_uid,))
            for out in outputs:
                db.execute(
                    "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (study_uid, generation, out.kind, out.sop_instance_uid, out.sop_class_uid, out.series_uid,
                     str(out.path), now),
                )
            return True

    def discard_outputs(self, study_uid: str, generation: int) -> list[OutputRecord]:
        """Forget the outputs of ``generation`` of a study that has been re-opened since.

        For a report stage whose work was refused after it recorded its
        outputs (the study was re-opened in between): those outputs are never
        sent, so they must not remain current or become a predecessor.
        Nothing happens while the study is still at ``generation``.

        Returns:
            The forgotten outputs (whose files the caller may delete).
        """
        with self.db.write() as db:
            row = db.execute("SELECT generation FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None or row["generation"] == generation:
                return []
            rows = db.execute("SELECT * FROM outputs WHERE study_uid = ? AND generation = ?",
                              (study_uid, generation)).fetchall()
            db.execute("DELETE FROM outputs WHERE study_uid = ? AND generation = ?", (study_uid, generation))
            latest = db.execute("SELECT MAX(generation) AS g FROM outputs WHERE study_uid = ?",
                                (study_uid,)).fetchone()["g"]
            if rows and latest is not None:
                # The outputs these had superseded are the study's current ones again.
                db.execute("UPDATE outputs SET is_current = 1 WHERE study_uid = ? AND generation = ?",
                           (study_uid, latest))
            return [_output(r) for r in rows]

    def outputs(self, study_uid: str, current_only: bool = True) -> list[OutputRecord]:
        """Outputs of a study (only the current ones by default), oldest first."""
        sql = "SELECT * FROM outputs WHERE study_uid = ?" + (" AND is_current = 1" if current_only else "")
        rows = self.db.read(sql + " ORDER BY created_at, kind, sop_instance_uid", (study_uid,))
        return [_output(r) for r in rows]

    def predecessor_sr(self, study_uid: str, generation: int) -> OutputRecord | None:
        """The SR a new SR of ``generation`` must name in Predecessor Documents.

        That is the SR of the latest earlier generation of the study, or None
        for a study that never had one.
        """
        rows = self.db.read(
            "SELECT * FROM outputs WHERE study_uid = ? AND kind = 'sr' AND generation < ? "
            "ORDER BY generation DESC, created_at DESC LIMIT 1",
            (study_uid, generation),
        )
        return _output(rows[0]) if rows else None
