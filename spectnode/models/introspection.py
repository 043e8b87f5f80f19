"""Describe a built model as a table comparable to the papers' architecture tables."""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from .cbam import CBAM

__all__ = ["LayerInfo", "layer_table", "last_feature_layer"]


@dataclass(frozen=True)
class LayerInfo:
    """One row of :func:`layer_table`.

    Attributes:
        name: Keras layer name.
        kind: ``"conv"``, ``"maxpool"``, ``"avgpool"``, ``"gap"``, ``"gmp"``, ``"flatten"``,
            ``"cbam"``, ``"add"``, ``"concat"``, ``"bn"``, ``"relu"``,
            ``"dropout"``, ``"dense"`` or the lower-cased class name otherwise.
        kernel_size: Square kernel/pool size, or None.
        width: Filters of a convolution or units of a dense layer, or None.
        strides: Stride of a convolution or pooling, or None.
        padding: Symmetric zero padding in pixels as the papers write ``P``
            (a preceding ``ZeroPadding2D`` is folded in; ``"same"`` at stride
            1 counts as ``kernel_size // 2``), ``"same"`` for a strided
            ``"same"`` pooling, or None where it does not apply.
        output_shape: Output shape without the batch axis.
        activation: Activation name of a conv/dense layer, or None.
    """

    name: str
    kind: str
    kernel_size: int | None
    width: int | None
    strides: int | None
    padding: int | str | None
    output_shape: tuple[int | None, ...]
    activation: str | None = None


_KINDS: tuple[tuple[type, str], ...] = (
    (CBAM, "cbam"),
    (layers.Conv2D, "conv"),
    (layers.MaxPooling2D, "maxpool"),
    (layers.AveragePooling2D, "avgpool"),
    (layers.GlobalAveragePooling2D, "gap"),
    (layers.GlobalMaxPooling2D, "gmp"),
    (layers.Flatten, "flatten"),
    (layers.Add, "add"),
    (layers.Concatenate, "concat"),
    (layers.BatchNormalization, "bn"),
    (layers.ReLU, "relu"),
    (layers.Dropout, "dropout"),
    (layers.Dense, "dense"),
)


def _kind(layer: keras.layers.Layer) -> str:
    for cls, kind in _KINDS:
        if isinstance(layer, cls):
            return kind
    return type(layer).__name__.lower()


def _square(value: int | tuple[int, ...]) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"non-square kernel/stride {value}")
    return int(value[0])


def layer_table(model: keras.Model) -> list[LayerInfo]:
    """List a functional model's layers in graph order, in the papers' vocabulary.

    ``InputLayer`` and ``ZeroPadding2D`` rows are omitted; the padding of a
    ``ZeroPadding2D`` appears as the ``padding`` of the convolution or pooling
    it feeds.
    """
    producer = {}
    for layer in model.layers:
        producer[id(layer.output)] = layer
    rows: list[LayerInfo] = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, layers.ZeroPadding2D)):
            continue
        kind = _kind(layer)
        kernel = width = strides = None
        padding: int | str | None = None
        activation = None
        if kind in ("conv", "maxpool", "avgpool"):
            if kind == "conv":
                kernel = _square(layer.kernel_size)
                width = int(layer.filters)
                activation = keras.activations.serialize(layer.activation)
            else:
                kernel = _square(layer.pool_size)
            strides = _square(layer.strides)
            if layer.padding == "same":
                padding = kernel // 2 if strides == 1 else "same"
            else:
                source = producer.get(id(layer.input))
                padding = 0
                if isinstance(source, layers.ZeroPadding2D):
                    (top, bottom), (left, right) = source.padding
                    if len({top, bottom, left, right}) != 1:
                        raise ValueError(f"asymmetric padding in front of {layer.name}")
                    padding = int(top)
        elif kind == "dense":
            width = int(layer.units)
            activation = keras.activations.serialize(layer.activation)
        if isinstance(activation, dict):  # some Keras versions serialize to a config dict
            activation = activation.get("config", {}).get("name", activation.get("class_name"))
        rows.append(
            LayerInfo(
                name=layer.name,
                kind=kind,
                kernel_size=kernel,
                width=width,
                strides=strides,
                padding=padding,
                output_shape=tuple(layer.output.shape[1:]),
                activation=activation,
            )
        )
    return rows


def last_feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer whose 4D output the classification head pools or flattens.

    This is the usual target of class-activation maps (Grad-CAM): e.g.
    ``conv5`` for dSPIC, ``pool3`` for SI_CLF, the last RA-Conv block for
    Classifier-inRAC, ``inception5b`` for Inception-v1. For a model built with
    ``include_top=False`` it is the layer producing the model output.
    """
    producer = {id(layer.output): layer for layer in model.layers}
    for layer in model.layers:
        if isinstance(layer, (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.Flatten)):
            return producer[id(layer.input)]
    output_layer = producer[id(model.outputs[0])]
    if len(output_layer.output.shape) != 4:
        raise ValueError(f"{model.name}: no pooled or flattened 4D feature map found")
    return output_layer
