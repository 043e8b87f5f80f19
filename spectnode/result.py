"""The result of classifying one study, as every reader sees it.

:class:`StudyResult` is what :class:`spectnode.classify.StudyClassifier`
returns, what the job store keeps (``to_json``/``from_json``) between the
classify and the report stage, and what ``spectnode status``, ``spectnode
demo`` and ``spectnode classify --json`` print. It imports neither TensorFlow
nor the job store, so every command can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Outcome", "StudyResult", "ViewSource"]

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
class StudyResult:
    """What the classifier concluded about one study."""

    study_uid: str
    outcome: Outcome
    #: Why the study could not be assessed (None when classified).
    reason: str | None = None
    #: Short machine code of ``reason`` (see ``spectnode.imaging.views.REASON_CODES``).
    reason_code: str | None = None
    #: Views that went into the result ("anterior", "posterior").
    views: list[str] = field(default_factory=list)
    #: View -> certainty that it is that view: 1.0 when a header names it, less when inferred.
    view_certainty: dict[str, float] = field(default_factory=dict)
    #: Views that no header named and that were inferred from the image.
    inferred_views: list[str] = field(default_factory=list)
    #: Most probable class.
    label: str | None = None
    #: Second most probable class: dSPIC reads images with several diseases.
    second_label: str | None = None
    #: Class -> probability, in the model's class order.
    probabilities: dict[str, float] = field(default_factory=dict)
    #: View -> the object (and frame) it was read from; set by the node's
    #: classify stage for the report stage.
    view_sources: dict[str, ViewSource] = field(default_factory=dict)
    #: View -> class-activation heatmap (LayerCAM) of ``label`` in [0, 1], at the view's own matrix
    #: and stored orientation (only when explanations were asked for; never serialised).
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def classified(self) -> bool:
        """True when the study got a class (not "not assessable")."""
        return self.outcome == "classified"

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
            "label": self.label,
            "second_label": self.second_label,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
        }
        if self.view_sources:
            data["view_sources"] = {view: source.to_json() for view, source in self.view_sources.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyResult:
        """The inverse of :meth:`to_json` (heatmaps empty).

        Raises:
            ValueError: If ``data`` is not a study result.
        """
        outcome = data.get("outcome")
        if outcome not in ("classified", "not_assessable") or not data.get("study_uid"):
            raise ValueError(f"not a study result: outcome {outcome!r}, study_uid {data.get('study_uid')!r}")
        return cls(
            study_uid=str(data["study_uid"]),
            outcome=outcome,
            reason=data.get("reason"),
            reason_code=data.get("reason_code"),
            views=[str(v) for v in data.get("views") or []],
            view_certainty={str(k): float(v) for k, v in (data.get("view_certainty") or {}).items()},
            inferred_views=[str(v) for v in data.get("inferred_views") or []],
            label=data.get("label"),
            second_label=data.get("second_label"),
            probabilities={str(k): float(v) for k, v in (data.get("probabilities") or {}).items()},
            view_sources={str(view): ViewSource.from_json(source)
                          for view, source in (data.get("view_sources") or {}).items()},
        )
