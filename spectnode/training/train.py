"""``spectnode train``: the papers' training recipe, repeatable by anyone with labelled scans.

Recipe (both papers): min-max normalised images, a 7:3 split with every study of
a patient on one side, augmentation by mirroring, translation and rotation,
Adam.  Defaults follow each paper's table (dSPIC Table 4: lr 1e-4, batch 16,
300 epochs; Classifier-inRAC Table 3: lr 0.01, batch 32, 300 epochs).
Additions a reproducible tool needs: class-balanced sample weights, a
patient-wise validation slice of the training side for early stopping (the
held-out 30 % is never looked at until the end), checkpoints every epoch, a
resumable run, and a progress line with the overall ETA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..imaging.network_input import InputSpec, network_inputs
from ..imaging.preprocess import AugmentationParams, apply_augmentation, sample_augmentation
from ..imaging.views import NotAssessable, iter_study_views
from .labels import LabelledStudy, scheme_classes, split_by_patient
from .lesion_maps import (
    LESION_KINDS,
    GridGeometry,
    StudyFindings,
    choose_feature_layer,
    head_grid,
    lesion_map,
    lesion_map_loss,
    with_lesion_head,
    without_lesion_head,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

__all__ = ["TrainSettings", "paper_defaults", "LoadedSamples", "load_samples", "subset_samples", "train",
           "TrainingResult", "predict_studies", "class_weights", "copy_weights", "start_from", "PRECISIONS",
           "dtype_policy", "build_network", "in_float32"]

#: Settings a resumed run may change: a longer run, or a learning-rate / batch-size step
#: (the usual manual schedule).  Anything else would make the checkpoint another experiment.
_RESUMABLE_CHANGES = ("epochs", "patience", "learning_rate", "batch_size", "warmup_epochs")

# Which paper's table gives an architecture's defaults, and its view handling.
_INRAC_FAMILY = ("Classifier-inRAC", "Classifier-outRAC", "Classifier-18", "Classifier-34", "VGG11", "Inception-v1")


def paper_defaults(arch: str) -> dict[str, Any]:
    """Learning rate, batch size, epochs and view mode from the architecture's paper."""
    if arch in _INRAC_FAMILY:
        return {"learning_rate": 0.01, "batch_size": 32, "epochs": 300, "input_mode": "aggregate"}
    return {"learning_rate": 1e-4, "batch_size": 16, "epochs": 300, "input_mode": "per_view"}


#: Keras dtype policies a run may train under (``--precision``).
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run; stored with its checkpoints."""

    arch: str
    scheme: str
    learning_rate: float
    batch_size: int
    epochs: int
    input_mode: str
    input_shape: tuple[int, int] = (1024, 256)
    #: Augmentation: +/- t pixels translation, +/- r degrees rotation, mirroring.
    translate_px: int = 3
    rotate_deg: float = 3.0
    mirror: bool = True
    #: Early stopping: epochs without validation-loss improvement.
    patience: int = 10
    #: Share of patients trained on; 1.0 when a separate held-out set is given.
    train_fraction: float = 0.7
    #: Share of the training patients held back for early stopping.
    validation_fraction: float = 0.1
    seed: int = 0
    #: Extra keyword arguments for the architecture builder (e.g. {"fc_units": [256]}).
    arch_options: dict[str, Any] = field(default_factory=dict)
    #: Content hash of the bundle whose weights the run starts from (fine-tuning);
    #: empty for the builder's random initialisation.
    initial_weights: str = ""
    #: How inputs are scaled: the papers' "minmax" or "bone_window".
    normalization: str = "minmax"
    #: Linear learning-rate warm-up from ~0 to ``learning_rate`` over this many epochs
    #: (per step); 0 starts at ``learning_rate``.
    warmup_epochs: int = 0
    #: Weight of the lesion-map loss (:mod:`spectnode.training.lesion_maps`: a training-only head
    #: that points at the findings the data's ``truth.jsonl`` records); 0 trains on the labels only.
    lesion_supervision: float = 0.0
    #: Keras dtype policy while training: "float32", or "mixed_bfloat16" (bfloat16 computation on
    #: float32 weights: about 3x faster for dSPIC-AM on CPUs with AMX or AVX512-BF16, and on GPUs).
    #: The bundle is always a float32 network.
    precision: str = "float32"

    def __post_init__(self) -> None:
        # Here, not at the first layer built, so that a typo fails before the data are read.
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")

    def input_spec(self) -> InputSpec:
        rows, cols = self.input_shape
        mode: Literal["per_view", "aggregate"] = "aggregate" if self.input_mode == "aggregate" else "per_view"
        return InputSpec(mode=mode, shape=(int(rows), int(cols)), normalization=self.normalization)


@dataclass
class LoadedSamples:
    """Network inputs of labelled studies, several per study in ``per_view`` mode."""

    x: np.ndarray  # (n, rows, cols, 1) float32
    y: np.ndarray  # (n,) class index
    study: np.ndarray  # (n,) index into ``studies``
    studies: list[LabelledStudy]
    #: Studies left out, with why (not assessable, or no files found).
    skipped: dict[str, str]


def load_samples(files: Sequence[Path], studies: Sequence[LabelledStudy], classes: Sequence[str],
                 spec: InputSpec) -> LoadedSamples:
    """Read the labelled studies among ``files`` and prepare their network inputs."""
    wanted = {s.study_uid for s in studies}
    # one study's views in memory at a time: only the (much smaller) network inputs are kept
    inputs_by_study: dict[str, list[np.ndarray] | str] = {}
    for uid, views in iter_study_views(list(files), wanted):
        if uid in wanted:
            inputs_by_study[uid] = (f"not assessable: {views.reason}" if isinstance(views, NotAssessable)
                                    else [inp.array for inp in network_inputs(views, spec)])
    xs: list[np.ndarray] = []
    ys: list[int] = []
    idx: list[int] = []
    kept: list[LabelledStudy] = []
    skipped: dict[str, str] = {}
    for s in studies:
        found = inputs_by_study.get(s.study_uid, "no DICOM files of this study in the data folder")
        if isinstance(found, str):
            skipped[s.study_uid] = found
            continue
        for array in found:
            xs.append(array)
            ys.append(classes.index(s.label))
            idx.append(len(kept))
        kept.append(s)
    if not kept:
        raise ValueError("none of the labelled studies could be read from the data folder"
                         + (f" (e.g. {next(iter(skipped.items()))})" if skipped else ""))
    return LoadedSamples(np.stack(xs).astype(np.float32, copy=False), np.asarray(ys, np.int64),
                         np.asarray(idx, np.int64), kept, skipped)


def subset_samples(samples: LoadedSamples, wanted: Sequence[LabelledStudy]) -> LoadedSamples:
    """The samples of the ``wanted`` studies only."""
    uids = {s.study_uid for s in wanted}
    keep_studies = [i for i, s in enumerate(samples.studies) if s.study_uid in uids]
    remap = {old: new for new, old in enumerate(keep_studies)}
    mask = np.isin(samples.study, keep_studies)
    return LoadedSamples(samples.x[mask], samples.y[mask], np.array([remap[i] for i in samples.study[mask]]),
                         [samples.studies[i] for i in keep_studies], {})


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over the samples: each class counts equally."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    weights = np.where(counts > 0, len(y) / (present * np.maximum(counts, 1)), 0.0)
    return weights


@dataclass(frozen=True)
class _LesionTargets:
    """What the lesion-map output of a training model is trained on."""

    grid: GridGeometry
    #: Findings of each input's study (``None``: not recorded, the input's map does not count).
    findings: list[StudyFindings | None]

    def maps(self, indices: Sequence[int] | np.ndarray, shape: tuple[int, int],
             params: Sequence[AugmentationParams | None]) -> tuple[np.ndarray, np.ndarray]:
        """Targets and their sample weights for the inputs ``indices`` augmented by ``params``."""
        maps = np.zeros((len(indices), *self.grid.shape, len(LESION_KINDS)), np.float32)
        weights = np.zeros(len(indices), np.float32)
        for j, (k, p) in enumerate(zip(indices, params)):
            found = self.findings[k]
            if found is not None:
                maps[j] = lesion_map(found, shape, self.grid, p)
                weights[j] = 1.0
        return maps, weights


def _lesion_targets(samples: LoadedSamples, findings: Mapping[str, StudyFindings], grid: GridGeometry
                    ) -> _LesionTargets:
    return _LesionTargets(grid, [findings.get(samples.studies[int(k)].study_uid) for k in samples.study])


def _augmented_batches(samples: LoadedSamples, settings: TrainSettings, n_classes: int,
                       first_epoch: int = 0, lesions: _LesionTargets | None = None) -> Any:
    import keras

    weights = class_weights(samples.y, n_classes)

    class AugmentedBatches(keras.utils.PyDataset):
        """Shuffled, augmented batches; the order and augmentation depend on (seed, epoch) only.

        A resumed run starts at its own epoch, so it does not replay epoch 1's draws.
        """

        def __init__(self) -> None:
            super().__init__()
            self.epoch = first_epoch
            self.order = np.arange(len(samples.y))
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(len(samples.y) / settings.batch_size)

        def on_epoch_end(self) -> None:
            rng = np.random.default_rng([settings.seed, self.epoch])
            self.order = rng.permutation(len(samples.y))
            self.epoch += 1

        def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
            chosen = self.order[index * settings.batch_size:(index + 1) * settings.batch_size]
            rng = np.random.default_rng([settings.seed, self.epoch, index])
            batch = np.empty((len(chosen),) + samples.x.shape[1:], np.float32)
            drawn = []
            for j, k in enumerate(chosen):
                params = sample_augmentation(rng, translate_px=settings.translate_px,
                                             rotate_deg=settings.rotate_deg, mirror=settings.mirror)
                batch[j, ..., 0] = apply_augmentation(samples.x[k, ..., 0], params)
                drawn.append(params)
            y, w = samples.y[chosen], weights[samples.y[chosen]]
            if lesions is None:
                return batch, y, w
            maps, map_weights = lesions.maps(chosen, samples.x.shape[1:3], drawn)
            return batch, (y, maps), (w, map_weights)

    return AugmentedBatches()


@dataclass
class TrainingResult:
    model: Any
    settings: TrainSettings
    history: list[dict[str, float]]
    train: list[LabelledStudy]
    test: list[LabelledStudy]
    stopped_early: bool
    #: Epoch of the kept (lowest validation loss) weights.
    best_epoch: int = 0
    #: Each --resume: after which epoch, and the settings it changed.
    resumes: list[dict[str, Any]] = field(default_factory=list)


def _progress_callback(settings: TrainSettings, state_path: Path, checkpoint_dir: Path, state: dict[str, Any],
                       log: Callable[[str], None], monitor: str = "val_loss") -> Any:
    import keras

    class CheckpointProgressEarlyStop(keras.callbacks.Callback):
        """Checkpoint, early stopping and an overall ETA, all resumable from ``state.json``."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.started = time.monotonic()
            self.first_epoch = state["epoch"]
            self.epoch = state["epoch"]

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch

        def _check_finite(self, name: str, value: Any, where: str) -> None:
            # Raised before anything is saved: the checkpoints of the epochs before stay usable.
            if value is not None and not math.isfinite(float(value)):
                hint = " (bfloat16 on this input shape may be the cause: try --precision float32)" \
                    if settings.precision != "float32" else " (try a lower --learning-rate)"
                raise ValueError(f"training diverged: {name} is {float(value)} {where}{hint}; the checkpoints "
                                 f"of the epochs before are in {checkpoint_dir}")

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._check_finite("the loss", (logs or {}).get("loss"), f"at epoch {self.epoch + 1}, batch {batch + 1}")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = dict(logs or {})
            if monitor not in logs and monitor != "val_loss":
                raise RuntimeError(f"training logged no {monitor!r} to stop early on (logged: {sorted(logs)})")
            for key in ("loss", monitor):
                self._check_finite(key.replace("_", " "), logs.get(key), f"after epoch {epoch + 1}")
            val = float(logs.get(monitor, logs.get("loss", math.inf)))
            state["history"].append({k: float(v) for k, v in logs.items()} | {"epoch": epoch + 1})
            state["epoch"] = epoch + 1
            improved = val < state["best_val_loss"] - 1e-6
            if improved:
                state["best_val_loss"] = val
                state["wait"] = 0
                self.model.save(checkpoint_dir / "best.keras")
            else:
                state["wait"] += 1
            self.model.save(checkpoint_dir / "last.keras")
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, state_path)
            done = epoch + 1 - self.first_epoch
            per_epoch = (time.monotonic() - self.started) / max(done, 1)
            remaining = settings.epochs - (epoch + 1)
            eta = per_epoch * min(remaining, max(settings.patience - state["wait"], 0))
            metrics = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
            log(f"epoch {epoch + 1}/{settings.epochs}  {metrics}  {'*best*' if improved else ''} "
                f"{per_epoch:.0f}s/epoch, ETA <= {_fmt_duration(per_epoch * remaining)} "
                f"(early stop possible in {_fmt_duration(eta)})")
            if state["wait"] >= settings.patience:
                state["stopped_early"] = True
                log(f"early stopping: no validation-loss improvement in {settings.patience} epochs")
                self.model.stop_training = True

    return CheckpointProgressEarlyStop()


def _warmup_callback(settings: TrainSettings, steps_per_epoch: int) -> Any:
    import keras

    class LinearWarmUp(keras.callbacks.Callback):
        """Ramps the learning rate up during the first ``warmup_epochs``, then holds it.

        Large early steps on a network without batch normalisation can push many ReLUs
        into their dead region for good; a ramp lets Adam's moment estimates settle
        first. It depends on the epoch and step only, so a resumed run is the same.
        """

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            total = settings.warmup_epochs * steps_per_epoch
            step = self.epoch * steps_per_epoch + batch + 1
            factor = min(1.0, step / total) if total else 1.0
            self.model.optimizer.learning_rate.assign(settings.learning_rate * factor)

    return LinearWarmUp()


#: BatchNormalization momentum while training. Keras's default 0.99 needs about a
#: thousand steps to forget the initial moving variance of 1, which is far above the
#: variance of min-max-normalised counts: until then inference-mode outputs collapse
#: onto one class. 0.9 forgets it within a few dozen steps.
BATCH_NORM_MOMENTUM = 0.9


def _set_batch_norm_momentum(model: Any) -> None:
    import keras

    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 (also layers inside blocks)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build layers under Keras' ``precision`` policy; the previous global policy is restored after.

    Raises:
        ValueError: If ``precision`` is not one of :data:`PRECISIONS`.
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def build_network(settings: TrainSettings, classes: int, precision: str | None = None) -> Any:
    """A new ``settings.arch`` with ``settings.arch_options``, computing in ``precision`` (default: the run's)."""
    from ..models import build_model

    with dtype_policy(precision or settings.precision):
        return build_model(settings.arch, input_shape=(*settings.input_shape, 1), classes=classes,
                           **settings.arch_options)


def in_float32(model: Any, settings: TrainSettings, classes: int) -> Any:
    """``model`` as a float32 network (the same weights), whatever policy it was trained under."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    plain = build_network(settings, classes, "float32")
    copy_weights(model, plain)
    _set_batch_norm_momentum(plain)
    return plain


def start_from(initial_model: Any, settings: TrainSettings, classes: int) -> Any:
    """A new network of ``settings.arch`` with ``settings.arch_options``, holding ``initial_model``'s weights.

    Built afresh rather than trained on in place, so that a run can change a layer without
    weights (``--arch-options '{"head": "gmp"}'`` on a bundle trained with average pooling).

    Raises:
        ValueError: If the weights do not fit (:func:`copy_weights`).
    """
    try:
        model = build_network(settings, classes)
    except TypeError as exc:  # an option the builder does not take (one of the bundle's, or a typo)
        raise ValueError(f"{settings.arch} does not take the architecture options {settings.arch_options}: "
                         f"{exc}") from None
    copy_weights(initial_model, model)
    return model


def copy_weights(source: Any, target: Any) -> None:
    """Give every layer of ``target`` the weights of ``source``'s layer of the same name.

    The two may differ only in layers without weights (another pooling head, say), so a run
    can start from a bundle and change such a layer (``--arch-options``).

    Raises:
        ValueError: If a layer with weights is missing from either model or has other shapes.
    """
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    ours = {layer.name: layer for layer in target.layers if layer.weights}
    problems = [f"{name} only in the {'bundle' if name in theirs else 'new network'}"
                for name in sorted(set(theirs) ^ set(ours))]
    for name in sorted(set(theirs) & set(ours)):
        a = [tuple(w.shape) for w in theirs[name].get_weights()]
        b = [tuple(w.shape) for w in ours[name].get_weights()]
        if a != b:
            problems.append(f"{name} has weights {a} in the bundle, {b} in the new network")
    if problems:
        raise ValueError("the bundle's weights do not fit this network: " + "; ".join(problems))
    for name, layer in ours.items():
        layer.set_weights(theirs[name].get_weights())


def train(samples: LoadedSamples, settings: TrainSettings, out_dir: Path, resume: bool = False,
          log: Callable[[str], None] = print, verbose: int | None = None,
          initial_model: Any = None, findings: Mapping[str, StudyFindings] | None = None) -> TrainingResult:
    """Train ``settings.arch`` on ``samples``; checkpoints go to ``out_dir/checkpoints``.

    ``initial_model`` (a model of ``settings.arch`` with its options, already holding the
    weights named by ``settings.initial_weights``: :func:`start_from`) replaces the random
    initialisation of a new run; a resumed run continues from its own checkpoint instead.
    With ``settings.lesion_supervision``, ``findings`` (by Study Instance UID, from
    :func:`~spectnode.training.lesion_maps.read_truth`) are the lesion-map targets; the
    returned model is the plain network all the same.
    """
    import keras

    classes = scheme_classes(settings.scheme)
    if settings.lesion_supervision < 0:
        raise ValueError(f"lesion_supervision must be >= 0, got {settings.lesion_supervision}")
    supervised = settings.lesion_supervision > 0
    if supervised and not findings:
        raise ValueError("lesion supervision needs the findings of the training studies (truth.jsonl), "
                         "and none were found")
    if supervised:
        lesion_map_loss()  # registered before any checkpoint of a two-output model is loaded
    keras.utils.set_random_seed(settings.seed)
    if settings.train_fraction < 1.0:
        train_studies, test_studies = split_by_patient(samples.studies, settings.train_fraction, settings.seed)
    else:  # a separate held-out set is evaluated by the caller
        train_studies, test_studies = list(samples.studies), []
    fit_studies, val_studies = split_by_patient(train_studies, 1.0 - settings.validation_fraction, settings.seed + 1)
    fit, val = subset_samples(samples, fit_studies), subset_samples(samples, val_studies)
    log(f"studies: {len(fit_studies)} train, {len(val_studies)} validation (early stopping), "
        f"{len(test_studies)} held out; {len(fit.y)} training inputs")

    checkpoint_dir = out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_path = checkpoint_dir / "state.json"
    settings_json = json.loads(json.dumps(dataclasses.asdict(settings)))
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        # Settings added since the checkpoint was written take their defaults.
        defaults = {
            f.name: f.default for f in dataclasses.fields(TrainSettings) if f.default is not dataclasses.MISSING
        }
        state["settings"] = {k: v for k, v in defaults.items() if k in settings_json} | state["settings"]
        # A longer run or a schedule step may be asked for on resume; anything else must match.
        same = {k: v for k, v in settings_json.items() if k not in _RESUMABLE_CHANGES}
        if {k: v for k, v in state["settings"].items() if k not in _RESUMABLE_CHANGES} != same:
            raise ValueError(f"{state_path}: the checkpoint was made with other settings; "
                             f"use the same arguments or a new --out folder")
        import spectnode.models  # noqa: F401  (registers custom layers)

        model = keras.saving.load_model(checkpoint_dir / "last.keras")
        _set_batch_norm_momentum(model)
        model.optimizer.learning_rate.assign(settings.learning_rate)
        changed = {k: (state["settings"].get(k), v) for k, v in settings_json.items()
                   if k in _RESUMABLE_CHANGES and state["settings"].get(k) != v}
        for key, (old, new) in changed.items():
            log(f"resuming with {key} {new} (was {old})")
        state.setdefault("resumes", []).append(
            {"after_epoch": state["epoch"], "changed": {k: v[1] for k, v in changed.items()}}
        )
        state["settings"] = settings_json
        state["stopped_early"] = state["stopped_early"] and state["wait"] >= settings.patience
        log(f"resuming after epoch {state['epoch']} (best validation loss {state['best_val_loss']:.4f})")
    else:
        if resume:
            log(f"nothing to resume in {checkpoint_dir}; starting afresh")
        state = {"settings": settings_json, "epoch": 0, "best_val_loss": math.inf, "wait": 0, "history": [],
                 "stopped_early": False}
        if initial_model is not None:
            model = initial_model
            log(f"starting from the weights of {settings.initial_weights}")
        else:
            model = build_network(settings, len(classes))
        _set_batch_norm_momentum(model)
        if supervised:
            layer = choose_feature_layer(model)
            model = with_lesion_head(model, layer)
            log(f"lesion supervision (weight {settings.lesion_supervision:g}) on the output of layer {layer}")
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                          loss=["sparse_categorical_crossentropy", lesion_map_loss()],
                          loss_weights=[1.0, settings.lesion_supervision], weighted_metrics=[["accuracy"], []])
        else:
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                          loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
    # With a lesion head, early stopping watches the class loss alone (the paper's objective).
    monitor = f"val_{model.output_names[0]}_loss" if len(model.outputs) > 1 else "val_loss"
    if state["epoch"] < settings.epochs and not state["stopped_early"]:
        lesions = val_lesions = None
        if len(model.outputs) > 1:
            grid = head_grid(model)
            lesions = _lesion_targets(fit, findings or {}, grid)
            val_lesions = _lesion_targets(val, findings or {}, grid)
        batches = _augmented_batches(fit, settings, len(classes), state["epoch"], lesions)
        callbacks = [_progress_callback(settings, state_path, checkpoint_dir, state, log, monitor)]
        if settings.warmup_epochs:
            callbacks.insert(0, _warmup_callback(settings, len(batches)))
        val_y: Any = val.y
        val_w: Any = class_weights(fit.y, len(classes))[val.y]
        if val_lesions is not None:
            val_maps, val_map_weights = val_lesions.maps(range(len(val.y)), val.x.shape[1:3], [None] * len(val.y))
            val_y, val_w = (val_y, val_maps), (val_w, val_map_weights)
        model.fit(batches,
                  validation_data=(val.x, val_y, val_w),
                  epochs=settings.epochs, initial_epoch=state["epoch"],
                  callbacks=callbacks,
                  verbose=verbose if verbose is not None else (1 if sys.stderr.isatty() else 0))
    best = checkpoint_dir / "best.keras"
    if best.exists():
        import spectnode.models  # noqa: F401

        model = keras.saving.load_model(best)
    model = in_float32(without_lesion_head(model), settings, len(classes))
    best_epoch = next((h["epoch"] for h in state["history"]
                       if float(h.get(monitor, h.get("loss", math.inf))) == state["best_val_loss"]), state["epoch"])
    return TrainingResult(model, settings, state["history"], train_studies, test_studies, state["stopped_early"],
                          best_epoch, state.get("resumes", []))


def predict_studies(model: Any, samples: LoadedSamples, batch_size: int = 16) -> np.ndarray:
    """Study-level probabilities (mean over a study's inputs), in ``samples.studies`` order."""
    probs = np.asarray(model.predict(samples.x, batch_size=batch_size, verbose=0), dtype=np.float64)
    out = np.zeros((len(samples.studies), probs.shape[1]))
    np.add.at(out, samples.study, probs)
    counts = np.bincount(samples.study, minlength=len(samples.studies))[:, None]
    return out / np.maximum(counts, 1)
