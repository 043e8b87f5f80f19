"""A disease label is one a reader could call: the index finding of each disease kind shows in the counts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from spectnode.phantom import synth
from spectnode.phantom.anatomy import sample_anatomy
from spectnode.phantom.findings import Lesion
from spectnode.phantom.synth import MIN_INDEX_SNR, ideal_snr, render_scan, sample_findings


def _study(seed: int, label: str, faint: bool) -> tuple[object, list[Lesion]]:
    """A classic patient whose only metastasis sits in T10 (faint or plain), with the usual confounders."""
    rng = np.random.default_rng(seed)
    body = sample_anatomy(rng, (1024, 256), "PH-VIS")
    lesions, _ = sample_findings(body, label, rng)
    site = next(s for s in body.bone_sites if s.name == "T10 vertebral body")
    x, y = np.mean(site.points, axis=0)
    row, col = y / body.pixel_spacing_mm - 0.5, x / body.pixel_spacing_mm - 0.5
    metastasis = Lesion("metastasis", site.name, row, col, 0.7, 6.0 if faint else 15.0, 1.35 if faint else 4.0)
    return body, [lesion for lesion in lesions if lesion.kind != "metastasis"] + [metastasis]


def _render(seed: int, label: str, faint: bool, min_snr: float, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(synth, "MIN_INDEX_SNR", min_snr)
    body, lesions = _study(seed, label, faint)
    return body, lesions, render_scan(body, label, lesions, False, "delayed", np.random.default_rng(seed + 1))


def test_ideal_snr_of_a_flat_finding_on_a_flat_background_is_roses() -> None:
    view = np.full((40, 40), 100.0)
    excess = np.zeros_like(view)
    excess[10:20, 10:20] = 5.0  # 100 pixels, 5 counts over 100 a pixel
    view = view + excess
    snr = ideal_snr((excess, np.zeros_like(excess)), (view, view), [1.0, 1.0], 0.0)
    assert snr == pytest.approx(5.0 * math.sqrt(100) / math.sqrt(105.0))
    # counts scale the SNR by their square root, background adds noise
    assert ideal_snr((excess, excess), (view, view), [4.0, 4.0], 0.0) == pytest.approx(2 * snr)
    assert ideal_snr((excess, excess), (view, view), [1.0, 1.0], 50.0) < snr


def test_a_faint_index_metastasis_is_raised_until_it_can_be_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    body, drawn, scan = _render(5, "metastatic", True, MIN_INDEX_SNR, monkeypatch)
    seen = scan.visibility["metastasis"]
    assert seen["index_snr"] < MIN_INDEX_SNR and seen["raised_by"] > 1.0
    assert MIN_INDEX_SNR <= seen["shown_snr"] < 1.05 * MIN_INDEX_SNR
    raised = next(lesion for lesion in scan.lesions if lesion.kind == "metastasis")
    assert raised.relative_uptake == pytest.approx(1.0 + seen["raised_by"] * 0.35, rel=1e-3)
    assert [lesion for lesion in scan.lesions if lesion.kind != "metastasis"] == drawn[:-1]
    # rendered again from what the study records, the finding now reaches the floor
    acquisition = scan.acquisition
    assert acquisition is not None
    with_it = synth._expected_views(body, scan.lesions, acquisition)
    without = synth._expected_views(body, scan.lesions[:-1], acquisition)
    scales, background = synth._count_scales(*with_it, acquisition, body)
    excess = (with_it[0] - without[0], with_it[1] - without[1])
    assert ideal_snr(excess, with_it, scales, background) == pytest.approx(seen["shown_snr"], abs=0.05)
    # and the raised uptake is in the counts: the same study drawn without the floor shows less over T10
    _, _, unraised = _render(5, "metastatic", True, 0.0, monkeypatch)
    r, c = int(raised.row), int(raised.col)
    box = (slice(r - 4, r + 5), slice(c - 4, c + 5))
    assert int(scan.posterior[:, ::-1][box].sum()) > int(unraised.posterior[:, ::-1][box].sum())


def test_a_plain_finding_and_the_study_are_left_as_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    _, drawn, scan = _render(6, "metastatic", False, MIN_INDEX_SNR, monkeypatch)
    assert scan.visibility["metastasis"]["raised_by"] == 1.0
    assert scan.visibility["metastasis"]["index_snr"] >= MIN_INDEX_SNR
    assert scan.lesions == drawn
    _, _, without_floor = _render(6, "metastatic", False, 0.0, monkeypatch)
    np.testing.assert_array_equal(scan.anterior, without_floor.anterior)
    np.testing.assert_array_equal(scan.posterior, without_floor.posterior)


def test_each_disease_kind_of_the_label_is_checked_and_no_other() -> None:
    both = synth.synthesize_scan(np.random.default_rng(3), "both")
    assert set(both.visibility) == {"metastasis", "arthritis"}
    for kind, seen in both.visibility.items():
        assert seen["shown_snr"] >= MIN_INDEX_SNR, (kind, seen)
    assert synth.synthesize_scan(np.random.default_rng(3), "normal").visibility == {}
    assert synth.synthesize_scan(np.random.default_rng(3), "arthritic", anatomy="voxel").visibility.keys() == {
        "arthritis"}
    # the blood-pool phase shows little bone: nothing to raise there
    assert synth.synthesize_scan(np.random.default_rng(3), "metastatic", phase="early").visibility == {}


def test_a_superscan_raises_no_metastasis_but_its_arthritis_still_shows() -> None:
    # render_scan is told the study is a superscan; what it skips is decided by that flag alone
    rng = np.random.default_rng(12)
    body = sample_anatomy(rng, (1024, 256), "PH-VIS")
    lesions, _ = sample_findings(body, "both", rng)
    scan = render_scan(body, "both", lesions, True, "delayed", np.random.default_rng(13))
    assert set(scan.visibility) == {"arthritis"} and scan.visibility["arthritis"]["shown_snr"] >= MIN_INDEX_SNR
    assert [lesion for lesion in scan.lesions if lesion.kind == "metastasis"] == [
        lesion for lesion in lesions if lesion.kind == "metastasis"]


def test_an_arthritic_focus_stays_above_its_joint_when_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # a very high floor raises every focus; the raise scales its excess over the joint's own level
    monkeypatch.setattr(synth, "MIN_INDEX_SNR", 1e4)
    rng = np.random.default_rng(8)
    body = sample_anatomy(rng, (1024, 256), "PH-VIS")
    lesions, superscan = sample_findings(body, "arthritic", rng)
    scan = render_scan(body, "arthritic", lesions, superscan, "delayed", np.random.default_rng(9))
    factor = scan.visibility["arthritis"]["raised_by"]
    assert factor > 1.0
    changed = [(a, b) for a, b in zip(lesions, scan.lesions) if a != b]
    assert len(changed) == 1
    before, after = changed[0]
    assert after.kind == "arthritis" and after.host_uptake == before.host_uptake
    assert after.relative_uptake - after.host_uptake == pytest.approx(
        factor * (before.relative_uptake - before.host_uptake), rel=1e-6)
    assert dataclasses.replace(after, relative_uptake=before.relative_uptake) == before
