"""Building blocks shared by the architectures (functional Keras 3, channels_last).

Layer naming is part of the contract: tests and introspection
(:func:`spectnode.models.layer_table`) rely on it.

* A convolution with the papers' explicit padding ``P`` is a
  ``ZeroPadding2D`` named ``<conv>_pad`` followed by a ``"valid"`` convolution
  (Caffe/PyTorch semantics). Where ``P = k // 2`` and the stride is 1 the two
  are identical to ``padding="same"``, which is used instead.
* The classification layer is always named ``"predictions"`` (as in
  ``keras.applications``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

import keras
from keras import layers

from .cbam import CBAM

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "HEADS",
    "padded_conv2d",
    "dspic_residual_module",
    "ra_conv_block",
    "classification_head",
    "Head",
    "dense_stack_param_count",
    "check_common_arguments",
]

#: Heads offered by the builders whose papers end in fully connected layers.
Head = Literal["gap", "gmp", "gap_gmp", "flatten"]
HEADS: tuple[Head, ...] = get_args(Head)


def check_common_arguments(input_shape: Sequence[int], classes: int) -> tuple[int, int, int]:
    """Validate ``input_shape`` (rows, cols, channels) and ``classes``; return the shape as a tuple."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "spectnode models are channels_last; keras.config.image_data_format() is "
            f"{keras.config.image_data_format()!r}"
        )
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (rows, cols, channels) with positive sizes, got {input_shape}")
    if int(classes) < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    return (shape[0], shape[1], shape[2])


def padded_conv2d(
    x: Any,
    filters: int,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    padding: int = 0,
    activation: str | None = "relu",
    use_bias: bool = True,
    kernel_initializer: str = "glorot_uniform",
) -> Any:
    """Convolution with explicit symmetric zero padding of ``padding`` pixels.

    Uses ``padding="same"`` when that is exactly equivalent (stride 1 and
    ``padding == kernel_size // 2``, odd kernel), otherwise a ``ZeroPadding2D``
    named ``<name>_pad`` in front of a ``"valid"`` convolution.
    """
    if strides == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2:
        mode = "same"
    else:
        mode = "valid"
        if padding:
            x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=mode,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def dspic_residual_module(x: Any, *, name: str = "rm") -> Any:
    """The dSPIC residual module (dSPIC Fig. 6, Eq. 9): ``R = ReLU(f3x3(ReLU(f3x3(F))) + F)``.

    Choices where the paper is silent (it gives only Eq. 9 and the sentence
    "two 3 x 3 convolutional layers and a ReLU layer after the first"):

    * both convolutions keep the channel count and spatial size (padding 1,
      stride 1), so the identity shortcut of Fig. 6 needs no projection;
    * no batch normalisation (neither dSPIC nor its Table 7 networks mention
      any);
    * the outer ReLU is applied after the addition, as in He et al.'s basic
      block; Eq. 9's outer delta is read that way.
    """
    channels = x.shape[-1]
    y = padded_conv2d(x, channels, 3, padding=1, name=f"{name}_conv1")
    y = padded_conv2d(y, channels, 3, padding=1, activation=None, name=f"{name}_conv2")
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(y)


def ra_conv_block(
    x: Any,
    filters: int,
    *,
    strides: int,
    name: str,
    attention: Literal["inside", "outside", "none"] = "inside",
    residual: bool = True,
) -> Any:
    """One RA-Conv block (inRAC Fig. 4): a residual basic block with CBAM.

    ``[3x3, filters; 3x3, filters]`` as in inRAC Table 1, built like He et
    al.'s ResNet basic block (conv-BN-ReLU-conv-BN, add, ReLU), which is what
    the table's notation and the "-18"/"-34" names of Table 7 point to:

    * the first block of a stage downsamples with stride 2 in its first 3x3
      convolution, and its shortcut is a 1x1 stride-2 convolution plus BN when
      the shape changes (ResNet option B); other shortcuts are identities;
    * convolutions have no bias (BN follows each), BN epsilon 1.001e-5 as in
      ``keras.applications.ResNet``;
    * ``attention="inside"`` (inRA-Conv) puts CBAM on the residual branch after
      the second BN, before the addition, exactly where Woo et al. put it in
      ResNet; ``"outside"`` (outRA-Conv) applies CBAM to the block output after
      the final ReLU; ``"none"`` and ``residual=False`` give the ablations of
      inRAC Table 6.
    """
    if attention not in ("inside", "outside", "none"):
        raise ValueError(f"attention must be 'inside', 'outside' or 'none', got {attention!r}")
    bn_epsilon = 1.001e-5
    y = padded_conv2d(
        x, filters, 3, strides=strides, padding=1, activation=None, use_bias=False, name=f"{name}_conv1"
    )
    y = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = padded_conv2d(y, filters, 3, padding=1, activation=None, use_bias=False, name=f"{name}_conv2")
    y = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_bn2")(y)
    if attention == "inside":
        y = CBAM(name=f"{name}_cbam")(y)
    if residual:
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(
                filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut_conv"
            )(x)
            shortcut = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_shortcut_bn")(shortcut)
        y = layers.Add(name=f"{name}_add")([shortcut, y])
    y = layers.ReLU(name=f"{name}_out")(y)
    if attention == "outside":
        y = CBAM(name=f"{name}_cbam")(y)
    return y


def classification_head(
    x: Any,
    classes: int,
    *,
    head: Head,
    fc_units: Sequence[int],
    dropout_rate: float,
    classifier_activation: str | None,
    kernel_initializer: str = "glorot_uniform",
) -> Any:
    """Fully connected head: flatten or global pooling, ``fc_units`` ReLU layers, then ``predictions``.

    ``head="flatten"`` is what the papers' tables describe (FC layers on the
    flattened last feature map). ``head="gap"`` puts a global average pooling
    in front of the same FC layers, which makes the parameter count
    independent of the image size. ``head="gmp"`` pools by the maximum
    instead: one focal lesion then counts as much as many, where the average
    spreads it over every cell of the map (dSPIC-AM's last map has 403 cells
    at 384 x 96). ``head="gap_gmp"`` gives the FC layers both, side by side:
    the hottest focus and the level it stands out from.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if head == "flatten":
        x = layers.Flatten(name="flatten")(x)
    elif head == "gmp":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif head == "gap_gmp":
        x = layers.Concatenate(name="avg_max_pool")([layers.GlobalAveragePooling2D(name="avg_pool")(x),
                                                     layers.GlobalMaxPooling2D(name="max_pool")(x)])
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    for index, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation="relu", kernel_initializer=kernel_initializer, name=f"fc{index}")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name=f"fc{index}_dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def dense_stack_param_count(inputs: int, units: Sequence[int]) -> int:
    """Parameter count (weights + biases) of a chain of Dense layers fed ``inputs`` features."""
    total = 0
    for width in units:
        total += inputs * width + width
        inputs = width
    return total
