"""The second anatomy ("voxel"): its own skeleton and physics, the same findings and DICOM layouts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest

from spectnode.phantom.anatomy import sample_anatomy
from spectnode.phantom.dicom import LAYOUTS
from spectnode.phantom.findings import Lesion
from spectnode.phantom.generate import generate_phantoms, scan_for_study
from spectnode.phantom.synth import sample_acquisition, synthesize_scan
from spectnode.phantom.voxel import render_voxel_views, sample_voxel_anatomy

from dicomtools import dciodvfy_errors

SEED = 77


@pytest.fixture(scope="module")
def voxel_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("voxel")
    return out, generate_phantoms(out, len(LAYOUTS), SEED, anatomy="voxel")


def test_voxel_anatomy_writes_every_layout_dciodvfy_clean(voxel_set):
    out, records = voxel_set
    assert [r.layout for r in records] == list(LAYOUTS)
    for record in records:
        assert record.anatomy == "voxel"
        for path in record.files:
            assert dciodvfy_errors(path) == [], f"{record.layout}: {path}"
    with (out / "labels.csv").open(newline="", encoding="utf-8") as stream:
        assert {row["anatomy"] for row in csv.DictReader(stream)} == {"voxel"}
    truths = [json.loads(line) for line in (out / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {t["anatomy"] for t in truths} == {"voxel"}


def test_voxel_views_regenerate_bit_exact(voxel_set):
    _, records = voxel_set
    for record in records[:2] + [r for r in records if r.layout == "matrix512"]:
        scan = scan_for_study(SEED, record.index, anatomy="voxel")
        path, frame = record.views["posterior"]
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[frame] if int(ds.NumberOfFrames) > 1 else ds.pixel_array
        np.testing.assert_array_equal(pixels, scan.posterior)


def test_voxel_scan_is_deterministic_and_differs_from_classic():
    a = synthesize_scan(np.random.default_rng(3), "both", anatomy="voxel")
    b = synthesize_scan(np.random.default_rng(3), "both", anatomy="voxel")
    np.testing.assert_array_equal(a.anterior, b.anterior)
    assert a.lesions == b.lesions and a.anatomy == "voxel"
    classic = synthesize_scan(np.random.default_rng(3), "both")
    assert not np.array_equal(a.anterior, classic.anterior)


def test_both_anatomies_offer_the_same_places_for_findings():
    for seed in range(3):
        classic = sample_anatomy(np.random.default_rng(seed))
        voxel = sample_voxel_anatomy(np.random.default_rng(seed))
        assert {(j.name, j.group, j.side) for j in classic.joints} == {(j.name, j.group, j.side) for j in voxel.joints}
        assert {(s.name, s.region) for s in classic.bone_sites} == {(s.name, s.region) for s in voxel.bone_sites}
        assert {name for name, _, _ in classic.injection_sites} == {name for name, _, _ in voxel.injection_sites}
        needed = {"L3", "symphysis", "skull", "jaw", "heart", "liver", "left axilla", "right knee", "left hip",
                  "left shoulder", "right wrist"}
        assert needed <= set(classic.landmarks) and needed <= set(voxel.landmarks)
        for site in voxel.bone_sites:
            assert all(0.0 <= z <= 1.0 for z in site.depths)


def _lesion_difference(depth: float):
    anatomy = sample_voxel_anatomy(np.random.default_rng(11))
    acquisition = sample_acquisition(np.random.default_rng(0))
    x, y = anatomy.landmarks["L3"]
    s = anatomy.pixel_spacing_mm
    lesion = Lesion("metastasis", "L3 vertebral body", y / s - 0.5, x / s - 0.5 + 6.0, depth, 10.0, 4.0)
    ant0, post0 = render_voxel_views(anatomy, [], acquisition)
    ant1, post1 = render_voxel_views(anatomy, [lesion], acquisition)
    return ant1 - ant0, post1 - post0, lesion


@pytest.mark.parametrize("depth", [0.15, 0.85])
def test_voxel_lesion_is_brighter_in_the_nearer_view_and_mirrored(depth):
    ant, post, lesion = _lesion_difference(depth)
    if depth > 0.5:
        assert post.sum() > 1.5 * ant.sum()
    else:
        assert ant.sum() > 1.5 * post.sum()
    cols = ant.shape[1]
    r_a, c_a = np.unravel_index(np.argmax(ant), ant.shape)
    r_p, c_p = np.unravel_index(np.argmax(post), post.shape)
    assert abs(r_a - lesion.row) <= 2 and abs(c_a - lesion.col) <= 2
    assert abs(r_p - r_a) <= 1 and abs(c_p - (cols - 1 - lesion.col)) <= 2
