"""What ``spectnode train`` and ``spectnode evaluate`` do, behind the argument parsing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..imaging.network_input import InputSpec
from .labels import LabelledStudy, read_labelme_dir, read_labels_csv, scheme_classes
from .metrics import compute_metrics, format_metrics_table, write_evaluation_plots
from .train import LoadedSamples, TrainSettings, load_samples, predict_studies, start_from, subset_samples, train

if TYPE_CHECKING:  # keras loads only when a bundle does
    from collections.abc import Callable, Iterator, Sequence

    from ..bundle import LoadedBundle

__all__ = ["read_labels", "run_training", "run_evaluation", "PHANTOM_INSTITUTION"]

#: InstitutionName the phantom generator writes; marks a data set as synthetic.
PHANTOM_INSTITUTION = "spectnode synthetic phantom"


def _headers(files: Sequence[Path]) -> Iterator[Any]:
    import pydicom

    for path in files:
        try:
            yield path, pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: the view reader reports it
            continue


def read_labels(labels: Path, files: Sequence[Path], scheme: str) -> list[LabelledStudy]:
    """Labels from a CSV file, or from a folder (or one file) of LabelMe JSON annotations."""
    if labels.is_dir() or labels.suffix.lower() == ".json":
        keys: dict[str, tuple[str, str]] = {}
        ambiguous: set[str] = set()  # e.g. IM0001.dcm in every study folder
        for path, ds in _headers(files):
            entry = (str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", "")))
            for key in (path.name, path.stem, str(ds.get("SOPInstanceUID", "")), entry[0]):
                if key and keys.setdefault(key, entry) != entry:
                    ambiguous.add(key)
        for key in ambiguous:
            del keys[key]
        folder = labels if labels.is_dir() else labels.parent
        return read_labelme_dir(folder, scheme, keys)
    return read_labels_csv(labels, scheme)


def _is_synthetic(files: Sequence[Path]) -> bool:
    """True when the data are spectnode phantoms (checked on a sample of headers)."""
    sample = list(_headers(files[:: max(1, len(files) // 20)]))
    return bool(sample) and all(str(ds.get("InstitutionName", "")) == PHANTOM_INSTITUTION for _, ds in sample)


def _counts(studies: Sequence[LabelledStudy], classes: Sequence[str]) -> dict[str, int]:
    return {c: sum(s.label == c for s in studies) for c in classes}


def _load(labels: Path, files: Sequence[Path], settings: TrainSettings,
          log: Callable[[str], None]) -> LoadedSamples:
    studies = read_labels(labels, files, settings.scheme)
    log(f"{len(studies)} labelled studies; reading and preparing {settings.input_mode} inputs "
        f"at {settings.input_shape[0]}x{settings.input_shape[1]} ...")
    samples = load_samples(files, studies, scheme_classes(settings.scheme), settings.input_spec())
    for uid, why in sorted(samples.skipped.items()):
        log(f"skipped study {uid}: {why}")
    return samples


def _check_initial_bundle(initial: LoadedBundle, settings: TrainSettings) -> None:
    """Refuse to fine-tune from a bundle that is another architecture, scheme or kind of input.

    The normalisation may differ: the bundle's weights are then only a
    starting point whose learnt features (edges, blobs, anatomy) carry over,
    and the run adapts them to the new input scale. So may the input shape,
    for a network whose weights do not depend on it (a pooled head, not the
    paper's flatten head): :func:`copy_weights` refuses weights that do not fit.
    """
    card = initial.card
    wanted = {"architecture": settings.arch, "classes": list(scheme_classes(settings.scheme)),
              "views": settings.input_mode}
    found = {"architecture": card.architecture, "classes": card.classes, "views": card.preprocessing.get("views")}
    problems = [f"{key} {found[key]!r} (this run: {wanted[key]!r})" for key in wanted if found[key] != wanted[key]]
    shape = [*settings.input_shape, 1]
    if card.input_shape != shape and any(type(layer).__name__ == "Flatten" for layer in initial.model.layers):
        # Its FC weights may still fit (valid pooling rounds sizes down), but would read other positions.
        problems.append(f"input_shape {card.input_shape!r} (this run: {shape!r}) with a flatten head")
    if problems:
        raise ValueError(f"cannot start from bundle {initial.path}: its " + ", ".join(problems))


def _bundle_arch_options(initial: LoadedBundle) -> dict[str, Any]:
    """The ``--arch-options`` the bundle was trained with (its card's settings), so that a run
    started from it keeps them (a pooling head, say) unless it names them again."""
    settings = initial.card.training_data.counts.get("settings")
    options = settings.get("arch_options") if isinstance(settings, dict) else None
    return dict(options) if isinstance(options, dict) else {}


def run_training(data: Path, labels: Path, settings: TrainSettings, out: Path, *, name: str, version: str,
                 resume: bool, files: Sequence[Path], test_set: tuple[Path, Path, Sequence[Path]] | None = None,
                 initial: LoadedBundle | None = None, log: Callable[[str], None] = print,
                 weights_dtype: str = "float32") -> dict[str, Any]:
    """Train, evaluate on held-out studies, and write the bundle to ``out``.

    The held-out studies are the 30 % of the patient-wise 7:3 split, or, when
    ``test_set`` (data folder, labels, files) is given, that separate set; then
    all of ``data`` is used for training.  ``initial`` (a
    :class:`spectnode.bundle.LoadedBundle`) fine-tunes that bundle's model instead
    of training from random weights; its card's training data are carried into the
    new card, so the whole provenance stays readable.
    """
    from ..bundle import ModelCard, TrainingData, save_bundle

    classes = scheme_classes(settings.scheme)
    initial_model = None
    if initial is not None:
        _check_initial_bundle(initial, settings)
        settings = dataclasses.replace(settings, initial_weights=initial.card.content_hash)
        inherited = _bundle_arch_options(initial)
        if carried := sorted(inherited.keys() - settings.arch_options.keys()):
            log("architecture options from the bundle: " + ", ".join(f"{key}={inherited[key]!r}" for key in carried))
        settings = dataclasses.replace(settings, arch_options={**inherited, **settings.arch_options})
        initial_model = start_from(initial.model, settings, len(classes))  # before any data are read
    findings = None
    if settings.lesion_supervision > 0:
        from .lesion_maps import read_truth

        findings = read_truth(data)
        if not findings:
            raise ValueError(f"lesion supervision needs the findings of the training studies (truth.jsonl), "
                             f"and there is no truth.jsonl under {data}")
    samples = _load(labels, files, settings, log)
    if test_set is not None:
        settings = dataclasses.replace(settings, train_fraction=1.0)
    if findings is not None:
        known = sum(s.study_uid in findings for s in samples.studies)
        if not known:
            raise ValueError(f"lesion supervision: no labelled study of {data} has an entry in its truth.jsonl "
                             f"(files of another phantom run?)")
        log(f"lesion maps: findings of {known} of {len(samples.studies)} studies (truth.jsonl under {data})")
    result = train(samples, settings, out, resume=resume, log=log,
                   initial_model=initial_model, findings=findings)

    if test_set is None:
        test = subset_samples(samples, result.test)
        held_out = f"split 7:3 by patient (seed {settings.seed}); metrics on the held-out {len(test.studies)} studies"
    else:
        log(f"held-out set {test_set[0]}:")
        test = _load(test_set[1], test_set[2], settings, log)
        held_out = (f"all used for training; metrics on a separate held-out set of {len(test.studies)} studies "
                    f"({test_set[0]})")
    probabilities = predict_studies(result.model, test)
    y_true = [classes.index(s.label) for s in test.studies]
    metrics = compute_metrics(y_true, probabilities, classes)
    synthetic = _is_synthetic(files)
    description = (f"{len(samples.studies)} studies from {data}"
                   + (" (spectnode synthetic phantoms, not patients)" if synthetic else "")
                   + f"; {held_out}; {len(result.history)} epochs"
                   + (" (early stopping)" if result.stopped_early else "")
                   + f", weights of epoch {result.best_epoch} (lowest validation loss)"
                   + (f"; resumed {len(result.resumes)} times (counts.resumes)" if result.resumes else "")
                   + (f"; started from the weights of bundle {initial.card.name} {initial.card.version} "
                      f"(counts.initial_bundle)" if initial is not None else ""))
    counts: dict[str, Any] = {
        "train": _counts(result.train, classes), "test": _counts(test.studies, classes),
        "skipped": len(samples.skipped), "settings": json.loads(json.dumps(asdict(settings))),
        "resumes": result.resumes}
    if initial is not None:
        counts["initial_bundle"] = {"name": initial.card.name, "version": initial.card.version,
                                    "content_hash": initial.card.content_hash,
                                    "training_data": asdict(initial.card.training_data)}
    card = ModelCard(
        name=name, version=version, architecture=settings.arch, scheme=settings.scheme, classes=list(classes),
        input_shape=[*settings.input_shape, 1], preprocessing=settings.input_spec().to_card(),
        training_data=TrainingData(description, counts=counts,
                                   synthetic=synthetic and (initial is None or initial.card.training_data.synthetic)),
        metrics=metrics,
        domain_fit=fit_domain_of(result.model, subset_samples(samples, result.train), test,
                                 f"the {len(test.studies)} held-out studies"),
        weights_dtype=weights_dtype,
    )
    save_bundle(result.model, card, out)
    write_evaluation_plots(metrics, y_true, probabilities, classes, out / "evaluation")
    (out / "evaluation" / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(format_metrics_table(metrics))
    log(f"bundle written to {out}")
    return metrics


def fit_domain_of(model: Any, training: LoadedSamples, held_out: LoadedSamples, description: str,
                  layer: str | None = None) -> dict[str, Any]:
    """The ``domain_fit`` of a card: ``model``'s feature distribution on ``training``, its
    threshold the 99th percentile of ``held_out``'s study scores (see :mod:`spectnode.domain`).
    ``layer``: whose (pooled) output the features are; default the last global average pooling."""
    from ..domain import feature_extractor, feature_layer_name, fit_domain

    layer = layer or feature_layer_name(model)
    extractor = feature_extractor(model, layer)
    fit = fit_domain(layer, extractor.predict(training.x, batch_size=16, verbose=0),
                     extractor.predict(held_out.x, batch_size=16, verbose=0), held_out_studies=held_out.study,
                     description=description)
    return fit.to_card()


def run_calibration(bundle: Path, fit: tuple[Path, Path, Sequence[Path]], held_out: tuple[Path, Path, Sequence[Path]],
                    log: Callable[[str], None] = print, layer: str | None = None) -> dict[str, Any]:
    """Fit (or refit) a bundle's domain: ``fit`` and ``held_out`` are (folder, labels, files) of
    in-domain studies, the first like the training data, the second not seen by the fit.
    The card is rewritten; the weights and their hash are not touched."""
    from ..bundle import load_bundle
    from ..bundle.io import CARD_FILENAME
    from ..fsutil import write_durably

    loaded = load_bundle(bundle)
    card = loaded.card
    spec = InputSpec.from_card(card.preprocessing)
    settings = TrainSettings(arch=card.architecture, scheme=card.scheme, learning_rate=0.0, batch_size=16, epochs=0,
                             input_mode=spec.mode, input_shape=spec.shape, normalization=spec.normalization)
    fit_samples = _load(fit[1], fit[2], settings, log)
    held_samples = _load(held_out[1], held_out[2], settings, log)
    card.domain_fit = fit_domain_of(loaded.model, fit_samples, held_samples,
                                    f"{len(held_samples.studies)} studies from {held_out[0]}", layer=layer)
    write_durably(Path(bundle) / CARD_FILENAME, card.to_json().encode("utf-8"))
    log(f"domain fit of {card.name}: threshold {card.domain_fit['threshold']:.3f} "
        f"(held-out median {card.domain_fit['calibration']['held_out_median']})")
    return card.domain_fit


def run_evaluation(bundle: Path | None, labels: Path, files: Sequence[Path], out: Path | None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Metrics of a bundle on labelled studies (every labelled study that can be read)."""
    from ..classify import StudyClassifier

    classifier = StudyClassifier.from_bundle(bundle)
    classes = classifier.classes
    studies = read_labels(labels, files, classifier.card.scheme)
    samples = load_samples(files, studies, classes, classifier.spec)
    for uid, why in sorted(samples.skipped.items()):
        log(f"skipped study {uid}: {why}")
    probabilities = predict_studies(classifier.model, samples)
    y_true = [classes.index(s.label) for s in samples.studies]
    metrics = compute_metrics(y_true, probabilities, classes)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "predictions.csv").write_text(
            "study_uid,label,predicted," + ",".join(classes) + "\n" + "".join(
                f"{s.study_uid},{s.label},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.6f}" for v in p) + "\n"
                for s, p in zip(samples.studies, probabilities)))
        write_evaluation_plots(metrics, y_true, probabilities, classes, out)
    return metrics
