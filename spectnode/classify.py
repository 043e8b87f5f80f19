"""Classifying studies: a study's views in, a :class:`~spectnode.result.StudyResult` out.

A library, used by ``spectnode classify`` (offline), ``spectnode evaluate``
and the node's classify stage (:mod:`spectnode.node.stages.classify`). It
knows nothing of the job store, DICOM networking or reports: it takes what
:mod:`spectnode.imaging.views` read and returns a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .imaging.guards import check_study
from .imaging.network_input import InputSpec, NetworkInput, heatmap_to_view, network_inputs
from .imaging.views import NotAssessable, StudyViews, load_study_views
from .result import StudyResult

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .explain import LayerCam

__all__ = ["DEFAULT_BUNDLE", "StudyResult", "StudyClassifier", "find_dicom_files"]

#: The bundle shipped inside the package, trained on synthetic phantoms only.
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "data" / "default_bundle"


class StudyClassifier:
    """A loaded model bundle that classifies studies."""

    def __init__(self, model: Any, card: Any) -> None:
        self.model = model
        self.card = card
        self.classes: tuple[str, ...] = tuple(card.classes)
        self.spec = InputSpec.from_card(card.preprocessing)
        self._cam: LayerCam | None = None  # built on first use: explanations are optional

    @classmethod
    def from_bundle(cls, path: str | Path | None = None,
                    expected_classes: Sequence[str] | None = None) -> StudyClassifier:
        """Load and verify a bundle (``None``: the shipped default)."""
        from .bundle import load_bundle

        loaded = load_bundle(Path(path) if path is not None else DEFAULT_BUNDLE, expected_classes)
        return cls(loaded.model, loaded.card)

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Class probabilities (n, k) for prepared network inputs."""
        batch = np.stack(inputs).astype(np.float32)
        return np.asarray(self.model.predict(batch, batch_size=batch_size, verbose=0), dtype=np.float64)

    def study_probabilities(self, views: StudyViews) -> tuple[list[NetworkInput], np.ndarray]:
        """The study's network inputs and its probabilities (mean over inputs)."""
        inputs = network_inputs(views, self.spec)
        probs = self.predict([i.array for i in inputs])
        return inputs, probs.mean(axis=0)

    def classify(self, study: StudyViews | NotAssessable, explain: bool = False) -> StudyResult:
        """Classify one study; a not-assessable study keeps its reason.

        The guards of :mod:`spectnode.imaging.guards` (early phase, not a bone
        scan) run before the model and may make a study not assessable.
        """
        if not isinstance(study, NotAssessable):
            study = check_study(study) or study
        if isinstance(study, NotAssessable):
            return StudyResult(study.study_uid, "not_assessable", reason=study.reason, reason_code=study.code)
        images = [image for image in (study.anterior, study.posterior) if image is not None]
        inputs, probs = self.study_probabilities(study)
        order = np.argsort(-probs)
        result = StudyResult(
            study_uid=study.study_uid,
            outcome="classified",
            views=list(study.available_views),
            view_certainty={image.view: float(image.view_certainty) for image in images},
            inferred_views=[image.view for image in images if image.view_inferred],
            label=self.classes[order[0]],
            second_label=self.classes[order[1]] if self.card.scheme == "dspic4" else None,
            probabilities={c: float(p) for c, p in zip(self.classes, probs)},
        )
        if explain:
            result.heatmaps = self.explain(study, inputs, int(order[0]))
        return result

    def explain(self, study: StudyViews, inputs: Sequence[NetworkInput], class_index: int) -> dict[str, np.ndarray]:
        """Class-activation map (LayerCAM, see :mod:`spectnode.explain`) of ``class_index`` per view,
        at each view's own matrix."""
        from .explain import LayerCam

        cam = self._cam
        if cam is None:
            cam = self._cam = LayerCam(self.model)
        maps = {i.name: cam(i.array, class_index) for i in inputs}
        out: dict[str, np.ndarray] = {}
        for view in study.available_views:
            image = getattr(study, view)
            source = maps[view] if view in maps else maps["aggregate"]
            out[view] = heatmap_to_view(source, view, image.pixels.shape)
        return out

    def classify_paths(self, paths: Iterable[Path], explain: bool = False) -> list[StudyResult]:
        """Read files, group them into studies and classify each study."""
        studies = load_study_views(list(paths))
        return [self.classify(s, explain=explain) for _, s in sorted(studies.items())]


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
