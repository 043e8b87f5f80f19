"""Class-activation heatmaps (Grad-CAM, Selvaraju et al. 2017) for the predicted class.

Grad-CAM weights the feature maps of the last spatial layer by the spatially
averaged gradient of the class score, keeps the positive part, and scales the
map to [0, 1].  The map is resized to the network input (linear interpolation), and
:func:`spectnode.imaging.network_input.heatmap_to_view` takes it to the view's
own matrix and orientation for the report stage to overlay.

Gradients are backend-specific: this module uses TensorFlow's GradientTape,
the backend spectnode installs. The networks themselves stay pure
``keras.ops``; only explanations need the TensorFlow backend.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .imaging.preprocess import resample_to

__all__ = ["find_cam_layer", "grad_cam"]


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


def _cam_model(model, layer_name: str):
    import keras

    layer = model.get_layer(layer_name)
    return keras.Model(model.inputs, [layer.output, model.outputs[0]])


def _gradients(cam_model, batch: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(batch)
        with tf.GradientTape() as tape:
            features, probs = cam_model(x, training=False)
            score = probs[:, class_index]
        grads = tape.gradient(score, features)
        return features.numpy(), grads.numpy()
    raise NotImplementedError(f"Grad-CAM needs the TensorFlow Keras backend, not {backend!r}")


def grad_cam(model, image: np.ndarray, class_index: int, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM map of ``class_index`` for one input image.

    ``image`` is the network input without the batch axis, e.g. (1024, 256, 1).
    Returns a float32 map of the input's rows x cols in [0, 1] (all zeros if the
    class has no positive evidence).
    """
    cam_model = _cam_model(model, layer_name or find_cam_layer(model))
    features, grads = _gradients(cam_model, image[None].astype("float32"), class_index)
    weights = grads[0].mean(axis=(0, 1))  # one weight per channel
    cam = np.maximum((features[0] * weights).sum(axis=-1), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    return np.clip(resample_to(cam, image.shape[:2]), 0.0, 1.0)
