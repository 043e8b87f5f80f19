"""Stage 4, report: ``classified`` -> ``reported`` (or ``dispatched``).

For a classified study it writes the SR and one secondary capture per view
(:mod:`spectnode.report`, a library that knows nothing of the store) into the
study's results folder, records them as the study's current outputs, and
queues them in the outbox for every destination that takes each kind, in the
same transaction that moves the study on (the outbox lives in the job
store's database): the outputs of a generation that was re-opened meanwhile
are never queued. A ``not_assessable`` study whose ``report_pending`` is set
gets its "not assessable" SR the same way and stays ``not_assessable``.

The same study generation and model always give the same SOP Instance UIDs,
so a report re-run after a crash makes the same objects; outputs recorded
before a crash are sent as they are. A new generation's SR names the
previous one in Predecessor Documents.
"""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from spectnode.errors import exception_name
from spectnode.fsutil import instance_file_name, write_durably
from spectnode.imaging.views import ANTERIOR, POSTERIOR, StudyViews, ViewImage, read_study_views
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, unguarded
from spectnode.node.stages import StageError, study_log_extra, work_on_oldest
from spectnode.node.stages.classify import VIEW_KEY, heatmap_key
from spectnode.node.stages.spooled import read_spooled_study
from spectnode.result import StudyResult
from spectnode.store import (
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    NOT_ASSESSABLE,
    REPORTED,
    JobStore,
    OutputRecord,
    StudyRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from pydicom.dataset import Dataset

    from spectnode.config import DestinationConfig
    from spectnode.node.datadir import DataDir
    from spectnode.report import AlgorithmInfo

__all__ = ["ReportStage", "result_summary"]

_log = logging.getLogger("spectnode.node")


def result_summary(study: StudyRecord, result: StudyResult, outputs: Sequence[OutputRecord]) -> dict[str, object]:
    """The JSON summary of a study's current result (``results/<study>/result.json``)."""
    return {
        **result.to_json(),
        "generation": study.generation,
        "sr": [str(o.path) for o in outputs if o.kind == "sr"],
        "sc": [str(o.path) for o in outputs if o.kind == "sc"],
        "sr_sop_instance_uid": next((o.sop_instance_uid for o in outputs if o.kind == "sr"), None),
    }


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ReportStage:
    """Reports one study per step.

    Args:
        store: The job store (its outbox takes the outputs).
        data_dir: Where the classify stage left the work files, and where
            the results go.
        algorithms: Returns each model's :class:`~spectnode.report.AlgorithmInfo`
            by model name, in the configured order (the models load on first use).
        destinations: The configured destinations; each takes the output
            kinds its ``outputs`` name.
        disk: The data directory's free space; below its floor, or after a
            write failed for want of space, the stage waits (default: no floor).
    """

    name = "report"

    def __init__(self, store: JobStore, data_dir: DataDir, algorithms: Callable[[], Mapping[str, AlgorithmInfo]],
                 destinations: Sequence[DestinationConfig], disk: DiskSpace | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.algorithms = algorithms
        self.destinations = tuple(destinations)
        self.disk = disk if disk is not None else unguarded(data_dir.root)

    def pending(self) -> list[StudyRecord]:
        """Studies waiting for their report, oldest first."""
        return self.store.studies([CLASSIFIED]) + [s for s in self.store.studies([NOT_ASSESSABLE])
                                                   if s.report_pending]

    def step(self) -> bool:
        """Report the oldest study waiting for it; True if there was one (False while waiting for disk space)."""
        return work_on_oldest(self.store, _log, self.disk, self.name, self.pending, self.report)

    # ------------------------------------------------------------------ work

    def _load_result(self, study: StudyRecord) -> tuple[StudyResult, StudyViews | None]:
        """The stored result of a study (heatmaps included when classified),
        and the views it was computed from (None if not kept: an older node's work)."""
        result = study.result or StudyResult(study.study_uid, "not_assessable", reason=study.reason)
        if not result.classified:
            return result, None
        with np.load(self.data_dir.work_file(study.study_uid, study.generation)) as stored:
            arrays = {name: stored[name] for name in stored.files}
        for i, model in enumerate(result.models):
            model.heatmaps = {view: arrays[heatmap_key(i, view)] for view in model.views
                              if heatmap_key(i, view) in arrays}
        images: dict[str, ViewImage] = {}
        for view, source in result.view_sources.items():
            pixels = arrays.get(VIEW_KEY + view)
            if pixels is None:
                return result, None
            images[view] = ViewImage(
                view=ANTERIOR if view == ANTERIOR else POSTERIOR,
                pixels=pixels,
                pixel_spacing_mm=source.pixel_spacing_mm,
                source_sop_instance_uid=source.sop_instance_uid,
                source_sop_class_uid=source.sop_class_uid,
                frame_number=source.frame_number,
            )
        if not images:
            return result, None
        return result, StudyViews(study.study_uid, images.get("anterior"), images.get("posterior"))

    def _uid(self, study: StudyRecord, algorithm: AlgorithmInfo, what: str) -> str:
        # The same study generation and model always give the same UIDs, so a
        # report re-run after a crash makes the same objects, not conflicting ones.
        return str(generate_uid(entropy_srcs=[study.study_uid, str(study.generation), str(algorithm.device_uid),
                                              what]))

    def _output_record(self, study: StudyRecord, kind: str, ds: Dataset) -> OutputRecord:
        # Named as the folder destination names copies (<Modality>_<SOP>.dcm).
        path = self.data_dir.results_folder(study.study_uid) / instance_file_name(
            str(ds.Modality).strip() or kind.upper(), str(ds.SOPInstanceUID))
        return OutputRecord(study.study_uid, study.generation, kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                            str(ds.SeriesInstanceUID), path, True, 0.0)

    def _algorithms_of(self, result: StudyResult) -> list[AlgorithmInfo]:
        """The identification of each model of ``result``; of every configured model when it has none.

        Raises:
            StageError: If a model of the result is no longer configured.
        """
        known = self.algorithms()
        if not result.models:
            return list(known.values())
        missing = [m.model for m in result.models if m.model not in known]
        if missing:
            raise StageError(f"model(s) {', '.join(missing)} of the stored result are no longer configured "
                               f"(configured: {', '.join(known)})")
        return [known[m.model] for m in result.models]

    def _build_outputs(self, study: StudyRecord, result: StudyResult,
                       views: StudyViews | None) -> list[tuple[OutputRecord, Dataset]]:
        from spectnode.report import build_not_assessable_sr, build_overlay_captures, build_result_sr

        algorithms = self._algorithms_of(result)
        algorithm = algorithms[0]
        # The report needs the sources' headers only: the views come from the classify stage.
        sources, problems = read_spooled_study(self.store, study.study_uid,
                                               pixel_data=views is None and result.classified)
        if problems:
            raise StageError("; ".join(problems))
        predecessor_record = self.store.predecessor_sr(study.study_uid, study.generation)
        predecessor = None
        if (predecessor_record is not None and not predecessor_record.path.exists()
                and self._purged_before(study.study_uid)):
            _log.warning("study %s: the previous SR (of generation %d) was removed by the retention policy; the new "
                         "SR cannot name it in Predecessor Documents", study.study_uid, predecessor_record.generation,
                         extra=study_log_extra(study))
            predecessor_record = None
        if predecessor_record is not None:
            try:
                predecessor = pydicom.dcmread(predecessor_record.path)
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                raise StageError(
                    f"the previous SR (of generation {predecessor_record.generation}) that the new SR must name as "
                    f"its predecessor cannot be read ({exception_name(exc)})"
                ) from exc
        series_uid = self._uid(study, algorithm, "sr-series")
        sop_uid = self._uid(study, algorithm, "sr")
        if not result.classified:
            sr = build_not_assessable_sr(sources, result, algorithms, predecessor=predecessor,
                                         series_instance_uid=series_uid, sop_instance_uid=sop_uid)
            return [(self._output_record(study, "sr", sr), sr)]
        if views is None:  # classified by a node that did not keep the views: read them again
            found = read_study_views(sources)
            if not isinstance(found, StudyViews):
                raise StageError(f"the study's views can no longer be read: {found.reason}")
            views = found
        sr = build_result_sr(sources, views, result, algorithms, predecessor=predecessor,
                             series_instance_uid=series_uid, sop_instance_uid=sop_uid)
        captures = build_overlay_captures(sources, views, result, algorithms,
                                          series_instance_uid=self._uid(study, algorithm, "sc-series"))
        return [(self._output_record(study, "sr", sr), sr)] + [(self._output_record(study, "sc", sc), sc)
                                                               for sc in captures]

    def _purged_before(self, study_uid: str) -> bool:
        """Whether the retention policy removed this study's files at some time."""
        return any(message.startswith("files removed by retention") for _, _, message in self.store.events(study_uid))

    def _drop_stale(self, study: StudyRecord) -> None:
        """The study changed while its report was made (a new object re-opened it): the report
        is dropped, and its outputs, if the study has a new generation, forgotten and deleted."""
        for output in self.store.discard_outputs(study.study_uid, study.generation):
            output.path.unlink(missing_ok=True)
        _log.info("study %s changed while the report of its generation %d was made; that report is dropped",
                  study.study_uid, study.generation, extra=study_log_extra(study))

    def report(self, study: StudyRecord) -> str | None:
        """Make, record and queue the SR (and SCs) of a ``classified`` study, or
        the SR of a ``not_assessable`` study whose ``report_pending`` is set.

        Returns:
            The new state (``reported``, ``dispatched`` when no destination
            takes any output, or ``not_assessable``), or None if the study
            had changed (its outputs are then neither queued nor kept).
        """
        if study.state == CLASSIFIED and study.result is not None and any(not m.model for m in study.result.models):
            # Classified by spectnode 0.1.0, which kept no model name: an SR must not name a model that
            # did not make the result, so the study is classified again by the configured models.
            moved = self.store.advance(study.study_uid, study.generation, CLASSIFIED, COMPLETE,
                                       "classified by an earlier release that kept no model name; classified again")
            return COMPLETE if moved else None
        result, views = self._load_result(study)
        recorded = [o for o in self.store.outputs(study.study_uid, current_only=False)
                    if o.generation == study.generation]
        if recorded and all(o.path.is_file() for o in recorded):
            outputs = recorded  # made before a crash or restart: send those, do not make new ones
        else:
            for stale in recorded:
                stale.path.unlink(missing_ok=True)
            built = self._build_outputs(study, result, views)
            outputs = [record for record, _ in built]
            if not self.store.record_outputs(study.study_uid, study.generation, outputs):
                self._drop_stale(study)
                return None
            for record, ds in built:
                write_durably(record.path, _encode(ds))
        by_kind: dict[str, list[Path]] = {}
        for output in outputs:
            by_kind.setdefault(output.kind, []).append(output.path)
        described = ", ".join(f"{len(v)} {k.upper()}" for k, v in by_kind.items())
        summary = result_summary(study, result, outputs)
        write_durably(self.data_dir.result_summary(study.study_uid),
                      (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
        from_state = NOT_ASSESSABLE if study.state == NOT_ASSESSABLE else CLASSIFIED
        new_state: str | None = None
        items: list[int] = []
        with self.store.transaction(study.study_uid, study.generation, from_state) as tx:
            if tx is not None:
                items = self.store.outbox.enqueue_outputs(study.study_uid, by_kind, self.destinations,
                                                          sender=study.peer, generation=study.generation,
                                                          connection=tx.db)
                if from_state == NOT_ASSESSABLE:
                    tx.set_report_pending(False)
                    new_state = NOT_ASSESSABLE
                elif items:
                    new_state = REPORTED
                    tx.move(REPORTED, f"{described} written to {self.data_dir.results_folder(study.study_uid)}, "
                                      f"{len(items)} outbox item(s)")
                else:
                    new_state = DISPATCHED
                    tx.move(DISPATCHED, f"{described} written; no destination takes them")
        if new_state is None:
            self._drop_stale(study)
            return None
        if new_state == NOT_ASSESSABLE:
            _log.info("study %s from %s: not-assessable SR written and queued (%d outbox item(s))",
                      study.study_uid, study.calling_ae, len(items), extra=study_log_extra(study))
        elif new_state == REPORTED:
            _log.info("study %s from %s: %s written and queued (%d outbox item(s))", study.study_uid,
                      study.calling_ae, described, len(items), extra=study_log_extra(study))
        return new_state
