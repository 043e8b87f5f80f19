"""The domain-fit score: a distance in a model's feature space, flagged above the 99th percentile."""

from __future__ import annotations

import numpy as np
import pytest

from spectnode.domain import FLAG_PERCENTILE, DomainFit, fit_domain

#: The training distribution's structure: eight strong directions in 64 features.
MIXING = np.random.default_rng(99).normal(size=(8, 64))


def correlated(rng: np.random.Generator, n: int) -> np.ndarray:
    """Features like a network's: a few strong directions, correlated, not centred at 0."""
    return 3.0 + rng.normal(size=(n, 8)) @ MIXING + 0.1 * rng.normal(size=(n, 64))


def test_in_domain_scores_about_one_and_about_one_percent_is_flagged():
    rng = np.random.default_rng(0)
    fit = fit_domain("pool", correlated(rng, 2000), correlated(rng, 2000), description="test")
    fresh = fit.score(correlated(rng, 5000))
    assert 0.7 < np.median(fresh) < 1.3
    flagged = np.mean(fresh > fit.threshold)
    # 99th percentile of 2000 held-out scores: 1 % flagged, give or take its sampling error.
    assert abs(flagged - (100 - FLAG_PERCENTILE) / 100) < 0.01
    assert fit.calibration["n_held_out"] == 2000 and fit.calibration["percentile"] == FLAG_PERCENTILE


def test_inputs_off_the_training_distribution_are_flagged():
    rng = np.random.default_rng(1)
    fit = fit_domain("pool", correlated(rng, 1000), correlated(rng, 500))
    shifted = correlated(rng, 200) + 2.0  # every feature moved: another camera, another anatomy
    off_axis = 3.0 + rng.normal(size=(200, 64))  # same scale, none of the training's structure
    assert fit.score(shifted).min() > fit.threshold
    assert np.mean(fit.score(off_axis) > fit.threshold) > 0.99


def test_a_study_scores_as_its_furthest_input():
    rng = np.random.default_rng(2)
    held = correlated(rng, 400)
    per_input = fit_domain("pool", correlated(rng, 800), held)
    per_study = fit_domain("pool", correlated(rng, 800), held, held_out_studies=np.repeat(np.arange(200), 2))
    assert per_study.calibration["n_held_out"] == 200 and per_input.calibration["n_held_out"] == 400


def test_the_card_form_gives_the_same_scores():
    rng = np.random.default_rng(3)
    fit = fit_domain("global_average_pooling2d", correlated(rng, 300), correlated(rng, 100))
    again = DomainFit.from_card(fit.to_card())
    probe = correlated(rng, 50) + rng.normal(size=(50, 64))
    assert np.allclose(again.score(probe), fit.score(probe), rtol=1e-6)
    assert again.threshold == fit.threshold and again.layer == fit.layer


def test_too_few_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        fit_domain("pool", np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="widths differ"):
        fit_domain("pool", np.zeros((5, 4)), np.zeros((3, 5)))


def test_a_resized_chest_ct_slice_is_outside_every_shipped_models_domain():
    """A CT slice (pydicom's CT_small.dcm, a real scanner's image) stretched to a whole-body view's shape."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from scipy.ndimage import zoom

    from spectnode.classify import Classifiers
    from spectnode.imaging.views import StudyViews, ViewImage

    ct = dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float64)
    ct -= ct.min()  # counts cannot be negative
    pixels = zoom(ct, (1024 / ct.shape[0], 256 / ct.shape[1]), order=1)
    views = {view: ViewImage(view=view, pixels=pixels, pixel_spacing_mm=(2.4, 2.4), source_sop_instance_uid="1.2.3",
                             source_sop_class_uid="1.2.840.10008.5.1.4.1.1.2", frame_number=None)
             for view in ("anterior", "posterior")}
    study = StudyViews("1.2.3.4", views["anterior"], views["posterior"])
    for classifier in Classifiers.from_bundles():
        assert classifier.domain is not None, f"{classifier.name} ships without a domain fit"
        result = classifier.model_result(study)
        assert result.domain_score is not None and result.domain_score > classifier.domain.threshold
        assert result.outside_domain


def test_calibrate_fits_the_named_layer_pooled_and_refuses_an_unknown_one(tmp_path_factory, tmp_path):
    """`spectnode calibrate --layer conv2` rewrites the card with a fit on that feature map, pooled
    (one value per channel: 256 for dSPIC's conv2), and keeps the weights; a layer the model lacks
    is a usage error, and the card is left as it was."""
    import json
    import shutil

    from spectnode.bundle import load_bundle
    from spectnode.classify import StudyClassifier
    from spectnode.domain import DomainFit
    from spectnode.phantom.generate import generate_phantoms

    from nodetools import run_spectnode, tiny_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tmp_path_factory), bundle)
    weights = (bundle / "model.keras").read_bytes()
    fit, held = tmp_path / "fit", tmp_path / "held"
    generate_phantoms(fit, n=8, seed=31)
    generate_phantoms(held, n=4, seed=32)
    common = ("--bundle", str(bundle), "--fit-data", str(fit), "--fit-labels", str(fit / "labels.csv"),
              "--held-out-data", str(held), "--held-out-labels", str(held / "labels.csv"))
    before = (bundle / "card.json").read_text()
    refused = run_spectnode("calibrate", *common, "--layer", "no_such_layer", timeout=300)
    assert refused.returncode != 0 and "no_such_layer" in refused.stderr
    assert (bundle / "card.json").read_text() == before
    done = run_spectnode("calibrate", *common, "--layer", "conv2", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["threshold"] > 0
    fitted = DomainFit.from_card(load_bundle(bundle).card.domain_fit)
    assert fitted.layer == "conv2" and fitted.mean.shape == (256,)
    assert (bundle / "model.keras").read_bytes() == weights
    classifier = StudyClassifier.from_bundle(bundle)
    study = next(iter(classifier.classify_paths(sorted(p for p in held.rglob("*.dcm")))[:1]))
    assert study.models[0].domain_score is not None
