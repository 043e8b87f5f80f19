"""Tests of the synthetic bone-scan generator (spectnode.phantom, image synthesis half)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spectnode.phantom import LABELS, Lesion, PhantomScan, synthesize_scan
from spectnode.phantom.anatomy import PIXEL_SPACING_RANGE_MM, sample_anatomy
from spectnode.phantom.synth import (
    COUNTS_PER_VIEW_RANGE,
    disease_kinds,
    render_expected_views,
)

DISEASE = {"metastasis", "arthritis"}


@pytest.fixture(scope="module")
def scans_by_label() -> dict[str, list[PhantomScan]]:
    """Four studies per label at the standard matrix (shared by several tests)."""
    return {label: [synthesize_scan(np.random.default_rng(1000 + i), label) for i in range(4)]
            for label in LABELS}


def test_same_seed_gives_identical_scan() -> None:
    a = synthesize_scan(np.random.default_rng(7), "both", patient_id="P7")
    b = synthesize_scan(np.random.default_rng(7), "both", patient_id="P7")
    np.testing.assert_array_equal(a.anterior, b.anterior)
    np.testing.assert_array_equal(a.posterior, b.posterior)
    assert a.lesions == b.lesions
    assert a.patient == b.patient and a.patient.patient_id == "P7"
    assert a.pixel_spacing_mm == b.pixel_spacing_mm
    c = synthesize_scan(np.random.default_rng(8), "both")
    assert not np.array_equal(a.anterior, c.anterior)


@pytest.mark.parametrize(("matrix", "spacing"), [((1024, 256), PIXEL_SPACING_RANGE_MM),
                                                  ((2048, 512), tuple(x / 2 for x in PIXEL_SPACING_RANGE_MM))])
def test_shape_dtype_and_pixel_size(matrix: tuple[int, int], spacing: tuple[float, float]) -> None:
    scan = synthesize_scan(np.random.default_rng(3), "metastatic", matrix)
    for view in (scan.anterior, scan.posterior):
        assert view.shape == matrix
        assert view.dtype == np.uint16
    assert spacing[0] <= scan.pixel_spacing_mm <= spacing[1]
    lo, hi = COUNTS_PER_VIEW_RANGE
    assert lo <= int(scan.anterior.sum(dtype=np.int64)) <= hi
    # the body occupies a good part of the field and the background is near zero
    body = scan.anterior > np.percentile(scan.anterior, 60)
    assert body.mean() > 0.2
    assert np.median(scan.anterior[:, :4]) <= 1


def test_total_counts_per_view_in_range(scans_by_label: dict[str, list[PhantomScan]]) -> None:
    lo, hi = COUNTS_PER_VIEW_RANGE
    totals = []
    for scans in scans_by_label.values():
        for scan in scans:
            for view in (scan.anterior, scan.posterior):
                total = int(view.sum(dtype=np.int64))
                assert lo <= total <= hi
                totals.append(total)
    # the count level really varies between studies
    assert max(totals) > 1.3 * min(totals)


def test_lesion_kinds_follow_label(scans_by_label: dict[str, list[PhantomScan]]) -> None:
    for label, scans in scans_by_label.items():
        for scan in scans:
            assert scan.label == label
            kinds = {lesion.kind for lesion in scan.lesions}
            assert kinds & DISEASE == set(disease_kinds(label)), (label, kinds)
            assert all(isinstance(lesion, Lesion) for lesion in scan.lesions)


def test_lesion_kinds_follow_label_many_seeds() -> None:
    # findings only (no rendering), for more seeds than the rendered fixture affords
    from spectnode.phantom.synth import sample_findings

    for seed in range(40):
        for label in LABELS:
            rng = np.random.default_rng(seed)
            anatomy = sample_anatomy(rng)
            lesions, _ = sample_findings(anatomy, label, rng)
            kinds = {lesion.kind for lesion in lesions}
            assert kinds & DISEASE == set(disease_kinds(label)), (seed, label, kinds)


def test_disease_lesions_lie_inside_the_field(scans_by_label: dict[str, list[PhantomScan]]) -> None:
    for scans in scans_by_label.values():
        for scan in scans:
            rows, cols = scan.anterior.shape
            for lesion in scan.lesions:
                if lesion.kind in DISEASE:
                    assert 0 <= lesion.row < rows and 0 <= lesion.col < cols
                    assert 0.0 <= lesion.depth <= 1.0


def _lesion_images(depth: float) -> tuple[np.ndarray, np.ndarray, Lesion]:
    """Expected anterior/posterior images of one lumbar lesion alone (difference images)."""
    anatomy = sample_anatomy(np.random.default_rng(11))
    x, y = anatomy.landmarks["L3"]
    s = anatomy.pixel_spacing_mm
    lesion = Lesion("metastasis", "L3 vertebral body", y / s - 0.5, x / s - 0.5 + 6.0, depth, 10.0, 4.0)
    ant0, post0 = render_expected_views(anatomy, [])
    ant1, post1 = render_expected_views(anatomy, [lesion])
    return ant1 - ant0, post1 - post0, lesion


@pytest.mark.parametrize("depth", [0.1, 0.9])
def test_lesion_is_brighter_in_the_nearer_view(depth: float) -> None:
    ant, post, _ = _lesion_images(depth)
    assert ant.sum() > 0 and post.sum() > 0
    if depth > 0.5:
        assert post.sum() > 1.5 * ant.sum()
    else:
        assert ant.sum() > 1.5 * post.sum()


def test_posterior_view_is_mirrored() -> None:
    ant, post, lesion = _lesion_images(0.5)
    cols = ant.shape[1]
    r_a, c_a = np.unravel_index(np.argmax(ant), ant.shape)
    r_p, c_p = np.unravel_index(np.argmax(post), post.shape)
    assert abs(r_a - lesion.row) <= 1 and abs(c_a - lesion.col) <= 1
    assert r_p == r_a
    assert abs(c_p - (cols - 1 - lesion.col)) <= 1


def test_orientation_of_both_views() -> None:
    # seed 5 has both kidneys (a kidney is occasionally absent)
    anatomy = sample_anatomy(np.random.default_rng(5))
    assert {"left kidney", "right kidney"} <= set(anatomy.landmarks)
    ant, post = render_expected_views(anatomy, [])
    rows, cols = ant.shape
    s = anatomy.pixel_spacing_mm
    x_left, y_left = anatomy.landmarks["left kidney"]
    x_right, _ = anatomy.landmarks["right kidney"]
    # anterior view: the patient's left is on the image right
    assert x_left > x_right
    r, c = int(y_left / s), int(x_left / s)
    win = np.s_[r - 5 : r + 6, c - 5 : c + 6]
    mirrored = np.s_[r - 5 : r + 6, cols - 1 - c - 5 : cols - 1 - c + 6]
    # posterior view (seen from behind): the same kidney is on the image left, and brighter
    # there because the kidneys lie posteriorly
    assert post[mirrored].sum() > 1.5 * ant[win].sum()
    # flipping the posterior horizontally overlays it on the anterior
    flipped = post[:, ::-1]
    assert np.corrcoef(ant.ravel(), flipped.ravel())[0, 1] > np.corrcoef(ant.ravel(), post.ravel())[0, 1]
    assert np.corrcoef(ant.ravel(), flipped.ravel())[0, 1] > 0.8


def test_injection_sites_occur_in_normal_studies() -> None:
    seen = 0
    normals_with_injection = 0
    for seed in range(24):
        scan = synthesize_scan(np.random.default_rng(seed), "normal")
        injections = [lesion for lesion in scan.lesions if lesion.kind == "injection"]
        assert not {lesion.kind for lesion in scan.lesions} & DISEASE
        normals_with_injection += bool(injections)
        for lesion in injections:
            if "extravasation" in lesion.site or lesion.relative_uptake < 10:
                continue
            r, c = int(round(lesion.row)), int(round(lesion.col))
            rows, cols = scan.anterior.shape
            if not (1 <= r < rows - 1 and 1 <= c < cols - 1):
                continue  # an abducted arm's hand can lie outside the field of view
            seen += 1
            near = scan.anterior[r - 1 : r + 2, c - 1 : c + 2].mean()
            body = np.median(scan.anterior[scan.anterior > 3])
            assert near > 3 * body, (seed, lesion)
    # about 40 % of studies of every class carry an injection site
    assert 4 <= normals_with_injection <= 20
    assert seen >= 1


def test_invalid_label_is_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        synthesize_scan(np.random.default_rng(0), "fracture")


def test_lesion_is_frozen() -> None:
    lesion = Lesion("metastasis", "T8 vertebral body", 10.0, 20.0, 0.6, 8.0, 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lesion.row = 5.0  # type: ignore[misc]


def test_every_metastatic_label_has_a_visible_metastasis() -> None:
    # findings only; the label must be one a reader could give, but the rest may be faint
    from spectnode.phantom.findings import MIN_INDEX_CONSPICUITY_MM2, conspicuity_mm2
    from spectnode.phantom.synth import sample_findings

    faint_companions = 0
    for seed in range(60):
        for label in ("metastatic", "both"):
            rng = np.random.default_rng(seed)
            lesions, superscan = sample_findings(sample_anatomy(rng), label, rng)
            mets = [conspicuity_mm2(lesion) for lesion in lesions if lesion.kind == "metastasis"]
            if not superscan:
                assert max(mets) >= MIN_INDEX_CONSPICUITY_MM2, (seed, label, max(mets))
            faint_companions += sum(c < MIN_INDEX_CONSPICUITY_MM2 for c in mets)
    assert faint_companions > 100
