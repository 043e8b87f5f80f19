"""Class-activation heatmaps (Grad-CAM, Selvaraju et al. 2017) for the predicted class.

Grad-CAM weights the feature maps of the last spatial layer by the spatially
averaged gradient of the class logit, keeps the positive part, and scales the
map to [0, 1].  The map is resized to the network input (linear interpolation), and
:func:`spectnode.imaging.network_input.heatmap_to_view` takes it to the view's
own matrix and orientation for the report stage to overlay.

Gradients are backend-specific: this module uses TensorFlow's GradientTape,
the backend spectnode installs. The networks themselves stay pure
``keras.ops``; only explanations need the TensorFlow backend.
"""

from __future__ import annotations

import numpy as np

from .imaging.preprocess import resample_to

__all__ = ["find_cam_layer", "GradCam", "grad_cam"]


def find_cam_layer(model) -> str:
    """Name of the last layer with a 4-D (batch, rows, cols, channels) output.

    That layer holds the finest class-discriminative spatial features: the
    input to global pooling or flattening.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] and shape[1] > 1:
            return layer.name
    raise ValueError(f"model {model.name!r} has no spatial layer for Grad-CAM")


class GradCam:
    """Grad-CAM for one model; build once, call per image (building the tapped model is slow).

    The class score is the pre-softmax logit: the gradient of a softmax
    probability vanishes exactly when the model is most confident, which would
    blank the heatmaps readers see most.
    """

    def __init__(self, model, layer_name: str | None = None) -> None:
        import keras

        self.layer_name = layer_name or find_cam_layer(model)
        head = model.get_layer("predictions") if "predictions" in [l.name for l in model.layers] else model.layers[-1]
        if not isinstance(head, keras.layers.Dense):
            raise ValueError(f"model {model.name!r} does not end in a Dense layer; cannot take its logits")
        self._kernel, self._bias = head.kernel, head.bias
        self._tapped = keras.Model(model.inputs, [model.get_layer(self.layer_name).output, head.input])

    def __call__(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """Map of ``class_index`` for one input (rows, cols, channels): float32 (rows, cols) in [0, 1]."""
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(f"Grad-CAM needs the TensorFlow Keras backend, not {keras.backend.backend()!r}")
        import tensorflow as tf

        x = tf.convert_to_tensor(image[None].astype("float32"))
        with tf.GradientTape() as tape:
            features, penultimate = self._tapped(x, training=False)
            logit = tf.linalg.matvec(penultimate, self._kernel[:, class_index])
            if self._bias is not None:
                logit = logit + self._bias[class_index]
        grads = tape.gradient(logit, features).numpy()[0]
        features = features.numpy()[0]
        weights = grads.mean(axis=(0, 1))  # one weight per channel
        cam = np.maximum((features * weights).sum(axis=-1), 0.0)
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else np.zeros_like(cam)
        return np.clip(resample_to(cam, image.shape[:2]), 0.0, 1.0)


def grad_cam(model, image: np.ndarray, class_index: int, layer_name: str | None = None) -> np.ndarray:
    """One-off Grad-CAM map of ``class_index`` (see :class:`GradCam` to reuse the tapped model)."""
    return GradCam(model, layer_name)(image, class_index)
