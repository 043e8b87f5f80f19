"""Evaluation metrics, cross-checked against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from spectnode.training.metrics import (
    compute_metrics,
    format_metrics_table,
    roc_curves,
    write_evaluation_plots,
)

DSPIC_CLASSES = ["normal", "metastatic", "arthritic", "metastatic_arthritic"]


def _scored_case(
    seed: int, n: int, k: int, logit_step: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax scores of a moderately good classifier.

    Quantising the logits to multiples of ``logit_step`` makes many rows share
    a score vector, hence many tied scores, while rows still sum to 1 (which
    sklearn's multi-class ROC AUC insists on).
    """
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y_true] += 1.2
    if logit_step is not None:
        logits = np.round(logits / logit_step) * logit_step
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return y_true, probabilities


CASES = {
    "4-class": _scored_case(1, 150, 4, None),
    "4-class, heavy ties": _scored_case(2, 120, 4, 2.0),
    "3-class, some ties": _scored_case(3, 90, 3, 0.25),
    "4-class, small": _scored_case(4, 17, 4, 1.0),
}


def _check_against_sklearn(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    k = len(classes)
    result = compute_metrics(y_true, probabilities, classes)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(k))

    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()

    per_class = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    macro = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    for position, key in enumerate(("precision", "recall", "f1")):
        ours = [result[key]["per_class"][name] for name in classes]
        np.testing.assert_allclose(ours, per_class[position], atol=1e-12, err_msg=key)
        assert result[key]["macro"] == pytest.approx(macro[position], abs=1e-12), key
    assert [result["support"][name] for name in classes] == per_class[3].tolist()

    reference_auc = []
    for c, name in enumerate(classes):
        is_c = y_true == c
        if is_c.all() or not is_c.any():
            assert result["auc"]["per_class"][name] is None
            continue
        expected = skm.roc_auc_score(is_c, probabilities[:, c])
        reference_auc.append(expected)
        assert result["auc"]["per_class"][name] == pytest.approx(expected, abs=1e-12), name
    if len(reference_auc) == k and k > 2:
        expected_macro = skm.roc_auc_score(
            y_true, probabilities, multi_class="ovr", average="macro", labels=labels
        )
        assert result["auc"]["macro"] == pytest.approx(expected_macro, abs=1e-12)
    assert result["auc"]["macro"] == pytest.approx(np.mean(reference_auc), abs=1e-12)

    # Specificity by hand: TN / (TN + FP) from the confusion matrix, one class vs rest.
    confusion = np.array(result["confusion"])
    for c, name in enumerate(classes):
        false_positive = confusion[:, c].sum() - confusion[c, c]
        true_negative = np.delete(np.delete(confusion, c, axis=0), c, axis=1).sum()
        expected = true_negative / (true_negative + false_positive)
        assert result["specificity"]["per_class"][name] == pytest.approx(expected, abs=1e-12)
    assert result["specificity"]["macro"] == pytest.approx(
        np.mean(list(result["specificity"]["per_class"].values())), abs=1e-12
    )
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_multiclass_metrics_match_sklearn(case: str) -> None:
    y_true, probabilities = CASES[case]
    classes = DSPIC_CLASSES[: probabilities.shape[1]]
    result = _check_against_sklearn(y_true, probabilities, classes)
    assert set(result) == {
        "accuracy", "precision", "recall", "specificity", "f1", "auc",
        "confusion", "classes", "n", "support",
    }
    assert result["classes"] == classes
    assert result["n"] == len(y_true)
    # The dict must survive a JSON round trip unchanged (it goes into model cards).
    assert json.loads(json.dumps(result)) == result


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 80)
    positive_score = np.round(np.clip(0.5 + 0.3 * (y_true - 0.5) + rng.normal(0, 0.25, 80), 0, 1), 2)
    probabilities = np.column_stack([1.0 - positive_score, positive_score])
    result = _check_against_sklearn(y_true, probabilities, ["negative", "positive"])
    # With complementary scores both one-vs-rest AUCs equal the usual binary AUC.
    binary_auc = skm.roc_auc_score(y_true, positive_score)
    assert result["auc"]["macro"] == pytest.approx(binary_auc, abs=1e-12)
    assert result["auc"]["per_class"]["negative"] == pytest.approx(binary_auc, abs=1e-12)
    assert result["specificity"]["per_class"]["positive"] == pytest.approx(
        result["recall"]["per_class"]["negative"], abs=1e-12
    )


def test_absent_class_gives_null_auc_and_zero_division_zero() -> None:
    y_true, probabilities = _scored_case(5, 60, 4, 0.5)
    y_true[y_true == 2] = 0  # class 2 never occurs in the ground truth
    probabilities[:, 3] = -1.0  # and class 3 is never predicted
    result = _check_against_sklearn(y_true, probabilities, DSPIC_CLASSES)
    assert result["auc"]["per_class"]["arthritic"] is None
    assert result["support"]["arthritic"] == 0
    assert result["recall"]["per_class"]["arthritic"] == 0.0
    assert result["precision"]["per_class"]["metastatic_arthritic"] == 0.0
    # sklearn's macro over OvR is NaN here; ours averages the defined classes.
    defined = [v for v in result["auc"]["per_class"].values() if v is not None]
    assert len(defined) == 3
    assert result["auc"]["macro"] == pytest.approx(np.mean(defined))
    assert "n/a" in format_metrics_table(result)


def test_roc_curves_match_sklearn_roc_curve() -> None:
    y_true, probabilities = CASES["4-class, heavy ties"]
    curves = roc_curves(y_true, probabilities, DSPIC_CLASSES)
    assert list(curves) == DSPIC_CLASSES
    for c, name in enumerate(DSPIC_CLASSES):
        expected = skm.roc_curve(y_true == c, probabilities[:, c], drop_intermediate=False)
        for ours, reference in zip(curves[name], expected):
            np.testing.assert_allclose(ours, reference)
        fpr, tpr, _ = curves[name]
        assert np.trapezoid(tpr, fpr) == pytest.approx(
            compute_metrics(y_true, probabilities, DSPIC_CLASSES)["auc"]["per_class"][name]
        )


def test_invalid_inputs_are_rejected() -> None:
    probabilities = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="outside"):
        compute_metrics([0, 1, 4], probabilities, DSPIC_CLASSES)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics([0, 1], probabilities, DSPIC_CLASSES)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], np.zeros((0, 4)), DSPIC_CLASSES)
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1, 2], np.full((3, 4), np.nan), DSPIC_CLASSES)


def test_format_metrics_table_lists_every_class_and_metric() -> None:
    y_true, probabilities = CASES["4-class"]
    result = compute_metrics(y_true, probabilities, DSPIC_CLASSES)
    table = format_metrics_table(result)
    for name in DSPIC_CLASSES:
        assert name in table
    for header in ("precision", "recall", "specificity", "f1", "auc", "macro", "confusion"):
        assert header in table
    assert f"{result['accuracy']:.4f}" in table


def test_evaluation_plots_are_valid_pngs(tmp_path) -> None:
    y_true, probabilities = CASES["4-class"]
    y_true = y_true.copy()
    y_true[y_true == 2] = 1  # one class without a defined curve must not break the plot
    result = compute_metrics(y_true, probabilities, DSPIC_CLASSES)
    written = write_evaluation_plots(result, y_true, probabilities, DSPIC_CLASSES, tmp_path / "plots")
    assert [path.name for path in written] == ["roc.png", "confusion.png"]
    for path in written:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 500 <= image.width <= 2000 and 400 <= image.height <= 2000
            pixels = np.asarray(image.convert("RGB"))
            # Not a blank canvas: there is ink and colour on it.
            assert (pixels < 100).all(axis=2).mean() > 0.002
            assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
