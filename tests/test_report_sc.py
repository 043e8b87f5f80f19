"""Tests of spectnode.report's secondary captures, and of the report stage end to end.

Captures are built from phantom studies with a heatmap of known shape, checked
with dciodvfy, and their pixels are inspected where the heatmap is and is not.
The last test runs a real (tiny) classifier bundle with its heatmap through the
SR and the captures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from spectnode.bundle import ModelCard, TrainingData
from spectnode.imaging.views import StudyViews, read_study_views
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import (
    HEATMAP_THRESHOLD,
    SC_SERIES_DESCRIPTION,
    WINDOW_PERCENTILE,
    AlgorithmInfo,
    build_overlay_captures,
    build_result_sr,
    render_overlay,
)
from spectnode.result import ModelResult, StudyResult

from dicomtools import dciodvfy_errors

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SEED = 12
DSPIC4 = ("normal", "metastatic", "arthritic", "both")
PROBABILITIES = {"normal": 0.05, "metastatic": 0.81, "arthritic": 0.1, "both": 0.04}
LAYOUTS_UNDER_TEST = ("multiframe", "split-instances")
# Where the test heatmap peaks, as fractions of (rows, columns) of the view.
HOT_SPOT = (0.45, 0.35)
COLD_SPOT = (0.15, 0.8)
WARNING_RED = (190, 0, 0)


def spot_heatmap(shape: tuple[int, int]) -> np.ndarray:
    """A Gaussian peak of 1.0 at HOT_SPOT, near 0 far from it."""
    rows, cols = shape
    r, c = np.mgrid[0:rows, 0:cols]
    sigma = cols / 10
    peak = np.exp(-((r - HOT_SPOT[0] * rows) ** 2 + (c - HOT_SPOT[1] * cols) ** 2) / (2 * sigma**2))
    return peak.astype(np.float32)


def classified(views: StudyViews, with_heatmaps: bool = True) -> StudyResult:
    heatmaps = {}
    if with_heatmaps:
        heatmaps = {name: spot_heatmap(getattr(views, name).pixels.shape) for name in views.available_views}
    model = ModelResult("spectnode-test-dspic", "0.3.1", dict(PROBABILITIES), "metastatic", second_label="arthritic",
                        views=list(views.available_views), input_mode="per_view", heatmaps=heatmaps)
    return StudyResult(views.study_uid, "classified", views=list(views.available_views), models=[model])


def saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_captures_pass_dciodvfy_and_describe_themselves(study, algorithm, tmp_path):
    captures = build_overlay_captures(study.datasets, study.views, classified(study.views), [algorithm])
    assert len(captures) == 2
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study.datasets}
    for number, (view, capture) in enumerate(zip(("anterior", "posterior"), captures), start=1):
        path = saved(capture, tmp_path / f"{view}.dcm")
        assert dciodvfy_errors(path) == []
        read = pydicom.dcmread(path)
        assert read.SOPClassUID == SecondaryCaptureImageStorage
        assert read.StudyInstanceUID == study.record.study_uid
        assert read.PatientID == study.datasets[0].PatientID
        assert read.SeriesDescription == SC_SERIES_DESCRIPTION and read.Manufacturer == "spectnode"
        assert read.InstanceNumber == number
        assert list(read.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert (read.PhotometricInterpretation, read.SamplesPerPixel, read.BitsAllocated) == ("RGB", 3, 8)
        assert read.pixel_array.dtype == np.uint8 and read.pixel_array.shape[2] == 3
        assert read.BurnedInAnnotation == "YES" and read.BodyPartExamined == "WHOLEBODY"
        assert read.ConversionType == "WSD"
        assert list(read.PatientOrientation) == (["L", "F"] if view == "anterior" else ["R", "F"])
        assert "not for clinical use" in read.ImageComments.lower()

        (source_item,) = read.SourceImageSequence
        image = getattr(study.views, view)
        expected_path, frame_index = study.record.views[view]
        source = by_uid[source_item.ReferencedSOPInstanceUID]
        assert Path(source.filename) == expected_path
        assert source_item.ReferencedSOPClassUID == source.SOPClassUID
        if study.record.layout == "multiframe":
            assert source_item.ReferencedFrameNumber == image.frame_number == frame_index + 1
            detector = source.DetectorVector[source_item.ReferencedFrameNumber - 1]
            view_code = source.DetectorInformationSequence[detector - 1].ViewCodeSequence[0]
            assert view_code.CodeMeaning.lower().startswith(view)
        else:
            assert "ReferencedFrameNumber" not in source_item

        (equipment,) = [item for item in read.ContributingEquipmentSequence if "DeviceUID" in item]
        assert (equipment.ManufacturerModelName, equipment.SoftwareVersions, equipment.DeviceUID) == (
            algorithm.name, algorithm.version, algorithm.device_uid)


def test_captures_share_a_series_of_their_own(study, algorithm):
    result = classified(study.views)
    captures = build_overlay_captures(study.datasets, study.views, result, [algorithm])
    sr = build_result_sr(study.datasets, study.views, result, [algorithm])
    series = {str(capture.SeriesInstanceUID) for capture in captures}
    assert len(series) == 1
    assert series.isdisjoint({str(sr.SeriesInstanceUID), *(str(ds.SeriesInstanceUID) for ds in study.datasets)})
    assert len({str(capture.SOPInstanceUID) for capture in captures}) == 2
    given = build_overlay_captures(study.datasets, study.views, result, [algorithm],
                                   series_instance_uid=captures[0].SeriesInstanceUID, first_instance_number=3)
    assert {str(c.SeriesInstanceUID) for c in given} == series
    assert [c.InstanceNumber for c in given] == [3, 4]


def test_heatmap_is_coloured_only_where_it_is_high(study, algorithm):
    view = study.views.anterior
    rows, cols = view.pixels.shape
    pixels = render_overlay(view, classified(study.views), [algorithm]).astype(int)
    scale = pixels.shape[0] // rows
    assert pixels.shape[0] == rows * scale and scale >= 2  # upscaled so the text fits beside it

    hot = pixels[int(HOT_SPOT[0] * rows) * scale, int(HOT_SPOT[1] * cols) * scale]
    assert hot[0] - hot[2] > 100 and hot[0] > hot[1]  # red over the scan

    heatmap = spot_heatmap((rows, cols))
    scan = pixels[:, : cols * scale]
    # Upscaling interpolates the heatmap between neighbours: cold means the
    # whole 3x3 neighbourhood is at or below the threshold.
    padded = np.pad(heatmap, 1)
    neighbourhood = np.max([padded[i : i + rows, j : j + cols] for i in range(3) for j in range(3)], axis=0)
    cold = np.kron(neighbourhood <= HEATMAP_THRESHOLD, np.ones((scale, scale), dtype=bool))
    # No colour where the heatmap is low (the R/L side markers are grey too).
    cold_pixels = scan[cold]
    assert np.array_equal(cold_pixels[:, 0], cold_pixels[:, 1]) and np.array_equal(cold_pixels[:, 1], cold_pixels[:, 2])

    # Inverted grey: no counts white, counts at or above the window black
    # (below the top rows, where the R/L markers are drawn).
    cold_view = neighbourhood <= HEATMAP_THRESHOLD
    cold_view[: rows // 20] = False
    counted = view.pixels[view.pixels > 0]
    for mask, colour in (((view.pixels == 0) & cold_view, 255),
                         ((view.pixels >= np.percentile(counted, WINDOW_PERCENTILE)) & cold_view, 0)):
        assert mask.any()
        upscaled = np.kron(mask, np.ones((scale, scale), dtype=bool))
        assert np.all(scan[upscaled] == colour)


def test_without_heatmap_the_scan_stays_grey(study, algorithm):
    view = study.views.posterior
    cols = view.pixels.shape[1]
    pixels = render_overlay(view, classified(study.views, with_heatmaps=False), [algorithm]).astype(int)
    scale = pixels.shape[0] // view.pixels.shape[0]
    scan = pixels[:, : cols * scale]
    assert np.array_equal(scan[..., 0], scan[..., 1]) and np.array_equal(scan[..., 1], scan[..., 2])
    captures = build_overlay_captures(study.datasets, study.views, classified(study.views, False), [algorithm])
    assert "no heatmap" in captures[0].DerivationDescription


def test_burned_in_warning_is_large_enough_to_read(study, algorithm):
    view = study.views.anterior
    pixels = render_overlay(view, classified(study.views), [algorithm])
    scan_width = view.pixels.shape[1] * (pixels.shape[0] // view.pixels.shape[0])
    panel = pixels[:, scan_width:]
    middle = panel[:, panel.shape[1] // 5: 4 * panel.shape[1] // 5]
    red_rows = np.flatnonzero(np.all(middle == WARNING_RED, axis=2).any(axis=1))
    bands = np.split(red_rows, np.flatnonzero(np.diff(red_rows) > 1) + 1)
    # The boxed two-line warning at the top and the footer at the bottom.
    text_bands = [band for band in bands if len(band) >= 18]  # capital letters >= 18 px tall
    assert len(text_bands) >= 3, [len(band) for band in bands]
    assert text_bands[0][0] < pixels.shape[0] // 10 and text_bands[-1][-1] > pixels.shape[0] * 9 // 10


def test_captures_refuse_a_not_assessable_result(study, algorithm):
    result = StudyResult(study.views.study_uid, "not_assessable", reason="x", reason_code="missing_views")
    with pytest.raises(ValueError, match="nothing to overlay"):
        build_overlay_captures(study.datasets, study.views, result, [algorithm])
    wrong = classified(study.views)
    wrong.models[0].heatmaps = {"anterior": np.zeros((10, 10), np.float32)}
    with pytest.raises(ValueError, match="heatmap"):
        build_overlay_captures(study.datasets, study.views, wrong, [algorithm])


def test_real_classifier_result_makes_valid_sr_and_captures(tmp_path):
    """A tiny Keras model in a real bundle, classified with its heatmap, reported."""
    import keras

    from spectnode.bundle import save_bundle
    from spectnode.classify import StudyClassifier

    inputs = keras.Input((128, 32, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    card = ModelCard(
        name="tiny-report-check", version="0.0.1", architecture="dSPIC-AM", scheme="dspic4",
        classes=list(DSPIC4), input_shape=[128, 32, 1],
        preprocessing={"views": "per_view", "normalization": "minmax", "resample_to": [128, 32]},
        training_data=TrainingData("untrained", synthetic=True),
    )
    bundle = save_bundle(keras.Model(inputs, outputs), card, tmp_path / "bundle")
    classifier = StudyClassifier.from_bundle(bundle)

    (record,) = generate_phantoms(tmp_path / "study", 1, SEED, layout="multiframe")
    datasets = [pydicom.dcmread(path) for path in record.files]
    views = read_study_views(datasets)
    result = classifier.classify(views, explain=True)
    assert set(result.models[0].heatmaps) == {"anterior", "posterior"}

    algorithm = AlgorithmInfo.from_card(classifier.card)
    assert algorithm.device_uid == classifier.card.device_uid != ""
    sr = build_result_sr(datasets, views, result, [algorithm])
    captures = build_overlay_captures(datasets, views, result, [algorithm])
    assert dciodvfy_errors(saved(sr, tmp_path / "sr.dcm")) == []
    for index, capture in enumerate(captures):
        assert dciodvfy_errors(saved(capture, tmp_path / f"sc{index}.dcm")) == []
