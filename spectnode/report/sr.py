"""The result of one study as a DICOM Comprehensive 3D SR (TID 1500).

Content tree of a classified study (dsr2html shows it in this order)::

    Imaging Measurement Report (TID 1500)
      Device observer (TID 1004: model UID, name, manufacturer)
      Procedure reported: SCT 371572003 "Nuclear medicine procedure"
      Imaging Measurements
        Measurement group (TID 1501), one per class, in the model's class order
          Tracking identifier / UID
          Finding: the class's code (see spectnode.report.content)
          Algorithm name / version (TID 4019)
          Source images: each view's NM instance (and frame, when multi-frame)
          Certainty of Finding (DCM 111012) = probability x 100, in %
      Qualitative Evaluations
        Most probable class = class code
        Second most probable class = class code          (dspic4 only)
        Research use statement = the model card's text

A not-assessable study gets one measurement group whose finding is "Study not
assessable by the classifier", and Qualitative Evaluations with Assessment =
not assessable, the coded reason category, the reason text and the
research-use statement.

Every container is written SEPARATE rather than highdicom's CONTINUOUS, so
that DCMTK's dsr2html prints each value beside its concept name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.uid import generate_uid

from spectnode import __version__
from spectnode.report import content
from spectnode.report._sources import (
    check_same_study,
    find_source,
    header_with_study_defaults,
    referenced_frame_number,
    unique_by_sop_instance,
)
from spectnode.report.algorithm import DEFAULT_MANUFACTURER, AlgorithmInfo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydicom.dataset import Dataset

    from spectnode.imaging.views import StudyViews
    from spectnode.result import ModelResult, StudyResult

__all__ = [
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "build_not_assessable_sr",
    "build_result_sr",
    "certainty_percent",
]

#: SeriesNumber of spectnode's SR series (chosen far from acquisition series numbers).
SR_SERIES_NUMBER = 990
#: SeriesDescription of spectnode's SR series.
SR_SERIES_DESCRIPTION = "spectnode result"

# Decimal places of Certainty of Finding values in percent.
_PERCENT_DECIMALS = 2


def certainty_percent(probability: float) -> float:
    """A class probability as the Certainty of Finding value written to the SR (%).

    ``probability * 100`` rounded to 2 decimals, so readers see ``81.23 %``
    rather than sixteen digits.
    """
    return round(float(probability) * 100.0, _PERCENT_DECIMALS)


def build_result_sr(
    source_datasets: Sequence[Dataset],
    views: StudyViews,
    result: StudyResult,
    algorithms: Sequence[AlgorithmInfo],
    *,
    series_instance_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    predecessor: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a classified study: for every model that read it, every class's certainty and the top class(es).

    Each model's measurement groups carry its own algorithm identification
    (TID 4019), and ContributingEquipment lists every model (IHE AI Results);
    the qualitative evaluations hold one container per model, named by its
    algorithm name and version.

    Args:
        source_datasets: The study's instances as received (pixel data not
            needed). Every one is listed as evidence; the views' sources must
            be among them. Patient and study attributes are copied from the
            anterior view's source (missing type 2 ones are written empty).
        views: The views the result was computed from.
        result: A result with outcome ``"classified"`` of the same study.
        algorithms: The model of each of ``result.models``, in the same order.
        series_instance_uid: SR series; a new UID when None.
        series_number: SeriesNumber of the SR series.
        sop_instance_uid: UID of the SR; a new UID when None.
        instance_number: InstanceNumber of the SR.
        predecessor: An earlier SR of this result that the new one replaces;
            it is referenced in PredecessorDocumentsSequence.

    Returns:
        The SR, ready to be saved or sent.

    Raises:
        ValueError: if ``result`` is not classified, a model's classes differ
            from its algorithm's, it belongs to another study than ``views`` or
            ``source_datasets``, a view's source is missing, or ``predecessor``
            is not an SR.
    """
    if result.outcome != "classified":
        raise ValueError(
            f"result of study {result.study_uid} is {result.outcome!r}; "
            "use build_not_assessable_sr for it"
        )
    if result.study_uid != views.study_uid:
        raise ValueError(f"result is of study {result.study_uid}, views of study {views.study_uid}")
    if len(algorithms) != len(result.models) or not algorithms:
        raise ValueError(f"{len(result.models)} model result(s) but {len(algorithms)} algorithm(s)")
    for model, algorithm in zip(result.models, algorithms):
        if set(model.probabilities) != set(algorithm.classes):
            raise ValueError(
                f"result has probabilities for {sorted(model.probabilities)}, "
                f"the algorithm's classes are {list(algorithm.classes)}"
            )
        for label in (model.label, model.second_label):
            if label is not None and label not in algorithm.classes:
                raise ValueError(f"result class {label!r} is not one of {list(algorithm.classes)}")
        if not model.label:
            raise ValueError("a classified result must name its most probable class (label)")
    check_same_study(source_datasets, result.study_uid)

    view_names = list(result.views) or list(views.available_views)
    view_images = {}
    for name in view_names:
        image = getattr(views, name, None)
        if image is None:
            raise ValueError(f"the result names view {name!r}, which the study views lack")
        view_images[name] = image

    def source_images(names: Sequence[str]) -> list[hd.sr.SourceImageForMeasurementGroup]:
        return [_source_image_reference(find_source(source_datasets, view_images[n].source_sop_instance_uid),
                                        view_images[n].frame_number) for n in names if n in view_images]

    groups = []
    evaluations: list[hd.sr.ContentItem] = []
    for model, algorithm in zip(result.models, algorithms):
        images = source_images(model.views or view_names)
        groups += [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"{algorithm.name}: certainty of class {class_name}"
                ),
                finding_type=content.class_code(class_name),
                algorithm_id=algorithm.algorithm_identification(),
                source_images=images,
                measurements=[
                    hd.sr.Measurement(
                        name=content.CERTAINTY_OF_FINDING,
                        value=certainty_percent(model.probabilities[class_name]),
                        unit=content.PERCENT,
                    )
                ],
            )
            for class_name in algorithm.classes
        ]
        evaluations.append(_model_container(model, algorithm, result))
    # The anterior view's source first: highdicom copies patient and study from it.
    referenced = [find_source(source_datasets, image.source_sop_instance_uid) for image in view_images.values()]
    evidence = unique_by_sop_instance([*referenced, *source_datasets])
    return _build_sr(
        evidence, groups, evaluations, algorithms,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        predecessor=predecessor,
    )


def _model_container(model: ModelResult, algorithm: AlgorithmInfo,
                     result: StudyResult) -> hd.sr.ContainerContentItem:
    """One model's qualitative evaluations: which model, its top class(es), its training domain, its statement."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(name=content.ALGORITHM_NAME, value=algorithm.name, relationship_type=contains),
        hd.sr.TextContentItem(name=content.ALGORITHM_VERSION, value=algorithm.version, relationship_type=contains),
        hd.sr.CodeContentItem(name=content.MOST_PROBABLE_CLASS, value=content.class_code(model.label),
                              relationship_type=contains),
    ]
    if model.second_label is not None:
        items.append(hd.sr.CodeContentItem(name=content.SECOND_MOST_PROBABLE_CLASS,
                                           value=content.class_code(model.second_label), relationship_type=contains))
    for view in model.views:
        if view in result.inferred_views:
            certainty = result.view_certainty.get(view, 0.0)
            items.append(hd.sr.TextContentItem(
                name=content.VIEW_INFERENCE, relationship_type=contains,
                value=f"{view}: no header names this view; inferred from the image, certainty {certainty:.2f}"))
    if model.domain_score is not None:
        items.append(hd.sr.TextContentItem(name=content.DOMAIN_FIT, value=f"{model.domain_score:.3f}",
                                           relationship_type=contains))
        items.append(hd.sr.TextContentItem(
            name=content.DOMAIN_FLAG, relationship_type=contains,
            value="outside the model's training domain" if model.outside_domain else "within the training domain"))
    items.append(_research_use_item(algorithm))
    container = hd.sr.ContainerContentItem(name=content.MODEL_RESULT, relationship_type=contains,
                                           is_content_continuous=False)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_not_assessable_sr(
    source_datasets: Sequence[Dataset],
    result: StudyResult,
    algorithms: Sequence[AlgorithmInfo],
    *,
    series_instance_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    predecessor: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a study the classifier could not assess, with the reason.

    Args:
        source_datasets: The study's instances as received (at least one;
            pixel data not needed); all are listed as evidence and patient and
            study attributes are copied from the first.
        result: A result with outcome ``"not_assessable"`` and its reason.
            Its ``study_uid`` may be empty (files that could not be read); the
            study is then that of ``source_datasets``.
        algorithms: The models that would have classified the study (the
            first is named in the assessment group).
        series_instance_uid, series_number, sop_instance_uid, instance_number,
        predecessor: As for :func:`build_result_sr`.

    Raises:
        ValueError: if ``result`` is not "not_assessable", ``source_datasets``
            is empty or spans several studies, or ``predecessor`` is not an SR.
    """
    if result.outcome != "not_assessable":
        raise ValueError(
            f"result of study {result.study_uid} is {result.outcome!r}; use build_result_sr for it"
        )
    if not source_datasets:
        raise ValueError("at least one source dataset of the study is needed")
    study_uid = result.study_uid or str(source_datasets[0].get("StudyInstanceUID", ""))
    check_same_study(source_datasets, study_uid)

    if not algorithms:
        raise ValueError("at least one algorithm is needed")
    algorithm = algorithms[0]
    reason = (result.reason or "").strip() or "No reason was recorded."
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="study assessment"),
        finding_type=content.NOT_ASSESSABLE,
        algorithm_id=algorithm.algorithm_identification(),
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    evaluations: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=content.ASSESSMENT, value=content.NOT_ASSESSABLE, relationship_type=contains)
    ]
    category = content.reason_category_code(result.reason_code)
    if category is not None:
        evaluations.append(
            hd.sr.CodeContentItem(name=content.REASON_CATEGORY, value=category, relationship_type=contains)
        )
    evaluations.append(
        hd.sr.TextContentItem(name=content.REASON_NOT_ASSESSABLE, value=reason, relationship_type=contains)
    )
    evaluations.append(_research_use_item(algorithm))
    return _build_sr(
        unique_by_sop_instance(source_datasets), [group], evaluations, algorithms,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        predecessor=predecessor,
    )


# ----------------------------------------------------------------------------- helpers


def _source_image_reference(ds: Dataset, frame_number: int | None) -> hd.sr.SourceImageForMeasurementGroup:
    """Reference to a view's instance, and to its frame in a multi-frame instance."""
    frame_number = referenced_frame_number(ds, frame_number)
    if frame_number is None:
        return hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(ds, referenced_frame_numbers=[frame_number])


def _research_use_item(algorithm: AlgorithmInfo) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=content.RESEARCH_USE_STATEMENT,
        value=algorithm.research_use_statement,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _private_scheme_identification() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=content.PRIVATE_SCHEME,
        name=content.PRIVATE_SCHEME_NAME,
        responsible_organization=content.PRIVATE_SCHEME_RESPONSIBLE_ORGANIZATION,
    )


def _build_sr(
    evidence: Sequence[Dataset],
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations],
    evaluations: Sequence[hd.sr.ContentItem],
    algorithms: Sequence[AlgorithmInfo],
    *,
    series_instance_uid: str | None,
    series_number: int,
    sop_instance_uid: str | None,
    instance_number: int,
    predecessor: Dataset | None,
) -> hd.sr.Comprehensive3DSR:
    if predecessor is not None and str(predecessor.get("Modality", "")) != "SR":
        raise ValueError(
            f"predecessor {predecessor.get('SOPInstanceUID', '?')} is not an SR "
            f"(Modality {predecessor.get('Modality', '(absent)')!r})"
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=algorithms[0].device_observer_context()
        ),
        procedure_reported=content.PROCEDURE_REPORTED,
        imaging_measurements=list(groups),
    )
    qualitative = hd.sr.ContainerContentItem(
        name=content.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    qualitative.ContentSequence = hd.sr.ContentSequence(list(evaluations))
    root = report[0]
    root.ContentSequence.append(qualitative)

    sr = hd.sr.Comprehensive3DSR(
        evidence=[header_with_study_defaults(ds) for ds in evidence],
        content=root,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=DEFAULT_MANUFACTURER,
        # Complete and final as far as the algorithm goes; no person verified it.
        is_complete=True,
        is_final=True,
        is_verified=False,
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[a.contributing_equipment() for a in algorithms],
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name="spectnode",
        software_versions=__version__,
        coding_schemes=[_private_scheme_identification()],
    )
    _make_containers_separate(sr)
    return sr


def _make_containers_separate(item: Dataset) -> None:
    """Set ContinuityOfContent SEPARATE on ``item`` and every container below it.

    The items are independent statements, not one running text, and DCMTK's
    dsr2html prints CONTINUOUS content without concept names.
    """
    if "ContinuityOfContent" in item:
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _make_containers_separate(child)
