"""Class-activation heatmaps for the predicted class: LayerCAM over three resolutions.

Grad-CAM (Selvaraju et al. 2017) weights the last spatial layer's feature maps by
their spatially averaged gradient.  On a whole-body bone scan that layer is far too
coarse: Inception-v1 at 384 x 96 ends in a 12 x 3 map, cells of about 200 mm, and a
peak can only fall on a cell centre.  A metastasis is 1 to 3 cm across.

LayerCAM (Jiang et al., IEEE TIP 2021) weights every feature *position* by its own
positive gradient, ``relu(sum_k relu(dy/dA_k) * A_k)``, which stays class-specific
in shallower, finer layers where Grad-CAM's channel-averaged weights wash out.  Here
it is taken at the layers of output stride 4, 8 and 16 (for a 384-row input: 96, 48
and 24 rows, cells of about 25, 50 and 100 mm on a 2.3 mm whole-body matrix), each
scaled to [0, 1], resized to the input and averaged, so the peak lies where the
coarse and the fine maps agree.  The choice was measured, not assumed, on the eleven
single-strong-lesion phantoms that ``tests/benchmarks/bench_heatmap_localisation.py`` then
ran, with default model 1.1.0 (map of the metastatic class, anterior view): median
peak-to-lesion distance 117 mm for the stride-16 map alone (0 of 11 within 50 mm), 48 mm for
stride 8 alone (6 of 11), and 35 mm for the three averaged (8 of 11).

The class score is the pre-softmax logit: the gradient of a softmax probability
vanishes exactly when the model is most confident, which would blank the heatmaps
readers see most.

Gradients are backend-specific: this module uses TensorFlow's GradientTape, the
backend spectnode installs.  The networks themselves stay pure ``keras.ops``; only
explanations need the TensorFlow backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .imaging.preprocess import resample_to

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CAM_STRIDES", "find_cam_layers", "LayerCam"]

#: Output strides (input rows per feature-map row) whose layers the heatmap fuses.
CAM_STRIDES: tuple[int, ...] = (4, 8, 16)


def _spatial_layers(model: Any) -> list[tuple[str, int]]:
    out = []
    for layer in model.layers:
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4 and shape[1]:
            out.append((layer.name, int(shape[1])))
    return out


def find_cam_layers(model: Any, strides: Sequence[int] = CAM_STRIDES) -> list[str]:
    """For each stride, the last layer whose output has the nearest number of rows to input rows / stride.

    A model whose feature maps never get that fine (or coarse) gets its nearest
    layer instead; duplicates are dropped, so a small model may get one layer.
    """
    input_rows = int(model.inputs[0].shape[1])
    candidates = [(name, rows) for name, rows in _spatial_layers(model)[1:] if rows > 1]  # [0] is the input
    if not candidates:
        raise ValueError(f"model {model.name!r} has no spatial layer for a class-activation map")
    chosen: list[str] = []
    for stride in strides:
        target = input_rows / stride
        best = min(abs(rows - target) for _, rows in candidates)
        name = [n for n, rows in candidates if abs(rows - target) == best][-1]
        if name not in chosen:
            chosen.append(name)
    return chosen


class LayerCam:
    """LayerCAM of one model; build once, call per image (building the tapped model is slow)."""

    def __init__(self, model: Any, layer_names: Sequence[str] | None = None) -> None:
        import keras

        self.layer_names = list(layer_names or find_cam_layers(model))
        names = [layer.name for layer in model.layers]
        head = model.get_layer("predictions") if "predictions" in names else model.layers[-1]
        if not isinstance(head, keras.layers.Dense):
            raise ValueError(f"model {model.name!r} does not end in a Dense layer; cannot take its logits")
        self._kernel, self._bias = head.kernel, head.bias
        self._tapped = keras.Model(model.inputs,
                                   [model.get_layer(n).output for n in self.layer_names] + [head.input])

    def __call__(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """Map of ``class_index`` for one input (rows, cols, channels): float32 (rows, cols) in [0, 1]."""
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(f"heatmaps need the TensorFlow Keras backend, not {keras.backend.backend()!r}")
        import tensorflow as tf

        x = tf.convert_to_tensor(image[None].astype("float32"))
        with tf.GradientTape() as tape:
            *features, penultimate = self._tapped(x, training=False)
            logit = tf.linalg.matvec(penultimate, self._kernel[:, class_index])
            if self._bias is not None:
                logit = logit + self._bias[class_index]
        grads = tape.gradient(logit, features)
        fused = np.zeros(image.shape[:2], np.float32)
        for feature, grad in zip(features, grads):
            cam = np.maximum((feature.numpy()[0] * np.maximum(grad.numpy()[0], 0.0)).sum(axis=-1), 0.0)
            peak = float(cam.max())
            if peak > 0:
                fused += np.clip(resample_to(cam / peak, image.shape[:2]), 0.0, 1.0)
        peak = float(fused.max())
        return fused / peak if peak > 0 else fused

