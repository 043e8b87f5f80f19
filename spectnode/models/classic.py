"""Classical comparison networks of the inRAC paper (Table 9): VGG11 and Inception-v1.

The paper gives only "11 weight layers, 3x3 filters, ReLU" for VGG 11 and
"9 Inception blocks, 1x1/3x3/5x5 filters, ReLU" for Inception-v1, citing
Simonyan & Zisserman (configuration A) and Szegedy et al. (GoogLeNet). We
build those originals, adapted to one-channel 1024x256 images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import layers

from .blocks import Head, check_common_arguments, classification_head, padded_conv2d

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["VGG11_CONFIG", "GOOGLENET_INCEPTION_BLOCKS", "build_vgg11", "build_inception_v1"]

DEFAULT_INPUT_SHAPE = (1024, 256, 1)

#: VGG configuration "A" (Simonyan & Zisserman, Table 1): conv widths, "M" = 2x2/2 max pool.
VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

#: GoogLeNet inception blocks (Szegedy et al. 2015, Table 1):
#: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
GOOGLENET_INCEPTION_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


def build_vgg11(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    head: Head = "gap",
    fc_units: Sequence[int] = (4096, 4096),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build VGG11 (configuration A; inRAC Table 9: 11 weight layers, 3x3 filters).

    Eight 3x3 convolutions (padding 1, ReLU, no BN as in the original A
    configuration), five 2x2/2 max pools, FC 4096, FC 4096, softmax. On a
    1024x256 input the last map is 32x8x512; ``head="flatten"`` therefore
    feeds 131072 features to FC-4096 (~5.4e8 parameters), so the default is
    ``head="gap"`` (global average pooling in front of the same three FC
    layers; ``"gmp"`` and ``"gap_gmp"`` pool by the maximum, or both).
    ``dropout_rate`` 0.5 after each hidden FC layer as in the original.
    Other arguments as in :func:`spectnode.models.dspic.build_dspic`.
    """
    shape = check_common_arguments(input_shape, classes)
    inputs = keras.Input(shape=shape, name="image")
    x: Any = inputs
    block, conv_in_block = 1, 0
    for item in VGG11_CONFIG:
        if item == "M":
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
            block, conv_in_block = block + 1, 0
        else:
            conv_in_block += 1
            x = padded_conv2d(x, int(item), 3, padding=1, name=f"block{block}_conv{conv_in_block}")
    if include_top:
        x = classification_head(
            x,
            classes,
            head=head,
            fc_units=fc_units,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
        )
    return keras.Model(inputs, x, name=name or "VGG11")


def _conv_bn_relu(
    x: Any, filters: int, kernel_size: int, *, name: str, strides: int = 1, padding: int | None = None
) -> Any:
    x = padded_conv2d(
        x,
        filters,
        kernel_size,
        strides=strides,
        padding=kernel_size // 2 if padding is None else padding,
        activation=None,
        use_bias=False,
        name=name,
    )
    x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _inception_block(x: Any, filters: tuple[int, int, int, int, int, int], name: str) -> Any:
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = filters
    branch1 = _conv_bn_relu(x, n1x1, 1, name=f"{name}_1x1")
    branch2 = _conv_bn_relu(x, n3x3_reduce, 1, name=f"{name}_3x3_reduce")
    branch2 = _conv_bn_relu(branch2, n3x3, 3, name=f"{name}_3x3")
    branch3 = _conv_bn_relu(x, n5x5_reduce, 1, name=f"{name}_5x5_reduce")
    branch3 = _conv_bn_relu(branch3, n5x5, 5, name=f"{name}_5x5")
    branch4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch4 = _conv_bn_relu(branch4, pool_proj, 1, name=f"{name}_pool_proj")
    return layers.Concatenate(axis=-1, name=name)([branch1, branch2, branch3, branch4])


def build_inception_v1(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    dropout_rate: float = 0.4,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build Inception-v1 / GoogLeNet (inRAC Table 9: 9 Inception blocks).

    Stem conv 7x7/64/s2, max pool 3/s2, conv 1x1/64, conv 3x3/192, max pool
    3/s2, inception 3a-3b, max pool, 4a-4e, max pool, 5a-5b, global average
    pooling, dropout 0.4, softmax; filter counts from Szegedy et al. Table 1
    (:data:`GOOGLENET_INCEPTION_BLOCKS`).

    Choices (not stated by the inRAC paper):

    * No auxiliary classifiers: they are training-time regularisers that
      Szegedy et al. discard at inference, and they would make this the only
      multi-output model in the registry.
    * BN after every convolution, no LRN (as in torchvision's GoogLeNet):
      Keras has no LRN layer, and the paper's learning rate of 1e-2 is hard
      to train with plain convolutions.
    * The 5x5 branch really uses 5x5 kernels (the paper's Table 9 lists 5x5;
      torchvision's port uses 3x3 there by mistake).
    * Max pools with stride 2 use ``"same"`` padding, i.e. ceil rounding as in
      the Caffe original: 1024x256 -> 512x128 -> 256x64 -> 128x32 -> 64x16
      -> 32x8.
    """
    shape = check_common_arguments(input_shape, classes)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    inputs = keras.Input(shape=shape, name="image")
    x = _conv_bn_relu(inputs, 64, 7, strides=2, padding=3, name="conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = _conv_bn_relu(x, 64, 1, name="conv2_reduce")
    x = _conv_bn_relu(x, 192, 3, name="conv2")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    pools_before = {"inception4a": "pool3", "inception5a": "pool4"}
    for block_name, filters in GOOGLENET_INCEPTION_BLOCKS.items():
        if block_name in pools_before:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=pools_before[block_name])(x)
        x = _inception_block(x, filters, block_name)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name or "Inception-v1")
