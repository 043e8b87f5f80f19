"""The classify and report stages of the node, as functions of the job store.

Each function takes one study in one state, does its stage's work, makes its
outputs durable and then moves the study on with a conditional transition
(:meth:`spectnode.store.JobStore.transaction`). If the study was re-opened by
a new object meanwhile, the transition is refused and the work is dropped; the
new generation is processed from the start. An exception leaves the study
where it was; the worker then records it as ``error`` with the message.

* :func:`classify_study`: ``complete`` -> ``classified`` or ``not_assessable``.
  The only stage that decodes pixel data. The result (class, probabilities,
  reason) goes into the store; the views it was computed from and their
  LayerCAM heatmaps go into ``<work>/<study>/gen<N>.npz``, so the report stage
  (or a restarted node) needs neither a second inference nor a second decode.
* :func:`report_study`: ``classified`` -> ``reported`` (or a
  ``not_assessable`` study whose SR is pending): SR and secondary captures
  are written to ``<results>/<study>/``, recorded as the study's current
  outputs, and queued in the outbox for every destination that takes them,
  in the same transaction that moves the study on (the outbox lives in the
  job store's database), so the outputs of a generation that was re-opened
  meanwhile are never queued.

A not-assessable study gets an SR saying so (``report.not_assessable_sr``)
only when it is an NM study that is not a usable whole-body bone scan; a study
with no NM object at all (a CT routed to the node by mistake) gets none: its
reason is shown by ``spectnode status`` only, and nothing is written to PACS.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from spectnode.assemble import read_spooled_study
from spectnode.config import DestinationConfig
from spectnode.fsutil import instance_file_name, write_durably
from spectnode.imaging.views import WRONG_MODALITY, NotAssessable, StudyViews, ViewImage, read_study_views
from spectnode.receive import spool_path
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

__all__ = [
    "Enqueue",
    "classify_study",
    "report_study",
    "study_folder",
    "result_summary",
    "enqueue_for_destinations",
    "wants_not_assessable_sr",
]

_log = logging.getLogger("spectnode.node")

#: Name of the per-study summary written next to the result files.
RESULT_SUMMARY: Final = "result.json"
# Keys of the classify stage's npz: "<view>" is a heatmap, "view_<view>" the view's pixels.
_VIEW_KEY: Final = "view_"

#: Queues a study's outputs (files by kind) in the caller's transaction on the
#: job store database and returns the outbox item ids (idempotent for the
#: same files); see :func:`enqueue_for_destinations`.
Enqueue = Callable[[sqlite3.Connection, StudyRecord, Mapping[str, Sequence[Path]]], list[int]]


def study_folder(root: Path, study_uid: str) -> Path:
    """``<root>/<study>``, with the same UID sanitising as the spool."""
    return spool_path(root, study_uid, "0").parent


def _work_path(work_dir: Path, study: StudyRecord) -> Path:
    return study_folder(work_dir, study.study_uid) / f"gen{study.generation}.npz"


def _extra(study: StudyRecord) -> dict[str, Any]:
    return {"study_uid": study.study_uid, "calling_ae": study.calling_ae}


def wants_not_assessable_sr(reason_code: str | None, not_assessable_sr: bool) -> bool:
    """Whether a not-assessable study gets an SR saying so.

    Only when ``report.not_assessable_sr`` is on and the study is an NM study
    (one that is not a usable whole-body bone scan): a study without any NM
    object (``wrong_modality``, e.g. a CT sent by mistake) is none of this
    node's business, and no SR about it is written into PACS.
    """
    return not_assessable_sr and reason_code != WRONG_MODALITY


def _read_views(store: JobStore, study_uid: str) -> StudyViews | NotAssessable:
    datasets, problems = read_spooled_study(store, study_uid, pixel_data=True)
    if not datasets:
        return NotAssessable(study_uid, "no object of the study could be read: " + ("; ".join(problems) or
                                                                                     "no objects"), "unreadable")
    found = read_study_views(datasets)
    if problems:
        _log.warning("study %s: %s", study_uid, "; ".join(problems), extra={"study_uid": study_uid})
        if isinstance(found, NotAssessable):
            found = NotAssessable(study_uid, f"{found.reason}; also: {'; '.join(problems)}", found.code)
    return found


def _view_sources(views: StudyViews) -> dict[str, dict[str, Any]]:
    """What the report needs of each view besides its pixels (kept in the study's result)."""
    return {
        image.view: {
            "sop_instance_uid": image.source_sop_instance_uid,
            "sop_class_uid": image.source_sop_class_uid,
            "frame_number": image.frame_number,
            "pixel_spacing_mm": list(image.pixel_spacing_mm) if image.pixel_spacing_mm else None,
        }
        for image in (views.anterior, views.posterior) if image is not None
    }


def classify_study(
    store: JobStore,
    study: StudyRecord,
    classifier: Any,
    work_dir: Path,
    not_assessable_sr: bool,
) -> str | None:
    """Classify a ``complete`` study.

    Args:
        classifier: A :class:`spectnode.classify.StudyClassifier`.
        work_dir: Where views and heatmaps are kept between the classify and
            report stages.
        not_assessable_sr: ``report.not_assessable_sr`` (see
            :func:`wants_not_assessable_sr`).

    Returns:
        The new state, or None if the study had changed meanwhile.
    """
    views = _read_views(store, study.study_uid)
    result = classifier.classify(views, explain=True)
    summary = result.to_json()
    summary["reason_code"] = result.reason_code
    if result.outcome == "not_assessable":
        moved = store.advance(study.study_uid, study.generation, COMPLETE, NOT_ASSESSABLE,
                              f"not assessable ({result.reason_code}): {result.reason}",
                              reason=result.reason, result=summary,
                              report_pending=wants_not_assessable_sr(result.reason_code, not_assessable_sr))
        if moved:
            _log.info("study %s from %s: not assessable (%s): %s", study.study_uid, study.calling_ae,
                      result.reason_code, result.reason, extra=_extra(study))
        return NOT_ASSESSABLE if moved else None
    assert isinstance(views, StudyViews)
    summary["view_sources"] = _view_sources(views)
    arrays = {view: np.asarray(m, dtype=np.float32) for view, m in result.heatmaps.items()}
    arrays.update({_VIEW_KEY + image.view: np.asarray(image.pixels, dtype=np.float32)
                   for image in (views.anterior, views.posterior) if image is not None})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_durably(_work_path(work_dir, study), buffer.getvalue())
    probabilities = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
    moved = store.advance(study.study_uid, study.generation, COMPLETE, CLASSIFIED,
                          f"classified as {result.label} ({probabilities}) from {'+'.join(result.views)}",
                          result=summary)
    if moved:
        _log.info("study %s from %s: classified as %s (%s) from %s", study.study_uid, study.calling_ae,
                  result.label, probabilities, "+".join(result.views), extra=_extra(study))
    return CLASSIFIED if moved else None


def _load_result(study: StudyRecord, work_dir: Path) -> tuple[Any, StudyViews | None]:
    """The stored StudyResult of a study (heatmaps included when classified),
    and the views it was computed from (None if not kept: an older node's work)."""
    from spectnode.classify import StudyResult

    data = study.result or {}
    result = StudyResult(
        study_uid=study.study_uid,
        outcome=data.get("outcome", "not_assessable"),
        reason=data.get("reason") or study.reason,
        reason_code=data.get("reason_code"),
        views=list(data.get("views") or []),
        label=data.get("label"),
        second_label=data.get("second_label"),
        probabilities={k: float(v) for k, v in (data.get("probabilities") or {}).items()},
    )
    if result.outcome != "classified":
        return result, None
    with np.load(_work_path(work_dir, study)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    result.heatmaps = {name: a for name, a in arrays.items() if not name.startswith(_VIEW_KEY)}
    sources = data.get("view_sources") or {}
    images = {}
    for view, source in sources.items():
        pixels = arrays.get(_VIEW_KEY + view)
        if pixels is None:
            return result, None
        spacing = source.get("pixel_spacing_mm")
        images[view] = ViewImage(view=view, pixels=pixels, pixel_spacing_mm=tuple(spacing) if spacing else None,
                                 source_sop_instance_uid=source["sop_instance_uid"],
                                 source_sop_class_uid=source["sop_class_uid"], frame_number=source["frame_number"])
    if not images:
        return result, None
    return result, StudyViews(study.study_uid, images.get("anterior"), images.get("posterior"))


def _uid(study: StudyRecord, algorithm: Any, what: str) -> str:
    # The same study generation and model always give the same SR UIDs, so a
    # report re-run after a crash makes the same objects, not conflicting ones.
    return generate_uid(entropy_srcs=[study.study_uid, str(study.generation), str(algorithm.device_uid), what])


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _output_record(study: StudyRecord, kind: str, ds: Dataset, folder: Path) -> OutputRecord:
    # Named as the folder destination names copies (<Modality>_<SOP>.dcm).
    path = folder / instance_file_name(str(ds.Modality).strip() or kind.upper(), str(ds.SOPInstanceUID))
    return OutputRecord(study.study_uid, study.generation, kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                        str(ds.SeriesInstanceUID), path, True, 0.0)


def _build_outputs(
    store: JobStore, study: StudyRecord, result: Any, views: StudyViews | None, algorithm: Any, results_dir: Path
) -> list[tuple[OutputRecord, Dataset]]:
    from spectnode.report import build_not_assessable_sr, build_overlay_captures, build_result_sr

    # The report needs the sources' headers only: the views come from the classify stage.
    sources, problems = read_spooled_study(store, study.study_uid,
                                           pixel_data=views is None and result.outcome == "classified")
    if problems:
        raise RuntimeError("; ".join(problems))
    predecessor_record = store.predecessor_sr(study.study_uid, study.generation)
    predecessor = None
    if predecessor_record is not None:
        try:
            predecessor = pydicom.dcmread(predecessor_record.path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise RuntimeError(
                f"the previous SR {predecessor_record.sop_instance_uid} ({predecessor_record.path}) that the new "
                f"SR must name as its predecessor cannot be read: {exc}"
            ) from exc
    uids = {"series_instance_uid": _uid(study, algorithm, "sr-series"),
            "sop_instance_uid": _uid(study, algorithm, "sr")}
    folder = study_folder(results_dir, study.study_uid)
    if result.outcome == "classified":
        if views is None:  # classified by a node that did not keep the views: read them again
            found = read_study_views(sources)
            if not isinstance(found, StudyViews):
                raise RuntimeError(f"the study's views can no longer be read: {found.reason}")
            views = found
        sr = build_result_sr(sources, views, result, algorithm, predecessor=predecessor, **uids)
        captures = build_overlay_captures(sources, views, result, algorithm,
                                          series_instance_uid=_uid(study, algorithm, "sc-series"))
        built = [(_output_record(study, "sr", sr, folder), sr)]
        built += [(_output_record(study, "sc", sc, folder), sc) for sc in captures]
        return built
    sr = build_not_assessable_sr(sources, result, algorithm, predecessor=predecessor, **uids)
    return [(_output_record(study, "sr", sr, folder), sr)]


def _drop_stale(store: JobStore, study: StudyRecord) -> None:
    """The study changed while its report was made (a new object re-opened it): the report
    is dropped, and its outputs, if the study has a new generation, forgotten and deleted."""
    for output in store.discard_outputs(study.study_uid, study.generation):
        output.path.unlink(missing_ok=True)
    _log.info("study %s changed while the report of its generation %d was made; that report is dropped",
              study.study_uid, study.generation, extra=_extra(study))


def report_study(
    store: JobStore,
    study: StudyRecord,
    algorithm: Any,
    work_dir: Path,
    results_dir: Path,
    enqueue: Enqueue,
) -> str | None:
    """Make, record and queue the SR (and SCs) of a ``classified`` study, or
    the SR of a ``not_assessable`` study whose ``report_pending`` is set.

    Args:
        algorithm: :class:`spectnode.report.AlgorithmInfo` of the classifier.
        work_dir: Where :func:`classify_study` left the views and heatmaps.
        results_dir: Results root; files go to ``<results_dir>/<study>/``.
        enqueue: Queues the outputs for the destinations that take each kind,
            in the transaction that moves the study on (see :data:`Enqueue`).

    Returns:
        The new state (``reported``, ``dispatched`` when no destination takes
        any output, or ``not_assessable``), or None if the study had changed
        (its outputs are then neither queued nor kept).
    """
    result, views = _load_result(study, work_dir)
    recorded = [o for o in store.outputs(study.study_uid, current_only=False) if o.generation == study.generation]
    if recorded and all(o.path.is_file() for o in recorded):
        outputs = recorded  # made before a crash or restart: send those, do not make new ones
    else:
        for stale in recorded:
            stale.path.unlink(missing_ok=True)
        built = _build_outputs(store, study, result, views, algorithm, results_dir)
        outputs = [record for record, _ in built]
        if not store.record_outputs(study.study_uid, study.generation, outputs):
            _drop_stale(store, study)
            return None
        for record, ds in built:
            write_durably(record.path, _encode(ds))
    by_kind: dict[str, list[Path]] = {}
    for output in outputs:
        by_kind.setdefault(output.kind, []).append(output.path)
    described = ", ".join(f"{len(v)} {k.upper()}" for k, v in by_kind.items())
    _write_summary(study, result, outputs, results_dir)
    from_state = NOT_ASSESSABLE if study.state == NOT_ASSESSABLE else CLASSIFIED
    with store.transaction(study.study_uid, study.generation, from_state) as tx:
        if tx is not None:
            items = enqueue(tx.db, study, by_kind)
            if from_state == NOT_ASSESSABLE:
                tx.set_report_pending(False)
                new_state = NOT_ASSESSABLE
            elif items:
                new_state = REPORTED
                tx.move(REPORTED, f"{described} written to {study_folder(results_dir, study.study_uid)}, "
                                  f"{len(items)} outbox item(s)")
            else:
                new_state = DISPATCHED
                tx.move(DISPATCHED, f"{described} written; no destination takes them")
    if tx is None:
        _drop_stale(store, study)
        return None
    if new_state == NOT_ASSESSABLE:
        _log.info("study %s from %s: not-assessable SR written and queued (%d outbox item(s))",
                  study.study_uid, study.calling_ae, len(items), extra=_extra(study))
    elif new_state == REPORTED:
        _log.info("study %s from %s: %s written and queued (%d outbox item(s))", study.study_uid,
                  study.calling_ae, described, len(items), extra=_extra(study))
    return new_state


def result_summary(study: StudyRecord, result: Any, outputs: Sequence[OutputRecord]) -> dict[str, Any]:
    """The JSON summary of a study's current result (``result.json``, ``status --json``)."""
    return {
        "study_uid": study.study_uid,
        "generation": study.generation,
        "outcome": result.outcome,
        "label": result.label,
        "second_label": result.second_label,
        "probabilities": result.probabilities,
        "views": result.views,
        "reason": result.reason,
        "reason_code": result.reason_code,
        "sr": [str(o.path) for o in outputs if o.kind == "sr"],
        "sc": [str(o.path) for o in outputs if o.kind == "sc"],
        "sr_sop_instance_uid": next((o.sop_instance_uid for o in outputs if o.kind == "sr"), None),
    }


def _write_summary(study: StudyRecord, result: Any, outputs: Sequence[OutputRecord], results_dir: Path) -> None:
    summary = result_summary(study, result, outputs)
    path = study_folder(results_dir, study.study_uid) / RESULT_SUMMARY
    write_durably(path, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))


def enqueue_for_destinations(outbox: Any, destinations: Sequence[DestinationConfig]) -> Enqueue:
    """The ``enqueue`` argument of :func:`report_study` for an outbox and the configured destinations.

    Items carry the study's generation and its last sender (for ``sender``
    destinations); queueing a generation supersedes the study's older pending
    and dead items.
    """

    def enqueue(db: sqlite3.Connection, study: StudyRecord, outputs: Mapping[str, Sequence[Path]]) -> list[int]:
        return outbox.enqueue_outputs(study.study_uid, outputs, destinations, sender=study.peer,
                                      generation=study.generation, connection=db)

    return enqueue
