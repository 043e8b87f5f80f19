"""Model bundles: a trained model plus the card that describes it.

A bundle is a folder with ``model.keras`` (Keras 3 native format) and
``card.json`` (a :class:`ModelCard`: name, version, architecture, labelling
scheme, classes in output order, input shape, preprocessing, training data,
held-out metrics, software versions, intended use, the SHA-256 of
``model.keras`` and a DICOM Device UID derived from it).

Typical use::

    from spectnode.bundle import ModelCard, TrainingData, save_bundle, load_bundle

    card = ModelCard(
        name="spectnode-inrac-lung3", version="1.0.0",
        architecture="Classifier-inRAC", scheme="lung3",
        classes=["NoMet", "ADMet", "nADMet"], input_shape=[1024, 256, 1],
        preprocessing={"views": "aggregate", "normalization": "minmax",
                       "resample_to": [1024, 256]},
        training_data=TrainingData("synthetic phantoms, 7:3 split by patient",
                                   counts={"train": 700, "test": 300}, synthetic=True),
        metrics=compute_metrics(y_test, probabilities, classes),
    )
    save_bundle(model, card, "bundles/inrac-lung3")
    bundle = load_bundle("bundles/inrac-lung3", expected_classes=["NoMet", "ADMet", "nADMet"])
    bundle.model.predict(images); bundle.card.device_uid

Importing this package does not import Keras.
"""

from .card import (
    CARD_FORMAT,
    SCHEME_CLASS_COUNTS,
    BundleError,
    ModelCard,
    TrainingData,
    default_intended_use,
    derive_device_uid,
    software_versions,
)
from .io import (
    CARD_FILENAME,
    MODEL_FILENAME,
    LoadedBundle,
    file_sha256,
    load_bundle,
    read_card,
    save_bundle,
    verify_bundle,
)

__all__ = [
    "CARD_FILENAME",
    "CARD_FORMAT",
    "MODEL_FILENAME",
    "SCHEME_CLASS_COUNTS",
    "BundleError",
    "LoadedBundle",
    "ModelCard",
    "TrainingData",
    "default_intended_use",
    "derive_device_uid",
    "file_sha256",
    "load_bundle",
    "read_card",
    "save_bundle",
    "software_versions",
    "verify_bundle",
]
