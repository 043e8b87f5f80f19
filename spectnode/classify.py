"""Classifying studies: a study's views in, a :class:`~spectnode.result.StudyResult` out.

A library, used by ``spectnode classify`` (offline), ``spectnode evaluate``
and the node's classify stage (:mod:`spectnode.node.stages.classify`). It
knows nothing of the job store, DICOM networking or reports: it takes what
:mod:`spectnode.imaging.views` read and returns a result.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .domain import DomainFit
from .imaging.guards import check_study
from .imaging.network_input import InputSpec, NetworkInput, heatmap_to_view, network_inputs
from .imaging.views import MISSING_VIEWS, NotAssessable, StudyViews, iter_study_views
from .result import ModelResult, StudyResult

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from .explain import LayerCam

__all__ = ["DEFAULT_BUNDLE", "DEFAULT_BUNDLES", "Classifiers", "StudyClassifier", "StudyResult", "bundle_paths",
           "find_dicom_files"]

_DATA = Path(__file__).resolve().parent / "data"
#: The aggregate-view bundle shipped inside the package, trained on synthetic phantoms only.
DEFAULT_BUNDLE = _DATA / "default_bundle"
#: Every bundle shipped inside the package, in the order the node runs them (``model.bundles: null``).
DEFAULT_BUNDLES: tuple[Path, ...] = tuple(p for p in (DEFAULT_BUNDLE, _DATA / "per_view_bundle") if p.is_dir())
#: Held while a model's extra Keras graphs are built on first use: models run in threads
#: (:meth:`Classifiers.classify`), so two could find the same graph missing and build it twice.
_BUILD_LOCK = threading.Lock()


def bundle_paths(configured: Sequence[str | Path] | None = None) -> list[Path]:
    """The bundles a node runs, in order: ``configured`` (``model.bundles``), or else the shipped
    ones; :data:`DEFAULT_BUNDLE` if the package lost them, so that loading says which is missing."""
    return [Path(p) for p in configured] if configured else list(DEFAULT_BUNDLES) or [DEFAULT_BUNDLE]


class StudyClassifier:
    """A loaded model bundle that classifies studies."""

    def __init__(self, model: Any, card: Any) -> None:
        self.model = model
        self.card = card
        self.classes: tuple[str, ...] = tuple(card.classes)
        self.spec = InputSpec.from_card(card.preprocessing)
        self._cam: LayerCam | None = None  # built on first use: explanations are optional
        domain_fit = getattr(card, "domain_fit", None)
        #: The training domain in feature space, when the card has one (see :mod:`spectnode.domain`).
        self.domain: DomainFit | None = DomainFit.from_card(domain_fit) if domain_fit else None
        self._with_features: Any = None  # the model with its feature layer as a second output

    @classmethod
    def from_bundle(cls, path: str | Path | None = None,
                    expected_classes: Sequence[str] | None = None) -> StudyClassifier:
        """Load and verify a bundle (``None``: the shipped default)."""
        from .bundle import load_bundle

        loaded = load_bundle(Path(path) if path is not None else DEFAULT_BUNDLE, expected_classes)
        return cls(loaded.model, loaded.card)

    @property
    def name(self) -> str:
        """The model's name, as its card gives it."""
        return str(self.card.name)

    def needs(self, study: StudyViews) -> str | None:
        """Why this model cannot take ``study`` (an aggregate model needs both views), or None."""
        if self.spec.mode == "aggregate" and (study.anterior is None or study.posterior is None):
            return "the aggregate-view model needs both the anterior and the posterior view"
        return None

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Class probabilities (n, k) for prepared network inputs."""
        return _predict_in_batches(self.model, inputs, batch_size)[0]

    def study_probabilities(self, views: StudyViews) -> tuple[list[NetworkInput], np.ndarray]:
        """The study's network inputs and its probabilities (mean over inputs)."""
        inputs = network_inputs(views, self.spec)
        probs = self.predict([i.array for i in inputs])
        return inputs, probs.mean(axis=0)

    def predict_with_domain(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (n, k) and domain-fit scores (n,) in one forward pass.

        Raises:
            ValueError: If the bundle has no domain fit.
        """
        if self.domain is None:
            raise ValueError(f"bundle {self.name} has no domain fit")
        with _BUILD_LOCK:
            if self._with_features is None:
                import keras

                from .domain import domain_features

                self._with_features = keras.Model(
                    self.model.inputs, [domain_features(self.model, self.domain.layer), self.model.outputs[0]])
        features, probs = _predict_in_batches(self._with_features, inputs, 8)
        return probs, self.domain.score(features)

    def model_result(self, study: StudyViews, explain: bool = False) -> ModelResult:
        """This model's result on a study it can take (see :meth:`needs`); with ``explain``, also
        the LayerCAM heatmap (:mod:`spectnode.explain`) of its top class per view, at each view's
        own matrix, from the same pass through the network (the graph's outputs agree with
        :meth:`predict`'s to float32 rounding)."""
        inputs = network_inputs(study, self.spec)
        arrays = [i.array for i in inputs]
        scores: np.ndarray | None = None
        if explain:
            cam_class, outputs, maps = self._layer_cam().explained(arrays)
            each = outputs[0].astype(np.float64)
            if self.domain is not None:
                scores = self.domain.score(outputs[1].astype(np.float64))
        elif self.domain is None:
            each = self.predict(arrays)
        else:
            each, scores = self.predict_with_domain(arrays)
        probs = each.mean(axis=0)
        score = None if scores is None else float(scores.max())  # the view furthest from the domain counts
        order = np.argsort(-probs)
        result = ModelResult(
            model=self.name,
            version=str(self.card.version),
            input_mode=self.spec.mode,
            views=list(study.available_views),
            label=self.classes[order[0]],
            second_label=self.classes[order[1]] if self.card.scheme == "dspic4" else None,
            probabilities={c: float(p) for c, p in zip(self.classes, probs)},
            domain_score=score,
            outside_domain=self.domain is not None and score is not None and self.domain.outside(score),
        )
        if explain:
            if cam_class != order[0]:  # an exact tie ranked otherwise: explain the label shown (a second pass)
                maps = self._layer_cam().maps(arrays, int(order[0]))
            by_input = dict(zip([i.name for i in inputs], maps))
            result.heatmaps = {view: heatmap_to_view(by_input[view] if view in by_input else by_input["aggregate"],
                                                     view, getattr(study, view).pixels.shape)
                               for view in study.available_views}
        return result

    def classify(self, study: StudyViews | NotAssessable, explain: bool = False) -> StudyResult:
        """Classify one study with this model alone (see :meth:`Classifiers.classify`)."""
        return Classifiers([self]).classify(study, explain=explain)

    def _layer_cam(self) -> LayerCam:
        """The model's LayerCAM, built on first use, with the domain-fit features as a further output."""
        with _BUILD_LOCK:
            if self._cam is None:
                from .domain import domain_features
                from .explain import LayerCam

                extra = [] if self.domain is None else [domain_features(self.model, self.domain.layer)]
                self._cam = LayerCam(self.model, outputs=extra)
            return self._cam

    def classify_paths(self, paths: Iterable[Path], explain: bool = False) -> list[StudyResult]:
        """Read files, group them into studies and classify each study with this model."""
        return Classifiers([self]).classify_paths(paths, explain=explain)


def _predict_in_batches(model: Any, inputs: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Every output of ``model`` (float64, stacked over ``inputs``), ``batch_size`` inputs per call.

    ``predict_on_batch``, not ``predict``: a study has one or two inputs, and
    ``predict`` spends several times the network's own time per call on setting
    up its data pipeline and callbacks (Python that holds the GIL, which the
    node's other stages then wait for too).
    """
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(inputs), batch_size):
        batch = np.stack(inputs[start:start + batch_size]).astype(np.float32)
        outputs = model.predict_on_batch(batch)
        parts.append([np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])])
    return [np.concatenate(column).astype(np.float64) for column in zip(*parts)]


class Classifiers:
    """The models a study is read by, in order: each takes the studies it can.

    Args:
        classifiers: The loaded models; the first one that takes a study is
            its primary result (the one a one-line summary and the overlay's
            heatmap show).
    """

    def __init__(self, classifiers: Sequence[StudyClassifier]) -> None:
        if not classifiers:
            raise ValueError("at least one model is needed")
        self.classifiers = list(classifiers)
        self._pool: ThreadPoolExecutor | None = None  # started when a study first goes to two models

    @classmethod
    def from_bundles(cls, paths: Sequence[str | Path] | None = None) -> Classifiers:
        """Load and verify bundles (``None`` or empty: the shipped ones, see :func:`bundle_paths`)."""
        return cls([StudyClassifier.from_bundle(p) for p in bundle_paths(paths)])

    def __iter__(self) -> Iterator[StudyClassifier]:
        return iter(self.classifiers)

    def classify(self, study: StudyViews | NotAssessable, explain: bool = False) -> StudyResult:
        """Classify one study with every model that can take it.

        The guards of :mod:`spectnode.imaging.guards` (early phase, not a bone
        scan) run before any model and may make a study not assessable; so is
        a study that no model can take (one view and only aggregate models),
        with each model's reason. A not-assessable study keeps its reason.
        """
        if not isinstance(study, NotAssessable):
            study = check_study(study) or study
        if isinstance(study, NotAssessable):
            return StudyResult(study.study_uid, "not_assessable", reason=study.reason, reason_code=study.code)
        images = [image for image in (study.anterior, study.posterior) if image is not None]
        skipped = {c.name: why for c in self.classifiers if (why := c.needs(study)) is not None}
        taking = [c for c in self.classifiers if c.name not in skipped]
        models = self._model_results(study, taking, explain)
        result = StudyResult(
            study.study_uid, "classified", views=list(study.available_views),
            view_certainty={image.view: float(image.view_certainty) for image in images},
            inferred_views=[image.view for image in images if image.view_inferred],
            models=models, skipped_models=skipped,
        )
        if not models:
            result.outcome, result.reason_code = "not_assessable", MISSING_VIEWS
            result.reason = "no model can read this study: " + "; ".join(f"{n}: {why}" for n, why in skipped.items())
        return result

    def _model_results(self, study: StudyViews, taking: Sequence[StudyClassifier], explain: bool) -> list[ModelResult]:
        """Each model's result, in order; two or more models run at once, one thread each.

        TensorFlow releases the GIL while a model runs, and one study's batch of one or two
        images leaves the cores partly idle, which another model's pass then uses (the aggregate
        and a per-view model together: 186.6 against 214.5 ms one after the other, README). The
        overlay draws the first model's heatmap only, so only that one is computed: LayerCAM's
        backward pass costs about as much again as the network itself.
        """
        if len(taking) < 2:
            return [c.model_result(study, explain=explain) for c in taking]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.classifiers), thread_name_prefix="spectnode-model")
        try:
            futures = [self._pool.submit(c.model_result, study, explain and i == 0) for i, c in enumerate(taking)]
        except RuntimeError:  # the interpreter is exiting (a stage Node.stop left running): in turn, then
            return [c.model_result(study, explain=explain and i == 0) for i, c in enumerate(taking)]
        wait(futures)  # where one model fails, the other still ends before the next study starts
        return [future.result() for future in futures]

    def classify_paths(self, paths: Iterable[Path], explain: bool = False) -> list[StudyResult]:
        """Read files, group them into studies and classify each study."""
        results = {key: self.classify(views, explain=explain) for key, views in iter_study_views(list(paths))}
        return [result for _, result in sorted(results.items())]


def find_dicom_files(path: Path) -> list[Path]:
    """A file, or every regular file under a folder (DICOM files often have no suffix).

    Hidden files and the phantom generator's side files are skipped; anything
    else that is not DICOM is reported as unreadable by the view reader.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    skip_suffixes = {".csv", ".json", ".jsonl", ".png", ".txt", ".md"}
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                  and p.suffix.lower() not in skip_suffixes)
