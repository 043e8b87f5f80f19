"""Files that no one here wrote: pydicom's real GE Millennium whole-body view, and Siemens-style
files as issue 14 describes them (private 99NMG view codes, German phase descriptions).

pydicom ships one GE view offline, ``JPEG2000.dcm`` (its WG04 siblings ``NM1_*`` are downloads,
which the tests may not make). It is re-encoded here by pydicom into every other transfer syntax
that the installed encoders write, so the same real pixels and header arrive in each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from spectnode.imaging.guards import check_study
from spectnode.imaging.views import (
    EARLY_PHASE,
    MISSING_VIEWS,
    NotAssessable,
    StudyViews,
    load_study_views,
    read_study_views,
)
from spectnode.phantom import synthesize_scan
from test_content_guard import classifier_that_must_not_run

GE_FILE = "JPEG2000.dcm"
GE_PRIVATE_NAME = "Patient,The"  # (0009,1040) Patient Object Name of the real file


def ge_dataset() -> Dataset:
    return pydicom.dcmread(get_testdata_file(GE_FILE))


def _reencoded(syntax: pydicom.uid.UID) -> Dataset:
    ds = ge_dataset()
    ds.decompress()  # keeps the real (lossy-decoded) pixels
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    return ds


def _written(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


SYNTAXES = {"JPEG 2000 (as shipped)": None, "Explicit VR LE": ExplicitVRLittleEndian,
            "Implicit VR LE": ImplicitVRLittleEndian, "Deflated": DeflatedExplicitVRLittleEndian,
            "RLE Lossless": RLELossless, "JPEG 2000 Lossless": JPEG2000Lossless}


def _all_text(result: StudyViews | NotAssessable) -> str:
    if isinstance(result, NotAssessable):
        return result.reason
    return " ".join(image.view_evidence for image in (result.anterior, result.posterior) if image is not None)


@pytest.fixture(scope="module")
def shipped_models():
    from spectnode.classify import Classifiers

    return Classifiers.from_bundles(None)


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_ge_view_in_every_transfer_syntax_is_a_single_inferred_view(name: str, tmp_path: Path,
                                                                    shipped_models) -> None:
    syntax = SYNTAXES[name]
    if syntax is None:
        path = Path(get_testdata_file(GE_FILE))
    else:
        path = tmp_path / "ge.dcm"
        _written(_reencoded(syntax), path)
    (result,) = load_study_views([path]).values()
    assert isinstance(result, StudyViews), result
    (image,) = [i for i in (result.anterior, result.posterior) if i is not None]
    assert image.view_inferred and 0.5 <= image.view_certainty <= 1.0
    assert "inferred from the image" in image.view_evidence
    assert image.pixels.shape == (1024, 256)
    assert check_study(result) is None, "the real GE scan must pass the guards"
    ds = pydicom.dcmread(path)
    for value in (GE_PRIVATE_NAME, str(ds.PatientName), "Patient", "CompressedSamples"):
        assert value not in _all_text(result)
    # ... and the shipped per-view model classifies it on that one view, the aggregate one says why not
    classified = shipped_models.classify(result)
    assert classified.outcome == "classified" and classified.inferred_views == [image.view]
    (model,) = classified.models
    assert model.input_mode == "per_view" and model.views == [image.view]
    assert len(classified.skipped_models) == 1


def test_ge_names_appear_in_no_reason(tmp_path: Path) -> None:
    """A study that fails with the GE private elements holding a name: the name is nowhere."""
    datasets = []
    for _ in range(2):  # two unnamed views: nothing can be inferred, the reason lists what it read
        ds = ge_dataset()
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = "Doe^Jane"
        ds.OtherPatientNames = "Roe^Janet"
        ds.SeriesDescription = "Jane Doe WB"
        ds.ImageID = "Doe^Jane"
        ds.private_block(0x0009, "GEMS_GENIE_1")[0x40].value = "Doe,Jane"
        ds.private_block(0x0009, "GEMS_GENIE_1")[0x20].value = "WB Doe,Jane"
        datasets.append(ds)
    result = read_study_views(datasets)
    assert isinstance(result, NotAssessable) and result.code == MISSING_VIEWS
    for word in ("Doe", "Jane", "Roe", "Janet", "JANE", "DOE"):
        assert word not in result.reason, result.reason
    assert "(0009,1020)" in result.reason and "(text withheld)" in result.reason
    assert "(0008,103E) SeriesDescription" in result.reason

    # ... and when a private element names the view, the evidence is just as clean
    one = ge_dataset()
    one.PatientName, one.SeriesDescription = "Doe^Jane", "Jane Doe WB"
    one.private_block(0x0009, "GEMS_GENIE_1")[0x40].value = "Doe,Jane"
    one.private_block(0x0009, "GEMS_GENIE_1")[0x20].value = "ANT Doe,Jane"
    views = read_study_views([one])
    assert isinstance(views, StudyViews) and views.anterior is not None and not views.anterior.view_inferred
    assert "Doe" not in _all_text(views) and "Jane" not in _all_text(views)


def test_undecodable_real_file_is_unreadable_without_names() -> None:
    path = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")
    (result,) = load_study_views([path]).values()
    assert isinstance(result, NotAssessable) and result.code == "unreadable"
    assert "CompressedSamples" not in result.reason and GE_PRIVATE_NAME not in result.reason


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99NMG", meaning
    return item


def siemens_study(series_description: str, meanings: tuple[str, str], seed: int = 4) -> Dataset:
    """A Symbia-style two-frame whole-body object: DetectorVector 1\\2, private 99NMG view codes."""
    scan = synthesize_scan(np.random.default_rng(seed), "normal")
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Manufacturer = "NM", "SIEMENS NM"
    ds.PatientName, ds.PatientID = "Mustermann^Erika", "4711"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.SeriesDescription = series_description
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = scan.anterior.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [scan.pixel_spacing_mm, scan.pixel_spacing_mm]
    ds.NumberOfFrames = 2
    ds.FrameIncrementPointer = [Tag("EnergyWindowVector"), Tag("DetectorVector")]
    ds.EnergyWindowVector, ds.NumberOfEnergyWindows = [1, 1], 1
    ds.DetectorVector, ds.NumberOfDetectors = [1, 2], 2
    detectors = []
    for value, meaning in zip(("NMG1", "NMG2"), meanings):
        item = Dataset()
        item.ViewCodeSequence = Sequence([_code(value, meaning)])
        detectors.append(item)
    ds.DetectorInformationSequence = Sequence(detectors)
    ds.PixelData = np.stack([scan.anterior, scan.posterior]).astype(np.uint16).tobytes()
    return ds


def test_siemens_early_phase_views_read_then_refused() -> None:
    ds = siemens_study("GK früh", ("R VENTRAL L FRUEH", "L DORSAL R FRUEH"))
    views = read_study_views([ds])
    assert isinstance(views, StudyViews) and views.available_views == ("anterior", "posterior")
    assert not views.anterior.view_inferred and views.anterior.view_certainty == 1.0
    assert "99NMG" in views.anterior.view_evidence
    problem = check_study(views)
    assert problem is not None and problem.code == EARLY_PHASE
    assert problem.reason.startswith("early (blood-pool) phase, not a delayed bone scan")
    assert "Mustermann" not in problem.reason and "Erika" not in problem.reason


def test_siemens_early_phase_named_only_in_the_view_code() -> None:
    ds = siemens_study("GK", ("R VENTRAL L FRUEH", "L DORSAL R FRUEH"))
    views = read_study_views([ds])
    assert isinstance(views, StudyViews)
    problem = check_study(views)
    assert problem is not None and problem.code == EARLY_PHASE and "CodeMeaning" in problem.reason


def test_german_delayed_scan_is_two_views_and_passes_the_guards() -> None:
    ds = siemens_study("GK spät", ("R VENTRAL L SPAET", "L DORSAL R SPAET"))
    views = read_study_views([ds])
    assert isinstance(views, StudyViews) and views.available_views == ("anterior", "posterior")
    np.testing.assert_array_equal(views.anterior.pixels, synthesize_scan(np.random.default_rng(4), "normal").anterior)
    assert check_study(views) is None


def test_private_lateral_code_is_refused() -> None:
    ds = siemens_study("GK spät", ("LINKS LATERAL", "RECHTS SEITLICH"))
    result = read_study_views([ds])
    assert isinstance(result, NotAssessable) and result.code == MISSING_VIEWS


def test_standard_scheme_meaning_is_not_read_as_text() -> None:
    ds = siemens_study("GK spät", ("anterior", "posterior"))
    for item in ds.DetectorInformationSequence:
        item.ViewCodeSequence[0].CodingSchemeDesignator = "SCT"  # unknown SCT value: not a view
    result = read_study_views([ds])
    assert isinstance(result, NotAssessable) and result.code == MISSING_VIEWS


def test_classify_says_early_phase_for_the_siemens_file() -> None:
    result = classifier_that_must_not_run().classify(
        read_study_views([siemens_study("GK früh", ("R VENTRAL L FRUEH", "L DORSAL R FRUEH"))]))
    assert result.outcome == "not_assessable" and result.reason_code == EARLY_PHASE


def test_a_modality_from_the_standards_list_is_named_even_when_a_name_holds_its_letters():
    from pydicom.dataset import Dataset

    from spectnode.imaging.views import read_study_views

    ds = Dataset()
    ds.StudyInstanceUID, ds.SOPInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "CT"
    ds.PatientName = "Ct^Only"
    result = read_study_views([ds])
    assert "Modality CT" in result.reason and "Only" not in result.reason
