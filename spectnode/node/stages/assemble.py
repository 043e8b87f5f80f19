"""Stage 2, assemble: decide from content when a received study is complete.

A whole-body bone scan is complete the moment both its anterior and its
posterior view are present, whatever the layout (one multi-frame object, two
single-frame instances, two series ...). The assembler looks at a study again
after every new object and moves it to ``complete`` at once, with no waiting.
The configured idle timeout (``completion.timeout_seconds``) is only the
fallback: a study that has not become complete by content (a single view, a
CT, an unusual series) is completed once no object has arrived for that long,
and the classify stage then says what it is (a one-view result, or "not
assessable" with the reason).

Looking is cheap: the job store already knows each object's Modality, so only
NM objects are read at all, and only up to their pixel data: whether both
views are there is decided from the headers alone (view codes, detector
vectors, labels; see :mod:`spectnode.imaging.views`). Pixel data is decoded
once per study, by the classify stage; if it cannot be decoded the study ends
``not_assessable`` right away instead of waiting for the idle timeout.

Like every stage, it knows nothing of the stages after it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

# The header-level part of the view rules; the same function read_study_views uses.
from spectnode.imaging.views import ANTERIOR, POSTERIOR, object_names, object_view_candidates
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, is_disk_full, unguarded
from spectnode.node.stages import study_log_extra
from spectnode.node.stages.spooled import read_spooled_study
from spectnode.store import COMPLETE, RECEIVED, JobStore, StudyRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pydicom.dataset import Dataset

    from spectnode.node.datadir import DataDir

__all__ = ["Completion", "check_completion", "complete_now", "AssembleStage"]

_log = logging.getLogger("spectnode.assemble")

@dataclass(frozen=True)
class Completion:
    """Whether a study's objects hold both views.

    Attributes:
        complete: True when the headers name exactly one anterior and one
            posterior view (object or frame).
        views: The views named so far.
        detail: What was found, for logs.
    """

    complete: bool
    views: tuple[str, ...]
    detail: str


def check_completion(nm_headers: Sequence[Dataset], unreadable: int = 0) -> Completion:
    """Check whether the headers of a study's NM objects name both whole-body views.

    Only headers are used: pixel data need not be read (objects read with
    ``stop_before_pixels``), and nothing is decoded. Two different objects or
    frames naming the same view make the study not complete (yet): it is
    then completed by the idle timeout, and the classify stage explains the
    ambiguity.

    Args:
        nm_headers: The study's objects whose Modality is NM.
        unreadable: How many further NM objects could not be read (for the detail).
    """
    named: dict[str, set[tuple[str, int | None]]] = {ANTERIOR: set(), POSTERIOR: set()}
    rejections: list[str] = []
    for ds, name in zip(nm_headers, object_names(nm_headers)):
        outcome = object_view_candidates(ds, name)
        if isinstance(outcome, list):
            for candidate in outcome:
                named[candidate.view].add(candidate.key)
        else:
            rejections.append(outcome.reason)
    views = tuple(view for view in (ANTERIOR, POSTERIOR) if named[view])
    complete = all(len(keys) == 1 for keys in named.values())
    detail = (f"views named by the headers: {', '.join(f'{v} ({len(named[v])})' for v in views) or 'none'} "
              f"in {len(nm_headers)} NM object(s)")
    if unreadable:
        detail += f", {unreadable} unreadable"
    if rejections and not complete:
        detail += "; " + "; ".join(rejections)
    return Completion(complete, views, detail)


def complete_now(store: JobStore, study_uid: str, why: str) -> bool:
    """Complete a ``received`` study at once: its source says nothing more will come.

    For a study pulled from a PACS (``spectnode backfill``): once the retrieve
    has ended, every object the PACS holds is in the store, so a study with
    one view is processed now instead of after the idle timeout. A study
    already complete by content is left alone.

    Returns:
        True if the study moved to ``complete``.
    """
    for _ in range(10):  # an object arriving meanwhile changes content_version: look again
        study = store.study(study_uid)
        if study is None or study.state != RECEIVED:
            return False
        if store.advance(study_uid, study.generation, RECEIVED, COMPLETE, why, completed_by="source",
                         content_version=study.content_version):
            _log.info("study %s from %s: complete (%s)", study_uid, study.calling_ae, why,
                      extra=study_log_extra(study))
            return True
    return False


class AssembleStage:
    """Moves studies from ``received`` to ``complete``.

    Args:
        store: The job store.
        data_dir: The data directory (the spooled objects are found through the store).
        timeout_seconds: Idle time after which an incomplete study is
            completed anyway (``completion.timeout_seconds``).
        clock: Current time in epoch seconds (tests may pass another).
        disk: The data directory's free space: below its floor, or after a
            job-store write failed for want of space, the stage waits, like
            the other stages (default: no floor).
    """

    name = "assemble"

    def __init__(self, store: JobStore, data_dir: DataDir, timeout_seconds: float,
                 clock: Callable[[], float] = time.time, disk: DiskSpace | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.timeout_seconds = float(timeout_seconds)
        self.clock = clock
        self.disk = disk if disk is not None else unguarded(data_dir.root)
        self._hit_full_disk = False

    def step(self) -> bool:
        """Check every ``received`` study once; True if any became complete."""
        if self.disk.should_wait(self.name):
            return False  # below the floor, or a job-store write failed for want of space a moment ago
        self._hit_full_disk = False
        moved = self.run_once()
        if not self._hit_full_disk:  # a pass that wrote what it had to: no longer waiting for space
            self.disk.write_succeeded(self.name)
        return moved > 0

    def check_study(self, study: StudyRecord) -> bool:
        """Look at one ``received`` study; complete it if both views are there
        or if it has been idle past the timeout. Returns True if it moved."""
        log_extra = study_log_extra(study)
        if study.content_version != study.checked_version:
            headers, problems = read_spooled_study(self.store, study.study_uid, nm_only=True)
            completion = check_completion(headers, unreadable=len(problems))
            if completion.complete:
                moved = self.store.advance(
                    study.study_uid, study.generation, RECEIVED, COMPLETE,
                    f"complete by content ({completion.detail})",
                    completed_by="content", content_version=study.content_version,
                )
                if moved:
                    _log.info("study %s from %s: complete by content (%s)", study.study_uid, study.calling_ae,
                              completion.detail, extra=log_extra)
                    return True
                return False  # a newer object arrived meanwhile; the next pass looks again
            self.store.mark_checked(study.study_uid, study.content_version)
            _log.debug("study %s: not complete yet: %s", study.study_uid, completion.detail, extra=log_extra)
        idle = self.clock() - study.last_received
        if idle >= self.timeout_seconds:
            moved = self.store.advance(
                study.study_uid, study.generation, RECEIVED, COMPLETE,
                f"no new object for {idle:.0f} s (completion.timeout_seconds {self.timeout_seconds:g}) "
                "and both views not found; processed as it is",
                completed_by="timeout", content_version=study.content_version,
            )
            if moved:
                _log.info("study %s from %s: completed by the idle timeout (%.0f s) without both views",
                          study.study_uid, study.calling_ae, idle, extra=log_extra)
            return moved
        return False

    def run_once(self) -> int:
        """Check every ``received`` study once; returns how many became complete.

        A study whose check raises stays ``received`` (it is not lost); the
        error is logged and the next pass tries again, and the idle timeout
        still completes it, after which the classify stage reports the problem.
        """
        moved = 0
        for study in self.store.studies([RECEIVED]):
            try:
                moved += self.check_study(study)
            except Exception as exc:  # noqa: BLE001 - one bad study must not stop assembling the others
                if is_disk_full(exc):  # not the study's fault: look again once there is space
                    self.disk.write_failed(self.name, exc, study.study_uid)
                    self._hit_full_disk = True
                    return moved
                _log.exception("study %s: completion check failed", study.study_uid, extra=study_log_extra(study))
                self.store.mark_checked(study.study_uid, study.content_version)
                if self.clock() - study.last_received >= self.timeout_seconds:
                    moved += self.store.advance(study.study_uid, study.generation, RECEIVED, COMPLETE,
                                                "completion check failed; processed after the idle timeout",
                                                completed_by="timeout")
        return moved
