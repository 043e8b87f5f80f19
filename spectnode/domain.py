"""How far a study lies from a model's training data: the domain-fit score.

A network answers every input with class probabilities, also an input that
looks nothing like what it was trained on (a CT slice, another camera's
noise, another anatomy). The domain-fit score measures that distance in the
network's own feature space, the output of its last global-average-pooling
layer, which is what its classifier head reads:

* **fit** (:func:`fit_domain`): the features of the training inputs give a
  mean and the principal axes that hold most of their variance (at most
  :data:`COMPONENTS`); the variance left off those axes is kept as one
  number;
* **score** (:meth:`DomainFit.score`): a Mahalanobis distance along the
  principal axes plus the residual off them, divided by the square root of
  the number of terms, so an in-domain input scores about 1 whatever the
  feature width;
* **calibrate**: the flag threshold is the 99th percentile of the scores of
  held-out in-domain inputs (not those the fit saw), so about one in-domain
  study in a hundred is flagged by design.

The fit lives in the model card (``domain_fit``); a bundle without one gives
no score. This module needs NumPy only; the features come from
:func:`feature_extractor`, which needs Keras.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "domain_features","COMPONENTS", "FLAG_PERCENTILE", "DomainFit", "feature_extractor", "fit_domain"]

#: Principal axes kept (fewer when there are fewer training inputs or features).
COMPONENTS: Final = 32
#: Percentile of held-out in-domain scores above which a result is flagged.
FLAG_PERCENTILE: Final = 99.0
# Variances below this fraction of the largest are treated as this floor (no division by ~0).
_VARIANCE_FLOOR: Final = 1e-6


@dataclass(frozen=True)
class DomainFit:
    """The training data's distribution in a model's feature space, and the flag threshold.

    Attributes:
        layer: Name of the layer whose output is the feature vector.
        mean: Mean feature vector of the training inputs.
        components: Principal axes, one per row (unit vectors).
        variances: Variance of the training features along each axis.
        residual_variance: Mean variance per dimension off those axes.
        threshold: Scores above this are "outside the model's training domain".
        calibration: How the threshold was set (set, count, percentile).
    """

    layer: str
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float
    calibration: dict[str, Any]

    def score(self, features: np.ndarray) -> np.ndarray:
        """The domain-fit score of each row of ``features`` (n, d); about 1 in the training domain."""
        centred = np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean
        projected = centred @ self.components.T
        residual = centred - projected @ self.components
        terms = self.components.shape[0] + 1
        squared = (projected**2 / self.variances).sum(axis=1)
        dimensions = max(centred.shape[1] - self.components.shape[0], 1)
        squared += (residual**2).sum(axis=1) / (self.residual_variance * dimensions)
        return np.asarray(np.sqrt(squared / terms))

    def outside(self, score: float) -> bool:
        """Whether a score is past the threshold."""
        return bool(score > self.threshold)

    def to_card(self) -> dict[str, Any]:
        """The JSON form kept in a model card's ``domain_fit``: the mean and the axes as
        base64 of little-endian float32 (compact; a card stays readable)."""
        return {
            "layer": self.layer,
            "shape": [int(v) for v in self.components.shape],
            "mean_float32": _encode(self.mean),
            "components_float32": _encode(self.components),
            "variances": [float(v) for v in self.variances],
            "residual_variance": float(self.residual_variance),
            "threshold": float(self.threshold),
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_card(cls, data: Mapping[str, Any]) -> DomainFit:
        """The inverse of :meth:`to_card`."""
        rows, width = (int(v) for v in data["shape"])
        return cls(
            layer=str(data["layer"]),
            mean=_decode(data["mean_float32"]).reshape(width),
            components=_decode(data["components_float32"]).reshape(rows, width),
            variances=np.asarray(data["variances"], dtype=np.float64),
            residual_variance=float(data["residual_variance"]),
            threshold=float(data["threshold"]),
            calibration=dict(data.get("calibration") or {}),
        )


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


def fit_domain(layer: str, training: np.ndarray, held_out: np.ndarray, *, held_out_studies: np.ndarray | None = None,
               description: str = "") -> DomainFit:
    """Fit the training features' distribution, and set the threshold on held-out in-domain features.

    Args:
        layer: The feature layer's name.
        training: Features of the training inputs (n, d), n >= 2.
        held_out: Features of held-out in-domain inputs (m, d), m >= 1, that
            the fit did not see.
        held_out_studies: The study index of each held-out input (a per-view
            model has two per study); a study scores as its furthest input,
            so the threshold is a percentile of study scores. None: one study
            per input.
        description: What ``held_out`` is, for the card.

    Raises:
        ValueError: If there are too few inputs or the widths differ.
    """
    training = np.asarray(training, dtype=np.float64)
    held_out = np.asarray(held_out, dtype=np.float64)
    if training.ndim != 2 or training.shape[0] < 2 or held_out.ndim != 2 or held_out.shape[0] < 1:
        raise ValueError(f"need at least 2 training and 1 held-out feature rows, got {training.shape}, "
                         f"{held_out.shape}")
    if training.shape[1] != held_out.shape[1]:
        raise ValueError(f"feature widths differ: {training.shape[1]} and {held_out.shape[1]}")
    mean = training.mean(axis=0).astype("<f4").astype(np.float64)  # as the card keeps it
    centred = training - mean
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes.astype("<f4").astype(np.float64)
    variances = singular**2 / (training.shape[0] - 1)
    k = int(min(COMPONENTS, len(variances) - 1 if len(variances) > 1 else 1, training.shape[1]))
    floor = max(float(variances[0]) * _VARIANCE_FLOOR, 1e-12)
    kept = np.maximum(variances[:k], floor)
    dimensions = max(training.shape[1] - k, 1)
    residual = max(float(variances[k:].sum()) / dimensions, floor)
    provisional = DomainFit(layer, mean, axes[:k], kept, residual, np.inf, {})
    scores = provisional.score(held_out)
    if held_out_studies is not None:
        studies = np.asarray(held_out_studies)
        scores = np.array([scores[studies == s].max() for s in np.unique(studies)])
    threshold = float(np.percentile(scores, FLAG_PERCENTILE))
    calibration = {"held_out": description, "n_held_out": int(len(scores)),
                   "n_training": int(training.shape[0]), "percentile": FLAG_PERCENTILE,
                   "held_out_median": round(float(np.median(scores)), 4)}
    return DomainFit(layer, mean, axes[:k], kept, residual, threshold, calibration)


def feature_layer_name(model: Any) -> str:
    """The last global pooling layer (average or maximum) of a Keras model: what its head reads.

    Raises:
        ValueError: If the model has none.
    """
    import keras

    kinds = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    pooled = [layer.name for layer in model.layers if isinstance(layer, kinds)]
    if not pooled:
        raise ValueError(f"model {model.name!r} has no global pooling layer for domain features")
    return str(pooled[-1])


def domain_features(model: Any, layer: str) -> Any:
    """The feature vector of ``layer``: its output, global-average-pooled if it is a feature map.

    A pooled early layer (image statistics, texture, noise) can tell a foreign image where the
    last layer, which holds class evidence, cannot: the per-view dSPIC-AM scores a resized CT
    slice 0.53 on its last pooling layer (threshold 2.36) and 3.8 on its pooled ``conv2``
    (threshold 1.61).
    """
    import keras

    output = model.get_layer(layer).output
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name=f"{layer}_domain_pool")(output)
    return output


def feature_extractor(model: Any, layer: str | None = None) -> Any:
    """A Keras model from ``model``'s input to :func:`domain_features` of ``layer``
    (default :func:`feature_layer_name`)."""
    import keras

    return keras.Model(model.inputs, domain_features(model, layer or feature_layer_name(model)))
