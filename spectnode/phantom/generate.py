"""Generate a labelled data set of synthetic whole-body bone-scan studies.

:func:`generate_phantoms` is what ``spectnode phantom`` runs. For a given seed it
writes byte-identical output every time::

    OUT/
      labels.csv          study_uid,patient_id,label,layout,anatomy,phase,visit (one row per study)
      truth.jsonl         one JSON object per study: lesions, patient, matrix, views, acquisition
      study_00000/        one folder per study, files IM0001.dcm, ...
      study_00001/
      preview/            with preview=True: study_00000.png, ... (both views)

Patients and follow-ups.  With ``max_studies_per_patient`` above 1, each patient has 1 to
that many studies (consecutive indices): the same body, the same PatientID and birth date, a new
StudyInstanceUID each time, months apart, with findings that evolve (metastases grow and new
ones appear, sometimes in a patient who had none; arthritis persists).  Each study's label is
what its own images show.  Baseline labels are balanced over patients.

Randomness comes only from the seed and the patient's (and visit's) index through
:class:`numpy.random.SeedSequence`, so the first ``k`` studies are the same
whatever ``n`` is, and any single study can be regenerated on its own.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from spectnode.phantom.dicom import (
    LAYOUTS,
    birth_date_for_age,
    matrix_for_layout,
    write_study,
)
from spectnode.phantom.synth import (
    ANATOMIES,
    LABELS,
    PHASES,
    PhantomScan,
    build_anatomy,
    evolve_findings,
    render_scan,
    sample_findings,
)

if TYPE_CHECKING:
    from spectnode.phantom.anatomy import Anatomy
    from spectnode.phantom.findings import Lesion
    from spectnode.phantom.voxel import VoxelAnatomy

__all__ = [
    "ANATOMY_CHOICES",
    "LABELS_CSV_HEADER",
    "PhantomStudyRecord",
    "PlannedStudy",
    "generate_phantoms",
    "label_for_patient",
    "label_for_study",
    "layout_for_study",
    "patient_id_for_study",
    "plan_studies",
    "render_preview",
    "scan_for_study",
]

#: Column names of ``labels.csv``.
LABELS_CSV_HEADER: tuple[str, ...] = ("study_uid", "patient_id", "label", "layout", "anatomy", "phase", "visit")

#: Values of the ``anatomy`` argument: one builder for every patient, or ``mixed`` (a seeded
#: choice per patient).
ANATOMY_CHOICES: tuple[str, ...] = (*ANATOMIES, "mixed")

# When no layout is forced, this share of the studies after the first
# len(LAYOUTS) ones is "multiframe", the standard form; the rest is spread
# evenly over the other layouts.
_MULTIFRAME_SHARE = 0.6

# SeedSequence spawn keys: (stream, ...) keeps the per-purpose streams apart.
_LABEL_STREAM = 0
_LAYOUT_STREAM = 1
_SCAN_STREAM = 2  # a patient's body, then its findings and their evolution
_DICOM_STREAM = 3
_ACQUISITION_STREAM = 4  # per (patient, visit)
_VISIT_STREAM = 5  # per patient: number of studies, dates
_ANATOMY_CHOICE_STREAM = 6

# A baseline patient without metastases develops them by a follow-up with this chance.
_NEW_METASTASES_CHANCE = 0.2


@dataclass(frozen=True)
class PlannedStudy:
    """Where a study sits in the data set's patients.

    Attributes:
        index: 0-based study index.
        patient: 0-based patient index.
        visit: 0 for the patient's first study, 1 for the first follow-up, ...
        months: Months since the patient's first study.
    """

    index: int
    patient: int
    visit: int
    months: int


@dataclass(frozen=True)
class PhantomStudyRecord:
    """One generated study.

    Attributes:
        index: 0-based position of the study in the data set.
        study_uid: StudyInstanceUID of every file of the study.
        patient_id: PatientID (shared by the studies of one patient).
        label: One of :data:`spectnode.phantom.synth.LABELS`.
        layout: One of :data:`spectnode.phantom.dicom.LAYOUTS`.
        anatomy: The anatomy builder (:data:`spectnode.phantom.synth.ANATOMIES`).
        phase: One of :data:`spectnode.phantom.synth.PHASES`.
        visit: 0 for the patient's first study, then 1, 2, ... for follow-ups.
        study_dir: Folder holding the study's DICOM files.
        files: The DICOM files of the study.
        matrix: (rows, columns) of each view.
        views: For ``"anterior"`` and ``"posterior"``, the file holding the view
            and the 0-based frame index in it.
        preview: The preview PNG, or ``None`` when none was asked for.
    """

    index: int
    study_uid: str
    patient_id: str
    label: str
    layout: str
    study_dir: Path
    files: tuple[Path, ...]
    matrix: tuple[int, int]
    views: dict[str, tuple[Path, int]]
    preview: Path | None = None
    anatomy: str = "classic"
    phase: str = "delayed"
    visit: int = 0


def label_for_patient(seed: int, patient: int) -> str:
    """The class label of patient ``patient``'s first study.

    Labels are balanced exactly within every block of ``len(LABELS)``
    consecutive patients, in a seeded order per block so that the label is not a
    function of the index (and so not correlated with the layout schedule).
    """
    block, position = divmod(patient, len(LABELS))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM, block)))
    return LABELS[int(order.permutation(len(LABELS))[position])]


def label_for_study(seed: int, index: int, max_studies_per_patient: int = 1, anatomy: str = "classic") -> str:
    """The class label of study ``index`` (a follow-up's label is what its findings show)."""
    planned = plan_studies(seed, index + 1, max_studies_per_patient)[index]
    if planned.visit == 0:
        return label_for_patient(seed, planned.patient)
    return _findings_for_study(seed, planned, None, anatomy)[1]


def plan_studies(seed: int, n: int, max_studies_per_patient: int = 1) -> list[PlannedStudy]:
    """Patients and visits of the first ``n`` studies (independent of ``n`` for each study)."""
    plan: list[PlannedStudy] = []
    patient = 0
    while len(plan) < n:
        visits = _visit_rng(seed, patient)
        count = int(visits.integers(1, max_studies_per_patient + 1))
        months = 0
        for visit in range(count):
            if visit:
                months += int(visits.integers(3, 13))
            plan.append(PlannedStudy(len(plan), patient, visit, months))
        patient += 1
    return plan[:n]


def _visit_rng(seed: int, patient: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VISIT_STREAM, patient)))


def _anatomy_for_patient(seed: int, patient: int, anatomy: str) -> str:
    if anatomy != "mixed":
        return anatomy
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ANATOMY_CHOICE_STREAM, patient)))
    return ANATOMIES[int(rng.integers(len(ANATOMIES)))]


def _findings_for_study(seed: int, planned: PlannedStudy, matrix: tuple[int, int] | None,
                        anatomy: str) -> tuple[Anatomy | VoxelAnatomy, str, list[Lesion], bool]:
    """The patient's body at ``matrix`` and its findings at the planned visit: ``(body, label, lesions, superscan)``."""
    name = _anatomy_for_patient(seed, planned.patient, anatomy)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SCAN_STREAM, planned.patient)))
    # the body is laid out in millimetres: the same draws give the same body on any matrix
    body = build_anatomy(name, rng, matrix or (1024, 256), f"PH{seed}-{planned.patient:05d}")
    label = label_for_patient(seed, planned.patient)
    lesions, superscan = sample_findings(body, label, rng)
    for _ in range(planned.visit):
        lesions, label = evolve_findings(body, lesions, label, rng, _NEW_METASTASES_CHANCE)
    return body, label, lesions, superscan


def layout_for_study(seed: int, index: int, layout: str | None = None) -> str:
    """The layout of study ``index``: ``layout`` if given, else a seeded choice.

    Without a forced layout the first ``len(LAYOUTS)`` studies take every layout
    once, in :data:`LAYOUTS` order, so that any data set of at least that size
    covers them all; later studies are mostly ``"multiframe"``.
    """
    if layout is not None:
        _check_layout_argument(layout)
        return layout
    if index < len(LAYOUTS):
        return LAYOUTS[index]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LAYOUT_STREAM, index)))
    if rng.random() < _MULTIFRAME_SHARE:
        return "multiframe"
    others = [name for name in LAYOUTS if name != "multiframe"]
    return others[int(rng.integers(len(others)))]


def patient_id_for_study(seed: int, index: int, max_studies_per_patient: int = 1) -> str:
    """PatientID of study ``index``: the same for every study of one patient."""
    if max_studies_per_patient > 1:
        index = plan_studies(seed, index + 1, max_studies_per_patient)[index].patient
    return f"PH{seed}-{index:05d}"


def scan_for_study(seed: int, index: int, layout: str | None = None, *, anatomy: str = "classic",
                   phase: str = "delayed", max_studies_per_patient: int = 1) -> PhantomScan:
    """Re-synthesize the scan of study ``index`` exactly as :func:`generate_phantoms` did.

    ``layout`` must be the layout forced in that run (``None`` for a mixed run);
    it decides the matrix; the other arguments must also be those of the run. Useful for
    checking files against the pixels they should hold, without storing the arrays.
    """
    _check_choices(anatomy, phase, max_studies_per_patient)
    planned = plan_studies(seed, index + 1, max_studies_per_patient)[index]
    chosen = layout_for_study(seed, index, layout)
    body, label, lesions, superscan = _findings_for_study(seed, planned, matrix_for_layout(chosen), anatomy)
    when, birth, age = _study_dates(seed, planned, body.patient.age)
    body.patient = dataclasses.replace(body.patient, age=age, birth_date=birth)
    acquisition_rng = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_ACQUISITION_STREAM, planned.patient, planned.visit)))
    scan = render_scan(body, label, lesions, superscan, phase, acquisition_rng)
    return dataclasses.replace(scan, study_datetime=when)


def _study_dates(seed: int, planned: PlannedStudy, baseline_age: int) -> tuple[dt.datetime, dt.date, int]:
    """``(study datetime, birth date, age)`` of a planned study; one birth date per patient."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VISIT_STREAM, planned.patient, 1)))
    day = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 3 * 365)))
    birth = birth_date_for_age(day, baseline_age, int(rng.integers(0, 365)))
    visit_day = day + dt.timedelta(days=round(planned.months * 30.44))
    seconds = int(rng.integers(8 * 3600, 17 * 3600)) if planned.visit == 0 else int(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VISIT_STREAM, planned.patient, 2,
                                                                      planned.visit))).integers(8 * 3600, 17 * 3600))
    when = dt.datetime.combine(visit_day, dt.time()) + dt.timedelta(seconds=seconds)
    age = visit_day.year - birth.year - ((visit_day.month, visit_day.day) < (birth.month, birth.day))
    return when, birth, age


def _check_choices(anatomy: str, phase: str, max_studies_per_patient: int) -> None:
    if anatomy not in ANATOMY_CHOICES:
        raise ValueError(f"unknown phantom anatomy {anatomy!r}; choose one of: {', '.join(ANATOMY_CHOICES)}")
    if phase not in PHASES:
        raise ValueError(f"unknown phantom phase {phase!r}; choose one of: {', '.join(PHASES)}")
    if (isinstance(max_studies_per_patient, bool) or not isinstance(max_studies_per_patient, (int, np.integer))
            or max_studies_per_patient < 1):
        raise ValueError("the number of studies per patient must be a positive integer, "
                         f"got {max_studies_per_patient!r}")


def generate_phantoms(
    out_dir: Path,
    n: int,
    seed: int,
    layout: str | None = None,
    preview: bool = False,
    *,
    anatomy: str = "classic",
    phase: str = "delayed",
    max_studies_per_patient: int = 1,
) -> list[PhantomStudyRecord]:
    """Write ``n`` synthetic bone-scan studies with their labels and ground truth.

    Args:
        out_dir: Output folder, created if needed. Files of an earlier run with
            the same names are overwritten; other files are left alone.
        n: Number of studies (at least 1).
        seed: Non-negative seed; the same seed gives byte-identical output.
        layout: Write every study in this layout (one of
            :data:`~spectnode.phantom.dicom.LAYOUTS`); ``None`` mixes all
            layouts (see :func:`layout_for_study`).
        preview: Also write ``preview/study_NNNNN.png`` per study, the
            anterior and posterior views side by side.
        anatomy: One of :data:`ANATOMY_CHOICES`.
        phase: ``"delayed"`` (bone scan) or ``"early"`` (blood pool).
        max_studies_per_patient: Each patient gets 1 to this many studies
            (follow-ups months apart); 1 gives one study per patient.

    Returns:
        One record per study, in index order. Nothing is printed.

    Raises:
        ValueError: If ``n`` is not a positive integer, ``seed`` is not a
            non-negative integer, or ``layout``, ``anatomy``, ``phase`` or
            ``max_studies_per_patient`` is not valid.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of phantom studies must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the phantom seed must be a non-negative integer, got {seed!r}")
    if layout is not None:
        _check_layout_argument(layout)
    _check_choices(anatomy, phase, max_studies_per_patient)
    n, seed = int(n), int(seed)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[PhantomStudyRecord] = []
    truth_lines: list[str] = []
    for planned in plan_studies(seed, n, int(max_studies_per_patient)):
        record, scan = _generate_one(out_dir, seed, planned, layout, preview, anatomy, phase,
                                     int(max_studies_per_patient))
        records.append(record)
        truth_lines.append(json.dumps(_truth_entry(out_dir, record, scan, planned), sort_keys=True))

    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(LABELS_CSV_HEADER)
        for record in records:
            writer.writerow([record.study_uid, record.patient_id, record.label, record.layout, record.anatomy,
                             record.phase, record.visit])
    (out_dir / "truth.jsonl").write_text(
        "".join(line + "\n" for line in truth_lines), encoding="utf-8"
    )
    return records


def _generate_one(
    out_dir: Path, seed: int, planned: PlannedStudy, forced_layout: str | None, preview: bool,
    anatomy: str, phase: str, max_studies_per_patient: int,
) -> tuple[PhantomStudyRecord, PhantomScan]:
    index = planned.index
    layout = layout_for_study(seed, index, forced_layout)
    scan = scan_for_study(seed, index, forced_layout, anatomy=anatomy, phase=phase,
                          max_studies_per_patient=max_studies_per_patient)
    label = scan.label
    # DICOM metadata has its own stream, so that a change to the metadata
    # draws never changes the images of a given seed.
    dicom_rng = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_DICOM_STREAM, index))
    )

    name = f"study_{index:05d}"
    written = write_study(
        scan, out_dir / name, layout, uid_seed=f"seed={seed}/study={index}", rng=dicom_rng
    )
    preview_path = None
    if preview:
        preview_path = out_dir / "preview" / f"{name}.png"
        preview_path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{name}  {label}  {layout}  {scan.anatomy}  {phase}"
        render_preview(scan, title).save(preview_path, format="PNG")
    record = PhantomStudyRecord(
        index=index,
        study_uid=written.study_uid,
        patient_id=scan.patient.patient_id,
        label=label,
        layout=layout,
        study_dir=out_dir / name,
        files=written.files,
        matrix=(int(scan.anterior.shape[0]), int(scan.anterior.shape[1])),
        views=dict(written.view_locations),
        preview=preview_path,
        anatomy=scan.anatomy,
        phase=scan.phase,
        visit=planned.visit,
    )
    return record, scan


def _truth_entry(out_dir: Path, record: PhantomStudyRecord, scan: PhantomScan,
                 planned: PlannedStudy) -> dict[str, object]:
    """Ground truth of one study for truth.jsonl; paths relative to ``out_dir``."""
    return {
        "anatomy": record.anatomy,
        "phase": record.phase,
        "visit": record.visit,
        "months_since_first_study": planned.months,
        "acquisition": asdict(scan.acquisition) if scan.acquisition is not None else None,
        "index": record.index,
        "study_uid": record.study_uid,
        "patient_id": record.patient_id,
        "label": record.label,
        "layout": record.layout,
        "study_dir": record.study_dir.relative_to(out_dir).as_posix(),
        "matrix": list(record.matrix),
        "pixel_spacing_mm": float(scan.pixel_spacing_mm),
        "patient": {**asdict(scan.patient), "birth_date": _iso(scan.patient.birth_date)},
        "study_datetime": _iso(scan.study_datetime),
        "lesions": [asdict(lesion) for lesion in scan.lesions],
        "superscan": bool(getattr(scan, "superscan", False)),
        "visibility": scan.visibility,
        "views": {
            view: {"file": path.relative_to(out_dir).as_posix(), "frame": frame}
            for view, (path, frame) in sorted(record.views.items())
        },
    }


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def render_preview(scan: PhantomScan, title: str = "") -> Image.Image:
    """Both views side by side as an 8-bit image, as a reader would view them.

    Each view is windowed from 0 to the 99th percentile of its non-zero pixels
    (so a hot bladder or lesion does not wash out the skeleton) and shown
    inverted, dark uptake on white, like most nuclear-medicine displays.
    """
    header, gap = 32, 8
    panels = [("ANTERIOR", scan.anterior), ("POSTERIOR", scan.posterior)]
    rows, cols = scan.anterior.shape
    canvas = Image.new("L", (2 * cols + gap, rows + header), color=255)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((3, 2), title, fill=0)
    for position, (name, image) in enumerate(panels):
        x0 = position * (cols + gap)
        canvas.paste(Image.fromarray(_window_inverted(image)), (x0, header))
        draw.text((x0 + 3, 17), name, fill=0)
    return canvas


def _window_inverted(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float64)
    body = values[values > 0]
    upper = float(np.percentile(body, 99.0)) if body.size else 1.0
    scaled = np.clip(values / max(upper, 1.0), 0.0, 1.0)
    return (255.0 - 255.0 * scaled).round().astype(np.uint8)


def _check_layout_argument(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown phantom layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
