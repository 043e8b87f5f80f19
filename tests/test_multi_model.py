"""Several models in one node: each study goes to every model whose input it can feed.

Two tiny (untrained) Keras models stand in for the shipped ones: an
aggregate-view model, which needs both views, and a per-view model, which
takes either. What is checked is the plumbing, not the models' quality: who
reads which study, one result per model in the SR (each with its own
algorithm identification, as IHE AI Results asks, dciodvfy-clean and readable
in dsr2html) and on the overlays, and ``classify --json``.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pydicom
import pytest

from spectnode.bundle import ModelCard, TrainingData, save_bundle
from spectnode.classify import Classifiers
from spectnode.imaging.views import StudyViews, read_study_views
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import AlgorithmInfo, build_overlay_captures, build_result_sr

from dicomtools import dciodvfy_errors, require_tool

if TYPE_CHECKING:
    from pathlib import Path

    from spectnode.result import StudyResult

DSPIC4 = ["normal", "metastatic", "arthritic", "both"]


def tiny_bundle(out: Path, name: str, mode: str, architecture: str) -> Path:
    import keras

    inputs = keras.Input((128, 32, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    card = ModelCard(
        name=name, version="0.0.1", architecture=architecture, scheme="dspic4", classes=DSPIC4,
        input_shape=[128, 32, 1],
        preprocessing={"views": mode, "normalization": "minmax", "resample_to": [128, 32]},
        training_data=TrainingData("untrained test model", synthetic=True),
    )
    return save_bundle(keras.Model(inputs, outputs), card, out)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("multi-model")
    return [tiny_bundle(root / "aggregate", "test-aggregate", "aggregate", "Classifier-inRAC"),
            tiny_bundle(root / "per-view", "test-per-view", "per_view", "dSPIC-AM")]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    (record,) = generate_phantoms(tmp_path_factory.mktemp("multi-phantom"), 1, seed=81, layout="split-instances")
    datasets = [pydicom.dcmread(p) for p in record.files]
    views = read_study_views(datasets)
    assert isinstance(views, StudyViews)
    return record, datasets, views


@pytest.fixture(scope="module")
def classifiers(bundles: list[Path]) -> Classifiers:
    return Classifiers.from_bundles(bundles)


@pytest.fixture(scope="module")
def explained(classifiers: Classifiers, phantom) -> tuple[StudyResult, list[AlgorithmInfo]]:
    """The two-view study classified by both models with heatmaps, and the models' identifications."""
    _, _, views = phantom
    return classifiers.classify(views, explain=True), [AlgorithmInfo.from_card(c.card) for c in classifiers]


def test_a_two_view_study_goes_to_both_models_and_a_single_view_to_the_per_view_one(classifiers, phantom):
    _, _, views = phantom
    both = classifiers.classify(views)
    assert [(m.model, m.input_mode, m.views) for m in both.models] == [
        ("test-aggregate", "aggregate", ["anterior", "posterior"]),
        ("test-per-view", "per_view", ["anterior", "posterior"])]
    assert both.skipped_models == {}
    one = classifiers.classify(StudyViews(views.study_uid, None, views.posterior))
    assert [m.model for m in one.models] == ["test-per-view"] and one.models[0].views == ["posterior"]
    assert "both the anterior and the posterior" in one.skipped_models["test-aggregate"]
    only_aggregate = Classifiers(classifiers.classifiers[:1]).classify(StudyViews(views.study_uid, views.anterior,
                                                                                  None))
    assert only_aggregate.outcome == "not_assessable" and only_aggregate.reason_code == "missing_views"
    assert "test-aggregate" in only_aggregate.reason


def test_a_studys_models_run_at_once_and_a_failure_waits_for_the_other(classifiers, phantom, monkeypatch):
    """The two models of a study run in threads of their own, at the same time; where one fails,
    classify raises its error only once the other has ended (a model failing is a fault that
    cannot be produced for real, so the two ``model_result`` calls are wrapped)."""
    import threading

    _, _, views = phantom
    first, second = classifiers.classifiers
    both_running = threading.Barrier(2, timeout=30)  # breaks unless both calls are in flight at once
    threads, ended = set(), []

    def meeting(classifier):
        real = type(classifier).model_result

        def model_result(study, explain=False):
            threads.add(threading.get_ident())
            both_running.wait()
            return real(classifier, study, explain)
        return model_result

    monkeypatch.setattr(first, "model_result", meeting(first))
    monkeypatch.setattr(second, "model_result", meeting(second))
    result = classifiers.classify(views)
    assert [m.model for m in result.models] == ["test-aggregate", "test-per-view"]
    assert len(threads) == 2 and threading.get_ident() not in threads

    def failing(study, explain=False):
        raise RuntimeError("model failed")

    real_second = type(second).model_result

    def slow(study, explain=False):
        time.sleep(0.5)
        ended.append(True)
        return real_second(second, study, explain)

    monkeypatch.setattr(first, "model_result", failing)
    monkeypatch.setattr(second, "model_result", slow)
    with pytest.raises(RuntimeError, match="model failed"):
        classifiers.classify(views)
    assert ended == [True]


def test_the_sr_carries_one_result_per_model_with_its_own_algorithm(explained, phantom, tmp_path):
    _, datasets, views = phantom
    result, algorithms = explained
    sr = build_result_sr(datasets, views, result, algorithms)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    equipment = [(e.ManufacturerModelName, e.DeviceUID) for e in sr.ContributingEquipmentSequence
                 if "DeviceUID" in e]
    assert equipment == [(a.name, a.device_uid) for a in algorithms]

    def walk(item):
        for child in item.get("ContentSequence", []):
            yield child
            yield from walk(child)

    # DCM 111001 Algorithm Name: in each of a model's four class groups (TID 4019), and once more
    # in its container of qualitative evaluations.
    names = [i.TextValue for i in walk(pydicom.dcmread(path)) if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
    assert {n: names.count(n) for n in set(names)} == {"test-aggregate": 5, "test-per-view": 5}
    page = subprocess.run([require_tool("dsr2html"), str(path)], capture_output=True, text=True, timeout=60).stdout
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    # What a reader sees: one block per model, each with its name and its most probable class.
    for model in result.models:
        assert (f"Result of one model Algorithm Name: {model.model} Algorithm Version: 0.0.1"
                " Most probable class:") in text


def test_each_capture_shows_every_model_and_names_the_heatmaps_model(explained, phantom, tmp_path):
    _, datasets, views = phantom
    result, algorithms = explained
    captures = build_overlay_captures(datasets, views, result, algorithms)
    assert len(captures) == 2
    for capture in captures:
        assert "LayerCAM heatmap of class" in capture.DerivationDescription
        assert "by test-aggregate 0.0.1" in capture.DerivationDescription  # the first model's heatmap
        assert "test-aggregate 0.0.1, test-per-view 0.0.1" in capture.DerivationDescription
        assert [e.ManufacturerModelName for e in capture.ContributingEquipmentSequence if "DeviceUID" in e] == [
            "test-aggregate", "test-per-view"]
        path = tmp_path / f"{capture.SOPInstanceUID}.dcm"
        capture.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def test_classify_json_shows_every_models_result(bundles, phantom):
    record, _, _ = phantom
    proc = subprocess.run([sys.executable, "-m", "spectnode", "classify", str(record.study_dir), "--json",
                           "--bundle", str(bundles[0]), "--bundle", str(bundles[1])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert line["outcome"] == "classified"
    assert [m["model"] for m in line["models"]] == ["test-aggregate", "test-per-view"]
    assert all(set(m["probabilities"]) == set(DSPIC4) for m in line["models"])


def test_the_node_runs_every_model_and_status_shows_each_result(bundles, phantom, tmp_path):
    from spectnode.config import parse_config
    from spectnode.node.status import status_report
    from spectnode.node.worker import Node

    from nodetools import storescu

    record, _, _ = phantom
    (single,) = generate_phantoms(tmp_path / "single", 1, seed=82, layout="split-instances")
    cfg = parse_config({"storage": {"data_dir": str(tmp_path / "data")},
                        "model": {"bundles": [str(b) for b in bundles]},
                        "completion": {"timeout_seconds": 1}})
    with Node(cfg, port=0) as node:
        assert storescu(node.port, list(record.files)).returncode == 0
        assert storescu(node.port, [single.views["anterior"][0]]).returncode == 0  # one view only
        settled = node.wait_until_settled([record.study_uid, single.study_uid], timeout=240)
        assert {uid: s.state for uid, s in settled.items()} == dict.fromkeys(settled, "dispatched")
    studies = {s["study_uid"]: s for s in status_report(cfg)["studies"]}
    assert [m["model"] for m in studies[record.study_uid]["models"]] == ["test-aggregate", "test-per-view"]
    assert [m["model"] for m in studies[single.study_uid]["models"]] == ["test-per-view"]
    assert "test-aggregate" in studies[single.study_uid]["skipped_models"]
