"""Tests of spectnode.report's structured reports, built from phantom studies.

Every SR is checked with dicom3tools' dciodvfy, rendered with DCMTK's
dsr2html, and read back with highdicom/pydicom; frame references are checked
against where the phantom generator put each view.
"""

from __future__ import annotations

import hashlib
import html
import re
import subprocess
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from spectnode.bundle import ModelCard, TrainingData, derive_device_uid
from spectnode.imaging.views import StudyViews
from spectnode.phantom.dicom import VIEW_CODES
from spectnode.report import (
    SR_SERIES_DESCRIPTION,
    AlgorithmInfo,
    build_not_assessable_sr,
    build_result_sr,
    certainty_percent,
    content,
)
from spectnode.result import ModelResult, StudyResult

from dicomtools import dciodvfy_errors, require_tool

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset

SEED = 11
DSPIC4 = ("normal", "metastatic", "arthritic", "both")
PROBABILITIES = {"normal": 0.05, "metastatic": 0.8123, "arthritic": 0.1, "both": 0.0377}
LAYOUTS_UNDER_TEST = ("multiframe", "split-instances")
MODEL_NAME, MODEL_VERSION = "spectnode-test-dspic", "0.3.1"


def make_card(**overrides: object) -> ModelCard:
    """A saved-looking dspic4 card (content hash and device UID set), no model needed."""
    content_hash = "sha256:" + hashlib.sha256(b"spectnode report test model").hexdigest()
    fields: dict[str, object] = dict(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        architecture="dSPIC-AM",
        scheme="dspic4",
        classes=list(DSPIC4),
        input_shape=[128, 32, 1],
        preprocessing={"views": "per_view", "normalization": "minmax", "resample_to": [128, 32]},
        training_data=TrainingData("synthetic phantoms, 7:3 by patient", synthetic=True),
        content_hash=content_hash,
        device_uid=derive_device_uid(content_hash),
    )
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


def classified(views: StudyViews, second_label: str | None = "arthritic") -> StudyResult:
    return StudyResult(
        study_uid=views.study_uid,
        outcome="classified",
        views=list(views.available_views),
        models=[ModelResult("spectnode-test-dspic", "0.3.1", dict(PROBABILITIES), "metastatic",
                            second_label=second_label, views=list(views.available_views), input_mode="per_view")],
    )


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo.from_card(make_card())


def saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def walk(item: Dataset):
    """Every content item below ``item``, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from walk(child)


def concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return (name.CodingSchemeDesignator, name.CodeValue)


def code_tuple(code) -> tuple[str, str]:
    return (code.scheme_designator, code.value)


def items_named(root: Dataset, code) -> list[Dataset]:
    return [item for item in walk(root) if "ConceptNameCodeSequence" in item and concept(item) == code_tuple(code)]


def qualitative_evaluations(sr: Dataset) -> Dataset:
    (container,) = items_named(sr, content.QUALITATIVE_EVALUATIONS)
    return container


def dsr2html_text(path: Path) -> str:
    """What a reader sees in DCMTK's rendering, as one line of plain text."""
    executable = require_tool("dsr2html")
    proc = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    text = html.unescape(re.sub(r"<[^>]+>", " ", proc.stdout))
    return re.sub(r"\s+", " ", text)


# ----------------------------------------------------------------------------- results


def test_result_sr_passes_dciodvfy(study, algorithm, tmp_path):
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    assert dciodvfy_errors(saved(sr, tmp_path / "sr.dcm")) == []


def test_result_sr_lives_in_the_original_study(study, algorithm):
    source = study.datasets[0]
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID == study.record.study_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        assert sr[keyword].value == source[keyword].value, keyword
    source_uids = {str(ds.SeriesInstanceUID) for ds in study.datasets} | {
        str(ds.SOPInstanceUID) for ds in study.datasets
    }
    assert sr.SeriesInstanceUID not in source_uids and sr.SOPInstanceUID not in source_uids
    assert sr.Manufacturer == "spectnode" and sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    # Every container SEPARATE, the root included (dsr2html needs it).
    containers = [sr, *(item for item in walk(sr) if item.ValueType == "CONTAINER")]
    assert {item.ContinuityOfContent for item in containers} == {"SEPARATE"}

    again = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm],
                            series_instance_uid=sr.SeriesInstanceUID, instance_number=2)
    assert again.SeriesInstanceUID == sr.SeriesInstanceUID and again.SOPInstanceUID != sr.SOPInstanceUID
    assert again.InstanceNumber == 2


def test_result_sr_has_a_certainty_for_every_class(study, algorithm):
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    groups = report.get_image_measurement_groups()
    assert [code_tuple(g.finding_type) for g in groups] == [code_tuple(content.class_code(c)) for c in DSPIC4]
    for class_name, group in zip(DSPIC4, groups):
        (measurement,) = group.get_measurements()
        assert code_tuple(measurement.name) == ("DCM", "111012")
        assert code_tuple(measurement.unit) == ("UCUM", "%")
        assert measurement.value == pytest.approx(100 * PROBABILITIES[class_name], abs=0.005)
        assert measurement.value == certainty_percent(PROBABILITIES[class_name])
    # The finding codes: SNOMED where one exists, the private scheme otherwise.
    assert code_tuple(groups[0].finding_type) == ("SCT", "17621005")
    assert code_tuple(groups[1].finding_type) == ("SCT", "94222008")
    assert code_tuple(groups[2].finding_type) == ("SCT", "3723001")
    assert groups[3].finding_type.scheme_designator == "99SPECTNODE"
    declared = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert "99SPECTNODE" in declared


def test_result_sr_names_the_most_probable_classes(study, algorithm):
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    evaluations = qualitative_evaluations(sr)
    (top,) = items_named(evaluations, content.MOST_PROBABLE_CLASS)
    (second,) = items_named(evaluations, content.SECOND_MOST_PROBABLE_CLASS)
    assert (top.ConceptCodeSequence[0].CodeValue, top.ConceptCodeSequence[0].CodeMeaning) == (
        "94222008",
        "Bony metastasis",
    )
    assert second.ConceptCodeSequence[0].CodeValue == "3723001"

    without_second = build_result_sr(
        study.datasets, study.views, classified(study.views, second_label=None), [algorithm]
    )
    assert items_named(qualitative_evaluations(without_second), content.SECOND_MOST_PROBABLE_CLASS) == []


def test_result_sr_identifies_the_algorithm_consistently(study, algorithm):
    card = make_card()
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])

    processing = [item for item in sr.ContributingEquipmentSequence if "DeviceUID" in item]
    (equipment,) = processing
    purpose = equipment.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeValue, purpose.CodeMeaning) == (
        "DCM",
        "109102",
        "Processing Equipment",
    )
    assert equipment.Manufacturer == "spectnode"
    assert equipment.ManufacturerModelName == card.name
    assert equipment.SoftwareVersions == card.version
    assert equipment.DeviceUID == card.device_uid

    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert observer.observer_identifying_attributes.uid == card.device_uid
    assert observer.observer_identifying_attributes.name == card.name

    groups = items_named(sr, codes.DCM.MeasurementGroup)
    assert len(groups) == len(DSPIC4)
    for group in groups:
        (name,) = items_named(group, codes.DCM.AlgorithmName)
        (version,) = items_named(group, codes.DCM.AlgorithmVersion)
        assert (name.TextValue, version.TextValue) == (card.name, card.version)

    (statement,) = items_named(qualitative_evaluations(sr), content.RESEARCH_USE_STATEMENT)
    text = statement.TextValue.lower()
    assert "research use only" in text and "not for clinical use" in text and "synthetic" in text


def test_result_sr_references_the_views_and_their_frames(study, algorithm):
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study.datasets}
    by_path = {path: str(ds.SOPInstanceUID) for path, ds in zip(study.record.files, study.datasets)}
    multiframe = study.record.layout == "multiframe"

    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    for group in report.get_image_measurement_groups():
        references = [(str(s.referenced_sop_instance_uid), s.referenced_frame_numbers) for s in group.source_images]
        assert len(references) == 2
        for view, (uid, frames) in zip(("anterior", "posterior"), references):
            path, frame_index = study.record.views[view]  # where the generator wrote the view
            assert uid == by_path[path]
            if not multiframe:
                assert by_uid[uid].NumberOfFrames == 1 and frames is None  # one frame: the whole object
                continue
            assert frames == [frame_index + 1]
            # The same frame through the object's own DetectorVector mapping.
            source = by_uid[uid]
            detector = source.DetectorVector[frames[0] - 1]
            view_code = source.DetectorInformationSequence[detector - 1].ViewCodeSequence[0]
            assert view_code.CodeValue == VIEW_CODES[view][0]

    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert [item.StudyInstanceUID for item in evidence] == [study.record.study_uid]
    listed = {str(ref.ReferencedSOPInstanceUID) for series in evidence[0].ReferencedSeriesSequence
              for ref in series.ReferencedSOPSequence}
    assert listed == set(by_uid)


def test_dsr2html_shows_each_value_beside_its_name(study, algorithm, tmp_path):
    sr = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    text = dsr2html_text(saved(sr, tmp_path / "sr.dcm"))
    within_group = r"(?:(?!Measurement Group).)*?"
    assert re.search(
        r"Finding: Bony metastasis \(94222008, SCT\)" + within_group + r"Certainty of Finding: 81\.23 %", text
    )
    assert re.search(r"Finding: Normal \(17621005, SCT\)" + within_group + r"Certainty of Finding: 5\.0 %", text)
    assert "Most probable class: Bony metastasis (94222008, SCT)" in text
    assert "Second most probable class: Arthritis (3723001, SCT)" in text
    assert f'Algorithm Name = "{MODEL_NAME}"' in text and f'Algorithm Version = "{MODEL_VERSION}"' in text
    assert f'Device Observer UID = {algorithm.device_uid}' in text
    assert "Research use statement: Research use only" in text
    assert "not for clinical use" in text.lower() and "synthetic" in text


def test_missing_type2_study_attributes_become_empty(study, algorithm, tmp_path):
    stripped = []
    for ds in study.datasets:
        copy = pydicom.dcmread(ds.filename, stop_before_pixels=True)
        for keyword in ("AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex"):
            delattr(copy, keyword)
        stripped.append(copy)
    sr = build_result_sr(stripped, study.views, classified(study.views), [algorithm])
    for keyword in ("AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex"):
        assert keyword in sr and sr[keyword].value in ("", None), keyword
        assert keyword not in stripped[0], "the source dataset must not be modified"
    assert dciodvfy_errors(saved(sr, tmp_path / "sr.dcm")) == []


def test_predecessor_is_referenced(study, algorithm, tmp_path):
    first = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm])
    old = pydicom.dcmread(saved(first, tmp_path / "old.dcm"))
    replacement = build_result_sr(study.datasets, study.views, classified(study.views), [algorithm],
                                  series_instance_uid=old.SeriesInstanceUID, instance_number=2, predecessor=old)
    (study_item,) = replacement.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == old.StudyInstanceUID
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == old.SeriesInstanceUID
    (sop_item,) = series_item.ReferencedSOPSequence
    assert (sop_item.ReferencedSOPClassUID, sop_item.ReferencedSOPInstanceUID) == (old.SOPClassUID, old.SOPInstanceUID)
    assert replacement.SOPInstanceUID != old.SOPInstanceUID
    assert dciodvfy_errors(saved(replacement, tmp_path / "new.dcm")) == []

    with pytest.raises(ValueError, match="not an SR"):
        build_result_sr(
            study.datasets, study.views, classified(study.views), [algorithm], predecessor=study.datasets[0]
        )


def test_result_sr_rejects_inconsistent_input(study, algorithm):
    with pytest.raises(ValueError, match="build_not_assessable_sr"):
        build_result_sr(study.datasets, study.views,
                        StudyResult(study.views.study_uid, "not_assessable", reason="x", reason_code="missing_views"),
                        [algorithm])
    lung = classified(study.views)
    lung.models[0].probabilities = {"no_metastasis": 0.5, "adenocarcinoma": 0.3, "non_adenocarcinoma": 0.2}
    with pytest.raises(ValueError, match="classes"):
        build_result_sr(study.datasets, study.views, lung, [algorithm])
    missing_source = [ds for ds in study.datasets if ds.SOPInstanceUID != study.views.anterior.source_sop_instance_uid]
    other = pydicom.dcmread(study.datasets[0].filename, stop_before_pixels=True)
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ValueError, match="not among"):
        build_result_sr(missing_source or [other], study.views, classified(study.views), [algorithm])


# ------------------------------------------------------------------------ not assessable


def test_not_assessable_sr_states_the_reason(study, algorithm, tmp_path):
    reason = "no posterior view: ImageID 'WB' names no view"
    result = StudyResult(study.views.study_uid, "not_assessable", reason=reason, reason_code="missing_views")
    sr = build_not_assessable_sr(study.datasets, result, [algorithm])
    path = saved(sr, tmp_path / "na.dcm")
    assert dciodvfy_errors(path) == []
    assert sr.StudyInstanceUID == study.record.study_uid

    evaluations = qualitative_evaluations(sr)
    (assessment,) = items_named(evaluations, content.ASSESSMENT)
    assert assessment.ConceptCodeSequence[0].CodeValue == content.NOT_ASSESSABLE.value
    (category,) = items_named(evaluations, content.REASON_CATEGORY)
    assert category.ConceptCodeSequence[0].CodeValue == "NA-VIEWS"
    (text,) = items_named(evaluations, content.REASON_NOT_ASSESSABLE)
    assert text.TextValue == reason
    assert items_named(sr, content.CERTAINTY_OF_FINDING) == []

    (equipment,) = [item for item in sr.ContributingEquipmentSequence if "DeviceUID" in item]
    assert (equipment.ManufacturerModelName, equipment.SoftwareVersions, equipment.DeviceUID) == (
        MODEL_NAME, MODEL_VERSION, algorithm.device_uid)
    (name,) = items_named(sr, codes.DCM.AlgorithmName)
    assert name.TextValue == MODEL_NAME

    rendered = dsr2html_text(path)
    assert f"Reason not assessable: {reason}" in rendered
    assert "Assessment: Study not assessable by the classifier" in rendered
    assert "Research use statement: Research use only" in rendered


def test_not_assessable_sr_of_an_unreadable_study_takes_the_sources_study(study, algorithm):
    result = StudyResult("", "not_assessable", reason="pixel data could not be decoded", reason_code="unreadable")
    sr = build_not_assessable_sr(study.datasets, result, [algorithm])
    assert sr.StudyInstanceUID == study.record.study_uid
    with pytest.raises(ValueError, match="build_result_sr"):
        build_not_assessable_sr(study.datasets, classified(study.views), [algorithm])
    with pytest.raises(ValueError, match="at least one"):
        build_not_assessable_sr([], result, [algorithm])


# ------------------------------------------------------------------ algorithm and codes


def test_algorithm_from_card_carries_a_research_use_statement():
    card = make_card()
    algorithm = AlgorithmInfo.from_card(card)
    assert (algorithm.name, algorithm.version, algorithm.device_uid) == (card.name, card.version, card.device_uid)
    assert algorithm.classes == DSPIC4 and algorithm.scheme == "dspic4" and algorithm.manufacturer == "spectnode"
    assert algorithm.research_use_statement == " ".join(card.intended_use.split())

    # A hand-written intended use that forgets the warnings gets them added.
    terse = AlgorithmInfo.from_card(make_card(intended_use="Finds bone metastases."))
    lowered = terse.research_use_statement.lower()
    assert lowered.startswith("research use only. not for clinical use.")
    assert "finds bone metastases." in lowered and "synthetic" in lowered

    unsaved = make_card(content_hash="", device_uid="")
    with pytest.raises(ValueError, match="device_uid"):
        AlgorithmInfo.from_card(unsaved)


def test_class_codes_of_unknown_classes_are_valid_and_distinct():
    names = ["normal", "a very long class name indeed", "a very long class name too", "x/y"]
    codes_ = [content.class_code(name) for name in names]
    assert all(len(code.value) <= 16 for code in codes_)
    assert len({code.value for code in codes_}) == len(names)
    assert codes_[3].scheme_designator == "99SPECTNODE" and codes_[3].meaning == "x/y"
    assert content.class_code("metastasis").value == content.class_code("metastatic").value == "94222008"
    with pytest.raises(ValueError):
        content.class_code(" ")
    assert np.isclose(certainty_percent(0.123456), 12.35)


def test_a_single_view_study_references_only_that_view(study, algorithm, tmp_path):
    from spectnode.report import build_overlay_captures

    anterior_only = StudyViews(study.views.study_uid, study.views.anterior, None)
    result = classified(anterior_only)
    sr = build_result_sr(study.datasets, anterior_only, result, [algorithm])
    assert dciodvfy_errors(saved(sr, tmp_path / "sr.dcm")) == []
    for group in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups():
        (reference,) = group.source_images
        assert reference.referenced_sop_instance_uid == study.views.anterior.source_sop_instance_uid
    (capture,) = build_overlay_captures(study.datasets, anterior_only, result, [algorithm])
    assert list(capture.PatientOrientation) == ["L", "F"]


def test_every_not_assessable_reason_code_has_a_coded_category():
    from spectnode.imaging.views import REASON_CODES
    from spectnode.report.content import reason_category_code

    codes = {code: reason_category_code(code) for code in REASON_CODES}
    assert all(codes.values()), [c for c, concept in codes.items() if concept is None]
    assert len({concept.value for concept in codes.values()}) == len(codes)  # each its own code
