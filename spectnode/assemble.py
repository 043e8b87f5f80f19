"""The assemble stage: decide from content when a received study is complete.

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
NM objects are read at all, and only once they could hold two views (two NM
objects, or one with several frames) are their views identified with
:func:`spectnode.imaging.views.read_study_views`. Their pixel data is read
lazily (``defer_size``), so only the frames that name a view are decoded.

This stage knows nothing of the stages after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pydicom
from pydicom.dataset import Dataset

from spectnode.imaging.views import ANTERIOR, POSTERIOR, StudyViews, read_study_views
from spectnode.store import COMPLETE, RECEIVED, JobStore, StudyRecord

__all__ = ["Completion", "check_completion", "Assembler"]

_log = logging.getLogger("spectnode.assemble")

# Values longer than this are read from the file only when used (pixel data).
_DEFER_SIZE: Final = "64 KB"


@dataclass(frozen=True)
class Completion:
    """Whether a study's objects hold both views.

    Attributes:
        complete: True when both anterior and posterior are identified.
        views: The views identified so far.
        detail: What was found, for logs.
    """

    complete: bool
    views: tuple[str, ...]
    detail: str


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def check_completion(nm_paths: Sequence[Path]) -> Completion:
    """Check whether the NM objects of a study hold both whole-body views.

    Args:
        nm_paths: The study's spooled objects whose Modality is NM (others
            cannot hold a view and need not be read).

    Returns:
        A :class:`Completion`. Objects that cannot be read count as holding
        no view (the classify stage reports them properly).
    """
    datasets: list[Dataset] = []
    unreadable = 0
    for path in nm_paths:
        try:
            datasets.append(pydicom.dcmread(path, defer_size=_DEFER_SIZE))
        except Exception:  # noqa: BLE001 - corrupt files fail in many ways; classify explains them
            unreadable += 1
    frames = sum(_frames(ds) for ds in datasets)
    if frames < 2:
        return Completion(False, (), f"{len(datasets)} NM object(s) with {frames} frame(s) so far"
                          + (f", {unreadable} unreadable" if unreadable else ""))
    found = read_study_views(datasets)
    if isinstance(found, StudyViews):
        views = found.available_views
        return Completion(ANTERIOR in views and POSTERIOR in views, views,
                          f"views found: {', '.join(views)} in {len(datasets)} NM object(s)")
    return Completion(False, (), f"no usable pair of views yet: {found.reason}")


class Assembler:
    """Moves studies from ``received`` to ``complete``.

    Args:
        store: The job store.
        timeout_seconds: Idle time after which an incomplete study is
            completed anyway (``completion.timeout_seconds``).
        clock: Current time in epoch seconds (tests may pass another).
    """

    def __init__(self, store: JobStore, timeout_seconds: float, clock=time.time) -> None:
        self.store = store
        self.timeout_seconds = float(timeout_seconds)
        self.clock = clock

    def _nm_paths(self, study_uid: str) -> list[Path]:
        return [Path(row["path"]) for row in self.store.instances(study_uid)
                if str(row["modality"] or "").upper() == "NM"]

    def check_study(self, study: StudyRecord) -> bool:
        """Look at one ``received`` study; complete it if both views are there
        or if it has been idle past the timeout. Returns True if it moved."""
        log_extra = {"study_uid": study.study_uid, "calling_ae": study.calling_ae}
        if study.content_version != study.checked_version:
            completion = check_completion(self._nm_paths(study.study_uid))
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
            except Exception:  # noqa: BLE001 - one bad study must not stop assembling the others
                _log.exception("study %s: completion check failed", study.study_uid,
                               extra={"study_uid": study.study_uid, "calling_ae": study.calling_ae})
                self.store.mark_checked(study.study_uid, study.content_version)
                if self.clock() - study.last_received >= self.timeout_seconds:
                    moved += self.store.advance(study.study_uid, study.generation, RECEIVED, COMPLETE,
                                                "completion check failed; processed after the idle timeout",
                                                completed_by="timeout")
        return moved

    def next_deadline(self) -> float | None:
        """Epoch time at which the earliest ``received`` study times out, if any."""
        studies = self.store.studies([RECEIVED])
        if not studies:
            return None
        return min(s.last_received for s in studies) + self.timeout_seconds
