"""The result of classifying one study, as every reader sees it.

:class:`StudyResult` is what :mod:`spectnode.classify` returns, what the job
store keeps (``to_json``/``from_json``) between the classify and the report
stage, and what ``spectnode status``, ``spectnode demo`` and ``spectnode
classify --json`` print. A study is read by every configured model that can
take it (an aggregate model needs both views, a per-view model takes either):
each gives a :class:`ModelResult`, and a model that could not take the study
is listed in :attr:`StudyResult.skipped_models` with why. This module imports
neither TensorFlow nor the job store, so every command can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ModelResult", "Outcome", "StudyResult", "ViewSource"]

Outcome = Literal["classified", "not_assessable"]


@dataclass(frozen=True)
class ViewSource:
    """Where a view's pixels came from: what the SR and the SCs reference."""

    sop_instance_uid: str
    sop_class_uid: str
    #: 1-based frame of a multi-frame object, None for a single-frame one.
    frame_number: int | None
    #: (row, column) spacing in mm, if the object gave one.
    pixel_spacing_mm: tuple[float, float] | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "frame_number": self.frame_number,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ViewSource:
        """The inverse of :meth:`to_json`."""
        spacing = data.get("pixel_spacing_mm")
        frame = data.get("frame_number")
        return cls(
            sop_instance_uid=str(data["sop_instance_uid"]),
            sop_class_uid=str(data["sop_class_uid"]),
            frame_number=int(frame) if frame is not None else None,
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
        )


@dataclass
class ModelResult:
    """One model's classification of a study."""

    #: The model's name and version, as in its card (empty for a result
    #: stored by a node that kept no model name).
    model: str
    version: str
    #: Classes -> probability, in the model's class order.
    probabilities: dict[str, float]
    #: Most probable class.
    label: str
    #: Second most probable class (dSPIC reads images with several diseases; None for other schemes).
    second_label: str | None = None
    #: Views that went into this model's result.
    views: list[str] = field(default_factory=list)
    #: How the model takes the views: ``aggregate`` or ``per_view``.
    input_mode: str = ""
    #: Distance of the study from the model's training data, and whether it is
    #: past the model's in-domain threshold ("outside the model's training domain").
    domain_score: float | None = None
    outside_domain: bool = False
    #: View -> class-activation heatmap (LayerCAM) of ``label`` in [0, 1], at the view's own matrix
    #: and stored orientation (only when explanations were asked for; never serialised).
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (heatmaps left out)."""
        return {
            "model": self.model,
            "version": self.version,
            "input_mode": self.input_mode,
            "views": list(self.views),
            "label": self.label,
            "second_label": self.second_label,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "domain_score": None if self.domain_score is None else round(self.domain_score, 4),
            "outside_domain": self.outside_domain,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        """The inverse of :meth:`to_json`."""
        score = data.get("domain_score")
        return cls(
            model=str(data.get("model") or ""),
            version=str(data.get("version") or ""),
            input_mode=str(data.get("input_mode") or ""),
            views=[str(v) for v in data.get("views") or []],
            label=str(data["label"]),
            second_label=data.get("second_label"),
            probabilities={str(k): float(v) for k, v in (data.get("probabilities") or {}).items()},
            domain_score=float(score) if score is not None else None,
            outside_domain=bool(data.get("outside_domain", False)),
        )


@dataclass
class StudyResult:
    """What the node's models concluded about one study."""

    study_uid: str
    outcome: Outcome
    #: Why the study could not be assessed (None when classified).
    reason: str | None = None
    #: Short machine code of ``reason`` (see ``spectnode.imaging.views.REASON_CODES``).
    reason_code: str | None = None
    #: Views the study holds that were read ("anterior", "posterior").
    views: list[str] = field(default_factory=list)
    #: View -> certainty that it is that view: 1.0 when a header names it, less when inferred.
    view_certainty: dict[str, float] = field(default_factory=dict)
    #: Views that no header named and that were inferred from the image.
    inferred_views: list[str] = field(default_factory=list)
    #: One result per model that took the study, in the configured order.
    models: list[ModelResult] = field(default_factory=list)
    #: Model -> why it did not take the study (e.g. an aggregate model and a single view).
    skipped_models: dict[str, str] = field(default_factory=dict)
    #: View -> the object (and frame) it was read from; set by the node's
    #: classify stage for the report stage.
    view_sources: dict[str, ViewSource] = field(default_factory=dict)

    @property
    def classified(self) -> bool:
        """True when at least one model classified the study."""
        return self.outcome == "classified"

    @property
    def primary(self) -> ModelResult | None:
        """The first model's result: the one whose class a one-line summary shows."""
        return self.models[0] if self.models else None

    @property
    def label(self) -> str | None:
        """The primary model's most probable class."""
        return self.models[0].label if self.models else None

    @property
    def probabilities(self) -> dict[str, float]:
        """The primary model's probabilities."""
        return self.models[0].probabilities if self.models else {}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (heatmaps left out; view sources only when known)."""
        data: dict[str, Any] = {
            "study_uid": self.study_uid,
            "outcome": self.outcome,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "views": list(self.views),
            "view_certainty": {k: round(v, 3) for k, v in self.view_certainty.items()},
            "inferred_views": list(self.inferred_views),
            # The first model's class and probabilities, for a one-line reader; every model's are in "models".
            "label": self.label,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "models": [m.to_json() for m in self.models],
            "skipped_models": dict(self.skipped_models),
        }
        if self.view_sources:
            data["view_sources"] = {view: source.to_json() for view, source in self.view_sources.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyResult:
        """The inverse of :meth:`to_json`; also reads the one-model form of spectnode 0.1.0.

        Raises:
            ValueError: If ``data`` is not a study result.
        """
        outcome = data.get("outcome")
        if outcome not in ("classified", "not_assessable") or not data.get("study_uid"):
            raise ValueError(f"not a study result: outcome {outcome!r}, study_uid {data.get('study_uid')!r}")
        if "models" in data:
            models = [ModelResult.from_json(m) for m in data["models"]]
        elif outcome == "classified" and data.get("label"):
            # 0.1.0 kept one model's result at the top level, without the model's name.
            models = [ModelResult.from_json({**data, "model": "", "version": ""})]
        else:
            models = []
        return cls(
            study_uid=str(data["study_uid"]),
            outcome=outcome,
            reason=data.get("reason"),
            reason_code=data.get("reason_code"),
            views=[str(v) for v in data.get("views") or []],
            view_certainty={str(k): float(v) for k, v in (data.get("view_certainty") or {}).items()},
            inferred_views=[str(v) for v in data.get("inferred_views") or []],
            models=models,
            skipped_models={str(k): str(v) for k, v in (data.get("skipped_models") or {}).items()},
            view_sources={str(view): ViewSource.from_json(source)
                          for view, source in (data.get("view_sources") or {}).items()},
        )
