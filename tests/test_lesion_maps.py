"""Lesion supervision: the targets lie where the findings are, and the bundle stays the paper's network.

Geometry is checked against Keras itself (a centre-tap kernel copies the input pixel a cell
is centred on) and against the augmentation code (a point moved by the map lands where
``apply_augmentation`` moves a bright pixel); the training run is tiny, for the machinery.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest

from spectnode.imaging.preprocess import AugmentationParams, apply_augmentation
from spectnode.phantom.generate import generate_phantoms
from spectnode.training.lesion_maps import (
    LESION_KINDS,
    GridGeometry,
    StudyFindings,
    choose_feature_layer,
    grid_geometry,
    lesion_map,
    read_truth,
)

if TYPE_CHECKING:
    from pathlib import Path


def _centre_tap(layer) -> None:
    kernel, bias = layer.get_weights()
    tap = np.zeros_like(kernel)
    tap[kernel.shape[0] // 2, kernel.shape[1] // 2, 0, 0] = 1.0
    layer.set_weights([tap, np.zeros_like(bias)])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_grid_geometry_names_the_input_pixel_each_cell_is_centred_on(padding):
    import keras

    image = keras.Input((37, 23, 1), name="image")
    x = keras.layers.ZeroPadding2D(((2, 1), (3, 0)))(image)
    x = keras.layers.Conv2D(1, 5, strides=2, padding=padding, name="a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(1, 3, strides=3, padding=padding, name="b")(x)
    model = keras.Model(image, x)
    for name in ("a", "b"):
        _centre_tap(model.get_layer(name))
    geometry = grid_geometry(model, "b")
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.1, 1.0, (1, 37, 23, 1)).astype(np.float32)
    out = np.asarray(model.predict(pixels, verbose=0))[0, ..., 0]
    assert out.shape == geometry.shape
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            r = geometry.offset[0] + i * geometry.stride[0]
            c = geometry.offset[1] + j * geometry.stride[1]
            inside = 0 <= r < 37 and 0 <= c < 23
            expected = pixels[0, int(r), int(c), 0] if inside else 0.0
            assert r == int(r) and c == int(c)
            assert out[i, j] == pytest.approx(expected, abs=1e-6), (i, j, r, c)


def test_the_papers_networks_supervise_a_stride_16_map():
    from spectnode.models import build_model

    dspic = build_model("dSPIC-AM", input_shape=(384, 96, 1), classes=4, fc_units=[16])
    assert choose_feature_layer(dspic) == "conv5"
    assert grid_geometry(dspic, "conv5").stride == (16.0, 16.0)
    inrac = build_model("Classifier-inRAC", input_shape=(384, 96, 1), classes=4)
    name = choose_feature_layer(inrac)
    assert name == "stage4_block5_out"
    geometry = grid_geometry(inrac, name)
    assert geometry.shape == (24, 6) and geometry.stride == (16.0, 16.0)


def _bright_point(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    image = np.zeros(shape, np.float32)
    image[row, col] = 1.0
    return image


@pytest.mark.parametrize("params", [
    AugmentationParams(),
    AugmentationParams(mirror=True),
    AugmentationParams(shift_rows=3, shift_cols=-2),
    AugmentationParams(mirror=True, shift_rows=-3, shift_cols=1, angle_deg=3.0),
    AugmentationParams(angle_deg=-3.0),
])
def test_a_finding_moves_with_the_augmentation_of_its_image(params):
    # one cell per input pixel: the map's positive cell is the pixel the finding went to
    shape = (96, 40)
    grid = GridGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    row, col = 70, 9
    findings = StudyFindings(shape, ((0, float(row), float(col), 0.2, 0.2),))
    target = lesion_map(findings, shape, grid, params)
    moved = apply_augmentation(_bright_point(shape, row, col), params)
    assert target[..., 1].sum() == 0
    marked = np.argwhere(target[..., 0] > 0)
    assert len(marked) >= 1
    brightest = np.unravel_index(np.argmax(moved), shape)
    assert np.abs(marked - np.array(brightest)).max() <= 1


def test_a_finding_reaches_every_cell_it_overlaps_and_scales_with_the_matrix():
    grid = GridGeometry((24, 6), (16.0, 16.0), (7.5, 7.5))
    # matrix 1024 x 256 onto a 384 x 96 input: 8/3 matrix pixels per input pixel
    centre = ((100 + 0.5) * 1024 / 384 - 0.5, (40 + 0.5) * 256 / 96 - 0.5)  # input (100, 40): cell (6, 2)
    small = StudyFindings((1024, 256), ((1, *centre, 2.0, 2.0),))
    big = StudyFindings((1024, 256), ((0, *centre, 40.0, 40.0),))  # 15 input pixels: reaches the neighbours
    small_map = lesion_map(small, (384, 96), grid)
    big_map = lesion_map(big, (384, 96), grid)
    assert np.argwhere(small_map[..., 1]).tolist() == [[6, 2]] and small_map[..., 0].sum() == 0
    # cells 95.5-111.5 x 31.5-47.5 hold (100, 40); the next rows and columns begin 4.5 to 11.5 pixels away,
    # the ones after those 20 or more
    assert {tuple(p) for p in np.argwhere(big_map[..., 0])} == {(r, c) for r in (5, 6, 7) for c in (1, 2, 3)}


def test_a_finding_past_the_outer_cells_but_on_the_image_marks_the_outer_cell():
    grid = GridGeometry((24, 6), (16.0, 16.0), (7.5, 7.5))  # cells cover rows -0.5 to 383.5 ...
    short = GridGeometry((23, 5), (16.0, 16.0), (7.5, 7.5))  # ... and here only to 367.5 and column 79.5
    feet = StudyFindings((384, 96), ((0, 380.0, 90.0, 1.0, 1.0),))
    assert np.argwhere(lesion_map(feet, (384, 96), grid)[..., 0]).tolist() == [[23, 5]]
    assert np.argwhere(lesion_map(feet, (384, 96), short)[..., 0]).tolist() == [[22, 4]]
    # moved off the image by the augmentation: in neither the input nor the target
    edge = StudyFindings((384, 96), ((0, 380.0, 94.0, 1.0, 1.0),))
    assert lesion_map(edge, (384, 96), grid, AugmentationParams(shift_cols=3))[..., 0].sum() == 0


def test_each_batch_carries_the_targets_of_its_own_inputs_as_augmented():
    from spectnode.imaging.preprocess import sample_augmentation
    from spectnode.training.labels import LabelledStudy
    from spectnode.training.train import LoadedSamples, TrainSettings, _augmented_batches, _lesion_targets

    rng = np.random.default_rng(3)
    studies = [LabelledStudy(f"1.2.{k}", f"P{k}", "metastatic") for k in range(5)]
    samples = LoadedSamples(rng.uniform(0, 1, (10, 64, 32, 1)).astype(np.float32), np.ones(10, np.int64),
                            np.repeat(np.arange(5), 2), studies, {})
    findings = {f"1.2.{k}": StudyFindings((64, 32), ((0, 8.0 + 10 * k, 5.0 + 4 * k, 2.0, 2.0),)) for k in range(4)}
    grid = GridGeometry((16, 8), (4.0, 4.0), (1.5, 1.5))
    settings = TrainSettings(arch="x", scheme="dspic4", learning_rate=1e-3, batch_size=4, epochs=1,
                             input_mode="per_view", input_shape=(64, 32), seed=7)
    batches = _augmented_batches(samples, settings, 4, 0, _lesion_targets(samples, findings, grid))
    for index in range(len(batches)):
        x, (y, maps), (_, map_weights) = batches[index]
        chosen = batches.order[index * 4:(index + 1) * 4]
        draws = np.random.default_rng([settings.seed, batches.epoch, index])
        for j, k in enumerate(chosen):
            params = sample_augmentation(draws, translate_px=settings.translate_px, rotate_deg=settings.rotate_deg,
                                         mirror=settings.mirror)
            np.testing.assert_array_equal(x[j, ..., 0], apply_augmentation(samples.x[k, ..., 0], params))
            study = samples.studies[samples.study[k]].study_uid
            if study in findings:
                np.testing.assert_array_equal(maps[j], lesion_map(findings[study], (64, 32), grid, params))
                assert map_weights[j] == 1.0 and maps[j].sum() >= 1
            else:  # no truth recorded: its map does not count
                assert map_weights[j] == 0.0 and maps[j].sum() == 0


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, n=12, seed=33)
    return out


def test_read_truth_keeps_the_disease_findings_the_labels_name(phantoms):
    findings = read_truth(phantoms)
    entries = [json.loads(line) for line in (phantoms / "truth.jsonl").read_text().splitlines()]
    assert len(findings) == len(entries) == 12
    for entry in entries:
        kinds = {LESION_KINDS[lesion[0]] for lesion in findings[entry["study_uid"]].lesions}
        wanted = {"normal": set(), "metastatic": {"metastasis"}, "arthritic": {"arthritis"},
                  "both": {"metastasis", "arthritis"}}[entry["label"]]
        assert kinds == wanted, entry["label"]
        assert findings[entry["study_uid"]].matrix == tuple(entry["matrix"])


def test_read_truth_refuses_a_file_that_is_not_the_generators(tmp_path):
    (tmp_path / "truth.jsonl").write_text('{"study_uid": "1.2"}\n')
    with pytest.raises(ValueError, match="line 1: not a phantom truth entry"):
        read_truth(tmp_path)


def _spectnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spectnode", *args], capture_output=True, text=True, timeout=600)


def test_training_with_lesion_supervision_writes_the_plain_network(phantoms, tmp_path):
    import keras

    import spectnode.models  # noqa: F401  (registers the custom layers)
    from spectnode.bundle import load_bundle
    from spectnode.training.lesion_maps import lesion_map_loss

    out = tmp_path / "supervised"
    args = ["train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
            "--scheme", "dspic4", "--out", str(out), "--input-shape", "128x32", "--arch-options",
            '{"fc_units": [16]}', "--batch-size", "8", "--lesion-supervision", "1"]
    first = _spectnode(*args, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "lesion maps: findings of 12 of 12 studies" in first.stdout
    assert "lesion supervision (weight 1) on the output of layer conv5" in first.stdout
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert "val_lesion_map_loss" in state["history"][0] and "val_predictions_loss" in state["history"][0]
    lesion_map_loss()
    checkpoint = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert [o.name for o in checkpoint.outputs] and len(checkpoint.outputs) == 2
    bundle = load_bundle(out)
    assert len(bundle.model.outputs) == 1 and "lesion_map" not in [layer.name for layer in bundle.model.layers]
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == "dSPIC-AM"
    assert card["training_data"]["counts"]["settings"]["lesion_supervision"] == 1.0
    # the two-output checkpoint resumes
    resumed = _spectnode(*args, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in resumed.stdout
    assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout
    assert len(json.loads((out / "checkpoints" / "state.json").read_text())["resumes"]) == 1
    assert len(load_bundle(out).model.outputs) == 1


def test_lesion_supervision_without_truth_is_refused(phantoms, tmp_path):
    data = tmp_path / "no-truth"
    shutil.copytree(phantoms, data, ignore=shutil.ignore_patterns("truth.jsonl"))
    proc = _spectnode("train", "--data", str(data), "--labels", str(data / "labels.csv"), "--arch", "dSPIC-AM",
                      "--scheme", "dspic4", "--out", str(tmp_path / "b"), "--input-shape", "128x32",
                      "--arch-options", '{"fc_units": [16]}', "--epochs", "1", "--lesion-supervision", "0.5")
    assert proc.returncode != 0
    assert "needs the findings of the training studies (truth.jsonl)" in proc.stderr
    assert "Traceback" not in proc.stderr
