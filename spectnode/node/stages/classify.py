"""Stage 3, classify: ``complete`` -> ``classified`` or ``not_assessable``.

The only stage that decodes pixel data. It reads a complete study's spooled
NM objects, finds its views (:mod:`spectnode.imaging.views`), runs the
configured models (:class:`spectnode.classify.Classifiers`, a library that
knows nothing of the store; each model that can take the study reads it)
and stores the :class:`~spectnode.result.StudyResult` with the study. The
views it was computed from and every model's LayerCAM heatmaps go into the
data directory's work file of the study's generation, so the report
stage (or a restarted node) needs neither a second inference nor a second
decode.

A not-assessable study gets ``report_pending`` set when it will get an SR
saying so (:func:`wants_not_assessable_sr`). Its reason, stored, logged and
written into that SR, names objects by position and attributes by tag and
keyword, never a UID, a path or a decoder's message (which may quote header
values); that message is logged at DEBUG only where ``logging.patient_data``
allows patient data in the log. An exception leaves the study in ``error``
with the message (``spectnode retry`` returns it here).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from spectnode.fsutil import write_durably
from spectnode.imaging.views import WRONG_MODALITY, NotAssessable, StudyViews, read_study_views
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, unguarded
from spectnode.node.stages import study_log_extra, work_on_oldest
from spectnode.node.stages.spooled import read_spooled_study
from spectnode.result import ViewSource
from spectnode.store import CLASSIFIED, COMPLETE, NOT_ASSESSABLE, JobStore, StudyRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from spectnode.classify import Classifiers
    from spectnode.node.datadir import DataDir

__all__ = ["VIEW_KEY", "ClassifyStage", "wants_not_assessable_sr"]

_log = logging.getLogger("spectnode.node")

#: Keys of the work file: "view_<view>" is the view's pixels, "<view>" the first
#: model's heatmap of it and "<view>.<i>" the (i+1)-th model's.
VIEW_KEY = "view_"


def heatmap_key(model_index: int, view: str) -> str:
    """The work-file key of model ``model_index``'s heatmap of ``view``."""
    return view if model_index == 0 else f"{view}.{model_index}"


def wants_not_assessable_sr(reason_code: str | None, not_assessable_sr: bool) -> bool:
    """Whether a not-assessable study gets an SR saying so.

    Only when ``report.not_assessable_sr`` is on and the study is an NM study
    (one that is not a usable whole-body bone scan): a study without any NM
    object (``wrong_modality``, e.g. a CT sent by mistake) is none of this
    node's business, and no SR about it is written into PACS.
    """
    return not_assessable_sr and reason_code != WRONG_MODALITY


def _view_sources(views: StudyViews) -> dict[str, ViewSource]:
    """What the report needs of each view besides its pixels (kept in the study's result)."""
    return {
        image.view: ViewSource(
            sop_instance_uid=image.source_sop_instance_uid,
            sop_class_uid=image.source_sop_class_uid,
            frame_number=image.frame_number,
            pixel_spacing_mm=(float(image.pixel_spacing_mm[0]), float(image.pixel_spacing_mm[1]))
            if image.pixel_spacing_mm else None,
        )
        for image in (views.anterior, views.posterior) if image is not None
    }


class ClassifyStage:
    """Classifies one ``complete`` study per step.

    Args:
        store: The job store.
        data_dir: Where the work files go.
        classifiers: Returns the loaded models (they load on first use; see
            :class:`spectnode.node.model.NodeModels`).
        not_assessable_sr: ``report.not_assessable_sr``.
        disk: The data directory's free space; below its floor, or after a
            write failed for want of space, the stage waits (default: no floor).
        log_patient_data: ``logging.patient_data``: log what a decoder said of
            a study's pixel data word for word (DEBUG); it may quote header values.
    """

    name = "classify"

    def __init__(self, store: JobStore, data_dir: DataDir, classifiers: Callable[[], Classifiers],
                 not_assessable_sr: bool, disk: DiskSpace | None = None, log_patient_data: bool = False) -> None:
        self.log_patient_data = log_patient_data
        self.store = store
        self.data_dir = data_dir
        self.classifiers = classifiers
        self.not_assessable_sr = not_assessable_sr
        self.disk = disk if disk is not None else unguarded(data_dir.root)

    def step(self) -> bool:
        """Classify the oldest ``complete`` study; True if there was one (False while waiting for disk space)."""
        return work_on_oldest(self.store, _log, self.disk, self.name, lambda: self.store.studies([COMPLETE]),
                              self.classify)

    def _read_views(self, study_uid: str) -> StudyViews | NotAssessable:
        datasets, problems = read_spooled_study(self.store, study_uid, pixel_data=True)
        if not datasets:
            return NotAssessable(study_uid, "no object of the study could be read: " + ("; ".join(problems) or
                                                                                         "no objects"), "unreadable")
        found = read_study_views(datasets)
        if problems:
            _log.warning("study %s: %s", study_uid, "; ".join(problems), extra={"study_uid": study_uid})
            if isinstance(found, NotAssessable):
                found = NotAssessable(study_uid, f"{found.reason}; also: {'; '.join(problems)}", found.code,
                                      found.detail)
        if isinstance(found, NotAssessable) and found.detail and self.log_patient_data:
            _log.debug("study %s: the decoder said (logging.patient_data is on): %s", study_uid, found.detail,
                       extra={"study_uid": study_uid})
        return found

    def classify(self, study: StudyRecord) -> str | None:
        """Classify a ``complete`` study.

        Returns:
            The new state, or None if the study had changed meanwhile (its
            result is then dropped).
        """
        views = self._read_views(study.study_uid)
        result = self.classifiers().classify(views, explain=True)
        if not result.classified:
            moved = self.store.advance(study.study_uid, study.generation, COMPLETE, NOT_ASSESSABLE,
                                       f"not assessable ({result.reason_code}): {result.reason}",
                                       reason=result.reason, result=result,
                                       report_pending=wants_not_assessable_sr(result.reason_code,
                                                                              self.not_assessable_sr))
            if moved:
                _log.info("study %s from %s: not assessable (%s): %s", study.study_uid, study.calling_ae,
                          result.reason_code, result.reason, extra=study_log_extra(study))
            return NOT_ASSESSABLE if moved else None
        assert isinstance(views, StudyViews)
        result.view_sources = _view_sources(views)
        arrays = {heatmap_key(i, view): np.asarray(m, dtype=np.float32)
                  for i, model in enumerate(result.models) for view, m in model.heatmaps.items()}
        arrays.update({VIEW_KEY + image.view: np.asarray(image.pixels, dtype=np.float32)
                       for image in (views.anterior, views.posterior) if image is not None})
        buffer = io.BytesIO()
        # Uncompressed: zlib on float32 views and heatmaps cost 0.2-0.4 s a study (bench_backfill),
        # a few MB of disk cost nothing, and retention removes the work file once the study ends.
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        write_durably(self.data_dir.work_file(study.study_uid, study.generation), buffer.getvalue())
        summary = "; ".join(
            f"{m.label} by {m.model} ({', '.join(f'{k} {v:.3f}' for k, v in m.probabilities.items())}) "
            f"from {'+'.join(m.views)}" for m in result.models)
        moved = self.store.advance(study.study_uid, study.generation, COMPLETE, CLASSIFIED,
                                   f"classified as {summary}", result=result)
        if moved:
            _log.info("study %s from %s: classified as %s", study.study_uid, study.calling_ae, summary,
                      extra=study_log_extra(study))
        return CLASSIFIED if moved else None
