"""Early blood-pool phase (issue 14) and a patient's follow-up studies (issue 17, point 1)."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pydicom
import pytest

from spectnode.phantom.dicom import write_study
from spectnode.phantom.findings import ARTHRITIS_MIN_RATIO, joint_excess_ratio
from spectnode.phantom.generate import (
    generate_phantoms,
    label_for_patient,
    plan_studies,
    scan_for_study,
)
from spectnode.phantom.synth import (
    apply_phase,
    build_anatomy,
    evolve_findings,
    render_expected_views,
    sample_acquisition,
    sample_findings,
    synthesize_scan,
)

from dicomtools import dciodvfy_errors


def _views(seed: int, phase: str, anatomy: str):
    from spectnode.phantom.voxel import render_voxel_views

    rng = np.random.default_rng(seed)
    body = build_anatomy(anatomy, rng, (1024, 256), "P")
    lesions, _ = sample_findings(body, "normal", rng)
    apply_phase(body, phase, rng)
    if anatomy == "voxel":
        ant, post = render_voxel_views(body, lesions, sample_acquisition(np.random.default_rng(0)))
    else:
        ant, post = render_expected_views(body, lesions)
    return body, ant / ant.sum(), post / post.sum()


@pytest.mark.parametrize("anatomy", ["classic", "voxel"])
@pytest.mark.parametrize("seed", [0, 1])
def test_early_phase_shows_blood_pool_and_little_skeleton(seed, anatomy):
    body, ant_d, post_d = _views(seed, "delayed", anatomy)
    _, ant_e, post_e = _views(seed, "early", anatomy)
    s = body.pixel_spacing_mm
    cols = body.matrix[1]

    def at(image, name, mirrored=False):
        x, y = body.landmarks[name]
        r, c = round(y / s - 0.5), round(x / s - 0.5)
        c = cols - 1 - c if mirrored else c
        return float(image[r - 2: r + 3, c - 2: c + 3].mean())

    # cardiac blood pool and liver: a larger share of the image early than delayed
    assert at(ant_e, "heart") > 2.0 * at(ant_d, "heart")
    assert at(ant_e, "liver") > 1.5 * at(ant_d, "liver")
    # skeletal contrast: the lumbar spine over the kidney-free flank soft tissue, posterior view
    x, y = body.landmarks["L3"]
    flank = (x + 0.6 * (body.landmarks["left hip"][0] - x) + 40.0, y)
    body.landmarks["flank"] = flank

    def contrast(post):
        return at(post, "L3", mirrored=True) / at(post, "flank", mirrored=True)

    assert contrast(post_e) < 0.6 * contrast(post_d)


def _scan(phase: str):
    return synthesize_scan(np.random.default_rng(3), "normal", phase=phase)


def test_early_phase_series_description_says_so_and_passes_dciodvfy(tmp_path):
    scan = _scan("early")
    seen = set()
    for number, layout in enumerate(("multiframe", "split-instances", "split-series") * 3):
        written = write_study(scan, tmp_path / f"{number}", layout, f"early/{number}", np.random.default_rng(number))
        for path in written.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            description = str(ds.SeriesDescription)
            assert "BLOOD POOL" in description or "früh" in description, description
            seen.add(description)
            if "früh" in description:
                assert ds.SpecificCharacterSet == "ISO_IR 100"
            assert dciodvfy_errors(path) == [], (layout, description)
    assert any("früh" in d for d in seen) and any("BLOOD POOL" in d for d in seen)
    # the delayed phase never says so
    delayed = write_study(_scan("delayed"), tmp_path / "delayed", "multiframe", "delayed", np.random.default_rng(0))
    description = str(pydicom.dcmread(delayed.files[0], stop_before_pixels=True).SeriesDescription)
    assert "BLOOD POOL" not in description and "früh" not in description


def test_follow_up_findings_evolve_and_labels_follow():
    grew = appeared = 0
    for seed in range(30):
        for label in ("metastatic", "normal", "arthritic"):
            rng = np.random.default_rng(seed)
            body = build_anatomy("classic", rng, (1024, 256), "P")
            lesions, _ = sample_findings(body, label, rng)
            later, new_label = evolve_findings(body, lesions, label, rng)
            before = [lesion for lesion in lesions if lesion.kind == "metastasis"]
            after = [lesion for lesion in later if lesion.kind == "metastasis"]
            # the same patient: physiological uptake unchanged
            assert [x for x in later if x.kind == "physiological"] == [x for x in lesions if x.kind == "physiological"]
            if label == "metastatic":
                assert new_label == "metastatic"
                for old, new in zip(before, after):  # kept in order, then new ones
                    assert (new.row, new.col) == (old.row, old.col)
                    assert new.radius_mm >= old.radius_mm and new.relative_uptake >= old.relative_uptake
                grew += len(after) > len(before) or any(
                    new.radius_mm > old.radius_mm for old, new in zip(before, after))
            else:
                assert new_label == {"normal": "normal", "arthritic": "arthritic"}[label] if not after else \
                    new_label == {"normal": "metastatic", "arthritic": "both"}[label]
                appeared += bool(after)
            if label == "arthritic":
                arthritis = [lesion for lesion in later if lesion.kind == "arthritis"]
                assert arthritis and all(joint_excess_ratio(x) >= ARTHRITIS_MIN_RATIO - 1e-9 for x in arthritis)
    assert grew >= 25 and 3 <= appeared <= 25


SEED = 5


@pytest.fixture(scope="module")
def follow_up_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("follow-ups")
    return out, generate_phantoms(out, 6, SEED, layout="multiframe", max_studies_per_patient=3)


def test_a_patient_has_several_studies_with_one_identity_and_later_dates(follow_up_set):
    out, records = follow_up_set
    with (out / "labels.csv").open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    by_patient = defaultdict(list)
    for row, record in zip(rows, records, strict=True):
        assert row["patient_id"] == record.patient_id and int(row["visit"]) == record.visit
        by_patient[row["patient_id"]].append(record)
    assert len(by_patient) < len(records), "some patient must have follow-ups"
    for patient_id, studies in by_patient.items():
        headers = [pydicom.dcmread(r.files[0], stop_before_pixels=True) for r in studies]
        assert [r.visit for r in studies] == list(range(len(studies)))
        assert {h.PatientID for h in headers} == {patient_id}
        assert len({(h.PatientBirthDate, h.PatientSex, h.PatientSize) for h in headers}) == 1
        assert len({h.StudyInstanceUID for h in headers}) == len(headers)
        dates = [h.StudyDate for h in headers]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        for path in (r.files[0] for r in studies):
            assert dciodvfy_errors(path) == []


def test_follow_ups_regenerate_bit_exact_and_show_the_same_body(follow_up_set):
    _, records = follow_up_set
    scans = [scan_for_study(SEED, r.index, "multiframe", max_studies_per_patient=3) for r in records]
    for record, scan in zip(records, scans, strict=True):
        ds = pydicom.dcmread(record.files[0])
        frame = record.views["anterior"][1]
        np.testing.assert_array_equal(ds.pixel_array[frame], scan.anterior)
    followed = next(r.patient_id for r in records if r.visit == 1)
    first, second = (i for i, r in enumerate(records) if r.patient_id == followed and r.visit < 2)
    # same body: the physiological uptake (placed on the body's joints) is identical
    same = [[x for x in scans[i].lesions if x.kind == "physiological"] for i in (first, second)]
    assert same[0] == same[1] and same[0]


def test_plan_is_independent_of_n_and_baseline_labels_are_balanced():
    plan = plan_studies(SEED, 60, 3)
    assert plan[:20] == plan_studies(SEED, 20, 3)
    assert [p.visit for p in plan if p.patient == plan[0].patient] == list(range(sum(
        p.patient == plan[0].patient for p in plan)))
    assert max(p.visit for p in plan) == 2 and all(p.months >= 3 * p.visit for p in plan)
    baselines = [label_for_patient(SEED, patient) for patient in range(8)]
    assert sorted(baselines) == sorted(["normal", "metastatic", "arthritic", "both"] * 2)


def test_cli_writes_the_chosen_anatomy_phase_and_follow_ups(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "spectnode", "phantom", "--out", str(out), "--n", "3", "--seed", "9",
                           "--layout", "multiframe", "--anatomy", "voxel", "--phase", "early",
                           "--max-studies-per-patient", "3"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    with (out / "labels.csv").open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert {(row["anatomy"], row["phase"]) for row in rows} == {("voxel", "early")}
    assert f"of {len({row['patient_id'] for row in rows})} patients" in proc.stdout
    for flag, value in (("--anatomy", "cartoon"), ("--phase", "late"), ("--max-studies-per-patient", "0")):
        bad = subprocess.run([sys.executable, "-m", "spectnode", "phantom", "--out", str(tmp_path / "bad"), "--n", "1",
                              "--seed", "1", flag, value], capture_output=True, text=True, timeout=300,
                             check=False)
        assert bad.returncode == 2 and value in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad").exists()
