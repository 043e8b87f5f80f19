"""From a study's views to the arrays a network sees, and heatmaps back to the views.

One place for this, used by training, evaluation, offline classification and
the node, so a model never sees differently prepared images in production
than it was trained on.  A model bundle's card records the
:class:`InputSpec` it was trained with.

Modes:

- ``per_view`` (dSPIC: each view image is a sample): one input per available
  view.  The posterior is flipped left-right first, so both inputs show the
  patient's right on the image left and the network learns one anatomy.
  A study's probabilities are the mean over its views.
- ``aggregate`` (Classifier-inRAC): one input per study, the flipped and
  aligned posterior added to the anterior.  A study with a single view uses
  that view alone (flipped if posterior), which is documented behaviour, not
  a guess: the network then sees the same anatomy, with half the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .preprocess import NORMALIZATIONS, prepare_aggregate, prepare_view, resample_to

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .views import StudyViews

__all__ = ["InputSpec", "NetworkInput", "network_inputs", "heatmap_to_view"]

InputMode = Literal["per_view", "aggregate"]


@dataclass(frozen=True)
class InputSpec:
    """How views become network inputs; stored in a bundle's card as ``preprocessing``."""

    mode: InputMode = "per_view"
    #: Network input (rows, cols); views are resampled to it (area average when shrinking).
    shape: tuple[int, int] = (1024, 256)
    #: ``"minmax"`` (the papers' Eq. 1) or ``"bone_window"``
    #: (see :func:`spectnode.imaging.preprocess.bone_window_normalize`).
    normalization: str = "minmax"

    def __post_init__(self) -> None:
        if self.mode not in ("per_view", "aggregate"):
            raise ValueError(f"input mode must be 'per_view' or 'aggregate', got {self.mode!r}")
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"input shape must be (rows, cols) of at least 16, got {self.shape!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unsupported normalization {self.normalization!r}; "
                             f"known: {', '.join(NORMALIZATIONS)}")

    def to_card(self) -> dict[str, Any]:
        return {"views": self.mode, "normalization": self.normalization, "resample_to": list(self.shape)}

    @classmethod
    def from_card(cls, preprocessing: Mapping[str, Any]) -> InputSpec:
        rows, cols = (int(v) for v in preprocessing["resample_to"])
        return cls(mode=preprocessing["views"], shape=(rows, cols),
                   normalization=preprocessing.get("normalization", "minmax"))


@dataclass(frozen=True)
class NetworkInput:
    """One network input and which views it came from."""

    #: "anterior", "posterior" or "aggregate".
    name: str
    #: float32 (rows, cols, 1) in [0, 1], patient's right on the image left.
    array: np.ndarray


def network_inputs(views: StudyViews, spec: InputSpec) -> list[NetworkInput]:
    """The network inputs of one study under ``spec`` (see the module docstring)."""
    anterior = views.anterior.pixels if views.anterior is not None else None
    posterior = views.posterior.pixels if views.posterior is not None else None
    if spec.mode == "aggregate" and anterior is not None and posterior is not None:
        # prepare_aggregate flips the stored posterior itself before aligning it.
        return [NetworkInput("aggregate", prepare_aggregate(anterior, posterior, spec.shape,
                                                            normalization=spec.normalization))]
    inputs = []
    if anterior is not None:
        inputs.append(NetworkInput("anterior", prepare_view(anterior, spec.shape, normalization=spec.normalization)))
    if posterior is not None:
        inputs.append(NetworkInput("posterior", prepare_view(np.fliplr(posterior), spec.shape,
                                                             normalization=spec.normalization)))
    return inputs


def heatmap_to_view(heatmap: np.ndarray, view: str, view_shape: tuple[int, int]) -> np.ndarray:
    """Map a heatmap from network-input space onto a view in its stored orientation.

    Inputs show the patient's right on the image left, so a posterior view
    (stored as seen from behind) gets the map flipped back.  For an
    aggregate input the same map serves both views; the small alignment
    shift between the views is not undone.
    """
    resized = np.clip(resample_to(heatmap, view_shape), 0.0, 1.0)
    return np.fliplr(resized).copy() if view == "posterior" else resized
