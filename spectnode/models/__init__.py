"""The papers' networks as Keras 3 model builders.

Every builder has the ``keras.applications`` shape
``build_xxx(input_shape=(1024, 256, 1), classes=4, include_top=True, **options)``
and returns a named functional ``keras.Model`` (channels_last: 1024 rows x
256 columns x 1 channel, the papers' "256 x 1024" image). They use
``keras.layers`` / ``keras.ops`` only, so they run under any Keras backend.
Inputs are expected min-max normalised to [0, 1] (both papers' Eq. 1); the
models contain no preprocessing.

Architectures (:data:`ARCHITECTURES`, keyed by the papers' names):

========================  ====================================================
dSPIC-AM, dSPIC-RM        dSPIC Table 3 (practical GAP head, see below)
dSPIC-AM-flatten,         the same, with the paper's literal flatten head
dSPIC-RM-flatten          (~1.73e9 parameters at 1024x256)
SI_CLF, SI_CLF+AM,        dSPIC Table 7
SI_CLF+RM, SI_CLF+AM+RM,
AlexNet
Classifier-inRAC,         inRAC Tables 1 and 7
Classifier-outRAC,
Classifier-18,
Classifier-34
VGG11, Inception-v1       inRAC Table 9
========================  ====================================================

FC-headed builders (dSPIC, SI_CLF*, AlexNet, VGG11) take ``head="gap"``
(default: global average pooling, then the paper's FC layers), ``"gmp"``
(global max pooling), ``"gap_gmp"`` (both, concatenated) or
``head="flatten"`` (the paper as written). The module docstrings of
:mod:`~spectnode.models.dspic`, :mod:`~spectnode.models.inrac` and
:mod:`~spectnode.models.classic` record every choice made where the papers
are silent.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import TYPE_CHECKING, Any

from .blocks import dense_stack_param_count
from .cbam import CBAM, cbam_attention_maps
from .classic import build_inception_v1, build_vgg11
from .dspic import (
    build_alexnet,
    build_dspic,
    build_dspic_am,
    build_dspic_rm,
    build_si_clf,
    build_si_clf_am,
    build_si_clf_am_rm,
    build_si_clf_rm,
)
from .inrac import (
    build_classifier_18,
    build_classifier_34,
    build_classifier_inrac,
    build_classifier_outrac,
    build_ra_conv_net,
)
from .introspection import LayerInfo, last_feature_layer, layer_table

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import keras

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_INPUT_SHAPE",
    "CBAM",
    "LayerInfo",
    "build_model",
    "count_params",
    "list_architectures",
    "cbam_attention_maps",
    "layer_table",
    "last_feature_layer",
    "build_dspic",
    "build_dspic_am",
    "build_dspic_rm",
    "build_si_clf",
    "build_si_clf_am",
    "build_si_clf_rm",
    "build_si_clf_am_rm",
    "build_alexnet",
    "build_ra_conv_net",
    "build_classifier_inrac",
    "build_classifier_outrac",
    "build_classifier_18",
    "build_classifier_34",
    "build_vgg11",
    "build_inception_v1",
]

#: The papers' image: 1024 rows x 256 columns x 1 channel (channels_last).
DEFAULT_INPUT_SHAPE: tuple[int, int, int] = (1024, 256, 1)


def _named_variant(builder: Callable[..., keras.Model], name: str, **fixed: Any) -> Callable[..., keras.Model]:
    # No functools.update_wrapper: it sets __wrapped__, and inspect.signature
    # would then report the wrapped builder's defaults instead of ``fixed``.
    variant = functools.partial(builder, name=name, **fixed)
    variant.__doc__ = f"{builder.__doc__}\n\nRegistered variant {name!r}: {fixed}."
    return variant


#: Canonical paper name -> builder. Values are called as
#: ``builder(input_shape=..., classes=..., **options)``.
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "dSPIC-AM": build_dspic_am,
    "dSPIC-RM": build_dspic_rm,
    "dSPIC-AM-flatten": _named_variant(build_dspic_am, "dSPIC-AM-flatten", head="flatten"),
    "dSPIC-RM-flatten": _named_variant(build_dspic_rm, "dSPIC-RM-flatten", head="flatten"),
    "SI_CLF": build_si_clf,
    "SI_CLF+AM": build_si_clf_am,
    "SI_CLF+RM": build_si_clf_rm,
    "SI_CLF+AM+RM": build_si_clf_am_rm,
    "AlexNet": build_alexnet,
    "Classifier-inRAC": build_classifier_inrac,
    "Classifier-outRAC": build_classifier_outrac,
    "Classifier-18": build_classifier_18,
    "Classifier-34": build_classifier_34,
    "VGG11": build_vgg11,
    "Inception-v1": build_inception_v1,
}


def _builder(name: str) -> Callable[..., keras.Model]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}"
        ) from None


def build_model(
    name: str,
    /,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    **kwargs: Any,
) -> keras.Model:
    """Build the architecture registered as ``name`` in :data:`ARCHITECTURES`.

    Args:
        name: Canonical name, e.g. ``"dSPIC-AM"`` or ``"Classifier-inRAC"``
            (positional-only, so ``name=...`` in ``kwargs`` names the model).
        input_shape: ``(rows, cols, channels)``.
        classes: Number of output classes.
        **kwargs: Passed to the builder (``include_top``, ``head``, ``name``, ...).

    Raises:
        ValueError: ``name`` is not registered (the message lists valid names).
    """
    return _builder(name)(input_shape=input_shape, classes=classes, **kwargs)


def count_params(
    name: str,
    /,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
    **kwargs: Any,
) -> int:
    """Parameter count of an architecture, without allocating a flatten head.

    For ``head="flatten"`` (explicit or fixed by the registry entry) the
    convolutional trunk is built (``include_top=False``) and the FC layers
    are counted analytically from the trunk's output size, so counting
    dSPIC-AM-flatten (~1.73e9 parameters, 6.9 GB of float32) costs no more
    than building the trunk. Otherwise the model is built and
    ``model.count_params()`` returned (all weights, including BN moving
    statistics, as Keras counts them).
    """
    builder = _builder(name)
    signature = inspect.signature(builder, follow_wrapped=False)
    head_parameter = signature.parameters.get("head")
    head = kwargs.get("head", head_parameter.default if head_parameter is not None else None)
    if head == "flatten" and kwargs.get("include_top", True):
        options = {key: value for key, value in kwargs.items() if key not in ("include_top", "head")}
        trunk = builder(input_shape=input_shape, classes=classes, include_top=False, **options)
        flat_features = math.prod(int(v) for v in trunk.output.shape[1:])
        fc_units = tuple(options.get("fc_units", signature.parameters["fc_units"].default))
        total = trunk.count_params() + dense_stack_param_count(flat_features, (*fc_units, classes))
        return int(total)
    model = builder(input_shape=input_shape, classes=classes, **kwargs)
    return int(model.count_params())


def list_architectures(
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    classes: int = 4,
) -> list[dict[str, Any]]:
    """Every registered architecture with its parameter count on ``input_shape``.

    Returns:
        ``[{"name": str, "params": int}, ...]`` in :data:`ARCHITECTURES` order
        (the JSON form of ``spectnode models --json``).
    """
    return [{"name": name, "params": count_params(name, input_shape, classes)} for name in ARCHITECTURES]

