"""The shipped models: verify, small enough, say they are synthetic, and are as good as their cards say.

Quality is checked against the phantom's truth on a small fresh sample, with a bound derived from
the card's held-out figure and the sample's binomial error, so the suite checks the card instead
of repeating it. The heatmap seeds follow a rule written down before any model ran.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from spectnode.classify import DEFAULT_BUNDLES, StudyClassifier
from spectnode.imaging.views import StudyViews, ViewImage
from spectnode.phantom.synth import LABELS, synthesize_scan

README = Path(__file__).resolve().parents[1] / "README.md"
#: Fresh phantoms for the quality check: seeds no training or held-out set of the cards used
#: (those are 2026-7777 as generate_phantoms seeds; these are synthesize_scan seeds of their own).
QUALITY_SEEDS = range(910_000, 910_032)
#: One-sided error probability of the quality bound.
QUALITY_ALPHA = 0.001
#: Rule, written before any model ran: the first six seeds from 0 upward whose metastatic phantom
#: has exactly one finding besides physiological uptake, a metastasis of at least 4x bone uptake
#: (tests/benchmarks/bench_heatmap_localisation.py's single_strong_lesion_seeds; the list is
#: re-derived by test_heatmap_seeds_follow_the_rule).
SINGLE_STRONG_LESION_SEEDS = (31, 76, 180, 271, 340, 407)


@pytest.fixture(scope="module", params=[p.name for p in DEFAULT_BUNDLES])
def classifier(request: pytest.FixtureRequest) -> StudyClassifier:
    return StudyClassifier.from_bundle(next(p for p in DEFAULT_BUNDLES if p.name == request.param))


def test_bundle_is_shipped_small_and_marked_synthetic(classifier):
    assert sum((p / "model.keras").stat().st_size for p in DEFAULT_BUNDLES) <= 60 * 1024 * 1024
    card = classifier.card
    assert card.scheme == "dspic4" and list(card.classes) == list(LABELS)
    assert card.training_data.synthetic is True
    text = card.intended_use.lower()
    assert "synthetic" in text and "not for clinical use" in text
    assert card.domain_fit, "a shipped bundle carries its domain fit"


def test_readme_states_the_cards_figures(classifier):
    metrics = classifier.card.metrics
    readme = README.read_text()
    assert f"{metrics['accuracy']:.3f}" in readme
    assert f"{metrics['auc']['macro']:.3f}" in readme


def scan_views(seed: int, label: str) -> tuple[StudyViews, object]:
    scan = synthesize_scan(np.random.default_rng(seed), label)
    spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
    views = StudyViews(f"2.25.{seed}", ViewImage("anterior", scan.anterior.astype(np.float32), spacing, "1", "1", None),
                       ViewImage("posterior", scan.posterior.astype(np.float32), spacing, "2", "1", None))
    return views, scan


def binomial_floor(p: float, n: int, alpha: float = QUALITY_ALPHA) -> int:
    """The smallest count of successes out of ``n`` that a true rate ``p`` reaches with probability >= 1 - alpha."""
    return int(binom.ppf(alpha, n, p))


def test_binomial_floor_by_hand():
    # n = 10, p = 0.5: P(X = 0) = 1/1024 = 0.00098 and P(X <= 1) = 11/1024 = 0.0107. At alpha 0.001,
    # falling below 1 is rarer than alpha, below 2 is not: the floor is 1. At alpha 0.0108, it is 2.
    assert binomial_floor(0.5, 10, 0.001) == 1 and binomial_floor(0.5, 10, 0.0108) == 2


def test_fresh_phantoms_are_classified_as_well_as_the_card_says(classifier):
    """Accuracy on a fresh sample against the phantom's truth, bounded by the card's held-out figure."""
    right = 0
    for seed in QUALITY_SEEDS:
        truth = LABELS[seed % len(LABELS)]
        views, _ = scan_views(seed, truth)
        result = classifier.classify(views)
        assert result.outcome == "classified" and result.views == ["anterior", "posterior"]
        (model,) = result.models
        assert math.isclose(sum(model.probabilities.values()), 1.0, abs_tol=1e-4)
        right += model.label == truth
    card_accuracy = classifier.card.metrics["accuracy"]
    floor = binomial_floor(card_accuracy, len(QUALITY_SEEDS))
    assert right >= floor, (f"{right} of {len(QUALITY_SEEDS)} right; the card's accuracy {card_accuracy:.3f} "
                            f"reaches at least {floor} with probability {1 - QUALITY_ALPHA}")


def test_heatmap_seeds_follow_the_rule():
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from bench_heatmap_localisation import single_strong_lesion_seeds

    assert tuple(single_strong_lesion_seeds(range(SINGLE_STRONG_LESION_SEEDS[-1] + 1))) == SINGLE_STRONG_LESION_SEEDS


@pytest.fixture(scope="module")
def aggregate_classifier() -> StudyClassifier:
    (path,) = [p for p in DEFAULT_BUNDLES if StudyClassifier.from_bundle(p).spec.mode == "aggregate"]
    return StudyClassifier.from_bundle(path)


def test_heatmap_peaks_lie_on_single_strong_lesions(aggregate_classifier):
    """Every rule seed the aggregate-view model (whose heatmap every two-view overlay draws) calls
    metastatic must have its heatmap peak within 50 mm of the lesion in both views; how many it calls
    metastatic is bounded by the card's metastatic recall.

    The shipped per-view dSPIC-AM 1.4.0 fails this: it calls four of the six seeds metastatic (31, 76,
    180, 340); 31's and 180's heatmaps peak within 50 mm of the lesion in both views, 76's 63 mm from it
    and 340's anterior one 282 mm (``bench_heatmap_localisation.py --bundle spectnode/data/per_view_bundle``).
    Its heatmap is drawn only on single-view studies; the README says so (known limitation, issue 13).
    """
    classifier = aggregate_classifier
    called, misplaced = 0, []
    for seed in SINGLE_STRONG_LESION_SEEDS:
        views, scan = scan_views(seed, "metastatic")
        (lesion,) = [lesion for lesion in scan.lesions if lesion.kind != "physiological"]
        result = classifier.classify(views, explain=True)
        if result.label not in ("metastatic", "both"):
            continue
        called += 1
        cols = scan.anterior.shape[1]
        for view, lesion_col in (("anterior", lesion.col), ("posterior", cols - 1 - lesion.col)):
            heat = result.models[0].heatmaps[view]
            assert heat.shape == scan.anterior.shape
            row, col = np.unravel_index(np.argmax(heat), heat.shape)
            distance_mm = math.hypot(row - lesion.row, col - lesion_col) * scan.pixel_spacing_mm
            if distance_mm >= 50:
                misplaced.append(f"seed {seed} {view}: {distance_mm:.0f} mm from the {lesion.site} lesion")
    recall = classifier.card.metrics["recall"]["per_class"]["metastatic"]
    assert called >= binomial_floor(recall, len(SINGLE_STRONG_LESION_SEEDS)), called
    assert misplaced == []


def test_real_ge_single_view_is_classified_by_the_shipped_per_view_model():
    """pydicom's GE Millennium view (no view code, no ANT/POST text anywhere): the view is inferred
    from the image and the shipped per-view dSPIC-AM classifies it; the aggregate model, which needs
    both views, says why it did not run (issue 14, point 2)."""
    import json
    import subprocess
    import sys

    from pydicom.data import get_testdata_file

    modes = {p.name: StudyClassifier.from_bundle(p).card.preprocessing["views"] for p in DEFAULT_BUNDLES}
    assert sorted(modes.values()) == ["aggregate", "per_view"], modes
    proc = subprocess.run([sys.executable, "-m", "spectnode", "classify", get_testdata_file("JPEG2000.dcm"), "--json"],
                          capture_output=True, text=True, timeout=600, check=True)
    (result,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert result["outcome"] == "classified", result
    (view,) = result["views"]
    assert result["inferred_views"] == [view] and 0.5 <= result["view_certainty"][view] <= 1.0
    (model,) = result["models"]
    assert model["input_mode"] == "per_view" and model["views"] == [view]
    assert model["label"] in LABELS and math.isclose(sum(model["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert model["domain_score"] is not None
    (skipped,) = result["skipped_models"].values()
    assert "both" in skipped and "view" in skipped, skipped


def _expected_heatmaps(classifier, views, label):
    """The heatmaps of ``label`` per view from a LayerCam of its own (LayerCam.maps)."""
    from spectnode.explain import LayerCam
    from spectnode.imaging.network_input import heatmap_to_view, network_inputs

    inputs = network_inputs(views, classifier.spec)
    maps = LayerCam(classifier.model).maps([i.array for i in inputs], classifier.classes.index(label))
    by_input = dict(zip([i.name for i in inputs], maps))
    return {view: heatmap_to_view(by_input[view] if view in by_input else by_input["aggregate"], view,
                                  getattr(views, view).pixels.shape) for view in views.available_views}


def _studies_it_takes(classifier):
    views, _ = scan_views(SINGLE_STRONG_LESION_SEEDS[0], "both")
    studies = [views]
    if classifier.spec.mode == "per_view":  # one input as well as two: the traced pass takes both
        studies.append(StudyViews(views.study_uid, views.anterior, None))
    return studies


def test_explaining_a_study_takes_its_result_and_heatmaps_from_one_pass(classifier, monkeypatch):
    """``model_result(explain=True)`` takes probabilities, domain score and heatmaps from one pass
    (LayerCam.explained, the class chosen inside it): with the prediction and the separate map
    functions made to fail, they must still be what those give."""
    from spectnode.explain import LayerCam

    studies = _studies_it_takes(classifier)
    plain = [classifier.model_result(views) for views in studies]
    expected = [_expected_heatmaps(classifier, views, result.label) for views, result in zip(studies, plain)]

    def not_called(*args, **kwargs):
        raise AssertionError("a second pass through the network")

    for name in ("predict", "predict_with_domain"):
        monkeypatch.setattr(classifier, name, not_called)
    monkeypatch.setattr(LayerCam, "maps", not_called)
    for views, reference, heatmaps in zip(studies, plain, expected):
        explained = classifier.model_result(views, explain=True)
        assert explained.label == reference.label and explained.second_label == reference.second_label
        for name, p in reference.probabilities.items():
            assert explained.probabilities[name] == pytest.approx(p, abs=1e-5)
        assert reference.domain_score is not None
        assert explained.domain_score == pytest.approx(reference.domain_score, rel=1e-5)
        assert explained.outside_domain == reference.outside_domain
        assert sorted(explained.heatmaps) == sorted(views.available_views)
        for view, heat in explained.heatmaps.items():
            np.testing.assert_allclose(heat, heatmaps[view], atol=1e-5)


def test_a_class_the_pass_ranks_otherwise_is_explained_by_the_label_shown(classifier, monkeypatch):
    """Where the graph's top class is not the label (an exact tie ranked otherwise), the heatmaps
    are those of the label, from a second pass."""
    from spectnode.explain import LayerCam

    (views, *_) = _studies_it_takes(classifier)
    label = classifier.model_result(views).label
    expected = _expected_heatmaps(classifier, views, label)
    explained = LayerCam.explained

    other = (classifier.classes.index(label) + 1) % len(classifier.classes)

    def another_class(self, images):
        _, outputs, _ = explained(self, images)
        return other, outputs, self.maps(images, other)

    monkeypatch.setattr(LayerCam, "explained", another_class)
    result = classifier.model_result(views, explain=True)
    assert result.label == label
    for view, heat in result.heatmaps.items():
        np.testing.assert_allclose(heat, expected[view], atol=1e-5)
    assert any(np.abs(heat - other_heat).max() > 1e-3 for heat, other_heat in zip(
        result.heatmaps.values(), _expected_heatmaps(classifier, views, classifier.classes[other]).values()))
