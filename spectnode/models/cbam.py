"""Convolutional Block Attention Module (CBAM, Woo et al., ECCV 2018).

Both papers call it the "attention module" (dSPIC Fig. 5, Eqs. 6-8) or the
"hybrid attention module" (inRAC Fig. 4, Eqs. 2-4)::

    F'  = f_C(F) * F                    channel attention first ("what")
    M   = f_S(F') * F'                  then spatial attention ("where")
    f_C = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))      shared MLP, ratio 16
    f_S = sigmoid(conv_kxk([mean_c(F'); max_c(F')]))      k = 7

The papers' Eq. 6 / Eq. 2 write ``M = f_S(f_C(F) * F) * F``, which read
literally multiplies the spatial map with the unrefined F. We follow Woo et
al. (the papers' reference [33] / [32]) and multiply it with the
channel-refined F', as the papers' own text ("F' will be fed into the
spatial attention module to obtain a refined 2D feature map M") describes.

Only ``keras.ops`` is used, so the layer runs under every Keras 3 backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import layers, ops

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CBAM", "cbam_attention_maps"]


@keras.saving.register_keras_serializable(package="spectnode")
class CBAM(keras.layers.Layer):
    """Channel-then-spatial attention that keeps its input shape.

    Args:
        reduction_ratio: Ratio between the channel count and the hidden width of
            the shared MLP (16 in Woo et al.). The hidden width is at least 1.
        spatial_kernel_size: Kernel size of the spatial-attention convolution
            (7 in Woo et al.).
        **kwargs: Standard ``keras.layers.Layer`` arguments (``name``, ...).

    Input shape:
        4D tensor ``(batch, rows, cols, channels)`` (channels_last).

    Output shape:
        Same as the input.

    The attention maps themselves are available through
    :meth:`attention_maps` (a single tensor) or :func:`cbam_attention_maps`
    (every CBAM of a built model).
    """

    def __init__(self, reduction_ratio: int = 16, spatial_kernel_size: int = 7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction_ratio < 1:
            raise ValueError(f"reduction_ratio must be >= 1, got {reduction_ratio}")
        if spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(f"spatial_kernel_size must be a positive odd number, got {spatial_kernel_size}")
        self.reduction_ratio = int(reduction_ratio)
        self.spatial_kernel_size = int(spatial_kernel_size)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"CBAM expects a 4D channels_last input, got shape {input_shape}")
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("CBAM needs a known channel count")
        hidden = max(channels // self.reduction_ratio, 1)
        # One MLP shared by the average- and max-pooled descriptors (Eq. 7 / Eq. 3).  The inner
        # layers compute as this layer does (a model loaded under another global policy included).
        policy = self.dtype_policy
        self.mlp_hidden = layers.Dense(hidden, activation="relu", name="mlp_hidden", dtype=policy)
        self.mlp_output = layers.Dense(channels, name="mlp_output", dtype=policy)
        self.spatial_conv = layers.Conv2D(
            1, self.spatial_kernel_size, padding="same", name="spatial_conv", dtype=policy
        )
        self.mlp_hidden.build((None, channels))
        self.mlp_output.build((None, hidden))
        self.spatial_conv.build((None, input_shape[1], input_shape[2], 2))
        self.built = True

    def _attend(self, inputs: Any) -> tuple[Any, Any, Any]:
        average = ops.mean(inputs, axis=(1, 2))
        maximum = ops.max(inputs, axis=(1, 2))
        channel_logits = self.mlp_output(self.mlp_hidden(average)) + self.mlp_output(self.mlp_hidden(maximum))
        channel_map = ops.expand_dims(ops.expand_dims(ops.sigmoid(channel_logits), 1), 1)
        refined = inputs * channel_map
        pooled = ops.concatenate(
            [ops.mean(refined, axis=-1, keepdims=True), ops.max(refined, axis=-1, keepdims=True)], axis=-1
        )
        spatial_map = ops.sigmoid(self.spatial_conv(pooled))
        return refined * spatial_map, channel_map, spatial_map

    def call(self, inputs: Any) -> Any:
        return self._attend(inputs)[0]

    def attention_maps(self, inputs: Any) -> tuple[Any, Any]:
        """Return ``(channel_map, spatial_map)`` for ``inputs``.

        ``channel_map`` has shape ``(batch, 1, 1, channels)`` and
        ``spatial_map`` has shape ``(batch, rows, cols, 1)``; both are sigmoid
        outputs in [0, 1]. ``inputs`` is what this layer receives, i.e. the
        feature map in front of it, not the network's image input.
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        _, channel_map, spatial_map = self._attend(inputs)
        return channel_map, spatial_map

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(reduction_ratio=self.reduction_ratio, spatial_kernel_size=self.spatial_kernel_size)
        return config


def cbam_attention_maps(model: keras.Model, images: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Compute the attention maps of every :class:`CBAM` layer of a functional model.

    Args:
        model: A functional ``keras.Model`` built by this package (or any
            functional model containing :class:`CBAM` layers).
        images: A batch accepted by ``model`` (``(batch, rows, cols, channels)``).

    Returns:
        A dict from CBAM layer name to ``(channel_map, spatial_map)`` numpy
        arrays, with shapes ``(batch, 1, 1, C)`` and ``(batch, h, w, 1)``, in the
        model's layer order. Empty if the model has no CBAM layer.
    """
    cbam_layers = [layer for layer in model.layers if isinstance(layer, CBAM)]
    if not cbam_layers:
        return {}
    model_input = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    feature_model = keras.Model(model_input, [layer.input for layer in cbam_layers])
    features = feature_model(images, training=False)
    if len(cbam_layers) == 1:
        features = [features] if not isinstance(features, (list, tuple)) else features
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, feature in zip(cbam_layers, features):
        channel_map, spatial_map = layer.attention_maps(feature)
        maps[layer.name] = (ops.convert_to_numpy(channel_map), ops.convert_to_numpy(spatial_map))
    return maps
