"""Tests of spectnode.imaging.views: finding oriented views in every DICOM layout.

Every object is built here with pydicom from an asymmetric test body whose
orientation can be checked: a bright block at the head end, a different block
on the patient's right, and different content in the two views.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from spectnode.imaging.view_labels import view_from_label
from spectnode.imaging.views import (
    REASON_CODES,
    NotAssessable,
    StudyViews,
    group_by_study,
    iter_study_views,
    load_study_views,
    read_study_views,
)

if TYPE_CHECKING:
    from pathlib import Path

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
WB_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
ROWS, COLS = 512, 128
ANTERIOR_CODE = ("399321004", "SCT", "Anterior projection")
POSTERIOR_CODE = ("399001007", "SCT", "Posterior projection")


def truth_views(rows: int = ROWS, cols: int = COLS) -> tuple[np.ndarray, np.ndarray]:
    """Anterior (facing the patient) and posterior (from behind), head at row 0.

    The body is a column of soft tissue. The head marker sits at the top of
    both views. The marker on the patient's RIGHT side is on the image's left
    in the anterior and on the image's right in the posterior. The posterior
    also has a "kidney" that the anterior lacks, so the views differ.
    """
    r, c = rows // 16, cols // 8
    body = np.zeros((rows, cols), dtype=np.uint16)
    body[r : rows - r, 2 * c : 6 * c] = 40
    body[r : 3 * r, 3 * c : 5 * c] = 900  # head
    anterior = body.copy()
    anterior[6 * r : 7 * r, 2 * c : 3 * c] = 500  # patient's right = image left
    anterior[rows - 2 * r :, 0] = 7  # a faint asymmetric corner, bottom-left
    posterior = body.copy()
    posterior[6 * r : 7 * r, 5 * c : 6 * c] = 500  # patient's right = image right
    posterior[8 * r : 9 * r, 2 * c : 3 * c] = 300  # kidney only seen from behind
    return anterior, posterior


def code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def detector_item(code: tuple[str, str, str] | None) -> Dataset:
    item = Dataset()
    item.CollimatorType = "PARA"
    if code is not None:
        item.ViewCodeSequence = Sequence([code_item(code)])
    return item


def make_dataset(
    frames: list[np.ndarray],
    *,
    study_uid: str,
    modality: str = "NM",
    sop_class: str = NM_IMAGE_STORAGE,
    image_type: list[str] | None = WB_IMAGE_TYPE,
    multiframe: bool = True,
    series_uid: str | None = None,
    **attributes: object,
) -> Dataset:
    """A minimal image object with the given frames (uint16, uncompressed)."""
    stack = np.ascontiguousarray(np.stack(frames).astype(np.uint16))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientID = "TEST"
    if image_type is not None:
        ds.ImageType = image_type
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [2.4, 2.2]
    if multiframe:
        ds.NumberOfFrames = stack.shape[0]
    ds.PixelData = stack.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def multiframe_study(
    detector_vector: list[int],
    detector_codes: list[tuple[str, str, str]],
    frames: list[np.ndarray],
    **attributes: object,
) -> Dataset:
    attributes.setdefault("FrameIncrementPointer", [Tag("DetectorVector")])
    return make_dataset(
        frames,
        study_uid=generate_uid(),
        DetectorVector=detector_vector,
        NumberOfDetectors=len(detector_codes),
        DetectorInformationSequence=Sequence([detector_item(code) for code in detector_codes]),
        **attributes,
    )


def assert_views(
    result: StudyViews | NotAssessable, anterior: np.ndarray | None, posterior: np.ndarray | None
) -> StudyViews:
    assert isinstance(result, StudyViews), result
    for got, want in ((result.anterior, anterior), (result.posterior, posterior)):
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert got.pixels.dtype == np.float32
            np.testing.assert_array_equal(got.pixels, want.astype(np.float32))
    return result


def assert_not_assessable(result: StudyViews | NotAssessable, code: str, *words: str) -> NotAssessable:
    assert isinstance(result, NotAssessable), result
    assert result.code == code, result.reason
    assert result.code in REASON_CODES
    for word in words:
        assert word in result.reason, result.reason
    return result


# ----------------------------------------------------------------- text labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ANT", "anterior"),
        ("ANTERIOR", "anterior"),
        ("ANT WB", "anterior"),
        ("WB ANT", "anterior"),
        ("wb_ant", "anterior"),
        ("ANTWB", "anterior"),
        ("Anterior whole body", "anterior"),
        ("POST", "posterior"),
        ("POSTERIOR", "posterior"),
        ("PST", "posterior"),
        ("WB-POST", "posterior"),
        ("Whole Body Posterior 3h p.i.", "posterior"),
        ("BONE POST INJECTION", None),
        ("WB 3H POST", None),
        ("POST 3 HRS", None),
        ("POST-VOID", None),
        ("ANT/POST", None),
        ("WB ANT+POST", None),
        ("POSTERIOR OBLIQUE", None),
        ("LAO", None),
        ("ANTIBODY", None),
        ("POSTOP", None),
        ("WHOLE BODY", None),
        ("R VENTRAL L FRUEH", "anterior"),
        ("L DORSAL R FRUEH", "posterior"),
        ("ventral", "anterior"),
        ("Dorsal", "posterior"),
        ("GK von vorne", "anterior"),
        ("GK von hinten", "posterior"),
        ("VENTRALIS", None),
        ("DORSALGIE", None),
        ("antero-posterior", None),
        ("postero-anterior", None),
        ("VENTRAL DORSAL", None),
        ("R VENTRAL SCHRÄG", None),
        ("DORSAL SEITLICH", None),
        ("", None),
        (None, None),
    ],
)
def test_view_from_label(text: str | None, expected: str | None) -> None:
    assert view_from_label(text) == expected


# ----------------------------------------------------------- multi-frame layouts


def test_multiframe_in_detector_order() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    result = assert_views(read_study_views([ds]), anterior, posterior)
    assert result.study_uid == ds.StudyInstanceUID
    assert result.anterior.frame_number == 1 and result.posterior.frame_number == 2
    assert result.anterior.source_sop_instance_uid == ds.SOPInstanceUID
    assert result.anterior.source_sop_class_uid == NM_IMAGE_STORAGE
    assert result.anterior.pixel_spacing_mm == (2.4, 2.2)
    assert result.available_views == ("anterior", "posterior")


def test_multiframe_shuffled_detector_vector() -> None:
    anterior, posterior = truth_views()
    # Frame 1 is detector 2 (anterior), frame 2 is detector 1 (posterior).
    ds = multiframe_study([2, 1], [POSTERIOR_CODE, ANTERIOR_CODE], [anterior, posterior])
    result = assert_views(read_study_views([ds]), anterior, posterior)
    assert result.anterior.frame_number == 1 and result.posterior.frame_number == 2
    ds = multiframe_study([2, 1], [ANTERIOR_CODE, POSTERIOR_CODE], [posterior, anterior])
    result = assert_views(read_study_views([ds]), anterior, posterior)
    assert result.anterior.frame_number == 2 and result.posterior.frame_number == 1


def test_legacy_srt_view_codes() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study(
        [1, 2],
        [("G-5215", "SRT", "Anterior projection"), ("G-5216", "SRT", "Posterior projection")],
        [anterior, posterior],
    )
    assert_views(read_study_views([ds]), anterior, posterior)


def _energy_window(lower: float, upper: float, name: str) -> Dataset:
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit, window_range.EnergyWindowUpperLimit = lower, upper
    item = Dataset()
    item.EnergyWindowName = name
    item.EnergyWindowRangeSequence = Sequence([window_range])
    return item


def test_four_frames_two_energy_windows_use_one_window() -> None:
    anterior, posterior = truth_views()
    scatter_a, scatter_p = anterior // 3, posterior // 3
    frames = [posterior, scatter_a, anterior, scatter_p]
    common = dict(
        FrameIncrementPointer=[Tag("EnergyWindowVector"), Tag("DetectorVector")],
        NumberOfEnergyWindows=2,
    )
    # Window 2 holds the Tc-99m photopeak: it is chosen although it is not window 1.
    ds = multiframe_study(
        [2, 1, 1, 2],
        [ANTERIOR_CODE, POSTERIOR_CODE],
        frames,
        EnergyWindowVector=[2, 1, 2, 1],
        EnergyWindowInformationSequence=Sequence(
            [_energy_window(100, 125, "SCATTER"), _energy_window(126.5, 154.5, "TC99M")]
        ),
        **common,
    )
    result = assert_views(read_study_views([ds]), anterior, posterior)
    assert (result.anterior.frame_number, result.posterior.frame_number) == (3, 1)
    # Without energy ranges, the lowest-numbered window is used.
    ds = multiframe_study(
        [2, 1, 1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], frames, EnergyWindowVector=[2, 1, 2, 1], **common
    )
    result = assert_views(read_study_views([ds]), scatter_a, scatter_p)
    assert (result.anterior.frame_number, result.posterior.frame_number) == (2, 4)


def test_multiframe_512_by_2048() -> None:
    anterior, posterior = truth_views(2048, 512)
    ds = multiframe_study([1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    result = assert_views(read_study_views([ds]), anterior, posterior)
    assert result.anterior.pixels.shape == (2048, 512)


def test_multiframe_feet_first_is_flipped_head_up_for_both_views() -> None:
    anterior, posterior = truth_views()
    # One PatientOrientation for both views: only its H/F part is applied.
    ds = multiframe_study(
        [1, 2],
        [ANTERIOR_CODE, POSTERIOR_CODE],
        [anterior[::-1], posterior[::-1]],
        PatientOrientation=["L", "H"],
    )
    assert_views(read_study_views([ds]), anterior, posterior)


def test_modality_lut_is_applied() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study(
        [1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior], RescaleSlope=2, RescaleIntercept=0
    )
    assert_views(read_study_views([ds]), anterior * 2, posterior * 2)


# ------------------------------------------------------------ split layouts, text


def split_instances(
    anterior: np.ndarray,
    posterior: np.ndarray,
    *,
    same_series: bool = True,
    anterior_attrs: dict | None = None,
    posterior_attrs: dict | None = None,
) -> list[Dataset]:
    """Two single-frame NM instances (posterior first) with no view codes."""
    per_view = {"anterior": anterior_attrs or {}, "posterior": posterior_attrs or {}}
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = []
    for view, pixels in (("posterior", posterior), ("anterior", anterior)):
        datasets.append(
            make_dataset(
                [pixels],
                study_uid=study_uid,
                series_uid=series_uid if same_series else None,
                NumberOfDetectors=1,
                DetectorVector=[1],
                DetectorInformationSequence=Sequence([detector_item(None)]),
                **per_view[view],
            )
        )
    return datasets


def test_split_instances_named_in_image_id_only() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(
        anterior,
        posterior,
        anterior_attrs={"ImageID": "ANT", "SeriesDescription": "WB ANT/POST"},
        posterior_attrs={"ImageID": "POSTERIOR", "SeriesDescription": "WB ANT/POST"},
    )
    result = assert_views(read_study_views(datasets), anterior, posterior)
    assert result.anterior.frame_number == 1  # NM objects are multi-frame objects


def test_two_series_named_in_series_description_only() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(
        anterior,
        posterior,
        same_series=False,
        anterior_attrs={"SeriesDescription": "ANT WB"},
        posterior_attrs={"SeriesDescription": "WB PST", "ImageComments": "3h post injection"},
    )
    assert_views(read_study_views(datasets), anterior, posterior)


@pytest.mark.parametrize("element", [0x20, 0x22])
def test_split_instances_named_in_ge_private_tag_only(element: int) -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(anterior, posterior)
    for ds, label in zip(datasets, ("WB POST", "WB ANT")):
        block = ds.private_block(0x0009, "GEMS_GENIE_1", create=True)
        block.add_new(0x10, "LO", "BONE SCAN")
        block.add_new(element, "LO", label)
        ds.SeriesDescription = "WHOLE BODY"
    assert_views(read_study_views(datasets), anterior, posterior)


def test_ge_private_tag_unknown_to_the_dictionary_in_implicit_vr_file(tmp_path: Path) -> None:
    anterior, posterior = truth_views()
    paths = []
    for ds, label in zip(split_instances(anterior, posterior), ("POSTERIOR", "ANTERIOR")):
        # (0009,xx5A) is not in pydicom's GEMS_GENIE_1 dictionary: read back as UN bytes.
        ds.private_block(0x0009, "GEMS_GENIE_1", create=True).add_new(0x5A, "LO", label)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        paths.append(tmp_path / f"{label}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    reread = pydicom.dcmread(paths[0])
    assert reread.get_private_item(0x0009, 0x5A, "GEMS_GENIE_1").VR == "UN"
    results = load_study_views(paths)
    assert_views(results[reread.StudyInstanceUID], anterior, posterior)


def test_ge_private_text_under_another_creator_is_ignored() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(anterior, posterior)
    for ds, label in zip(datasets, ("POST", "ANT")):
        ds.private_block(0x0009, "SOME_OTHER_VENDOR", create=True).add_new(0x20, "LO", label)
    assert_not_assessable(read_study_views(datasets), "missing_views", "no unambiguous ANT/POST label")


def test_empty_view_code_sequence_falls_back_to_text() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(
        anterior, posterior, anterior_attrs={"ImageID": "ANT"}, posterior_attrs={"ImageID": "POST"}
    )
    for ds in datasets:
        ds.DetectorInformationSequence[0].ViewCodeSequence = Sequence([])
    assert_views(read_study_views(datasets), anterior, posterior)


def test_lateral_view_code_is_not_a_view_we_use() -> None:
    anterior, _ = truth_views()
    ds = multiframe_study([1], [("399297009", "SCT", "Right lateral projection")], [anterior], ImageID="ANT")
    assert_not_assessable(read_study_views([ds]), "missing_views", "Right lateral projection")


def test_image_id_outranks_series_description() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(
        anterior,
        posterior,
        anterior_attrs={"ImageID": "ANT", "SeriesDescription": "BONE POST"},
        posterior_attrs={"ImageID": "POST", "SeriesDescription": "BONE POST"},
    )
    assert_views(read_study_views(datasets), anterior, posterior)


def test_secondary_capture_with_nm_whole_body_content() -> None:
    anterior, _ = truth_views()
    ds = make_dataset(
        [anterior],
        study_uid=generate_uid(),
        sop_class=SecondaryCaptureImageStorage,
        image_type=["DERIVED", "PRIMARY", "WHOLE BODY", "EMISSION"],
        multiframe=False,
        ImageID="WB ANT",
    )
    result = assert_views(read_study_views([ds]), anterior, None)
    assert result.anterior.frame_number is None
    assert result.anterior.source_sop_class_uid == SecondaryCaptureImageStorage


def test_whole_body_geometry_without_whole_body_image_type() -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), image_type=["DERIVED", "SECONDARY"], ImageID="ANT")
    assert_views(read_study_views([ds]), anterior, None)


def test_single_view_only() -> None:
    _, posterior = truth_views()
    ds = make_dataset([posterior], study_uid=generate_uid(), ImageID="POST")
    result = assert_views(read_study_views([ds]), None, posterior)
    assert result.available_views == ("posterior",)


# ------------------------------------------------------------------ orientation


@pytest.mark.parametrize(
    ("view", "orientation", "store"),
    [
        ("anterior", ["L", "F"], lambda a: a),
        ("anterior", ["L", "H"], lambda a: a[::-1]),
        ("anterior", ["R", "F"], lambda a: a[:, ::-1]),
        ("anterior", ["R", "H"], lambda a: a[::-1, ::-1]),
        ("anterior", ["F", "L"], lambda a: a.T),
        ("posterior", ["R", "F"], lambda a: a),
        ("posterior", ["L", "F"], lambda a: a[:, ::-1]),
        ("posterior", ["R", "H"], lambda a: a[::-1]),
        ("posterior", ["LA", "FP"], lambda a: a[:, ::-1]),  # dominant letter first
    ],
)
def test_patient_orientation_puts_head_up(view, orientation, store) -> None:
    anterior, posterior = truth_views()
    truth = anterior if view == "anterior" else posterior
    ds = make_dataset(
        [store(truth)],
        study_uid=generate_uid(),
        ImageID="ANT" if view == "anterior" else "POST",
        PatientOrientation=orientation,
    )
    result = read_study_views([ds])
    assert isinstance(result, StudyViews), result
    got = result.anterior if view == "anterior" else result.posterior
    np.testing.assert_array_equal(got.pixels, truth.astype(np.float32))
    if orientation[0] in ("F", "H"):
        assert got.pixel_spacing_mm == (2.2, 2.4)  # swapped with the axes


def test_patient_orientation_along_anterior_posterior_axis_is_unusable() -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), ImageID="ANT", PatientOrientation=["A", "F"])
    assert_not_assessable(read_study_views([ds]), "unusable_geometry", "(0020,0020) PatientOrientation A\\F")


# ----------------------------------------------------------- compressed, files


def test_rle_compressed_files_through_load_study_views(tmp_path: Path) -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([2, 1], [ANTERIOR_CODE, POSTERIOR_CODE], [posterior, anterior])
    ds.compress(RLELossless)
    path = tmp_path / "wb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    results = load_study_views([path])
    assert list(results) == [ds.StudyInstanceUID]
    assert_views(results[ds.StudyInstanceUID], anterior, posterior)


def test_lossy_jpeg_baseline_frames_decode(tmp_path: Path) -> None:
    anterior, posterior = truth_views()
    anterior8, posterior8 = (np.clip(v // 4, 0, 255).astype(np.uint8) for v in (anterior, posterior))
    ds = multiframe_study([2, 1], [ANTERIOR_CODE, POSTERIOR_CODE], [posterior8, anterior8])
    fragments = []
    for frame in (posterior8, anterior8):
        stream = io.BytesIO()
        Image.fromarray(frame, mode="L").save(stream, format="JPEG", quality=95)
        fragments.append(stream.getvalue())
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = load_study_views([path])[ds.StudyInstanceUID]
    assert isinstance(result, StudyViews), result
    # Lossy: close to the truth, and the markers are where they should be.
    for got, want in ((result.anterior, anterior8), (result.posterior, posterior8)):
        assert np.abs(got.pixels - want).mean() < 1.0
        assert np.corrcoef(got.pixels.ravel(), want.ravel())[0, 1] > 0.99
    r, c = ROWS // 16, COLS // 8
    assert result.anterior.pixels[6 * r : 7 * r, 2 * c : 3 * c].mean() == pytest.approx(125, abs=2)
    assert result.posterior.pixels[6 * r : 7 * r, 5 * c : 6 * c].mean() == pytest.approx(125, abs=2)


def test_load_study_views_groups_studies_and_reports_unreadable_files(tmp_path: Path) -> None:
    anterior, posterior = truth_views()
    paths = []
    for i, ds in enumerate(
        split_instances(anterior, posterior, anterior_attrs={"ImageID": "ANT"}, posterior_attrs={"ImageID": "POST"})
    ):
        paths.append(tmp_path / f"a{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    ct = make_dataset([anterior], study_uid=generate_uid(), modality="CT", sop_class=CTImageStorage, image_type=None)
    paths.append(tmp_path / "ct.dcm")
    ct.save_as(paths[-1], enforce_file_format=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM")
    paths.append(junk)

    results = load_study_views(paths)
    assert set(results) == {datasets_uid(paths[0]), ct.StudyInstanceUID, str(junk)}
    assert_views(results[datasets_uid(paths[0])], anterior, posterior)
    assert_not_assessable(results[ct.StudyInstanceUID], "wrong_modality", "CT")
    assert_not_assessable(results[str(junk)], "unreadable", "junk.dcm")


def test_iter_study_views_holds_one_study_in_memory_at_a_time(tmp_path: Path, monkeypatch) -> None:
    # Training reads thousands of studies: all their pixel data at once did not fit in 23 GB.
    import spectnode.imaging.views as views_module

    anterior, posterior = truth_views()
    paths = []
    for study in range(3):
        uid = generate_uid()
        for i, ds in enumerate(split_instances(anterior, posterior, anterior_attrs={"ImageID": "ANT"},
                                               posterior_attrs={"ImageID": "POST"})):
            ds.StudyInstanceUID = uid
            paths.append(tmp_path / f"s{study}-{i}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM")
    paths.insert(2, junk)
    reads: list[str] = []
    real_dcmread = pydicom.dcmread

    def counting_dcmread(path, *args, **kwargs):
        reads.append("header" if kwargs.get("stop_before_pixels") else "whole")
        return real_dcmread(path, *args, **kwargs)

    monkeypatch.setattr(views_module.pydicom, "dcmread", counting_dcmread)
    whole_reads_at_each_study = []
    entries = []
    for key, result in iter_study_views(paths):
        entries.append(key)
        if result.study_uid:
            whole_reads_at_each_study.append(reads.count("whole"))
            assert_views(result, anterior, posterior)
    assert reads[:7] == ["header"] * 7  # every file's header first, to group them
    assert whole_reads_at_each_study == [2, 4, 6]  # then one study's two files at a time
    assert entries[0] == str(junk) and len(entries) == 4
    monkeypatch.undo()
    assert dict(iter_study_views(paths)).keys() == load_study_views(paths).keys()
    # only the studies asked for are read whole (the unreadable file is still reported)
    second = str(pydicom.dcmread(paths[3], stop_before_pixels=True).StudyInstanceUID)
    reads.clear()
    monkeypatch.setattr(views_module.pydicom, "dcmread", counting_dcmread)
    assert [key for key, _ in iter_study_views(paths, {second})] == [str(junk), second]
    assert reads.count("whole") == 2


def datasets_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_group_by_study_keeps_order() -> None:
    a = make_dataset([truth_views()[0]], study_uid="1.2.3")
    b = make_dataset([truth_views()[0]], study_uid="1.2.4")
    c = make_dataset([truth_views()[0]], study_uid="1.2.3")
    del c.StudyInstanceUID
    d = make_dataset([truth_views()[0]], study_uid="1.2.3")
    groups = group_by_study([a, b, c, d])
    assert list(groups) == ["1.2.3", "1.2.4", ""]
    assert groups["1.2.3"] == [a, d] and groups[""] == [c]
    with pytest.raises(ValueError, match="2 studies"):
        read_study_views([a, b])


def test_other_modalities_in_the_study_are_ignored() -> None:
    anterior, posterior = truth_views()
    nm = multiframe_study([1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    ct = make_dataset([anterior], study_uid=nm.StudyInstanceUID, modality="CT", sop_class=CTImageStorage)
    assert_views(read_study_views([ct, nm]), anterior, posterior)


def test_same_instance_received_twice_counts_once() -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), ImageID="ANT")
    assert_views(read_study_views([ds, ds.copy()]), anterior, None)


# --------------------------------------------------------------- not assessable


@pytest.mark.parametrize("modality", ["CT", "PT", "OT"])
def test_wrong_modality(modality: str) -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), modality=modality, ImageID="ANT")
    assert_not_assessable(read_study_views([ds]), "wrong_modality", f"Modality {modality}")


def test_not_whole_body_static_and_spect() -> None:
    static = np.full((128, 128), 5, dtype=np.uint16)
    ds = make_dataset(
        [static], study_uid=generate_uid(), image_type=["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"], ImageID="ANT"
    )
    assert_not_assessable(read_study_views([ds]), "not_whole_body", "STATIC", "128x128")
    tomo = make_dataset(
        [static] * 4, study_uid=ds.StudyInstanceUID, image_type=["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    )
    assert_not_assessable(read_study_views([ds, tomo]), "not_whole_body", "TOMO", "4 frame(s)")


def test_missing_views_when_nothing_names_them() -> None:
    anterior, posterior = truth_views()
    datasets = split_instances(
        anterior,
        posterior,
        anterior_attrs={"ImageID": "WB", "SeriesDescription": "BONE SCAN POST INJECTION"},
        posterior_attrs={"ImageID": "WB", "SeriesDescription": "BONE SCAN POST INJECTION"},
    )
    assert_not_assessable(read_study_views(datasets), "missing_views", "POST INJECTION")


def test_missing_views_multiframe_without_codes() -> None:
    anterior, posterior = truth_views()
    ds = make_dataset([anterior, posterior], study_uid=generate_uid(), SeriesDescription="WB ANT")
    assert_not_assessable(read_study_views([ds]), "missing_views", "2 frames")


def test_missing_views_multiframe_without_detector_vector() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    del ds.DetectorVector
    assert_not_assessable(read_study_views([ds]), "missing_views", "no (0054,0020) DetectorVector")


def test_ambiguous_when_two_objects_claim_one_view() -> None:
    anterior, posterior = truth_views()
    first = make_dataset([anterior], study_uid=generate_uid(), ImageID="ANT")
    second = make_dataset([posterior], study_uid=first.StudyInstanceUID, ImageID="ANTERIOR")
    assert_not_assessable(read_study_views([first, second]), "missing_views", "ambiguous", "2 different")


def test_ambiguous_when_two_frames_of_one_view_share_a_window() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([1, 2, 1], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior, anterior])
    assert_not_assessable(read_study_views([ds]), "missing_views", "frames [1, 3]")


@pytest.mark.parametrize(
    ("shape", "image_type", "words"),
    [
        ((200, 200), WB_IMAGE_TYPE, ("rows < 2 x columns", "200x200")),
        ((240, 40), WB_IMAGE_TYPE, ("too small",)),
        # Whole-body-like matrix, but lying sideways with no PatientOrientation to say so.
        ((128, 512), None, ("rows < 2 x columns", "512x128")),
    ],
)
def test_unusable_geometry(shape, image_type, words) -> None:
    pixels = np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape)
    ds = make_dataset([pixels], study_uid=generate_uid(), image_type=image_type, ImageID="ANT")
    assert_not_assessable(read_study_views([ds]), "unusable_geometry", *words)


def test_unusable_geometry_views_of_different_size() -> None:
    anterior, _ = truth_views()
    _, posterior = truth_views(1024, 256)
    datasets = split_instances(
        anterior, posterior, anterior_attrs={"ImageID": "ANT"}, posterior_attrs={"ImageID": "POST"}
    )
    assert_not_assessable(read_study_views(datasets), "unusable_geometry", "views differ in size")


def test_unusable_geometry_detector_vector_does_not_fit_frames() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([1, 2, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    assert_not_assessable(read_study_views([ds]), "unusable_geometry", "DetectorVector [1, 2, 2]")


@pytest.mark.parametrize(("value", "word"), [(0, "all zero"), (17, "constant (17)")])
def test_empty_image(value: int, word: str) -> None:
    anterior, _ = truth_views()
    ds = multiframe_study(
        [1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, np.full_like(anterior, value)]
    )
    assert_not_assessable(read_study_views([ds]), "empty_image", "posterior view", word)


def test_unreadable_pixel_data() -> None:
    anterior, posterior = truth_views()
    ds = multiframe_study([1, 2], [ANTERIOR_CODE, POSTERIOR_CODE], [anterior, posterior])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    assert_not_assessable(read_study_views([ds]), "unreadable", "cannot be decoded")


def test_unreadable_colour_screenshot() -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), ImageID="ANT", multiframe=False)
    rgb = np.repeat((anterior // 4).astype(np.uint8)[..., None], 3, axis=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    assert_not_assessable(read_study_views([ds]), "unreadable", "SamplesPerPixel 3")


# ------------------------------------------------------------- phantom layouts

PHANTOM_SEED = 7


def test_every_phantom_layout_reads_back_as_synthesized(tmp_path: Path) -> None:
    """Each layout of spectnode.phantom gives back the synthesized views, oriented."""
    from spectnode.phantom.dicom import LAYOUTS
    from spectnode.phantom.generate import generate_phantoms, scan_for_study

    # A mixed data set of len(LAYOUTS) studies holds every layout once.
    records = generate_phantoms(tmp_path, len(LAYOUTS), PHANTOM_SEED)
    assert {record.layout for record in records} == set(LAYOUTS)
    results = load_study_views([path for record in records for path in record.files])
    assert set(results) == {record.study_uid for record in records}
    for record in records:
        scan = scan_for_study(PHANTOM_SEED, record.index)
        result = results[record.study_uid]
        assert isinstance(result, StudyViews), f"{record.layout}: {result}"
        assert_views(result, scan.anterior, scan.posterior)
        for view, (path, frame_index) in record.views.items():
            image = getattr(result, view)
            assert image.source_sop_instance_uid == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert image.frame_number == frame_index + 1, record.layout
            assert image.pixel_spacing_mm == pytest.approx((scan.pixel_spacing_mm,) * 2, abs=1e-3)  # DS text


@pytest.mark.parametrize("term", ["TOMO", "GATED", "DYNAMIC", "RECON TOMO", "GATED TOMO"])
def test_tomo_gated_dynamic_recon_refused_even_with_whole_body_geometry(term: str) -> None:
    anterior, _ = truth_views()
    ds = make_dataset([anterior], study_uid=generate_uid(), multiframe=False,
                      image_type=["ORIGINAL", "PRIMARY", term], ImageID="ANT")
    assert_not_assessable(read_study_views([ds]), "not_whole_body", "not a whole-body bone scan", term)


@pytest.mark.parametrize(("spacing", "accepted"), [(2.4, True), (1.5, False)])
def test_static_image_accepted_only_when_its_field_covers_a_body(spacing: float, accepted: bool) -> None:
    anterior, _ = truth_views()  # 512 rows: 1229 mm at 2.4 mm, 768 mm at 1.5 mm
    ds = make_dataset([anterior], study_uid=generate_uid(), multiframe=False,
                      image_type=["ORIGINAL", "PRIMARY", "STATIC"], ImageID="ANT", PixelSpacing=[spacing, spacing])
    result = read_study_views([ds])
    if accepted:
        assert isinstance(result, StudyViews)
    else:
        assert_not_assessable(result, "not_whole_body", "768 mm")
