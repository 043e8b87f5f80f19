"""Generate a labelled data set of synthetic whole-body bone-scan studies.

:func:`generate_phantoms` is what ``spectnode phantom`` runs. For a given seed it
writes byte-identical output every time::

    OUT/
      labels.csv          study_uid,patient_id,label,layout (one row per study)
      truth.jsonl         one JSON object per study: lesions, patient, matrix, views
      study_00000/        one folder per study, files IM0001.dcm, ...
      study_00001/
      preview/            with preview=True: study_00000.png, ... (both views)

Randomness of study ``i`` comes only from ``(seed, i)`` through
:class:`numpy.random.SeedSequence`, so the first ``k`` studies are the same
whatever ``n`` is, and any single study can be regenerated on its own.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spectnode.phantom.dicom import LAYOUTS, matrix_for_layout, write_study
from spectnode.phantom.synth import LABELS, PhantomScan, synthesize_scan

__all__ = [
    "LABELS_CSV_HEADER",
    "PhantomStudyRecord",
    "generate_phantoms",
    "label_for_study",
    "layout_for_study",
    "patient_id_for_study",
    "render_preview",
    "scan_for_study",
]

#: Column names of ``labels.csv``.
LABELS_CSV_HEADER: tuple[str, ...] = ("study_uid", "patient_id", "label", "layout")

# When no layout is forced, this share of the studies after the first
# len(LAYOUTS) ones is "multiframe", the standard form; the rest is spread
# evenly over the other layouts.
_MULTIFRAME_SHARE = 0.6

# SeedSequence spawn keys: (stream, ...) keeps the per-purpose streams apart.
_LABEL_STREAM = 0
_LAYOUT_STREAM = 1
_SCAN_STREAM = 2
_DICOM_STREAM = 3


@dataclass(frozen=True)
class PhantomStudyRecord:
    """One generated study.

    Attributes:
        index: 0-based position of the study in the data set.
        study_uid: StudyInstanceUID of every file of the study.
        patient_id: PatientID (one patient per study).
        label: One of :data:`spectnode.phantom.synth.LABELS`.
        layout: One of :data:`spectnode.phantom.dicom.LAYOUTS`.
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


def label_for_study(seed: int, index: int) -> str:
    """The class label of study ``index``.

    Labels are balanced exactly within every block of ``len(LABELS)``
    consecutive studies, in a seeded order per block so that the label is not a
    function of the index (and so not correlated with the layout schedule).
    """
    block, position = divmod(index, len(LABELS))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM, block)))
    return LABELS[int(order.permutation(len(LABELS))[position])]


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


def patient_id_for_study(seed: int, index: int) -> str:
    """PatientID of study ``index`` (one synthetic patient per study)."""
    return f"PH{seed}-{index:05d}"


def scan_for_study(seed: int, index: int, layout: str | None = None) -> PhantomScan:
    """Re-synthesize the scan of study ``index`` exactly as :func:`generate_phantoms` did.

    ``layout`` must be the layout forced in that run (``None`` for a mixed run);
    it decides the matrix. Useful for checking files against the pixels they
    should hold, without storing the arrays.
    """
    chosen = layout_for_study(seed, index, layout)
    scan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SCAN_STREAM, index)))
    return synthesize_scan(
        scan_rng,
        label_for_study(seed, index),
        matrix=matrix_for_layout(chosen),
        patient_id=patient_id_for_study(seed, index),
    )


def generate_phantoms(
    out_dir: Path,
    n: int,
    seed: int,
    layout: str | None = None,
    preview: bool = False,
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

    Returns:
        One record per study, in index order. Nothing is printed.

    Raises:
        ValueError: If ``n`` is not a positive integer, ``seed`` is not a
            non-negative integer, or ``layout`` is unknown.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of phantom studies must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the phantom seed must be a non-negative integer, got {seed!r}")
    if layout is not None:
        _check_layout_argument(layout)
    n, seed = int(n), int(seed)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[PhantomStudyRecord] = []
    truth_lines: list[str] = []
    for index in range(n):
        record, scan = _generate_one(out_dir, seed, index, layout, preview)
        records.append(record)
        truth_lines.append(json.dumps(_truth_entry(out_dir, record, scan), sort_keys=True))

    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(LABELS_CSV_HEADER)
        for record in records:
            writer.writerow([record.study_uid, record.patient_id, record.label, record.layout])
    (out_dir / "truth.jsonl").write_text(
        "".join(line + "\n" for line in truth_lines), encoding="utf-8"
    )
    return records


def _generate_one(
    out_dir: Path, seed: int, index: int, forced_layout: str | None, preview: bool
) -> tuple[PhantomStudyRecord, PhantomScan]:
    label = label_for_study(seed, index)
    layout = layout_for_study(seed, index, forced_layout)
    patient_id = patient_id_for_study(seed, index)
    scan = scan_for_study(seed, index, forced_layout)
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
        title = f"{name}  {label}  {layout}"
        render_preview(scan, title).save(preview_path, format="PNG")
    record = PhantomStudyRecord(
        index=index,
        study_uid=written.study_uid,
        patient_id=patient_id,
        label=label,
        layout=layout,
        study_dir=out_dir / name,
        files=written.files,
        matrix=(int(scan.anterior.shape[0]), int(scan.anterior.shape[1])),
        views=dict(written.view_locations),
        preview=preview_path,
    )
    return record, scan


def _truth_entry(out_dir: Path, record: PhantomStudyRecord, scan: PhantomScan) -> dict[str, object]:
    """Ground truth of one study for truth.jsonl; paths relative to ``out_dir``."""
    return {
        "index": record.index,
        "study_uid": record.study_uid,
        "patient_id": record.patient_id,
        "label": record.label,
        "layout": record.layout,
        "study_dir": record.study_dir.relative_to(out_dir).as_posix(),
        "matrix": list(record.matrix),
        "pixel_spacing_mm": float(scan.pixel_spacing_mm),
        "patient": asdict(scan.patient),
        "lesions": [asdict(lesion) for lesion in scan.lesions],
        "superscan": bool(getattr(scan, "superscan", False)),
        "views": {
            view: {"file": path.relative_to(out_dir).as_posix(), "frame": frame}
            for view, (path, frame) in sorted(record.views.items())
        },
    }


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
