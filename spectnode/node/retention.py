"""Retention: the node removes its own copies of finished studies (``retention:``).

What is removed, per study: its spooled objects (``spool/``), its work files
(``work/``) and its local results (``results/``: SR, SC, ``result.json``). The
job store keeps the study's rows (state, result, events, receipts, outbox
items, outputs), so ``spectnode status STUDY_UID`` still shows its audit
trail, and the study is marked ``purged_at``. Folder destinations are
deliveries, not the node's copies, and are never touched.

A study is *eligible* only when nothing can still need its files:

* it has ended: ``dispatched``, or ``not_assessable`` with no SR pending (a
  study in ``error`` is kept: ``spectnode retry`` needs its files);
* every outbox item of it is ``delivered`` or ``superseded`` (none pending,
  being sent or dead);
* it has not been purged already.

Eligible studies are removed, oldest end first,

* when ``retention.keep_seconds`` have passed since they ended, and
* while the spool, work and results folders together hold more than
  ``retention.max_bytes`` (the disk budget), before their time.

Each study is removed inside a job-store write transaction that checks its
state and generation again, so a study re-opened by a new object meanwhile
is left alone, and the receive stage (which records every object under the
same lock) never has an object recorded and removed at once. A spooled file
is removed only if it still holds the bytes recorded for it. The copies of an
object that a changed copy replaced (:meth:`~spectnode.node.datadir.DataDir.spooled_versions`)
go too, but only those older than the recorded copy: a newer one that is not
recorded is a copy the receive stage is storing at this moment.

``spectnode purge [--dry-run]`` applies the policy once; the running node
applies it every ``retention.interval_seconds``. At start-up the node also
removes what no record names (:func:`remove_unrecorded_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectnode.store import DISPATCHED, NOT_ASSESSABLE, JobStore, StudyRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from spectnode.node.datadir import DataDir

__all__ = ["UNRECORDED_MIN_AGE_SECONDS", "PurgePlan", "PurgedStudy", "RetentionPolicy", "folder_bytes",
           "remove_unrecorded_files", "run_periodically"]

_log = logging.getLogger("spectnode.retention")


def folder_bytes(folders: Iterable[Path]) -> int:
    """Bytes in the regular files under ``folders`` (missing folders count 0)."""
    total = 0
    stack = [Path(f) for f in folders]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


@dataclass(frozen=True)
class PurgedStudy:
    """One study the policy removes (or, in a dry run, would remove)."""

    study_uid: str
    #: When the study ended (its last state change), epoch seconds.
    ended_at: float
    #: ``keep_seconds`` (its time has come) or ``max_bytes`` (the budget is exceeded).
    why: str
    #: Bytes of its files.
    bytes: int


@dataclass
class PurgePlan:
    """What one application of the policy removes."""

    studies: list[PurgedStudy] = field(default_factory=list)
    #: Bytes in the spool, work and results folders before.
    usage_before: int = 0
    #: ... and after (the estimate, in a dry run).
    usage_after: int = 0
    dry_run: bool = False


class RetentionPolicy:
    """Removes the files of finished studies (see the module docstring).

    Args:
        store: The job store.
        data_dir: The data directory.
        keep_seconds: ``retention.keep_seconds`` (None: only the budget removes).
        max_bytes: ``retention.max_bytes`` (None: no budget).
        clock: Epoch seconds (the job store's clock by default).
    """

    def __init__(self, store: JobStore, data_dir: DataDir, keep_seconds: float | None, max_bytes: int | None,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self.clock = clock if clock is not None else store.clock

    def usage_bytes(self) -> int:
        """Bytes in the spool, work and results folders."""
        return folder_bytes((self.data_dir.spool, self.data_dir.work, self.data_dir.results))

    def eligible(self) -> list[StudyRecord]:
        """Studies whose files nothing needs any more, oldest end first."""
        rows = self.store.db.read(
            "SELECT study_uid FROM studies s WHERE s.purged_at IS NULL"
            " AND (s.state = ? OR (s.state = ? AND s.report_pending = 0))"
            " AND NOT EXISTS (SELECT 1 FROM outbox_items o WHERE o.study_uid = s.study_uid"
            " AND o.state NOT IN ('delivered', 'superseded'))"
            " ORDER BY s.updated_at, s.study_uid",
            (DISPATCHED, NOT_ASSESSABLE),
        )
        studies = [self.store.study(r["study_uid"]) for r in rows]
        return [s for s in studies if s is not None]

    def _study_files(self, study_uid: str) -> tuple[list[tuple[Path, str | None]], list[Path]]:
        """(spooled files with the sha256 recorded for them, folders of the study's work and results)."""
        spooled = self._spooled_files(study_uid, self.store.instances(study_uid))
        folders = [self.data_dir.work_file(study_uid, 1).parent, self.data_dir.results_folder(study_uid)]
        return spooled, folders

    def _spooled_files(self, study_uid: str, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Path, str | None]]:
        """The copies of a study's objects to remove: first the copies a changed copy replaced (older
        than the recorded one; no sha256 to check), then each recorded copy with its sha256."""
        replaced: list[tuple[Path, str | None]] = []
        recorded: list[tuple[Path, str | None]] = []
        for row in rows:
            path = Path(row["path"])
            recorded.append((path, row["sha256"]))
            try:
                recorded_at = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # nothing tells an old copy from one being received now: keep them
            for version in self.data_dir.spooled_versions(study_uid, row["sop_instance_uid"]):
                with contextlib.suppress(FileNotFoundError):
                    if version != path and version.stat().st_mtime_ns < recorded_at:
                        replaced.append((version, None))
        return replaced + recorded

    def _study_bytes(self, study_uid: str) -> int:
        spooled, folders = self._study_files(study_uid)
        return sum(p.stat().st_size for p, _ in spooled if p.is_file()) + folder_bytes(folders)

    def plan(self, dry_run: bool = True) -> PurgePlan:
        """Which studies the policy removes now, and why (nothing is removed)."""
        now = self.clock()
        usage = self.usage_bytes()
        plan = PurgePlan(usage_before=usage, usage_after=usage, dry_run=dry_run)
        for study in self.eligible():
            expired = self.keep_seconds is not None and now - study.updated_at >= self.keep_seconds
            over_budget = self.max_bytes is not None and plan.usage_after > self.max_bytes
            if not (expired or over_budget):
                continue
            size = self._study_bytes(study.study_uid)
            plan.studies.append(PurgedStudy(study.study_uid, study.updated_at,
                                            "keep_seconds" if expired else "max_bytes", size))
            plan.usage_after -= size
        return plan

    def run(self, dry_run: bool = False) -> PurgePlan:
        """Apply the policy once; returns what was (or, with ``dry_run``, would be) removed."""
        plan = self.plan(dry_run)
        if dry_run:
            return plan
        removed = [entry for entry in plan.studies if self.purge_study(entry)]
        plan.studies = removed
        plan.usage_after = self.usage_bytes()
        if removed:
            _log.info("retention: removed the files of %d finished stud%s (%d bytes); spool, work and results "
                      "hold %d bytes now", len(removed), "y" if len(removed) == 1 else "ies",
                      sum(s.bytes for s in removed), plan.usage_after)
        return plan

    def purge_study(self, entry: PurgedStudy) -> bool:
        """Remove one eligible study's files; False if it is no longer eligible (re-opened, retried ...)."""
        study = self.store.study(entry.study_uid)
        if study is None:
            return False
        now = self.clock()
        with self.store.transaction(study.study_uid, study.generation, (DISPATCHED, NOT_ASSESSABLE)) as tx:
            if tx is None:
                return False
            db = tx.db
            busy = db.execute(
                "SELECT 1 FROM outbox_items WHERE study_uid = ? AND state NOT IN ('delivered', 'superseded')"
                " LIMIT 1", (study.study_uid,)).fetchone()
            pending = db.execute("SELECT purged_at, report_pending FROM studies WHERE study_uid = ?",
                                 (study.study_uid,)).fetchone()
            if busy or pending["purged_at"] is not None or pending["report_pending"]:
                return False
            spooled = self._spooled_files(study.study_uid, db.execute(
                "SELECT sop_instance_uid, path, sha256 FROM instances WHERE study_uid = ?", (study.study_uid,)))
            for path, sha256 in spooled:
                _remove_if_unchanged(path, sha256)
            for folder in (self.data_dir.work_file(study.study_uid, 1).parent,
                           self.data_dir.results_folder(study.study_uid)):
                _remove_tree(folder)
            _remove_empty(self.data_dir.spool_folder(study.study_uid))
            # The rows of the spooled objects go (a re-sent object is then new); the audit rows stay.
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study.study_uid,))
            db.execute("UPDATE studies SET purged_at = ?, instance_count = 0 WHERE study_uid = ?",
                       (now, study.study_uid))
            self.store._event(db, study.study_uid, study.state,
                              f"files removed by retention ({entry.why}: {entry.bytes} bytes)", now)
        return True


#: Unrecorded spool files younger than this are left alone at start-up: a write that is to be
#: recorded is recorded within milliseconds.
UNRECORDED_MIN_AGE_SECONDS = 600.0


def remove_unrecorded_files(store: JobStore, data_dir: DataDir, now: float | None = None) -> int:
    """At start-up, before the node receives: remove the spooled objects no job-store row names,
    and the temporary files that durable writes leave when a process dies mid-write; returns how
    many. Best effort: a file it cannot handle is logged and left.

    A spooled object no row names is one a crash caught between writing and recording (the sender
    got no Success and sends it again), or an older copy of an object that a changed one replaced.
    Rows are matched by study folder and file name, so a data directory written another way (a
    relative path, a symlink, a moved folder) matches its own rows. Only ``*.dcm`` and ``.*.tmp``
    files at least :data:`UNRECORDED_MIN_AGE_SECONDS` old go. A ``backfill`` or ``classify
    --send`` that found a node serving may be storing into the spool without the data directory's
    lock, so each file is moved aside under the store's write lock (under which such a process
    records) and deleted only if the moved file is the one first looked at: a spooled object's
    name holds the SHA-256 of its bytes, so a copy written meanwhile under that name is put back
    unchanged.
    """
    now = time.time() if now is None else now
    recorded = {Path(row["path"]).parts[-2:] for row in store.db.read("SELECT path FROM instances")}
    candidates: list[tuple[Path, os.stat_result]] = []
    for folder, patterns in ((data_dir.spool, ("*.dcm", ".*.tmp", ".*.unrecorded")), (data_dir.work, (".*.tmp",)),
                             (data_dir.results, (".*.tmp",))):
        try:
            study_folders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            for study_folder in study_folders:
                for path in sorted(p for pattern in patterns for p in study_folder.glob(pattern)):
                    info = path.lstat()
                    if (path.is_file() and not path.is_symlink() and now - info.st_mtime >= UNRECORDED_MIN_AGE_SECONDS
                            and path.parts[-2:] not in recorded):
                        candidates.append((path, info))
        except OSError as exc:
            _log.warning("start-up: cannot look through %s for unrecorded files (%s); left as it is", folder,
                         type(exc).__name__)
    removed = 0
    for path, seen in candidates:
        try:
            removed += _remove_unrecorded(store, path, seen)
        except (OSError, sqlite3.Error) as exc:
            _log.warning("start-up: %s, recorded nowhere, cannot be removed (%s); left as it is", path,
                         type(exc).__name__)
    for study_folder in {path.parent for path, _ in candidates if path.parent.parent == data_dir.spool}:
        _remove_empty(study_folder)
    if removed:
        _log.info("start-up: removed %d file(s) of the data directory that no record names (written before "
                  "a crash was recorded, replaced copies, unfinished temporary files)", removed)
    return removed


def _remove_unrecorded(store: JobStore, path: Path, seen: os.stat_result) -> int:
    """Remove one candidate of :func:`remove_unrecorded_files` unless a row names it meanwhile or
    it is not the file first looked at; 1 if removed."""
    aside = path.with_name(f".{path.name}.unrecorded")
    with store.db.write() as db:  # a lockless writer records under this lock: none records meanwhile
        if not path.name.endswith(".tmp") and db.execute(
                "SELECT 1 FROM instances WHERE path LIKE ? ESCAPE '\\' LIMIT 1",
                ("%" + path.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"),)).fetchone():
            return 0
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return 0
        moved = aside.lstat()
        if (moved.st_ino, moved.st_dev, moved.st_mtime_ns) != (seen.st_ino, seen.st_dev, seen.st_mtime_ns):
            os.replace(aside, path)  # written meanwhile: the same bytes under the same name; put back
            return 0
        aside.unlink()
    return 1


def _remove_if_unchanged(path: Path, sha256: str | None) -> None:
    """Remove a spooled file unless it now holds other bytes (a changed object received meanwhile)."""
    try:
        if sha256 is not None:
            digest = hashlib.sha256()
            with open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_tree(folder: Path) -> None:
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            Path(root, name).unlink(missing_ok=True)
        for name in dirs:
            _remove_empty(Path(root, name))
    _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (a new object arrived), or already gone
        folder.rmdir()


def run_periodically(policy: RetentionPolicy, interval_seconds: float, stopping: Callable[[float], bool]) -> None:
    """Apply ``policy`` every ``interval_seconds`` until ``stopping(timeout)`` returns True (a thread's body)."""
    while not stopping(0.0):
        try:
            policy.run()
        except Exception:  # noqa: BLE001 - retention must never take the node down; it tries again later
            _log.exception("retention: the policy failed; trying again in %g s", interval_seconds)
        if stopping(interval_seconds):
            return
