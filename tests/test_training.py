"""train / evaluate / classify end to end on a few phantoms, with a tiny input and head.

The shipped default model's quality is checked in test_default_bundle.py; here the
point is the machinery: split, checkpoints, resume, bundle, metrics, JSON output.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest

from spectnode.phantom.generate import generate_phantoms
from spectnode.training.labels import read_labels_csv, split_by_patient
from spectnode.training.train import class_weights

if TYPE_CHECKING:
    from pathlib import Path

TINY = ["--input-shape", "128x32", "--arch-options", '{"fc_units": [16]}', "--batch-size", "8"]


def spectnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "spectnode", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, n=16, seed=21)
    return out


@pytest.fixture(scope="module")
def bundle(phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "dSPIC-AM", "--scheme", "dspic4", "--out", str(out), "--epochs", "2", *TINY)
    assert "epoch 2/2" in proc.stdout and "ETA" in proc.stdout
    return out


def test_train_writes_a_complete_bundle(bundle, phantoms):
    card = json.loads((bundle / "card.json").read_text())
    assert card["architecture"] == "dSPIC-AM" and card["scheme"] == "dspic4"
    assert card["classes"] == ["normal", "metastatic", "arthritic", "both"]
    assert card["input_shape"] == [128, 32, 1]
    assert card["preprocessing"] == {"views": "per_view", "normalization": "minmax", "resample_to": [128, 32]}
    assert card["training_data"]["synthetic"] is True
    assert "synthetic" in card["intended_use"].lower() and "not for clinical use" in card["intended_use"].lower()
    assert card["content_hash"].startswith("sha256:")
    counts = card["training_data"]["counts"]
    assert sum(counts["train"].values()) + sum(counts["test"].values()) == 16
    assert set(card["metrics"]) >= {"accuracy", "precision", "recall", "specificity", "f1", "auc", "confusion"}
    settings = counts["settings"]
    assert settings["learning_rate"] == 1e-4 and settings["batch_size"] == 8  # dSPIC Table 4 lr; batch overridden
    for name in ("roc.png", "confusion.png", "metrics.json"):
        assert (bundle / "evaluation" / name).stat().st_size > 0
    state = json.loads((bundle / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert (bundle / "checkpoints" / "last.keras").exists()


def test_no_patient_on_both_sides(bundle, phantoms, tmp_path):
    # The held-out studies are the ones the metrics count; their patients must not be trained on.
    card = json.loads((bundle / "card.json").read_text())
    assert card["metrics"]["n"] == sum(card["training_data"]["counts"]["test"].values())
    settings = card["training_data"]["counts"]["settings"]
    held_out = split_by_patient(read_labels_csv(phantoms / "labels.csv", "dspic4"), settings["train_fraction"],
                                settings["seed"])[1]
    assert sum(card["training_data"]["counts"]["test"].values()) == len(held_out)  # the split train() made

    # A set where patients have follow-ups, so that a split by study would leak.
    generate_phantoms(tmp_path, n=24, seed=4, layout="multiframe", max_studies_per_patient=3)
    studies = read_labels_csv(tmp_path / "labels.csv", "dspic4")
    per_patient = Counter(s.patient_id for s in studies)
    assert max(per_patient.values()) >= 2 and len(per_patient) < len(studies)
    order = np.random.default_rng(settings["seed"]).permutation(len(studies))
    by_study = {studies[i].patient_id for i in order[: round(0.7 * len(studies))]}, \
        {studies[i].patient_id for i in order[round(0.7 * len(studies)):]}
    assert by_study[0] & by_study[1], "a study-level split of this set puts a patient on both sides"
    # train() splits train/test, then train/validation, both by patient
    train_side, test_side = split_by_patient(studies, 0.7, settings["seed"])
    fit_side, val_side = split_by_patient(train_side, 1.0 - settings["validation_fraction"], settings["seed"] + 1)
    assert len(train_side) + len(test_side) == len(studies) and test_side and val_side
    for first, second in ((train_side, test_side), (fit_side, val_side), (fit_side, test_side), (val_side, test_side)):
        assert not {s.patient_id for s in first} & {s.patient_id for s in second}


def test_resume_continues_and_refuses_other_settings(bundle, phantoms, tmp_path):
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(bundle, copy)
    base = ["train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
            "--scheme", "dspic4", "--out", str(copy)]
    # A learning-rate and batch-size step is the usual manual schedule, so resume allows it.
    stepped = [a if a != "8" else "4" for a in TINY]
    proc = spectnode(*base, "--epochs", "3", "--resume", "--learning-rate", "5e-05", *stepped)
    assert "resuming after epoch 2" in proc.stdout and "epoch 3/3" in proc.stdout
    assert "epoch 1/3" not in proc.stdout
    assert "resuming with learning_rate 5e-05 (was 0.0001)" in proc.stdout
    assert "resuming with batch_size 4 (was 8)" in proc.stdout
    state = json.loads((copy / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert state["resumes"] == [{"after_epoch": 2, "changed": {"learning_rate": 5e-05, "batch_size": 4,
                                                                "epochs": 3}}]
    card = json.loads((copy / "card.json").read_text())
    assert card["training_data"]["counts"]["resumes"] == state["resumes"]
    assert "resumed 1 times" in card["training_data"]["description"]
    assert "weights of epoch" in card["training_data"]["description"]
    import importlib

    import keras

    importlib.import_module("spectnode.models")  # registers the custom layers
    resumed = keras.saving.load_model(copy / "checkpoints" / "last.keras")
    assert float(resumed.optimizer.learning_rate) == pytest.approx(5e-05)
    other = spectnode(*base, "--epochs", "3", "--resume", "--input-shape", "128x32", "--arch-options",
                      '{"fc_units": [8]}', "--batch-size", "8", check=False)
    assert other.returncode == 2 and "made with other settings" in other.stderr


def test_fine_tune_starts_from_a_bundle_and_records_it(bundle, phantoms, tmp_path):
    """--init-from starts from the bundle's weights (not random ones) and the card keeps its provenance."""
    import importlib

    import keras

    from spectnode.bundle import read_card

    importlib.import_module("spectnode.models")
    base = ["train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
            "--scheme", "dspic4"]
    out = tmp_path / "tuned"
    # A negligible learning rate leaves the weights as loaded (Adam steps are about lr in size).
    # The normalisation may change: the weights are then the starting point for another input scale.
    proc = spectnode(*base, "--out", str(out), "--epochs", "1", "--learning-rate", "1e-12", "--init-from", str(bundle),
                     "--normalization", "bone_window", *TINY)
    initial = read_card(bundle)
    assert f"starting from the weights of {initial.content_hash}" in proc.stdout
    first = keras.saving.load_model(bundle / "model.keras", compile=False)
    tuned = keras.saving.load_model(out / "checkpoints" / "last.keras", compile=False)
    kernels = [(w.path, w) for w in first.weights if "kernel" in w.path]
    assert kernels
    by_path = {w.path: w for w in tuned.weights}
    for path, weight in kernels:
        np.testing.assert_allclose(np.asarray(by_path[path]), np.asarray(weight), rtol=0, atol=1e-9)
    card = json.loads((out / "card.json").read_text())
    assert card["training_data"]["counts"]["settings"]["initial_weights"] == initial.content_hash
    assert card["training_data"]["counts"]["initial_bundle"]["content_hash"] == initial.content_hash
    assert card["training_data"]["counts"]["initial_bundle"]["training_data"]["description"] == \
        initial.training_data.description
    assert "started from the weights of bundle" in card["training_data"]["description"]
    assert card["preprocessing"]["normalization"] == "bone_window"
    assert read_card(bundle).preprocessing["normalization"] == "minmax"
    # Another architecture (or scheme, or kind of input) is refused before any data are read.
    wrong = spectnode(*base[:-3], "SI_CLF", "--scheme", "dspic4", "--out", str(tmp_path / "wrong"), "--epochs", "1",
                      "--init-from", str(bundle), "--input-shape", "128x32", check=False)
    assert wrong.returncode == 2 and "cannot start from bundle" in wrong.stderr and "architecture" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    missing = spectnode(*base, "--out", str(tmp_path / "wrong"), "--init-from", str(tmp_path / "nothing"),
                        check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    # Weights that do not fit the new network's options are refused by name, before any data are read.
    other = spectnode(*base, "--out", str(tmp_path / "wrong"), "--init-from", str(bundle), "--input-shape", "128x32",
                      "--arch-options", '{"fc_units": [32]}', check=False)
    assert other.returncode == 2 and "do not fit this network" in other.stderr and "fc1" in other.stderr
    assert "Traceback" not in other.stderr
    unknown = spectnode(*base, "--out", str(tmp_path / "wrong"), "--init-from", str(bundle), "--input-shape",
                        "128x32", "--arch-options", '{"fc_units": [16], "pooling": "max"}', check=False)
    assert unknown.returncode == 2 and "does not take the architecture options" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_fine_tune_at_another_input_size_keeps_every_weight_of_a_pooled_network_only(bundle, phantoms, tmp_path):
    """A pooled head's weights do not depend on the image size, so a run may start from a bundle at a
    larger input, and its card says the new size; a flatten head's FC weights read positions of the
    old size (and may even fit the new one), so such a bundle is refused at another size."""
    import importlib

    import keras

    from spectnode.bundle import load_bundle
    from spectnode.training.commands import _check_initial_bundle
    from spectnode.training.train import TrainSettings, build_network

    importlib.import_module("spectnode.models")
    out = tmp_path / "larger"
    spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
              "--scheme", "dspic4", "--out", str(out), "--epochs", "1", "--learning-rate", "1e-12",
              "--init-from", str(bundle), "--input-shape", "256x64", "--batch-size", "8")
    card = json.loads((out / "card.json").read_text())
    assert card["input_shape"] == [256, 64, 1] and card["preprocessing"]["resample_to"] == [256, 64]
    assert card["domain_fit"]["threshold"] > 0
    first = keras.saving.load_model(bundle / "model.keras", compile=False)
    tuned = keras.saving.load_model(out / "checkpoints" / "last.keras", compile=False)
    assert tuple(tuned.input_shape) == (None, 256, 64, 1)
    theirs = {w.path: np.asarray(w) for w in first.weights}
    assert theirs.keys() == {w.path for w in tuned.weights}
    for weight in tuned.weights:
        np.testing.assert_allclose(np.asarray(weight), theirs[weight.path], rtol=0, atol=1e-9)

    settings = TrainSettings(arch="dSPIC-AM", scheme="dspic4", learning_rate=1e-4, batch_size=8, epochs=1,
                             input_mode="per_view", input_shape=(128, 32),
                             arch_options={"fc_units": [16], "head": "flatten"})
    flat = dataclasses.replace(load_bundle(bundle), model=build_network(settings, 4))
    _check_initial_bundle(flat, settings)  # the same size: accepted
    with pytest.raises(ValueError, match="with a flatten head"):
        _check_initial_bundle(flat, dataclasses.replace(settings, input_shape=(128, 40)))


def test_fine_tune_can_change_a_layer_without_weights(bundle, phantoms, tmp_path):
    """--init-from with another pooling head: every weight carries over, the head pools by the maximum."""
    import importlib

    import keras

    importlib.import_module("spectnode.models")  # registers the custom layers for loading
    out = tmp_path / "gmp"
    spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
              "--scheme", "dspic4", "--out", str(out), "--epochs", "1", "--learning-rate", "1e-12",
              "--init-from", str(bundle), "--input-shape", "128x32", "--arch-options",
              '{"fc_units": [16], "head": "gmp"}', "--batch-size", "8")
    first = keras.saving.load_model(bundle / "model.keras", compile=False)
    tuned = keras.saving.load_model(out / "model.keras", compile=False)
    assert [type(layer).__name__ for layer in tuned.layers if "Pooling" in type(layer).__name__][-1] == \
        "GlobalMaxPooling2D"
    assert "GlobalAveragePooling2D" in [type(layer).__name__ for layer in first.layers]
    theirs = {w.path: np.asarray(w) for w in first.weights}
    ours = {w.path: np.asarray(w) for w in tuned.weights}
    assert theirs.keys() == ours.keys()
    for path, weight in theirs.items():
        np.testing.assert_allclose(ours[path], weight, rtol=0, atol=1e-6)
    # a run started from that bundle keeps its head (and its FC widths) unless it names them again
    again = tmp_path / "again"
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
                     "--scheme", "dspic4", "--out", str(again), "--epochs", "1", "--learning-rate", "1e-12",
                     "--init-from", str(out), "--input-shape", "128x32", "--batch-size", "8")
    assert "architecture options from the bundle: fc_units=[16], head='gmp'" in proc.stdout
    kept = keras.saving.load_model(again / "model.keras", compile=False)
    assert "GlobalMaxPooling2D" in [type(layer).__name__ for layer in kept.layers]
    assert json.loads((again / "card.json").read_text())["training_data"]["counts"]["settings"]["arch_options"] == {
        "fc_units": [16], "head": "gmp"}


def test_mixed_bfloat16_training_trains_in_bfloat16_and_writes_a_float32_bundle(phantoms, tmp_path):
    """--precision mixed_bfloat16: the checkpoints compute in bfloat16, the bundle is the float32 network."""
    import importlib

    import keras

    importlib.import_module("spectnode.models")
    out = tmp_path / "bf16"
    spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
              "--scheme", "dspic4", "--out", str(out), "--epochs", "1", "--precision", "mixed_bfloat16", *TINY)
    checkpoint = keras.saving.load_model(out / "checkpoints" / "last.keras", compile=False)
    assert {layer.dtype_policy.name for layer in checkpoint.layers if layer.weights} == {"mixed_bfloat16"}
    shipped = keras.saving.load_model(out / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}
    assert shipped.outputs[0].dtype == "float32"
    trained = {w.path: np.asarray(w) for w in checkpoint.weights}
    for weight in shipped.weights:  # the same weights (the bundle stores float32 here)
        np.testing.assert_array_equal(np.asarray(weight), trained[weight.path])
    card = json.loads((out / "card.json").read_text())
    assert card["training_data"]["counts"]["settings"]["precision"] == "mixed_bfloat16"
    x = np.random.default_rng(0).random((2, 128, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(shipped(x)), np.asarray(checkpoint(x), dtype=np.float32), atol=0.05)


def test_evaluate_prints_and_writes_metrics(bundle, phantoms, tmp_path):
    proc = spectnode("evaluate", "--bundle", str(bundle), "--data", str(phantoms), "--labels",
                     str(phantoms / "labels.csv"), "--out", str(tmp_path / "eval"))
    metrics = json.loads(proc.stdout)
    assert set(metrics) >= {"accuracy", "precision", "recall", "specificity", "f1", "auc", "confusion", "classes"}
    assert metrics["n"] == 16 and np.asarray(metrics["confusion"]).sum() == 16
    rows = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 17
    predicted_correct = sum(r.split(",")[1] == r.split(",")[2] for r in rows[1:])
    assert metrics["accuracy"] == pytest.approx(predicted_correct / 16)
    for name in ("roc.png", "confusion.png", "metrics.json"):
        assert (tmp_path / "eval" / name).exists()


def test_classify_json_lines(bundle, phantoms, tmp_path):
    # Add a CT object as its own study: it must come back not assessable, with its reason.
    first = next(p for p in sorted(phantoms.rglob("*.dcm")))
    ds = pydicom.dcmread(first)
    ds.Modality = "CT"
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ct_dir = tmp_path / "mixed"
    ct_dir.mkdir()
    ds.save_as(ct_dir / "ct.dcm")
    study_dir = next(p for p in sorted(phantoms.iterdir()) if p.is_dir() and p.name.startswith("study_"))
    import shutil

    shutil.copytree(study_dir, ct_dir / "study")
    proc = spectnode("classify", str(ct_dir), "--bundle", str(bundle), "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert set(line) >= {"study_uid", "outcome", "reason", "views", "label", "probabilities"}
    classified = next(r for r in lines if r["outcome"] == "classified")
    assert classified["views"] == ["anterior", "posterior"]
    assert classified["label"] in classified["probabilities"]
    (model,) = classified["models"]  # one bundle, one model's result
    assert (model["label"], model["probabilities"]) == (classified["label"], classified["probabilities"])
    assert model["second_label"] in model["probabilities"]
    assert model["second_label"] != model["label"]
    assert sum(classified["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    ct = next(r for r in lines if r["outcome"] == "not_assessable")
    assert "CT" in ct["reason"] and ct["label"] is None


def test_tampered_bundle_is_refused(bundle, phantoms, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("checkpoints"))
    with open(copy / "model.keras", "ab") as f:
        f.write(b"\0")
    proc = spectnode("classify", str(phantoms), "--bundle", str(copy), check=False)
    assert proc.returncode == 2
    assert "modified or corrupted" in proc.stderr and "Traceback" not in proc.stderr


def test_train_rejects_bad_input(phantoms, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("study_uid,patient_id,label\n1.2.3,P1,cancer\n")
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(bad), "--arch", "dSPIC-AM", "--scheme",
                     "dspic4", "--out", str(tmp_path / "b"), check=False)
    assert proc.returncode == 2 and "label 'cancer' is not a class" in proc.stderr
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "ResNet-1000", "--scheme", "dspic4", "--out", str(tmp_path / "b"), check=False)
    assert proc.returncode == 2 and "unknown architecture" in proc.stderr
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "dSPIC-AM", "--scheme", "dspic4", "--out", str(tmp_path / "b"), "--learning-rate", "0",
                     check=False)
    assert proc.returncode == 2 and "must be a positive number" in proc.stderr
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "dSPIC-AM", "--scheme", "dspic4", "--out", str(tmp_path / "b"), "--normalization", "zscore",
                     check=False)
    assert proc.returncode == 2 and "unsupported normalization 'zscore'" in proc.stderr
    assert "bone_window" in proc.stderr and "Traceback" not in proc.stderr
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "dSPIC-AM", "--scheme", "dspic4", "--out", str(tmp_path / "b"), "--arch-options", "[1]",
                     check=False)
    assert proc.returncode == 2 and "must be a JSON object" in proc.stderr and "Traceback" not in proc.stderr
    proc = spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch",
                     "dSPIC-AM", "--scheme", "dspic4", "--out", str(tmp_path / "b"), "--precision", "float16",
                     check=False)
    assert proc.returncode == 2 and "unknown precision 'float16'" in proc.stderr and "mixed_bfloat16" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "b").exists()


def test_labels_from_labelme(phantoms, tmp_path):
    """LabelMe annotations named after the DICOM files give the same labels as labels.csv."""
    from spectnode.classify import find_dicom_files
    from spectnode.training.commands import read_labels

    truth = {r.study_uid: r for r in read_labels_csv(phantoms / "labels.csv", "dspic4")}
    shapes = {"normal": [], "metastatic": ["spine metastasis"], "arthritic": ["knee arthritis"],
              "both": ["rib metastasis", "knee arthritis"]}
    files = find_dicom_files(phantoms)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        label = truth[ds.StudyInstanceUID].label
        # Phantom file names repeat across studies (IM0001.dcm), so annotations name the SOP Instance UID.
        (tmp_path / f"{ds.SOPInstanceUID}.json").write_text(json.dumps(
            {"imagePath": f"{ds.SOPInstanceUID}.png", "shapes": [{"label": s} for s in shapes[label]]}))
    got = {r.study_uid: r.label for r in read_labels(tmp_path, files, "dspic4")}
    assert got == {uid: r.label for uid, r in truth.items()}


def test_class_weights_balance_classes():
    y = np.array([0] * 6 + [1] * 2 + [2] * 2)
    w = class_weights(y, 4)
    assert w[3] == 0.0
    totals = [w[c] * (y == c).sum() for c in range(3)]
    assert np.allclose(totals, totals[0]) and np.isclose((w[y]).mean(), 1.0)


def test_separate_held_out_set(phantoms, tmp_path):
    """With --test-data, every study of --data is trained on and the metrics come from the other set."""
    held_out = tmp_path / "held-out"
    generate_phantoms(held_out, n=8, seed=99)
    out = tmp_path / "bundle"
    spectnode("train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"), "--arch", "dSPIC-AM",
              "--scheme", "dspic4", "--out", str(out), "--epochs", "1", "--test-data", str(held_out),
              "--test-labels", str(held_out / "labels.csv"), *TINY)
    card = json.loads((out / "card.json").read_text())
    assert card["metrics"]["n"] == 8
    assert sum(card["training_data"]["counts"]["train"].values()) == 16
    assert "separate held-out set of 8 studies" in card["training_data"]["description"]


def test_resumed_batches_continue_the_augmentation_stream():
    # Epoch 3 of a resumed run must see the batches epoch 3 of an unbroken run sees, not epoch 1's again.
    from spectnode.training.train import LoadedSamples, TrainSettings, _augmented_batches

    rng = np.random.default_rng(0)
    samples = LoadedSamples(rng.random((12, 32, 16, 1), dtype=np.float32), np.arange(12) % 4, np.arange(12), [], {})
    settings = TrainSettings(arch="SI_CLF", scheme="dspic4", learning_rate=1e-3, batch_size=4, epochs=5,
                             input_mode="per_view", input_shape=(32, 16))
    unbroken = _augmented_batches(samples, settings, 4)
    first = unbroken[0][0]
    unbroken.on_epoch_end()
    unbroken.on_epoch_end()
    resumed = _augmented_batches(samples, settings, 4, first_epoch=2)
    for index in range(len(unbroken)):
        np.testing.assert_array_equal(resumed[index][0], unbroken[index][0])
        np.testing.assert_array_equal(resumed[index][1], unbroken[index][1])
    assert not np.array_equal(resumed[0][0], first)


#: Validation losses the early-stopping test feeds the training loop, one per epoch: the best is epoch 2,
#: and with patience 2 the run stops after epoch 4.
FABRICATED_VAL_LOSS = [1.0, 0.5, 0.8, 0.9, 0.1, 0.1]


def test_early_stopping_keeps_the_weights_of_the_best_epoch(tmp_path, monkeypatch):
    from spectnode.training import train as training
    from spectnode.training.labels import LabelledStudy

    rng = np.random.default_rng(0)
    classes = ("no_metastasis", "metastasis")
    studies = [LabelledStudy(f"1.2.3.{i}", f"P{i}", classes[i % 2]) for i in range(12)]
    samples = training.LoadedSamples(x=rng.random((12, 128, 32, 1), dtype=np.float32),
                                     y=np.array([i % 2 for i in range(12)]), study=np.arange(12),
                                     studies=studies, skipped={})
    settings = training.TrainSettings(arch="dSPIC-AM", scheme="binary", learning_rate=1e-2, batch_size=4,
                                      epochs=len(FABRICATED_VAL_LOSS), input_mode="per_view", input_shape=(128, 32),
                                      patience=2, arch_options={"fc_units": [4]}, train_fraction=0.7,
                                      validation_fraction=0.3)
    weights_after_epoch: dict[int, list[np.ndarray]] = {}
    make_callback = training._progress_callback

    def fabricating(*args, **kwargs):
        callback = make_callback(*args, **kwargs)
        on_epoch_end = callback.on_epoch_end

        def with_fabricated_loss(epoch, logs=None):
            weights_after_epoch[epoch + 1] = [w.copy() for w in callback.model.get_weights()]
            on_epoch_end(epoch, {**(logs or {}), "val_loss": FABRICATED_VAL_LOSS[epoch]})

        callback.on_epoch_end = with_fabricated_loss
        return callback

    monkeypatch.setattr(training, "_progress_callback", fabricating)
    result = training.train(samples, settings, tmp_path / "run", log=lambda _line: None, verbose=0)
    assert sorted(weights_after_epoch) == [1, 2, 3, 4]  # stopped after two epochs without improvement
    assert result.stopped_early and result.best_epoch == 2
    kept = result.model.get_weights()
    assert all(np.array_equal(k, b) for k, b in zip(kept, weights_after_epoch[2], strict=True))
    assert not all(np.array_equal(k, last) for k, last in zip(kept, weights_after_epoch[4], strict=True))


def test_a_loss_that_turns_nan_stops_the_run_before_anything_is_saved(tmp_path):
    """A diverged batch or epoch (NaN or infinite loss) is an error naming where; no checkpoint is written."""
    from spectnode.training.train import TrainSettings, _progress_callback

    settings = TrainSettings(arch="dSPIC-AM", scheme="dspic4", learning_rate=1e-4, batch_size=8, epochs=3,
                             input_mode="per_view", precision="mixed_bfloat16")
    state = {"epoch": 0, "best_val_loss": float("inf"), "wait": 0, "history": [], "stopped_early": False}
    callback = _progress_callback(settings, tmp_path / "state.json", tmp_path, state, log=lambda _: None)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0, {"loss": 1.3})
    with pytest.raises(ValueError, match=r"training diverged: the loss is nan at epoch 1, batch 2 \(bfloat16"):
        callback.on_train_batch_end(1, {"loss": float("nan")})
    with pytest.raises(ValueError, match="training diverged: val loss is inf after epoch 1"):
        callback.on_epoch_end(0, {"loss": 1.2, "val_loss": float("inf")})
    assert list(tmp_path.iterdir()) == [] and state["epoch"] == 0
