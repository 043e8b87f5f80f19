"""Saving, verifying and loading model bundles.

A bundle is a folder holding

* ``model.keras``: the model in Keras 3's native format, and
* ``card.json``: its :class:`~spectnode.bundle.card.ModelCard`, which records
  the SHA-256 of the ``model.keras`` bytes.

:func:`verify_bundle` checks a bundle without building the model (reading only
the architecture's JSON config inside ``model.keras``), so a node can refuse a
bad bundle at start-up; :func:`load_bundle` verifies, then loads and re-checks
the built model. Keras is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectnode.fsutil import fsync_file, write_durably

from .card import BundleError, ModelCard, derive_device_uid

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Iterator, Sequence

    import keras

__all__ = [
    "CARD_FILENAME",
    "MODEL_FILENAME",
    "LoadedBundle",
    "file_sha256",
    "load_bundle",
    "read_card",
    "save_bundle",
    "verify_bundle",
]

MODEL_FILENAME = "model.keras"
CARD_FILENAME = "card.json"

# Layers whose output has the same last dimension as their input: the output
# size of a model ending in one of them is that of the layer before.
_SHAPE_PRESERVING_LAYERS = frozenset(
    {"Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU", "Dropout", "GaussianNoise",
     "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", "LayerNormalization",
     "BatchNormalization"}
)


@dataclasses.dataclass(frozen=True)
class LoadedBundle:
    """A verified, loaded bundle.

    Attributes:
        model: The Keras model, outputs in the order of ``card.classes``.
        card: Its model card.
        path: The bundle folder.
    """

    model: keras.Model
    card: ModelCard
    path: Path


def file_sha256(path: str | Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


@contextlib.contextmanager
def _temporary_path(directory: Path, suffix: str) -> Iterator[Path]:
    """A fresh file name in ``directory`` that is removed unless renamed away."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".partial-", suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _model_io_shapes(model: keras.Model) -> tuple[list[int | None], int | None]:
    """``(input shape without batch axis, number of outputs)`` of a built model."""
    input_shape = model.input_shape
    output_shape = model.output_shape
    if isinstance(input_shape, list):
        input_shape = input_shape[0] if len(input_shape) == 1 else None
    if isinstance(output_shape, list):
        output_shape = output_shape[0] if len(output_shape) == 1 else None
    if input_shape is None or output_shape is None:
        raise BundleError(f"model {model.name!r} must have exactly one input and one output")
    return list(input_shape[1:]), output_shape[-1]


def _shape_problems(
    card: ModelCard, model_input_shape: Sequence[int | None] | None, model_outputs: int | None
) -> list[str]:
    problems = []
    if model_outputs is not None and model_outputs != len(card.classes):
        problems.append(
            f"the model's output layer has {model_outputs} units but the card lists "
            f"{len(card.classes)} classes {card.classes!r}"
        )
    if model_input_shape is not None:
        fits = len(model_input_shape) == len(card.input_shape) and all(
            dim is None or dim == expected for dim, expected in zip(model_input_shape, card.input_shape)
        )
        if not fits:
            problems.append(
                f"the model's input shape {list(model_input_shape)} does not match the card's "
                f"input_shape {card.input_shape}"
            )
    return problems


def _without_optimizer(model: keras.Model) -> keras.Model:
    """The same architecture and weights without the optimizer state.

    A compiled model saves its optimizer too (Adam: two more copies of every
    weight), which a bundle for inference does not need: it would triple its size.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    bare = model.__class__.from_config(model.get_config())
    bare.set_weights(model.get_weights())
    return bare


def _with_dtype(config: Any, dtype: str) -> Any:
    """A model config with every layer's dtype policy replaced by ``dtype``."""
    if isinstance(config, dict):
        return {key: dtype if key == "dtype" and (isinstance(value, str) or (
                    isinstance(value, dict) and "DTypePolicy" in str(value.get("class_name", ""))))
                else _with_dtype(value, dtype) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_dtype(value, dtype) for value in config]
    return config


def _recast(model: keras.Model, dtype: str) -> keras.Model:
    """The same architecture with its layers (and weights) in ``dtype``."""
    cast = model.__class__.from_config(_with_dtype(model.get_config(), dtype))
    cast.set_weights([w.astype(dtype) if w.dtype.kind == "f" else w for w in model.get_weights()])
    return cast


def save_bundle(model: keras.Model, card: ModelCard, out_dir: str | Path) -> Path:
    """Write ``model`` and its card as a bundle in ``out_dir``.

    ``model.keras`` is written first (to a temporary name, fsynced, renamed),
    then its SHA-256 goes into the card's ``content_hash`` and the derived
    ``device_uid``, then ``card.json`` is written the same atomic way. An
    interrupted save therefore never leaves a card that matches wrong bytes.

    Args:
        model: A built Keras model with one input and one output whose size
            is ``len(card.classes)``.
        card: The model card; its ``content_hash`` and ``device_uid`` are
            ignored and replaced. Its ``weights_dtype`` says how the weights
            are stored (``float16``: half the size, rounded to half precision).
        out_dir: Bundle folder, created if missing. Existing bundle files in
            it are replaced.

    Returns:
        The bundle folder.

    Raises:
        BundleError: if the model's input or output shape does not fit the card.
    """
    out_dir = Path(out_dir)
    model_input_shape, model_outputs = _model_io_shapes(model)
    problems = _shape_problems(card, model_input_shape, model_outputs)
    if problems:
        raise BundleError(f"cannot save bundle {out_dir}: " + "; ".join(problems))

    out_dir.mkdir(parents=True, exist_ok=True)
    with _temporary_path(out_dir, ".keras") as model_tmp:
        bare = _without_optimizer(model)
        if card.weights_dtype != "float32":
            bare = _recast(bare, card.weights_dtype)
        bare.save(model_tmp)  # Keras requires the .keras suffix, hence the temp name
        fsync_file(model_tmp)
        content_hash = file_sha256(model_tmp)
        saved_card = dataclasses.replace(
            card, content_hash=content_hash, device_uid=derive_device_uid(content_hash)
        )
        os.replace(model_tmp, out_dir / MODEL_FILENAME)
    # The card last, durably (its write fsyncs the folder, so the model's rename too).
    write_durably(out_dir / CARD_FILENAME, saved_card.to_json().encode("utf-8"))
    return out_dir


def read_card(bundle_dir: str | Path) -> ModelCard:
    """Read and validate the card of the bundle in ``bundle_dir``.

    Does not check the model file; see :func:`verify_bundle`.

    Raises:
        BundleError: if ``card.json`` is missing, not JSON, of an unsupported
            ``card_format``, has unknown or missing keys, or invalid values.
    """
    bundle_dir = Path(bundle_dir)
    card_path = bundle_dir / CARD_FILENAME
    if not card_path.is_file():
        raise BundleError(f"model bundle {bundle_dir}: no {CARD_FILENAME} (model card) found")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"model bundle {bundle_dir}: {CARD_FILENAME} is not valid JSON: {error}") from None
    try:
        return ModelCard.from_dict(data)
    except (TypeError, ValueError) as error:
        raise BundleError(f"model bundle {bundle_dir}: invalid {CARD_FILENAME}: {error}") from None


def _config_layers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {layer.get("name", layer.get("config", {}).get("name")): layer for layer in config.get("layers", [])}


def _endpoint_names(endpoints: Any) -> list[str]:
    # Functional configs store one endpoint as [name, node, tensor] and several
    # as a list of those.
    if isinstance(endpoints, list) and endpoints and isinstance(endpoints[0], str):
        return [endpoints[0]]
    if isinstance(endpoints, list):
        return [endpoint[0] for endpoint in endpoints if isinstance(endpoint, list) and endpoint]
    if isinstance(endpoints, dict):  # {name: [layer, node, tensor]}
        return [value[0] for value in endpoints.values()]
    return []


def _declared_io_shapes(model_config: dict[str, Any]) -> tuple[list[int | None] | None, int | None]:
    """Input shape and output size read from a saved model's config, where evident.

    Returns ``None`` for either when the config does not state it plainly
    (e.g. subclassed models); :func:`load_bundle` then checks the built model.
    """
    class_name = model_config.get("class_name")
    config = model_config.get("config", {})
    if class_name == "Sequential":
        layer_list = config.get("layers", [])
        input_shape = None
        if layer_list and layer_list[0].get("class_name") == "InputLayer":
            batch_shape = layer_list[0]["config"].get("batch_shape")
            input_shape = list(batch_shape[1:]) if batch_shape else None
        units = None
        for layer in reversed(layer_list):
            layer_config = layer.get("config", {})
            if "units" in layer_config:
                units = layer_config["units"]
                break
            if layer.get("class_name") not in _SHAPE_PRESERVING_LAYERS:
                break
        return input_shape, units
    if class_name not in ("Functional", "Model") or "layers" not in config:
        return None, None

    layers = _config_layers(config)
    input_names = _endpoint_names(config.get("input_layers"))
    output_names = _endpoint_names(config.get("output_layers"))
    input_shape = None
    if len(input_names) == 1 and input_names[0] in layers:
        batch_shape = layers[input_names[0]].get("config", {}).get("batch_shape")
        input_shape = list(batch_shape[1:]) if batch_shape else None
    units = None
    if len(output_names) == 1 and output_names[0] in layers:
        layer = layers[output_names[0]]
        for _ in range(len(layers)):
            layer_config = layer.get("config", {})
            if "units" in layer_config:
                units = layer_config["units"]
                break
            if layer.get("class_name") in ("Functional", "Sequential", "Model"):
                units = _declared_io_shapes(layer)[1]
                break
            if layer.get("class_name") not in _SHAPE_PRESERVING_LAYERS:
                break
            # A shape-preserving layer: its input tensor's recorded shape gives the size.
            nodes = layer.get("inbound_nodes") or []
            arguments = nodes[0].get("args", []) if nodes and isinstance(nodes[0], dict) else []
            tensor = arguments[0] if arguments else None
            if isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__":
                shape = tensor.get("config", {}).get("shape")
                units = shape[-1] if shape else None
            break
    return input_shape, units


def verify_bundle(bundle_dir: str | Path, expected_classes: Sequence[str] | None = None) -> ModelCard:
    """Check a bundle's integrity and fit, without building the model.

    Checks, in order: both files exist; the card is valid (format version,
    exact key set, values); the SHA-256 of ``model.keras`` equals the card's
    ``content_hash``; the card's ``device_uid`` is the one derived from it; the
    card's classes equal ``expected_classes`` (when given); the output size
    and input shape in the saved model's config match the card.

    Args:
        bundle_dir: The bundle folder.
        expected_classes: The class names, in output order, that the caller
            needs (e.g. the configured scheme's classes); ``None`` skips that check.

    Returns:
        The verified card.

    Raises:
        BundleError: naming the bundle and every mismatch found.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle {bundle_dir} does not exist or is not a folder")
    missing = [name for name in (MODEL_FILENAME, CARD_FILENAME) if not (bundle_dir / name).is_file()]
    if missing:
        raise BundleError(
            f"model bundle {bundle_dir} is incomplete: missing {', '.join(missing)} "
            f"(a bundle holds {MODEL_FILENAME} and {CARD_FILENAME})"
        )
    card = read_card(bundle_dir)
    model_path = bundle_dir / MODEL_FILENAME
    actual_hash = file_sha256(model_path)
    if actual_hash != card.content_hash:
        raise BundleError(
            f"model bundle {bundle_dir}: {MODEL_FILENAME} has been modified or corrupted: "
            f"expected {card.content_hash} got {actual_hash}"
        )

    problems = []
    if card.device_uid != derive_device_uid(card.content_hash):
        problems.append(
            f"device_uid {card.device_uid} is not the one derived from content_hash "
            f"({derive_device_uid(card.content_hash)})"
        )
    if expected_classes is not None and list(expected_classes) != card.classes:
        problems.append(f"class list mismatch: the card lists {card.classes!r}, expected {list(expected_classes)!r}")
    try:
        with zipfile.ZipFile(model_path) as archive:
            model_config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        problems.append(f"{MODEL_FILENAME} is not a Keras 3 model archive: {error}")
    else:
        problems += _shape_problems(card, *_declared_io_shapes(model_config))
    if problems:
        raise BundleError(f"model bundle {bundle_dir}: " + "; ".join(problems))
    return card


def load_bundle(
    bundle_dir: str | Path, expected_classes: Sequence[str] | None = None, *, compile: bool = False
) -> LoadedBundle:
    """Verify a bundle, then load its model.

    Imports :mod:`spectnode.models` first so that its custom layers (registered
    with ``keras.saving.register_keras_serializable``) deserialize.

    Args:
        bundle_dir: The bundle folder.
        expected_classes: See :func:`verify_bundle`.
        compile: Restore the training configuration too (only needed to
            continue training).

    Returns:
        The model, its card and the bundle path.

    Raises:
        BundleError: if verification fails, Keras cannot load the model, or
            the built model's input/output shapes do not match the card.
    """
    bundle_dir = Path(bundle_dir)
    card = verify_bundle(bundle_dir, expected_classes)
    if importlib.util.find_spec("spectnode.models") is not None:
        importlib.import_module("spectnode.models")
    import keras

    try:
        model = keras.saving.load_model(bundle_dir / MODEL_FILENAME, compile=compile)
    except Exception as error:  # Keras raises many types; all mean "cannot load"
        raise BundleError(
            f"model bundle {bundle_dir}: Keras {keras.__version__} cannot load {MODEL_FILENAME} "
            f"(saved with keras {card.software.get('keras', '?')}, {card.software.get('backend', '?')}): "
            f"{type(error).__name__}: {error}"
        ) from error
    if card.weights_dtype != "float32":
        model = _recast(model, "float32")  # inference always runs in float32
    problems = _shape_problems(card, *_model_io_shapes(model))
    if problems:
        raise BundleError(f"model bundle {bundle_dir}: " + "; ".join(problems))
    return LoadedBundle(model=model, card=card, path=bundle_dir)
