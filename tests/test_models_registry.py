"""The architecture registry: names, build_model, argument checks."""

from __future__ import annotations

import json

import keras
import pytest

from spectnode.models import ARCHITECTURES, build_model, list_architectures

PAPER_NAMES = {
    # dSPIC Tables 3 and 7
    "dSPIC-AM", "dSPIC-RM", "SI_CLF", "SI_CLF+AM", "SI_CLF+RM", "SI_CLF+AM+RM", "AlexNet",
    # inRAC Tables 1, 7 and 9
    "Classifier-inRAC", "Classifier-outRAC", "Classifier-18", "Classifier-34", "VGG11", "Inception-v1",
}


def test_registry_holds_the_papers_names():
    assert set(ARCHITECTURES) == PAPER_NAMES | {"dSPIC-AM-flatten", "dSPIC-RM-flatten"}
    assert all(callable(builder) for builder in ARCHITECTURES.values())


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as excinfo:
        build_model("ResNet-50")
    message = str(excinfo.value)
    assert "ResNet-50" in message
    assert all(name in message for name in ARCHITECTURES)


def test_build_model_passes_options_and_names_the_model():
    model = build_model("Classifier-18", (64, 32, 1), 3, classifier_activation=None, name="my-net")
    assert model.name == "my-net"
    assert model.get_layer("predictions").units == 3
    assert keras.activations.serialize(model.get_layer("predictions").activation) == "linear"
    trunk = build_model("dSPIC-AM", (128, 64, 1), 4, include_top=False)
    assert trunk.name == "dSPIC-AM"
    assert trunk.output.shape[-1] == 256 and len(trunk.output.shape) == 4


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dSPIC-AM", {"input_shape": (128, 64)}),
        ("dSPIC-AM", {"input_shape": (128, 64, 1), "classes": 0}),
        ("dSPIC-AM", {"input_shape": (128, 64, 1), "head": "avg"}),
        ("VGG11", {"input_shape": (64, 64, 1), "dropout_rate": 1.0}),
        ("Inception-v1", {"input_shape": (64, 64, 1), "dropout_rate": -0.1}),
    ],
)
def test_invalid_arguments_rejected(name, kwargs):
    with pytest.raises(ValueError):
        build_model(name, **kwargs)


def test_channels_first_configuration_rejected():
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="channels_last"):
            build_model("SI_CLF", (1, 128, 64), 4)
    finally:
        keras.config.set_image_data_format(previous)


def test_list_architectures_entries_are_json_ready():
    entries = list_architectures((96, 64, 1), 4)
    assert [entry["name"] for entry in entries] == list(ARCHITECTURES)
    assert all(set(entry) == {"name", "params"} and isinstance(entry["params"], int) and entry["params"] > 0
               for entry in entries)
    assert json.loads(json.dumps(entries)) == entries
