"""The classify and report stages of the node, as functions of the job store.

Each function takes one study in one state, does its stage's work, makes its
outputs durable and then moves the study on with a conditional transition
(:meth:`spectnode.store.JobStore.advance`). If the study was re-opened by a
new object meanwhile, the transition is refused and the work is dropped; the
new generation is processed from the start. An exception leaves the study
where it was; the worker then records it as ``error`` with the message.

* :func:`classify_study`: ``complete`` -> ``classified`` or ``not_assessable``.
  The result (class, probabilities, reason) goes into the store and the
  Grad-CAM heatmaps into ``<work>/<study>/gen<N>.npz``, so the report stage
  (or a restarted node) needs no second inference.
* :func:`report_study`: ``classified`` -> ``reported`` (or a
  ``not_assessable`` study whose SR is pending): SR and secondary captures
  are written to ``<results>/<study>/``, recorded as the study's current
  outputs, and queued in the outbox for every destination that takes them.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from spectnode.config import DestinationConfig
from spectnode.imaging.views import NotAssessable, StudyViews, read_study_views
from spectnode.fsutil import instance_file_name, write_durably
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

__all__ = ["classify_study", "report_study", "study_folder", "result_summary", "enqueue_for_destinations"]

_log = logging.getLogger("spectnode.node")

#: Name of the per-study summary written next to the result files.
RESULT_SUMMARY: Final = "result.json"
# Values longer than this are read from the spooled file only when used (pixel data).
_DEFER_SIZE: Final = "64 KB"


def study_folder(root: Path, study_uid: str) -> Path:
    """``<root>/<study>``, with the same UID sanitising as the spool."""
    return spool_path(root, study_uid, "0").parent


def _heatmap_path(work_dir: Path, study: StudyRecord) -> Path:
    return study_folder(work_dir, study.study_uid) / f"gen{study.generation}.npz"


def _extra(study: StudyRecord) -> dict[str, Any]:
    return {"study_uid": study.study_uid, "calling_ae": study.calling_ae}


def _study_datasets(store: JobStore, study_uid: str) -> tuple[list[Dataset], list[str]]:
    """The study's spooled objects, and why any of them could not be read.

    NM objects are read with their pixel data deferred (decoded only for the
    frames that hold a view); other objects (the CT of a SPECT/CT ...) only
    up to their pixel data, which nothing downstream needs.
    """
    datasets: list[Dataset] = []
    problems: list[str] = []
    for row in store.instances(study_uid):
        path = Path(row["path"])
        try:
            if str(row["modality"] or "").upper() == "NM":
                datasets.append(pydicom.dcmread(path, defer_size=_DEFER_SIZE))
            else:
                datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - a spooled file that no longer reads is reported, not fatal
            problems.append(f"{path.name}: cannot be read as DICOM: {exc}")
    return datasets, problems


def _read_views(store: JobStore, study_uid: str) -> StudyViews | NotAssessable:
    datasets, problems = _study_datasets(store, study_uid)
    if not datasets:
        return NotAssessable(study_uid, "no object of the study could be read: " + ("; ".join(problems) or
                                                                                     "no objects"), "unreadable")
    found = read_study_views(datasets)
    if problems:
        _log.warning("study %s: %s", study_uid, "; ".join(problems), extra={"study_uid": study_uid})
        if isinstance(found, NotAssessable):
            found = NotAssessable(study_uid, f"{found.reason}; also: {'; '.join(problems)}", found.code)
    return found


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
        work_dir: Where heatmaps are kept between the classify and report stages.
        not_assessable_sr: Whether a not-assessable study gets an SR saying so
            (``report.not_assessable_sr``).

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
                              reason=result.reason, result=summary, report_pending=not_assessable_sr)
        if moved:
            _log.info("study %s from %s: not assessable (%s): %s", study.study_uid, study.calling_ae,
                      result.reason_code, result.reason, extra=_extra(study))
        return NOT_ASSESSABLE if moved else None
    heatmaps = _heatmap_path(work_dir, study)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{view: np.asarray(m, dtype=np.float32) for view, m in result.heatmaps.items()})
    write_durably(heatmaps, buffer.getvalue())
    probabilities = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
    moved = store.advance(study.study_uid, study.generation, COMPLETE, CLASSIFIED,
                          f"classified as {result.label} ({probabilities}) from {'+'.join(result.views)}",
                          result=summary)
    if moved:
        _log.info("study %s from %s: classified as %s (%s) from %s", study.study_uid, study.calling_ae,
                  result.label, probabilities, "+".join(result.views), extra=_extra(study))
    return CLASSIFIED if moved else None


def _load_result(study: StudyRecord, work_dir: Path) -> Any:
    """The stored StudyResult of a study, heatmaps included when classified."""
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
    if result.outcome == "classified":
        with np.load(_heatmap_path(work_dir, study)) as stored:
            result.heatmaps = {view: stored[view] for view in stored.files}
    return result


def _uid(study: StudyRecord, algorithm: Any, what: str) -> str:
    # The same study generation and model always give the same SR UIDs, so a
    # report re-run after a crash makes the same objects, not conflicting ones.
    return generate_uid(entropy_srcs=[study.study_uid, str(study.generation), str(algorithm.device_uid), what])


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _output_record(study: StudyRecord, kind: str, ds: Dataset, folder: Path) -> OutputRecord:
    # Named as the folder destination names copies (<Modality>_<SOP>.dcm), so a
    # folder destination pointing at the results folder overwrites nothing else.
    path = folder / instance_file_name(str(ds.Modality).strip() or kind.upper(), str(ds.SOPInstanceUID))
    return OutputRecord(study.study_uid, study.generation, kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                        str(ds.SeriesInstanceUID), path, True, 0.0)


def _build_outputs(
    store: JobStore, study: StudyRecord, result: Any, algorithm: Any, results_dir: Path
) -> list[tuple[OutputRecord, Dataset]]:
    from spectnode.report import build_not_assessable_sr, build_overlay_captures, build_result_sr

    sources, problems = _study_datasets(store, study.study_uid)
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
        views = read_study_views(sources)
        if not isinstance(views, StudyViews):
            raise RuntimeError(f"the study's views can no longer be read: {views.reason}")
        sr = build_result_sr(sources, views, result, algorithm, predecessor=predecessor, **uids)
        captures = build_overlay_captures(sources, views, result, algorithm,
                                          series_instance_uid=_uid(study, algorithm, "sc-series"))
        built = [(_output_record(study, "sr", sr, folder), sr)]
        built += [(_output_record(study, "sc", sc, folder), sc) for sc in captures]
        return built
    sr = build_not_assessable_sr(sources, result, algorithm, predecessor=predecessor, **uids)
    return [(_output_record(study, "sr", sr, folder), sr)]


def report_study(
    store: JobStore,
    study: StudyRecord,
    algorithm: Any,
    work_dir: Path,
    results_dir: Path,
    enqueue: Callable[[str, Mapping[str, Sequence[Path]]], list[int]],
) -> str | None:
    """Make, record and queue the SR (and SCs) of a ``classified`` study, or
    the SR of a ``not_assessable`` study whose ``report_pending`` is set.

    Args:
        algorithm: :class:`spectnode.report.AlgorithmInfo` of the classifier.
        work_dir: Where :func:`classify_study` left the heatmaps.
        results_dir: Results root; files go to ``<results_dir>/<study>/``.
        enqueue: Queues ``{"sr": [...], "sc": [...]}`` for the destinations
            that take each kind and returns the outbox item ids (idempotent
            for the same files).

    Returns:
        The new state (``reported``, ``dispatched`` when no destination takes
        any output, or ``not_assessable``), or None if the study had changed.
    """
    result = _load_result(study, work_dir)
    recorded = [o for o in store.outputs(study.study_uid, current_only=False) if o.generation == study.generation]
    if recorded and all(o.path.is_file() for o in recorded):
        outputs = recorded  # made before a crash or restart: send those, do not make new ones
    else:
        for stale in recorded:
            stale.path.unlink(missing_ok=True)
        built = _build_outputs(store, study, result, algorithm, results_dir)
        outputs = [record for record, _ in built]
        store.record_outputs(study.study_uid, study.generation, outputs)
        for record, ds in built:
            write_durably(record.path, _encode(ds))
    by_kind: dict[str, list[Path]] = {}
    for output in outputs:
        by_kind.setdefault(output.kind, []).append(output.path)
    _write_summary(study, result, outputs, results_dir)
    items = enqueue(study.study_uid, by_kind)
    described = ", ".join(f"{len(v)} {k.upper()}" for k, v in by_kind.items())
    if study.state == NOT_ASSESSABLE:
        moved = store.set_report_pending(study.study_uid, study.generation, False)
        if moved:
            _log.info("study %s from %s: not-assessable SR written and queued (%d outbox item(s))",
                      study.study_uid, study.calling_ae, len(items), extra=_extra(study))
        return NOT_ASSESSABLE if moved else None
    if not items:
        moved = store.advance(study.study_uid, study.generation, CLASSIFIED, DISPATCHED,
                              f"{described} written; no destination takes them")
        return DISPATCHED if moved else None
    moved = store.advance(study.study_uid, study.generation, CLASSIFIED, REPORTED,
                          f"{described} written to {study_folder(results_dir, study.study_uid)}, "
                          f"{len(items)} outbox item(s)")
    if moved:
        _log.info("study %s from %s: %s written and queued (%d outbox item(s))", study.study_uid,
                  study.calling_ae, described, len(items), extra=_extra(study))
    return REPORTED if moved else None


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


def enqueue_for_destinations(
    outbox: Any,
    destinations: Sequence[DestinationConfig],
    study: StudyRecord,
) -> Callable[[str, Mapping[str, Sequence[Path]]], list[int]]:
    """The ``enqueue`` argument of :func:`report_study` for an outbox and destinations."""
    sender = study.peer

    def enqueue(study_uid: str, outputs: Mapping[str, Sequence[Path]]) -> list[int]:
        return outbox.enqueue_outputs(study_uid, outputs, destinations, sender=sender)

    return enqueue
