"""Tests of spectnode.phantom.dicom: every layout is a valid NM Image that decodes exactly."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import JPEGLosslessSV1

from spectnode.phantom.dicom import (
    LAYOUTS,
    NM_IMAGE_STORAGE,
    VIEW_CODES,
    WrittenStudy,
    derive_uid,
    encode_jpeg_lossless_sv1,
    matrix_for_layout,
    study_instance_uid,
    transfer_syntax_for_layout,
    write_study,
)
from spectnode.phantom.synth import PhantomPatient, PhantomScan

from dicomtools import dciodvfy_errors, dciodvfy_messages, require_tool

if TYPE_CHECKING:
    from pathlib import Path

COMPRESSED = ("rle", "jpegls", "jpeg-lossless", "jpeg2000")


def make_scan(matrix: tuple[int, int], seed: int, *, extreme: bool = False) -> PhantomScan:
    """A scan with codec-hostile content: Poisson counts, or full-range noise and edges."""
    rng = np.random.default_rng(seed)
    rows, cols = matrix
    if extreme:
        anterior = rng.integers(0, 65536, matrix, dtype=np.uint16)
        posterior = np.zeros(matrix, dtype=np.uint16)
        posterior[::2, ::3] = 65535  # every difference category, including 32768
    else:
        # Anterior and posterior differ, so a swapped frame cannot pass.
        ramp = np.linspace(0.0, 40.0, cols)[None, :] * np.ones((rows, 1))
        anterior = rng.poisson(ramp).astype(np.uint16)
        posterior = rng.poisson(ramp[:, ::-1] + 5.0).astype(np.uint16)
    patient = PhantomPatient(
        patient_id=f"T{seed}", sex="F", age=67, height_cm=162.0, weight_kg=58.5
    )
    return PhantomScan(
        anterior=anterior,
        posterior=posterior,
        label="normal",
        lesions=[],
        patient=patient,
        pixel_spacing_mm=2.4 * 1024 / rows,
    )


def frame_of(path: Path, frame: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    return pixels[frame] if int(ds.NumberOfFrames) > 1 else pixels


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[PhantomScan, WrittenStudy]]:
    """One study per layout (realistic content), written once for the module."""
    root = tmp_path_factory.mktemp("phantom-dicom")
    studies = {}
    for number, layout in enumerate(LAYOUTS):
        scan = make_scan(matrix_for_layout(layout), seed=number)
        studies[layout] = (
            scan,
            write_study(
                scan, root / layout, layout, f"unit/{layout}", np.random.default_rng(number)
            ),
        )
    return studies


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_passes_dciodvfy_without_errors_or_warnings(written, layout):
    _, study = written[layout]
    for path in study.files:
        assert dciodvfy_errors(path) == [], path
        # Warnings are allowed in principle; none are expected today.
        assert dciodvfy_messages(path) == [], path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_views_decode_exactly_where_the_study_says(written, layout):
    scan, study = written[layout]
    for view in ("anterior", "posterior"):
        path, frame = study.view_locations[view]
        np.testing.assert_array_equal(frame_of(path, frame), getattr(scan, view))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax_for_layout(layout)
        assert ds.SOPClassUID == NM_IMAGE_STORAGE
        assert ds.StudyInstanceUID == study.study_uid == study_instance_uid(f"unit/{layout}")
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        assert (ds.Rows, ds.Columns) == matrix_for_layout(layout)
        assert float(ds.PixelSpacing[0]) == pytest.approx(scan.pixel_spacing_mm, abs=1e-4)
        assert ds.ImageComments == "Synthetic phantom - not a patient"
        assert ds.PatientName == f"PHANTOM^{scan.patient.patient_id}"
        assert ds.PatientAge == "067Y"


@pytest.mark.parametrize(
    "layout", [name for name in LAYOUTS if name not in ("split-instances", "split-series")]
)
def test_multiframe_layouts_name_views_through_detector_vector(written, layout):
    scan, study = written[layout]
    path = study.view_locations["anterior"][0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == 2 and int(ds.NumberOfDetectors) == 2
    assert list(ds.FrameIncrementPointer) == [Tag("EnergyWindowVector"), Tag("DetectorVector")]
    assert sorted(ds.DetectorVector) == [1, 2]
    for frame, detector in enumerate(ds.DetectorVector):
        code = ds.DetectorInformationSequence[detector - 1].ViewCodeSequence[0]
        view = next(v for v, c in VIEW_CODES.items() if c[0] == code.CodeValue)
        assert study.view_locations[view] == (path, frame)
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert float(window.EnergyWindowLowerLimit) < 140.0 < float(window.EnergyWindowUpperLimit)
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    assert drug.RadiopharmaceuticalCodeSequence[0].CodeValue == "96390006"  # Tc-99m medronate


def test_split_instances_name_views_only_in_image_id(tmp_path):
    """Old GE style: one series, no view codes, view in ImageID and sometimes private tags."""
    scan = make_scan(matrix_for_layout("split-instances"), seed=3)
    private_seen = set()
    for dicom_seed in range(8):
        study = write_study(
            scan,
            tmp_path / str(dicom_seed),
            "split-instances",
            f"gi/{dicom_seed}",
            np.random.default_rng(dicom_seed),
        )
        datasets = {view: pydicom.dcmread(path) for view, (path, _) in study.view_locations.items()}
        assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 1
        for view, ds in datasets.items():
            assert int(ds.NumberOfFrames) == 1 and int(ds.NumberOfDetectors) == 1
            assert all("ViewCodeSequence" not in item for item in ds.DetectorInformationSequence)
            assert (
                ds.ImageID
                in {"anterior": ("ANT", "ANTERIOR"), "posterior": ("POST", "POSTERIOR")}[view]
            )
            np.testing.assert_array_equal(ds.pixel_array, getattr(scan, view))
            has_private = (0x0009, 0x0010) in ds
            private_seen.add(has_private)
            if has_private:
                assert ds[0x0009, 0x0010].value == "GEMS_GENIE_1"
                assert ds[0x0009, 0x1022].value == ds.ImageID
        assert all(dciodvfy_errors(path) == [] for path in study.files)
    assert private_seen == {True, False}, (
        "both variants (with and without GE private tags) must occur"
    )


def test_split_series_put_each_view_in_its_own_series_with_a_view_code(written):
    _, study = written["split-series"]
    datasets = {view: pydicom.dcmread(path) for view, (path, _) in study.view_locations.items()}
    assert datasets["anterior"].SeriesInstanceUID != datasets["posterior"].SeriesInstanceUID
    for view, ds in datasets.items():
        assert view.upper()[:3] in ds.SeriesDescription
        assert (
            ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue == VIEW_CODES[view][0]
        )


def test_matrix512_is_2048_rows_by_512_columns(written):
    _, study = written["matrix512"]
    ds = pydicom.dcmread(study.files[0])
    assert (ds.Rows, ds.Columns) == (2048, 512)
    assert ds.pixel_array.shape == (2, 2048, 512)


@pytest.mark.parametrize("layout", COMPRESSED)
def test_compressed_layouts_are_lossless_on_full_range_content(tmp_path, layout):
    scan = make_scan(matrix_for_layout(layout), seed=99, extreme=True)
    study = write_study(scan, tmp_path, layout, "extreme", np.random.default_rng(0))
    for view, (path, frame) in study.view_locations.items():
        np.testing.assert_array_equal(frame_of(path, frame), getattr(scan, view))
    assert all(dciodvfy_errors(path) == [] for path in study.files)


def test_jpeg_lossless_decodes_exactly_in_dcmtk_too(tmp_path, written):
    """An independent decoder (DCMTK's libijg16) agrees with pydicom on our encoder."""
    dcmdjpeg = require_tool("dcmdjpeg")
    scan, study = written["jpeg-lossless"]
    source = study.files[0]
    decoded = tmp_path / "decoded.dcm"
    subprocess.run(
        [dcmdjpeg, str(source), str(decoded)], check=True, capture_output=True, timeout=120
    )
    ds = pydicom.dcmread(decoded)
    for view, (_, frame) in study.view_locations.items():
        np.testing.assert_array_equal(ds.pixel_array[frame], getattr(scan, view))


def test_jpeg_lossless_encoder_round_trips_edge_cases():
    cases = [
        np.zeros((1, 1), dtype=np.uint16),
        np.full((3, 5), 65535, dtype=np.uint16),
        np.array([[0, 65535, 0, 32768, 1]], dtype=np.uint16),  # difference of exactly 32768
        np.arange(256, dtype=np.uint8).reshape(16, 16),
    ]
    for image in cases:
        stream = encode_jpeg_lossless_sv1(image)
        assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8 * image.dtype.itemsize
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
        ds.PixelData = encapsulate([stream])
        np.testing.assert_array_equal(ds.pixel_array, image)


def test_same_inputs_give_identical_bytes_and_other_seeds_other_uids(tmp_path):
    scan = make_scan(matrix_for_layout("multiframe"), seed=5)
    first = write_study(scan, tmp_path / "a", "split-series", "same", np.random.default_rng(1))
    second = write_study(scan, tmp_path / "b", "split-series", "same", np.random.default_rng(1))
    other = write_study(scan, tmp_path / "c", "split-series", "other", np.random.default_rng(1))
    assert [p.read_bytes() for p in first.files] == [p.read_bytes() for p in second.files]
    assert first.study_uid == second.study_uid != other.study_uid
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in first.files + other.files}
    assert len(uids) == 4
    assert derive_uid("x", "series", 1) != derive_uid("x", "series", 2)


def test_wrong_layout_or_matrix_is_refused(tmp_path):
    scan = make_scan((1024, 256), seed=1)
    with pytest.raises(ValueError, match="unknown phantom layout"):
        write_study(scan, tmp_path, "mosaic", "x", np.random.default_rng(0))
    with pytest.raises(ValueError, match="2048, 512"):
        write_study(scan, tmp_path, "matrix512", "x", np.random.default_rng(0))
