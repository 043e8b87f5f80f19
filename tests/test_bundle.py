"""Model bundles: save / verify / load round trip and every refusal path."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pydicom.uid
import pytest

from spectnode.bundle import (
    CARD_FORMAT,
    BundleError,
    ModelCard,
    TrainingData,
    derive_device_uid,
    file_sha256,
    load_bundle,
    read_card,
    save_bundle,
    verify_bundle,
)

CLASSES = ["normal", "metastatic", "arthritic", "metastatic_arthritic"]


def _tiny_model(outputs: int = 4, with_cbam: bool = False) -> keras.Model:
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    if with_cbam:
        from spectnode.models import CBAM

        x = CBAM(reduction_ratio=4, name="cbam")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs_tensor = keras.layers.Dense(outputs, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs_tensor, name="tiny")


def _card(**changes) -> ModelCard:
    values = dict(
        name="spectnode-test-tiny",
        version="0.0.1",
        architecture="tiny-test",
        scheme="dspic4",
        classes=CLASSES,
        input_shape=[32, 32, 1],
        preprocessing={"views": "per_view", "normalization": "minmax", "resample_to": [32, 32]},
        training_data=TrainingData(
            description="synthetic phantoms, 7:3 split by patient",
            counts={"train": {name: 7 for name in CLASSES}, "test": {name: 3 for name in CLASSES}},
            synthetic=True,
        ),
        metrics={"accuracy": 0.5, "classes": CLASSES},
    )
    values.update(changes)
    return ModelCard(**values)


@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory) -> tuple[Path, keras.Model]:
    model = _tiny_model()
    bundle = save_bundle(model, _card(), tmp_path_factory.mktemp("bundles") / "tiny")
    return bundle, model


@pytest.fixture
def bundle_copy(saved_bundle, tmp_path) -> Path:
    """A private copy of the saved bundle that a test may damage."""
    return Path(shutil.copytree(saved_bundle[0], tmp_path / "bundle"))


def _edit_card(bundle: Path, edit) -> None:
    card_path = bundle / "card.json"
    data = json.loads(card_path.read_text())
    edit(data)
    card_path.write_text(json.dumps(data))


def test_round_trip_restores_model_and_card(saved_bundle) -> None:
    bundle, original = saved_bundle
    assert sorted(path.name for path in bundle.iterdir()) == ["card.json", "model.keras"]

    card = read_card(bundle)
    assert card.content_hash == file_sha256(bundle / "model.keras")
    assert card.content_hash.startswith("sha256:") and len(card.content_hash) == 7 + 64
    assert card.device_uid == derive_device_uid(card.content_hash)
    assert pydicom.uid.UID(card.device_uid).is_valid
    assert card.card_format == CARD_FORMAT == 1
    assert card.classes == CLASSES
    assert set(card.software) == {"spectnode", "keras", "backend", "numpy", "pydicom", "python"}
    assert card.software["keras"] == keras.__version__
    raw = json.loads((bundle / "card.json").read_text())
    assert list(raw) == ModelCard.field_names()

    loaded = load_bundle(bundle, expected_classes=CLASSES)
    assert loaded.card == card
    assert loaded.path == bundle
    images = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(
        loaded.model.predict(images, verbose=0), original.predict(images, verbose=0), rtol=1e-6
    )


def test_custom_spectnode_layer_deserializes(tmp_path) -> None:
    model = _tiny_model(with_cbam=True)
    bundle = save_bundle(model, _card(architecture="tiny-cbam-test"), tmp_path / "cbam")
    loaded = load_bundle(bundle, expected_classes=CLASSES)
    assert type(loaded.model.get_layer("cbam")).__name__ == "CBAM"
    images = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.model.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


def test_device_uid_is_deterministic_per_content() -> None:
    first = derive_device_uid("sha256:" + "ab" * 32)
    assert first == derive_device_uid("sha256:" + "ab" * 32)
    assert first != derive_device_uid("sha256:" + "ac" * 32)
    assert len(first) <= 64 and pydicom.uid.UID(first).is_valid


def test_tampered_model_is_refused_with_both_hashes(bundle_copy) -> None:
    expected_hash = read_card(bundle_copy).content_hash
    model_path = bundle_copy / "model.keras"
    data = bytearray(model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_copy)
    message = str(caught.value)
    assert "model.keras has been modified or corrupted" in message
    assert f"expected {expected_hash} got {file_sha256(model_path)}" in message
    assert str(bundle_copy) in message


def test_edited_class_names_do_not_match_expected_classes(bundle_copy) -> None:
    _edit_card(
        bundle_copy, lambda card: card.update(classes=["normal", "arthritic", "metastatic", "metastatic_arthritic"])
    )
    _edit_card(bundle_copy, lambda card: card.update(metrics={}))
    with pytest.raises(BundleError, match=r"class list mismatch.*expected \['normal', 'metastatic'"):
        verify_bundle(bundle_copy, expected_classes=CLASSES)


def test_edited_class_count_does_not_match_output_layer(bundle_copy) -> None:
    def three_classes(card: dict) -> None:
        card.update(scheme="lung3", classes=["NoMet", "ADMet", "nADMet"], metrics={})

    _edit_card(bundle_copy, three_classes)
    with pytest.raises(BundleError, match="output layer has 4 units but the card lists 3 classes"):
        verify_bundle(bundle_copy)


def test_save_refuses_model_that_does_not_fit_card(tmp_path) -> None:
    with pytest.raises(BundleError, match="output layer has 3 units"):
        save_bundle(_tiny_model(outputs=3), _card(), tmp_path / "bad")
    with pytest.raises(BundleError, match=r"input shape \[32, 32, 1\] does not match .* \[1024, 256, 1\]"):
        save_bundle(_tiny_model(), _card(input_shape=[1024, 256, 1]), tmp_path / "bad")
    assert not (tmp_path / "bad" / "card.json").exists()


def test_missing_files_are_named(bundle_copy) -> None:
    (bundle_copy / "card.json").unlink()
    with pytest.raises(BundleError, match=r"incomplete: missing card\.json"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=r"no card\.json"):
        read_card(bundle_copy)
    (bundle_copy / "model.keras").unlink()
    with pytest.raises(BundleError, match=r"missing model\.keras, card\.json"):
        verify_bundle(bundle_copy)
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(bundle_copy / "nowhere")


def test_unknown_and_missing_card_keys_are_refused(bundle_copy) -> None:
    _edit_card(bundle_copy, lambda card: card.update(threshold=0.5))
    with pytest.raises(BundleError, match=r"unknown card key\(s\) \['threshold'\]"):
        verify_bundle(bundle_copy)
    _edit_card(bundle_copy, lambda card: (card.pop("threshold"), card.pop("scheme")))
    with pytest.raises(BundleError, match=r"missing card key\(s\) \['scheme'\]"):
        read_card(bundle_copy)
    _edit_card(bundle_copy, lambda card: (card.update(scheme="dspic4"), card["training_data"].update(source="x")))
    with pytest.raises(BundleError, match=r"unknown training_data key\(s\) \['source'\]"):
        read_card(bundle_copy)


def test_unsupported_card_format_and_bad_json_are_refused(bundle_copy) -> None:
    _edit_card(bundle_copy, lambda card: card.update(card_format=2))
    with pytest.raises(BundleError, match="unsupported card format version 2"):
        verify_bundle(bundle_copy)
    (bundle_copy / "card.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_card(bundle_copy)


def test_card_validation_and_default_intended_use() -> None:
    card = _card()
    assert "Research use only" in card.intended_use
    assert "Not for clinical use" in card.intended_use
    assert "synthetic" in card.intended_use
    patient_card = _card(training_data=TrainingData("local archive", synthetic=False))
    assert "synthetic" not in patient_card.intended_use
    assert "Not for clinical use" in patient_card.intended_use
    with pytest.raises(ValueError, match="scheme 'lung3' has 3 classes"):
        _card(scheme="lung3")
    with pytest.raises(ValueError, match="scheme must be one of"):
        _card(scheme="five")
    with pytest.raises(ValueError, match="input_shape"):
        _card(input_shape=[1024, -1])
    with pytest.raises(ValueError, match="metrics are for classes"):
        _card(metrics={"classes": ["a", "b", "c", "d"]})
    assert dataclasses.replace(card, version="0.0.2").version == "0.0.2"


def test_trained_model_is_saved_without_optimizer_state(tmp_path) -> None:
    """A compiled, trained model keeps Adam's two moment copies; a bundle must not ship them."""
    import numpy as np

    plain = save_bundle(_tiny_model(), _card(), tmp_path / "plain")
    trained = _tiny_model()
    trained.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    trained.fit(np.zeros((4, 32, 32, 1), "float32"), np.zeros(4, "int64"), epochs=1, verbose=0)
    saved = save_bundle(trained, _card(), tmp_path / "trained")
    plain_size = (plain / "model.keras").stat().st_size
    assert (saved / "model.keras").stat().st_size < 1.2 * plain_size
    loaded = load_bundle(saved)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), trained.predict(x, verbose=0), rtol=1e-5)


def test_a_float16_bundle_is_half_the_size_and_agrees_with_float32_to_1e_3(tmp_path):
    import keras
    import numpy as np

    from spectnode.bundle import load_bundle, save_bundle
    from spectnode.models import build_model

    model = build_model("Classifier-inRAC", input_shape=(128, 32, 1), classes=4)
    card = ModelCard(name="fp16-check", version="1", architecture="Classifier-inRAC", scheme="dspic4",
                     classes=["normal", "metastatic", "arthritic", "both"], input_shape=[128, 32, 1],
                     preprocessing={"views": "aggregate", "normalization": "minmax", "resample_to": [128, 32]},
                     training_data=TrainingData("untrained", synthetic=True))
    full = save_bundle(model, card, tmp_path / "float32")
    half = save_bundle(model, dataclasses.replace(card, weights_dtype="float16"), tmp_path / "float16")
    size = {p.name: (p / "model.keras").stat().st_size for p in (full, half)}
    assert size["float16"] < 0.55 * size["float32"]
    loaded = load_bundle(half)
    assert loaded.card.weights_dtype == "float16"
    assert {w.dtype for w in loaded.model.weights} == {"float32"}  # inference runs in float32
    x = np.random.default_rng(0).random((4, 128, 32, 1), dtype=np.float32)
    expected = load_bundle(full).model.predict(x, verbose=0)
    assert np.abs(loaded.model.predict(x, verbose=0) - expected).max() < 1e-3
    assert keras.saving.load_model(half / "model.keras").weights[0].dtype == "float16"  # stored as float16
