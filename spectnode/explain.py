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

__all__ = ["CAM_STRIDES", "feature_geometry", "find_cam_layers", "LayerCam"]

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


def feature_geometry(model: Any, layer_name: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Where each cell of ``layer_name``'s map lies in the input: per axis ``(a, b)``, centre = a * index + b.

    Known exactly for a chain of zero paddings, "valid" convolutions and poolings and
    shape-keeping layers (dSPIC's networks, whose literal ``P = 3`` paddings grow the maps
    beyond the image: stretching such a map over the image would misplace every cell and put
    the padding's border responses on the image's edges). ``None`` for anything else (branches,
    strided "same" layers), where stretching the map over the input is the approximation used.
    """
    import keras

    a, b = [1.0, 1.0], [0.0, 0.0]
    previous = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            if layer.input is not previous:
                return None
        except (AttributeError, ValueError):  # a layer with several inputs or calls
            return None
        in_shape, out_shape = tuple(layer.input.shape[1:3]), tuple(layer.output.shape[1:3])
        if isinstance(layer, keras.layers.ZeroPadding2D):
            for axis in (0, 1):
                b[axis] -= a[axis] * layer.padding[axis][0]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            kernel = layer.kernel_size if isinstance(layer, keras.layers.Conv2D) else layer.pool_size
            if layer.padding == "same" and tuple(layer.strides) == (1, 1) and all(k % 2 for k in kernel):
                pass  # centred kernel, nothing moves
            elif layer.padding == "valid":
                for axis in (0, 1):
                    b[axis] += a[axis] * (kernel[axis] - 1) / 2
                    a[axis] *= layer.strides[axis]
            else:
                return None
        elif in_shape != out_shape:
            return None
        previous = layer.output
        if layer.name == layer_name:
            return (a[0], b[0]), (a[1], b[1])
    return None


def _place(cam: np.ndarray, geometry: tuple[tuple[float, float], tuple[float, float]],
           shape: tuple[int, int]) -> np.ndarray:
    """Sample a feature map at each input pixel by the cells' centres (linear, clamped at the ends)."""
    (a_row, b_row), (a_col, b_col) = geometry
    rows = (np.arange(shape[0]) - b_row) / a_row
    cols = (np.arange(shape[1]) - b_col) / a_col
    cells_r, cells_c = np.arange(cam.shape[0]), np.arange(cam.shape[1])
    by_row = np.stack([np.interp(cols, cells_c, line) for line in cam])  # (cam rows, input cols)
    return np.stack([np.interp(rows, cells_r, by_row[:, c]) for c in range(shape[1])], axis=1).astype(np.float32)


class LayerCam:
    """LayerCAM of one model; build once, call per image (building the tapped model is slow)."""

    def __init__(self, model: Any, layer_names: Sequence[str] | None = None, outputs: Sequence[Any] = ()) -> None:
        """
        Args:
            model: A Keras model that ends in a Dense layer (its logits are explained).
            layer_names: The layers whose maps are fused (default :func:`find_cam_layers`).
            outputs: Further tensors of ``model``'s graph (e.g. a domain-fit feature vector) that
                :meth:`explained` returns from the same pass.
        """
        import keras

        self.layer_names = list(layer_names or find_cam_layers(model))
        names = [layer.name for layer in model.layers]
        head = model.get_layer("predictions") if "predictions" in names else model.layers[-1]
        if not isinstance(head, keras.layers.Dense):
            raise ValueError(f"model {model.name!r} does not end in a Dense layer; cannot take its logits")
        self._kernel, self._bias = head.kernel, head.bias
        # The fused layers, the logits' input, the model's output, then ``outputs``.
        self._tapped = keras.Model(model.inputs, [*(model.get_layer(n).output for n in self.layer_names),
                                                  head.input, model.outputs[0], *outputs])
        self._geometry = [feature_geometry(model, n) for n in self.layer_names]
        self._cams: Any = None  # the compiled map function, traced on first use
        self._explained: Any = None  # likewise, with the outputs and the class chosen in the graph

    def __call__(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """Map of ``class_index`` for one input (rows, cols, channels): float32 (rows, cols) in [0, 1]."""
        return self.maps([image], class_index)[0]

    def maps(self, images: Sequence[np.ndarray], class_index: int) -> list[np.ndarray]:
        """Maps of ``class_index`` for inputs of one shape, in one pass through the network."""
        tf = self._tensorflow()
        if self._cams is None:
            self._cams = tf.function(self._layer_cams, reduce_retracing=True)
        batch = np.stack(images).astype(np.float32)
        cams = [np.asarray(c) for c in self._cams(tf.constant(batch), tf.constant(class_index, tf.int32))]
        return self._fused(images, cams)

    def explained(self, images: Sequence[np.ndarray]) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
        """The model's outputs and the maps of its top class, in one pass through the network.

        The top class is that of the mean of the model's output over ``images`` (a study's
        probabilities), chosen inside the pass, so that explaining a prediction costs one
        forward and one backward pass rather than a forward pass more.

        Returns:
            The class explained; the model's output, then each of ``outputs``, for every image
            (stacked, in the model's dtype); the maps, as :meth:`maps` gives them.
        """
        tf = self._tensorflow()
        if self._explained is None:
            self._explained = tf.function(self._explain, reduce_retracing=True)
        batch = np.stack(images).astype(np.float32)
        class_index, cams, outputs = self._explained(tf.constant(batch))
        return (int(class_index), [np.asarray(o) for o in outputs],
                self._fused(images, [np.asarray(c) for c in cams]))

    @staticmethod
    def _tensorflow() -> Any:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(f"heatmaps need the TensorFlow Keras backend, not {keras.backend.backend()!r}")
        import tensorflow as tf

        return tf

    def _fused(self, images: Sequence[np.ndarray], cams: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, image in enumerate(images):
            fused = np.zeros(image.shape[:2], np.float32)
            for layer_cams, geometry in zip(cams, self._geometry):
                cam = layer_cams[i]
                peak = float(cam.max())
                if peak > 0:
                    placed = (resample_to(cam / peak, image.shape[:2]) if geometry is None
                              else _place(cam / peak, geometry, image.shape[:2]))
                    fused += np.clip(placed, 0.0, 1.0)
            peak = float(fused.max())
            out.append(fused / peak if peak > 0 else fused)
        return out

    def _layer_cams(self, x: Any, class_index: Any) -> list[Any]:
        # Traced once into a graph (tf.function): run eagerly, op by op, the
        # tape costs several times the network's own time in Python, holding
        # the GIL that the node's other stages need as well.
        import tensorflow as tf

        n = len(self.layer_names)
        with tf.GradientTape() as tape:
            tapped = self._tapped(x, training=False)
            features, penultimate = tapped[:n], tapped[n]
            logit = self._logit(penultimate, class_index)
        return self._weighted(features, tape.gradient(logit, features))

    def _explain(self, x: Any) -> tuple[Any, list[Any], list[Any]]:
        import tensorflow as tf

        n = len(self.layer_names)
        with tf.GradientTape() as tape:
            tapped = self._tapped(x, training=False)
            features, penultimate, outputs = tapped[:n], tapped[n], tapped[n + 1:]
            # float64, as the study's probabilities are ranked outside (StudyClassifier.model_result)
            class_index = tf.argmax(tf.reduce_mean(tf.cast(outputs[0], tf.float64), axis=0), output_type=tf.int32)
            logit = self._logit(penultimate, class_index)
        return class_index, self._weighted(features, tape.gradient(logit, features)), outputs

    def _logit(self, penultimate: Any, class_index: Any) -> Any:
        import tensorflow as tf

        logit = tf.linalg.matvec(penultimate, tf.gather(self._kernel, class_index, axis=1))
        return logit if self._bias is None else logit + tf.gather(self._bias, class_index)

    @staticmethod
    def _weighted(features: Sequence[Any], grads: Sequence[Any]) -> list[Any]:
        import tensorflow as tf

        return [tf.nn.relu(tf.reduce_sum(f * tf.nn.relu(g), axis=-1)) for f, g in zip(features, grads)]

