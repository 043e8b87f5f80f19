"""Lesion maps: where the findings are, as a second target used only while training.

A study label says *that* a scan shows metastases or arthritis, not where.  From a few
thousand labelled studies the papers' networks learn that slowly: on the domain-randomised
phantoms they stall near 0.62 accuracy on their own training data (issue 13).  Where the
positions are known (the phantom generator writes every finding to ``truth.jsonl``),
training can also ask the network to point at them.  A 1 x 1 convolution on one feature
map (:func:`choose_feature_layer`: the deepest one at stride 16 or finer) predicts, per
cell, whether a metastasis or an arthritic focus lies in it, trained with a binary
cross-entropy that weighs the few positive cells up (:data:`POSITIVE_WEIGHT`).

This is deep supervision, not another architecture: the head exists only in the training
model, and the bundle keeps the plain network (:func:`without_lesion_head`), so inference,
the card's architecture, the domain fit and the heatmaps are those of the paper's network.

Geometry: the network inputs show every view in the anterior orientation, resampled from
the view's matrix (:mod:`spectnode.imaging.network_input`), so a finding at ``(row, col)``
of the generator's matrix lies at ``(row + 0.5) * input_rows / matrix_rows - 0.5`` of the
input in every view and in the aggregate; :func:`grid_geometry` maps feature cells to input
pixels through the layers' kernels, strides and paddings, and :func:`lesion_map` moves the
findings with the same augmentation as the image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from ..imaging.preprocess import AugmentationParams

__all__ = ["LESION_KINDS", "POSITIVE_WEIGHT", "StudyFindings", "GridGeometry", "read_truth",
           "choose_feature_layer", "grid_geometry", "head_grid", "lesion_map", "with_lesion_head",
           "without_lesion_head", "lesion_map_loss", "HEAD_NAME"]

#: The channels of a lesion map: the disease findings a label names.
LESION_KINDS: Final = ("metastasis", "arthritis")
#: How much more a positive cell counts than a negative one (a few positives among ~150-400 cells).
POSITIVE_WEIGHT: Final = 10.0
#: Name of the training-only output layer.
HEAD_NAME: Final = "lesion_map"
# Deepest feature map used: cells of at most this many input pixels (stride 16 is about 85 mm
# on a 384-row whole-body input, a few vertebrae).
_MAX_STRIDE: Final = 16
# Layers that keep positions where they are (element-wise, attention, normalisation, merges).
_SHAPE_KEEPING: Final = ("BatchNormalization", "ReLU", "Activation", "Add", "Multiply", "Dropout", "CBAM",
                         "LayerNormalization", "Concatenate", "SpatialDropout2D")


@dataclass(frozen=True)
class StudyFindings:
    """The disease findings of one study, where the generator drew them.

    Attributes:
        matrix: ``(rows, cols)`` of the views the positions refer to.
        lesions: ``(channel, row, col, radius_rows, radius_cols)`` in matrix pixels; the
            channel indexes :data:`LESION_KINDS`.
    """

    matrix: tuple[int, int]
    lesions: tuple[tuple[int, float, float, float, float], ...]


def read_truth(folder: Path) -> dict[str, StudyFindings]:
    """The findings of every study in every ``truth.jsonl`` under ``folder``, by Study Instance UID.

    Raises:
        ValueError: If a line is not a study entry of the generator's.
    """
    found: dict[str, StudyFindings] = {}
    for path in sorted(folder.rglob("truth.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                rows, cols = (int(v) for v in entry["matrix"])
                spacing = float(entry["pixel_spacing_mm"])
                lesions = tuple(
                    (LESION_KINDS.index(lesion["kind"]), float(lesion["row"]), float(lesion["col"]),
                     float(lesion["radius_mm"]) / spacing, float(lesion["radius_mm"]) / spacing)
                    for lesion in entry["lesions"] if lesion["kind"] in LESION_KINDS)
                found[str(entry["study_uid"])] = StudyFindings((rows, cols), lesions)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}, line {number}: not a phantom truth entry ({exc})") from exc
    return found


@dataclass(frozen=True)
class GridGeometry:
    """Where the cells of a feature map lie on the network input.

    The centre of cell ``(i, j)`` is input pixel ``(offset[0] + i * stride[0], offset[1] + j * stride[1])``.
    """

    shape: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _step_back(layer: Any, out_size: tuple[int, int], in_size: tuple[int, int]) -> tuple[tuple[float, float], ...]:
    """``((s_r, b_r), (s_c, b_c))``: output index ``u`` of ``layer`` looks at input index ``s * u + b``."""
    kind = type(layer).__name__
    if kind == "ZeroPadding2D":
        (top, _), (left, _) = layer.padding
        return ((1.0, -float(top)), (1.0, -float(left)))
    if kind in ("Conv2D", "MaxPooling2D", "AveragePooling2D"):
        if kind == "Conv2D" and _pair(layer.dilation_rate) != (1, 1):
            raise ValueError(f"cannot follow positions through the dilated convolution {layer.name!r}")
        kernel = _pair(layer.kernel_size if kind == "Conv2D" else layer.pool_size)
        strides = _pair(layer.strides)
        steps = []
        for axis in (0, 1):
            k, s, n, m = kernel[axis], strides[axis], in_size[axis], out_size[axis]
            before = max((m - 1) * s + k - n, 0) // 2 if layer.padding == "same" else 0
            steps.append((float(s), (k - 1) / 2.0 - before))
        return tuple(steps)
    if kind in _SHAPE_KEEPING and out_size == in_size:
        return ((1.0, 0.0), (1.0, 0.0))
    raise ValueError(f"cannot follow positions through layer {layer.name!r} ({kind})")


def _spatial(tensor: Any) -> tuple[int, int]:
    return int(tensor.shape[1]), int(tensor.shape[2])


def grid_geometry(model: Any, layer_name: str) -> GridGeometry:
    """The cells of ``layer_name``'s output on ``model``'s input, through every layer back to it.

    Raises:
        ValueError: If a layer on the way moves positions in a way this does not know.
    """
    layer = model.get_layer(layer_name)
    shape = _spatial(layer.output)
    scale, shift = [1.0, 1.0], [0.0, 0.0]
    while type(layer).__name__ != "InputLayer":
        inbound = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
        steps = _step_back(layer, _spatial(layer.output), _spatial(inbound))
        for axis, (s, b) in enumerate(steps):
            scale[axis], shift[axis] = s * scale[axis], s * shift[axis] + b
        layer = inbound._keras_history.operation  # noqa: SLF001 (Keras 3's link from a tensor to its layer)
    return GridGeometry(shape, (scale[0], scale[1]), (shift[0], shift[1]))


def choose_feature_layer(model: Any) -> str:
    """The deepest layer whose output is a feature map with cells of about 16 input pixels or fewer
    (input size over map size at most 20: padding makes the ratio inexact).

    Raises:
        ValueError: If no layer qualifies.
    """
    rows, cols = _spatial(model.inputs[0])
    chosen = None
    for layer in model.layers:
        output = getattr(layer, "output", None)
        if output is None or len(output.shape) != 4 or type(layer).__name__ in ("InputLayer", "ZeroPadding2D"):
            continue
        r, c = _spatial(output)
        if rows / r <= _MAX_STRIDE * 1.25 and cols / c <= _MAX_STRIDE * 1.25 and output.shape[3] >= 16:
            chosen = layer.name
    if chosen is None:
        raise ValueError(f"model {model.name!r} has no feature map fine enough for lesion maps")
    return chosen


def _augmented_position(row: float, col: float, shape: tuple[int, int],
                        params: AugmentationParams | None) -> tuple[float, float]:
    """Where input pixel ``(row, col)`` goes under :func:`~spectnode.imaging.preprocess.apply_augmentation`."""
    if params is None:
        return row, col
    rows, cols = shape
    if params.mirror:
        col = cols - 1 - col
    centre_r, centre_c = (rows - 1) / 2.0, (cols - 1) / 2.0
    theta = math.radians(params.angle_deg)
    dr, dc = row - centre_r, col - centre_c
    # apply_augmentation samples the source at R @ (out - shift - centre) + centre; this applies R's inverse
    out_r = math.cos(theta) * dr - math.sin(theta) * dc
    out_c = math.sin(theta) * dr + math.cos(theta) * dc
    return out_r + centre_r + params.shift_rows, out_c + centre_c + params.shift_cols


def lesion_map(findings: StudyFindings, input_shape: tuple[int, int], grid: GridGeometry,
               params: AugmentationParams | None = None) -> np.ndarray:
    """The target of one input: 1 in each cell a finding reaches, per kind.

    Args:
        findings: The study's disease findings.
        input_shape: ``(rows, cols)`` of the network input.
        grid: The feature cells (:func:`grid_geometry`).
        params: The augmentation the input image got, if any.

    Returns:
        float32 ``(grid rows, grid cols, len(LESION_KINDS))``.
    """
    target = np.zeros((*grid.shape, len(LESION_KINDS)), np.float32)
    rows_in, cols_in = input_shape
    rows_m, cols_m = findings.matrix
    fr, fc = rows_in / rows_m, cols_in / cols_m
    centres_r = grid.offset[0] + grid.stride[0] * np.arange(grid.shape[0])
    centres_c = grid.offset[1] + grid.stride[1] * np.arange(grid.shape[1])
    # the cells cover the input up to half a stride past the outer centres; a finding beyond that but
    # still on the image (the feet, the arm at the edge) belongs to the outermost cell
    reach_r = (centres_r[0] - grid.stride[0] / 2.0, centres_r[-1] + grid.stride[0] / 2.0)
    reach_c = (centres_c[0] - grid.stride[1] / 2.0, centres_c[-1] + grid.stride[1] / 2.0)
    for channel, row, col, radius_r, radius_c in findings.lesions:
        r, c = _augmented_position((row + 0.5) * fr - 0.5, (col + 0.5) * fc - 0.5, input_shape, params)
        if not (-0.5 <= r <= rows_in - 0.5 and -0.5 <= c <= cols_in - 0.5):
            continue  # moved off the image by the augmentation: not in the input, not in the target
        r, c = min(max(r, reach_r[0]), reach_r[1]), min(max(c, reach_c[0]), reach_c[1])
        # nearest point of each cell to the finding, in units of its radii
        dr = np.maximum(np.abs(centres_r - r) - grid.stride[0] / 2.0, 0.0) / max(radius_r * fr, 0.5)
        dc = np.maximum(np.abs(centres_c - c) - grid.stride[1] / 2.0, 0.0) / max(radius_c * fc, 0.5)
        reached = dr[:, None] ** 2 + dc[None, :] ** 2 <= 1.0
        target[..., channel] = np.maximum(target[..., channel], reached)
    return target


def lesion_map_loss() -> Any:
    """The lesion-map loss: binary cross-entropy with positives weighed by :data:`POSITIVE_WEIGHT`.

    Registered with Keras, so a checkpoint of the training model loads back for ``--resume``.
    """
    import keras
    from keras import ops

    name = "spectnode>lesion_map_loss"
    registered = keras.saving.get_registered_object(name)
    if registered is not None:
        return registered

    @keras.saving.register_keras_serializable(package="spectnode", name="lesion_map_loss")
    def loss(y_true: Any, y_pred: Any) -> Any:
        p = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
        y = ops.cast(y_true, p.dtype)
        per_cell = -(POSITIVE_WEIGHT * y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.mean(per_cell, axis=(1, 2, 3))

    return loss


def with_lesion_head(model: Any, layer_name: str) -> Any:
    """A two-output training model: ``model``'s classes and a lesion map from ``layer_name``."""
    import keras

    features = model.get_layer(layer_name).output
    # float32 whatever the training precision: a bfloat16 sigmoid rounds to 1 past a logit of about 6,
    # and the loss's clip would then give a confidently wrong cell no gradient.
    head = keras.layers.Conv2D(len(LESION_KINDS), 1, activation="sigmoid", name=HEAD_NAME, dtype="float32",
                               bias_initializer=keras.initializers.Constant(-3.0))(features)
    return keras.Model(model.inputs, [model.outputs[0], head], name=model.name)


def head_grid(model: Any) -> GridGeometry:
    """The cells of the feature map a training model's lesion head reads."""
    source = model.get_layer(HEAD_NAME).input._keras_history.operation  # noqa: SLF001 (see grid_geometry)
    return grid_geometry(model, source.name)


def without_lesion_head(model: Any) -> Any:
    """The plain network of a training model made by :func:`with_lesion_head` (the same layers)."""
    import keras

    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=model.name)
