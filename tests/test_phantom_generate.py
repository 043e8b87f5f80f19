"""Tests of spectnode.phantom.generate: a labelled, deterministic, valid phantom data set."""

from __future__ import annotations

import csv
import json
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from PIL import Image

from spectnode.phantom.dicom import LAYOUTS, matrix_for_layout, transfer_syntax_for_layout
from spectnode.phantom.findings import DISEASE_KINDS
from spectnode.phantom.generate import (
    LABELS_CSV_HEADER,
    PhantomStudyRecord,
    generate_phantoms,
    label_for_study,
    layout_for_study,
    scan_for_study,
)
from spectnode.phantom.synth import LABELS, PhantomScan, disease_kinds

from dicomtools import dciodvfy_errors

if TYPE_CHECKING:
    from pathlib import Path

SEED = 20240601
N_STUDIES = len(LAYOUTS)  # the smallest data set that covers every layout


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PhantomStudyRecord]]:
    """One mixed-layout data set with previews, generated once for the session."""
    out_dir = tmp_path_factory.mktemp("phantoms")
    return out_dir, generate_phantoms(out_dir, N_STUDIES, SEED, preview=True)


@pytest.fixture(scope="session")
def synthesized(phantom_set) -> dict[int, PhantomScan]:
    """The scan of every study of ``phantom_set``, re-synthesized from its seed."""
    _, records = phantom_set
    return {record.index: scan_for_study(SEED, record.index) for record in records}


def file_bytes(study_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(study_dir.glob("*.dcm"))}


def read_view(path: Path, frame: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    return pixels[frame] if int(ds.NumberOfFrames) > 1 else pixels


def test_mixed_data_set_covers_every_layout_once(phantom_set):
    _, records = phantom_set
    assert [r.layout for r in records] == list(LAYOUTS)
    assert [r.index for r in records] == list(range(N_STUDIES))


def test_every_file_of_the_data_set_passes_dciodvfy(phantom_set):
    _, records = phantom_set
    for record in records:
        for path in record.files:
            assert dciodvfy_errors(path) == [], f"{record.layout}: {path}"


def test_labels_csv_matches_the_files_written(phantom_set):
    out_dir, records = phantom_set
    with (out_dir / "labels.csv").open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        assert tuple(next(reader)) == LABELS_CSV_HEADER
        rows = list(reader)
    assert len(rows) == len(records)
    for (study_uid, patient_id, label, layout, anatomy, phase, visit), record in zip(rows, records, strict=True):
        assert (label, layout) == (record.label, record.layout)
        assert (anatomy, phase, visit) == ("classic", "delayed", "0")
        assert label in LABELS
        for path in record.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.StudyInstanceUID == study_uid
            assert ds.PatientID == patient_id
            assert ds.file_meta.TransferSyntaxUID == transfer_syntax_for_layout(layout)
    assert len({row[0] for row in rows}) == len(rows), "study UIDs must be unique"


def test_truth_jsonl_describes_each_study(phantom_set):
    out_dir, records = phantom_set
    lines = (out_dir / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    for line, record in zip(lines, records, strict=True):
        truth = json.loads(line)
        assert truth["study_uid"] == record.study_uid and truth["label"] == record.label
        assert tuple(truth["matrix"]) == matrix_for_layout(record.layout)
        assert truth["patient"]["patient_id"] == record.patient_id
        # Lesions list disease findings and confounders; the disease kinds must fit the label.
        disease = {lesion["kind"] for lesion in truth["lesions"]} & DISEASE_KINDS
        assert disease <= disease_kinds(record.label)
        if record.label != "normal" and not truth["superscan"]:
            assert disease == disease_kinds(record.label), record.label
        for view in ("anterior", "posterior"):
            location = truth["views"][view]
            assert (out_dir / location["file"]) == record.views[view][0]
            assert location["frame"] == record.views[view][1]


def test_views_in_files_are_the_synthesized_views_bit_exact(phantom_set, synthesized):
    """Regenerate each scan from its seed stream and compare every stored view."""
    _, records = phantom_set
    for record in records:
        scan = synthesized[record.index]
        assert (scan.label, scan.patient.patient_id) == (record.label, record.patient_id)
        for view in ("anterior", "posterior"):
            path, frame = record.views[view]
            np.testing.assert_array_equal(
                read_view(path, frame), getattr(scan, view), err_msg=record.layout
            )


def test_matrix512_study_is_2048_by_512(phantom_set):
    _, records = phantom_set
    (record,) = [r for r in records if r.layout == "matrix512"]
    ds = pydicom.dcmread(record.files[0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (2048, 512, 2)
    assert record.matrix == (2048, 512)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(phantom_set, tmp_path):
    out_dir, records = phantom_set
    again = generate_phantoms(tmp_path / "again", 2, SEED)
    other = generate_phantoms(tmp_path / "other", 2, SEED + 1)
    for first, second in zip(records[:2], again, strict=True):
        # The first k studies do not depend on n, so a 2-study run repeats them.
        assert first.study_uid == second.study_uid
        assert file_bytes(first.study_dir) == file_bytes(second.study_dir)
    again_twice = generate_phantoms(tmp_path / "again-twice", 2, SEED)
    assert (tmp_path / "again" / "labels.csv").read_bytes() == (
        tmp_path / "again-twice" / "labels.csv"
    ).read_bytes()
    assert (tmp_path / "again" / "truth.jsonl").read_bytes() == (
        tmp_path / "again-twice" / "truth.jsonl"
    ).read_bytes()
    assert [r.study_uid for r in again_twice] == [r.study_uid for r in again]
    for first, different in zip(again, other, strict=True):
        assert first.study_uid != different.study_uid
        assert file_bytes(first.study_dir) != file_bytes(different.study_dir)


def test_labels_are_balanced_and_not_tied_to_the_index():
    labels = [label_for_study(SEED, index) for index in range(40)]
    assert Counter(labels) == dict.fromkeys(LABELS, 10)
    for block in range(10):
        assert sorted(labels[4 * block : 4 * block + 4]) == sorted(LABELS)
    assert len({tuple(labels[i::4]) for i in range(4)}) == 4
    assert labels != [label_for_study(SEED + 1, index) for index in range(40)]


def test_layout_schedule_is_mostly_multiframe_after_covering_all():
    layouts = [layout_for_study(SEED, index) for index in range(400)]
    assert layouts[: len(LAYOUTS)] == list(LAYOUTS)
    share = Counter(layouts[len(LAYOUTS) :])["multiframe"] / (400 - len(LAYOUTS))
    assert 0.5 < share < 0.7
    assert set(layouts[len(LAYOUTS) :]) == set(LAYOUTS)
    assert layout_for_study(SEED, 3, "rle") == "rle"


def test_forced_layout_applies_to_every_study(tmp_path):
    records = generate_phantoms(tmp_path, 2, 3, layout="split-series")
    assert [r.layout for r in records] == ["split-series", "split-series"]
    assert all(len(r.files) == 2 for r in records)
    assert not (tmp_path / "preview").exists()


def test_preview_shows_both_views_side_by_side(phantom_set):
    out_dir, records = phantom_set
    for record in records:
        assert record.preview == out_dir / "preview" / f"{record.study_dir.name}.png"
        with Image.open(record.preview) as image:
            rows, cols = record.matrix
            assert image.mode == "L"
            assert image.width > 2 * cols and image.height > rows
            pixels = np.asarray(image)
        # Inverted display: white background, dark skeleton in both halves.
        views = pixels[-rows:]
        assert (views > 240).mean() > 0.4, "background should be (almost) white"
        for half in (views[:, :cols], views[:, -cols:]):
            assert (half < 128).mean() > 0.003, "each view should show dark uptake"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0, "seed": 1}, "positive integer"),
        ({"n": 2.5, "seed": 1}, "positive integer"),
        ({"n": 1, "seed": -1}, "non-negative integer"),
        ({"n": 1, "seed": 1, "layout": "dicomdir"}, "unknown phantom layout"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_phantoms(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir()), "nothing may be written for bad arguments"


def test_spectnode_view_reader_finds_both_views_in_every_layout(phantom_set, synthesized):
    """Contract with spectnode.imaging.views: each layout is read back to the synthesized views."""
    from spectnode.imaging.views import StudyViews, load_study_views

    _, records = phantom_set
    for record in records:
        result = load_study_views(list(record.files))[record.study_uid]
        assert isinstance(result, StudyViews), f"{record.layout}: {result}"
        scan = synthesized[record.index]
        np.testing.assert_array_equal(result.anterior.pixels, scan.anterior, err_msg=record.layout)
        np.testing.assert_array_equal(
            result.posterior.pixels, scan.posterior, err_msg=record.layout
        )
