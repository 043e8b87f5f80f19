"""Networks of the dSPIC paper (Lin et al., BMC Medical Imaging 2021; 21:122).

* :func:`build_dspic_am`, :func:`build_dspic_rm`: dSPIC, Table 3, with the
  "added layer" being the attention module (CBAM) or the residual module.
* :func:`build_si_clf`, :func:`build_si_clf_am`, :func:`build_si_clf_rm`,
  :func:`build_si_clf_am_rm`, :func:`build_alexnet`: the comparison networks of
  Table 7.

Choices common to all of them (the paper is silent or ambiguous):

* Padding ``P`` is taken literally as symmetric zero padding of P pixels
  (Caffe/PyTorch ``padding=P``), including ``P = 3`` on 3x3 convolutions,
  which enlarges the map by 4 pixels per layer. Taken literally, Table 3 on a
  1024x256 input ends in a 71x23x256 map, and with a flattened FC-4096 head
  gives ~1.73e9 parameters, the figures recorded in the project's field
  guide. We do not "fix" P = 3 to 1.
* Every convolution and hidden FC layer is followed by ReLU (paper: "the
  nonlinear function used in dSPIC network is the ReLU"). No batch
  normalisation: neither Table 3 nor Table 7 has one.
* Table 3 and Table 7 end in "SoftMax 3" although the dSPIC task has four
  classes (N, M, A, M&A); the output width is the ``classes`` argument
  (default 4).
* ``head``: ``"flatten"`` is the paper as written (Flatten, FC, FC,
  softmax). The default ``"gap"`` puts a global average pooling before the
  same FC layers: dSPIC-AM drops from ~1.73e9 to ~21.6e6 parameters on a
  1024x256 input (the flatten version needs 6.9 GB for its weights alone
  and cannot be trained with Adam in 24 GB of RAM), so the practical head is
  the default and ``"dSPIC-AM-flatten"`` / ``"dSPIC-RM-flatten"`` in the
  registry are the paper as written.
* ``dropout_rate`` (default 0.5) after each hidden FC layer: dSPIC's Table 3
  is AlexNet with one module added, and AlexNet uses dropout 0.5 there; the
  paper does not mention dropout either way. Dropout has no parameters, so it
  changes no count or shape.
* He-normal initialisation of every convolution and hidden FC layer (the
  paper is silent; Keras' default is Glorot). Without batch normalisation a
  Glorot-initialised ReLU stack shrinks the signal at each layer, and dSPIC-AM
  trained from it stayed near chance for six epochs at the paper's learning
  rate (validation accuracy 0.34 on four classes). He initialisation keeps the
  activations' scale through the stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import keras
from keras import layers

from .blocks import Head, check_common_arguments, classification_head, dspic_residual_module, padded_conv2d
from .cbam import CBAM

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "build_dspic",
    "build_dspic_am",
    "build_dspic_rm",
    "build_si_clf",
    "build_si_clf_am",
    "build_si_clf_rm",
    "build_si_clf_am_rm",
    "build_alexnet",
]

DEFAULT_INPUT_SHAPE = (1024, 256, 1)

#: ReLU without batch normalisation: He initialisation (see the module docstring).
_INIT = "he_normal"


def _max_pool(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    # "MaxPool, 3 x 3, S = 2" with no padding (AlexNet-style overlapping pooling).
    return layers.MaxPooling2D(pool_size=3, strides=2, padding="valid", name=name)(x)


def build_dspic(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    module: Literal["attention", "residual"] = "attention",
    head: Head = "gap",
    fc_units: Sequence[int] = (4096, 4096),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build dSPIC (dSPIC Table 3).

    Layers: conv 11x11/96/s4/p2, maxpool 3/s2, added module (CBAM or residual
    module), conv 5x5/256/p2, maxpool 3/s2, conv 3x3/384/p3, conv 3x3/384/p3,
    conv 3x3/256/p1, FC 4096, FC 4096, softmax.

    Args:
        input_shape: ``(rows, cols, channels)``; the paper's image is 1024 rows
            x 256 columns, one channel.
        classes: Output width (4: normal, metastatic, arthritic, both).
        include_top: If False, return the last convolutional feature map
            (``conv5``), without the head.
        module: ``"attention"`` (dSPIC-AM) or ``"residual"`` (dSPIC-RM).
        head: ``"gap"`` (default, practical), ``"gmp"`` (global max pooling),
            ``"gap_gmp"`` (both, concatenated) or
            ``"flatten"`` (paper as written; ~1.73e9 parameters at 1024x256). See the
            module docstring.
        fc_units: Widths of the hidden FC layers.
        dropout_rate: Dropout after each hidden FC layer (0 disables it).
        classifier_activation: Activation of ``predictions``; ``None`` gives
            logits.
        name: Model name; defaults to ``"dSPIC-AM"`` / ``"dSPIC-RM"``.

    Returns:
        A functional ``keras.Model``.
    """
    shape = check_common_arguments(input_shape, classes)
    if module not in ("attention", "residual"):
        raise ValueError(f"module must be 'attention' or 'residual', got {module!r}")
    inputs = keras.Input(shape=shape, name="image")
    x = padded_conv2d(inputs, 96, 11, strides=4, padding=2, name="conv1", kernel_initializer=_INIT)
    x = _max_pool(x, "pool1")
    # The "added layer" sits between pool1 and conv2 (Table 3).
    if module == "attention":
        x = CBAM(name="am")(x)
    else:
        x = dspic_residual_module(x, name="rm")
    x = padded_conv2d(x, 256, 5, padding=2, name="conv2", kernel_initializer=_INIT)
    x = _max_pool(x, "pool2")
    x = padded_conv2d(x, 384, 3, padding=3, name="conv3", kernel_initializer=_INIT)
    x = padded_conv2d(x, 384, 3, padding=3, name="conv4", kernel_initializer=_INIT)
    x = padded_conv2d(x, 256, 3, padding=1, name="conv5", kernel_initializer=_INIT)
    if include_top:
        x = classification_head(
            x,
            classes,
            head=head,
            fc_units=fc_units,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
            kernel_initializer=_INIT,
        )
    default_name = "dSPIC-AM" if module == "attention" else "dSPIC-RM"
    return keras.Model(inputs, x, name=name or default_name)


def build_dspic_am(
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
    """Build dSPIC-AM: dSPIC with the CBAM attention module (see :func:`build_dspic`)."""
    return build_dspic(
        input_shape,
        classes,
        include_top,
        module="attention",
        head=head,
        fc_units=fc_units,
        dropout_rate=dropout_rate,
        classifier_activation=classifier_activation,
        name=name,
    )


def build_dspic_rm(
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
    """Build dSPIC-RM: dSPIC with the residual module (see :func:`build_dspic`)."""
    return build_dspic(
        input_shape,
        classes,
        include_top,
        module="residual",
        head=head,
        fc_units=fc_units,
        dropout_rate=dropout_rate,
        classifier_activation=classifier_activation,
        name=name,
    )


def build_si_clf(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    attention: bool = False,
    residual: bool = False,
    head: Head = "gap",
    fc_units: Sequence[int] = (1024, 1024),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build SI_CLF and its +AM / +RM / +AM+RM variants (dSPIC Table 7).

    SI_CLF: conv 11x11/64/s4/p2, maxpool 3/s2, conv 7x7/128/p2, maxpool 3/s2,
    conv 5x5/128/p3, conv 3x3/256/p3, conv 3x3/256/p1, maxpool 3/s2, FC 1024,
    FC 1024, softmax.

    Module placement, read off the Table 7 columns:

    * ``residual``: a residual module (64 channels) right after pool1;
    * ``attention``: a CBAM right after pool1 (after the residual module when
      both are present) and a second CBAM (256 channels) after conv5, before
      pool3.

    Arguments are as in :func:`build_dspic`; ``fc_units`` defaults to the
    table's (1024, 1024). Default name: ``"SI_CLF"``, ``"SI_CLF_AM"``,
    ``"SI_CLF_RM"`` or ``"SI_CLF_AM_RM"`` (``+`` is not allowed in a TensorFlow name scope).
    """
    shape = check_common_arguments(input_shape, classes)
    inputs = keras.Input(shape=shape, name="image")
    x = padded_conv2d(inputs, 64, 11, strides=4, padding=2, name="conv1", kernel_initializer=_INIT)
    x = _max_pool(x, "pool1")
    if residual:
        x = dspic_residual_module(x, name="rm")
    if attention:
        x = CBAM(name="am1")(x)
    x = padded_conv2d(x, 128, 7, padding=2, name="conv2", kernel_initializer=_INIT)
    x = _max_pool(x, "pool2")
    x = padded_conv2d(x, 128, 5, padding=3, name="conv3", kernel_initializer=_INIT)
    x = padded_conv2d(x, 256, 3, padding=3, name="conv4", kernel_initializer=_INIT)
    x = padded_conv2d(x, 256, 3, padding=1, name="conv5", kernel_initializer=_INIT)
    if attention:
        x = CBAM(name="am2")(x)
    x = _max_pool(x, "pool3")
    if include_top:
        x = classification_head(
            x,
            classes,
            head=head,
            fc_units=fc_units,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
            kernel_initializer=_INIT,
        )
    # Keras model names become TensorFlow name scopes, which refuse "+": the
    # registry keeps the paper's "SI_CLF+AM", the model is named "SI_CLF_AM".
    default_name = "SI_CLF" + ("_AM" if attention else "") + ("_RM" if residual else "")
    return keras.Model(inputs, x, name=name or default_name)


def build_si_clf_am(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    head: Head = "gap",
    fc_units: Sequence[int] = (1024, 1024),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build SI_CLF+AM (dSPIC Table 7; see :func:`build_si_clf`)."""
    return build_si_clf(
        input_shape, classes, include_top, attention=True, residual=False, head=head, fc_units=fc_units,
        dropout_rate=dropout_rate, classifier_activation=classifier_activation, name=name,
    )


def build_si_clf_rm(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    head: Head = "gap",
    fc_units: Sequence[int] = (1024, 1024),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build SI_CLF+RM (dSPIC Table 7; see :func:`build_si_clf`)."""
    return build_si_clf(
        input_shape, classes, include_top, attention=False, residual=True, head=head, fc_units=fc_units,
        dropout_rate=dropout_rate, classifier_activation=classifier_activation, name=name,
    )


def build_si_clf_am_rm(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    head: Head = "gap",
    fc_units: Sequence[int] = (1024, 1024),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build SI_CLF+AM+RM (dSPIC Table 7; see :func:`build_si_clf`)."""
    return build_si_clf(
        input_shape, classes, include_top, attention=True, residual=True, head=head, fc_units=fc_units,
        dropout_rate=dropout_rate, classifier_activation=classifier_activation, name=name,
    )


def build_alexnet(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    include_top: bool = True,
    *,
    head: Head = "gap",
    fc_units: Sequence[int] = (1024, 1024),
    dropout_rate: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build the "AlexNet" column of dSPIC Table 7.

    conv 11x11/64/s4/p2, maxpool 3/s2, conv 5x5/256/p2, maxpool 3/s2,
    conv 3x3/384/p3, conv 3x3/384/p3, FC 1024, FC 1024, softmax.

    This is the table as printed, which is *not* Krizhevsky et al.'s AlexNet
    (that has five convolutions, a third max pooling and FC-4096 layers). We
    reproduce the paper's comparison network, since that is what its
    reported metrics (Fig. 10, Table 8) belong to. Arguments as in
    :func:`build_dspic`.
    """
    shape = check_common_arguments(input_shape, classes)
    inputs = keras.Input(shape=shape, name="image")
    x = padded_conv2d(inputs, 64, 11, strides=4, padding=2, name="conv1", kernel_initializer=_INIT)
    x = _max_pool(x, "pool1")
    x = padded_conv2d(x, 256, 5, padding=2, name="conv2", kernel_initializer=_INIT)
    x = _max_pool(x, "pool2")
    x = padded_conv2d(x, 384, 3, padding=3, name="conv3", kernel_initializer=_INIT)
    x = padded_conv2d(x, 384, 3, padding=3, name="conv4", kernel_initializer=_INIT)
    if include_top:
        x = classification_head(
            x,
            classes,
            head=head,
            fc_units=fc_units,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
            kernel_initializer=_INIT,
        )
    return keras.Model(inputs, x, name=name or "AlexNet")
