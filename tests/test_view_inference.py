"""Tests of spectnode.imaging.view_inference: anterior vs posterior from the image alone.

The phantom is the only labelled data here, so these figures hold for its anatomy only; the rule
must be re-checked on every new anatomy model and on labelled real scans.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from spectnode.imaging.view_inference import infer_view
from spectnode.phantom import LABELS, synthesize_scan


def view_inference_accuracy(seeds: range, matrix: tuple[int, int], anatomy: str = "classic"
                            ) -> tuple[float, list[float]]:
    """The share of images (both views of each seed's scan, each also mirrored) whose view is inferred
    right, and each one's certainty, negative when wrong. ``bench_view_inference.py`` uses it too."""
    right, total, certainties = 0, 0, []
    for seed in seeds:
        scan = synthesize_scan(np.random.default_rng(seed), LABELS[seed % 4], matrix=matrix, anatomy=anatomy)
        spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
        for truth, pixels in (("anterior", scan.anterior), ("posterior", scan.posterior)):
            for image in (pixels, pixels[:, ::-1]):  # both sides, and mirrored
                inferred = infer_view(image, spacing)
                assert inferred is not None
                assert 0.5 <= inferred.certainty <= 1.0
                right += inferred.view == truth
                total += 1
                certainties.append(inferred.certainty if inferred.view == truth else -inferred.certainty)
    return right / total, certainties


@pytest.mark.parametrize(("anatomy", "bound"), [("classic", 0.85), ("voxel", 0.7)])
def test_phantom_views_inferred_over_30_seeds(anatomy: str, bound: float) -> None:
    """The rule was written on the classic anatomy; the voxel one, built independently, checks how it
    transfers. The README's figures are over seeds 1000-1099 (``tests/benchmarks/bench_view_inference.py``:
    0.890 classic, 0.725 voxel, a known weak point); these 30 seeds gave 0.883 and 0.733, and the bounds
    only guard against regressions."""
    accuracy, _ = view_inference_accuracy(range(1000, 1030), (1024, 256), anatomy)
    assert accuracy >= bound, accuracy


def test_phantom_views_inferred_at_512_by_2048() -> None:
    accuracy, _ = view_inference_accuracy(range(2000, 2010), (2048, 512))
    assert accuracy >= 0.85, accuracy


def test_mirroring_does_not_change_the_answer() -> None:
    scan = synthesize_scan(np.random.default_rng(11), "metastatic")
    for pixels in (scan.anterior, scan.posterior):
        a, b = infer_view(pixels, (2.3, 2.3)), infer_view(pixels[:, ::-1].copy(), (2.3, 2.3))
        assert a is not None and b is not None
        assert (a.view, round(a.certainty, 6)) == (b.view, round(b.certainty, 6))


def test_confident_answers_are_more_often_right() -> None:
    _, signed = view_inference_accuracy(range(3000, 3020), (1024, 256))
    confident = [c for c in signed if abs(c) >= 0.9]
    unsure = [c for c in signed if abs(c) < 0.7]
    assert confident and np.mean([c > 0 for c in confident]) >= np.mean([c > 0 for c in unsure] or [0.0])


def test_real_ge_view_gets_a_view_and_a_certainty() -> None:
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    inferred = infer_view(ds.pixel_array, (2.26, 2.26))
    assert inferred is not None and inferred.view in ("anterior", "posterior")
    assert 0.5 <= inferred.certainty <= 1.0


def test_an_image_without_a_body_gives_no_view() -> None:
    assert infer_view(np.zeros((1024, 256)), (2.3, 2.3)) is None
