"""Networks of the inRAC paper (Guo, Lin et al., 2022: lung-cancer metastasis).

* :func:`build_classifier_inrac` / :func:`build_classifier_outrac`: Table 1
  (RA-Conv stages of 2, 3, 5, 2 blocks), CBAM inside / outside the residual.
* :func:`build_classifier_18` / :func:`build_classifier_34`: Table 7, the
  same design with ResNet-18 (2, 2, 2, 2) and ResNet-34 (3, 4, 6, 3) depths.

All four are :func:`build_ra_conv_net`. Choices where the paper is silent:

* Stem: the paper lists Conv 7x7/64/s2, BN, max pool 3x3/s2. We add the ReLU
  after BN and use ResNet's padding (3 for the 7x7 conv, 1 for the pool),
  which gives 512x128 then 256x64 maps on a 1024x256 input.
* RA-Conv blocks are ResNet basic blocks with CBAM; see
  :func:`spectnode.models.blocks.ra_conv_block` for the block internals
  (stride-2 first block per stage from the second stage on, 1x1 projection
  shortcuts, CBAM position). Classifier-18/-34 use inRA-Conv blocks, since
  Table 7 defines them "following the architectural design of
  Classifier-inRAC".
* Head: GAP then a single Dense softmax (the table has no FC layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import keras
from keras import layers

from .blocks import check_common_arguments, padded_conv2d, ra_conv_block

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "INRAC_STAGE_FILTERS",
    "build_ra_conv_net",
    "build_classifier_inrac",
    "build_classifier_outrac",
    "build_classifier_18",
    "build_classifier_34",
]

DEFAULT_INPUT_SHAPE = (1024, 256, 1)
#: Filters of the four RA-Conv stages (inRAC Tables 1 and 7).
INRAC_STAGE_FILTERS = (64, 128, 256, 512)


def build_ra_conv_net(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    stage_blocks: Sequence[int] = (2, 3, 5, 2),
    attention: Literal["inside", "outside", "none"] = "inside",
    residual: bool = True,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build a residual CNN of RA-Conv blocks (inRAC Tables 1 and 7).

    Args:
        input_shape: ``(rows, cols, channels)``, 1024x256x1 in the paper
            (the aggregated anterior+posterior image).
        classes: Output width. Default 4 like every builder here; the inRAC
            paper's task has 3 (NoMet, ADMet, nADMet).
        include_top: If False, return the last stage's feature map.
        stage_blocks: Number of blocks in each of the four stages (filters
            64, 128, 256, 512).
        attention: CBAM ``"inside"`` the residual (inRA-Conv), ``"outside"``
            (outRA-Conv) or ``"none"`` (inRAC Table 6 ablation).
        residual: False drops the shortcut connections (Table 6 ablation).
        classifier_activation: Activation of ``predictions``; ``None`` gives
            logits.
        name: Model name; defaults to ``"RA-Conv-Net"``.
    """
    shape = check_common_arguments(input_shape, classes)
    if len(stage_blocks) != len(INRAC_STAGE_FILTERS) or min(stage_blocks) < 1:
        raise ValueError(f"stage_blocks must be four positive counts, got {stage_blocks}")
    inputs = keras.Input(shape=shape, name="image")
    x = padded_conv2d(inputs, 64, 7, strides=2, padding=3, activation=None, use_bias=False, name="conv1")
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage_index, (filters, blocks) in enumerate(zip(INRAC_STAGE_FILTERS, stage_blocks), start=2):
        for block_index in range(1, blocks + 1):
            strides = 2 if stage_index > 2 and block_index == 1 else 1
            x = ra_conv_block(
                x,
                filters,
                strides=strides,
                attention=attention,
                residual=residual,
                name=f"stage{stage_index}_block{block_index}",
            )
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name or "RA-Conv-Net")


def build_classifier_inrac(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build Classifier-inRAC (inRAC Table 1): stages of 2, 3, 5, 2 inRA-Conv blocks."""
    return build_ra_conv_net(
        input_shape, classes, include_top, stage_blocks=(2, 3, 5, 2), attention="inside",
        classifier_activation=classifier_activation, name=name or "Classifier-inRAC",
    )


def build_classifier_outrac(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build Classifier-outRAC (inRAC Table 1 with CBAM outside each residual block)."""
    return build_ra_conv_net(
        input_shape, classes, include_top, stage_blocks=(2, 3, 5, 2), attention="outside",
        classifier_activation=classifier_activation, name=name or "Classifier-outRAC",
    )


def build_classifier_18(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build Classifier-18 (inRAC Table 7): stages of 2, 2, 2, 2 inRA-Conv blocks (ResNet-18 depth)."""
    return build_ra_conv_net(
        input_shape, classes, include_top, stage_blocks=(2, 2, 2, 2), attention="inside",
        classifier_activation=classifier_activation, name=name or "Classifier-18",
    )


def build_classifier_34(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build Classifier-34 (inRAC Table 7): stages of 3, 4, 6, 3 inRA-Conv blocks (ResNet-34 depth)."""
    return build_ra_conv_net(
        input_shape, classes, include_top, stage_blocks=(3, 4, 6, 3), attention="inside",
        classifier_activation=classifier_activation, name=name or "Classifier-34",
    )
