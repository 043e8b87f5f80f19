"""Views -> network inputs -> heatmaps back onto the views, and the class-activation maps themselves."""

from __future__ import annotations

import numpy as np
import pytest

from spectnode.imaging.network_input import InputSpec, heatmap_to_view, network_inputs
from spectnode.imaging.views import StudyViews, ViewImage


def body(marker_col: int, rows: int = 256, cols: int = 64) -> np.ndarray:
    img = np.full((rows, cols), 10.0, np.float32)
    img[20:236, 16:48] = 100.0          # trunk
    img[100:110, marker_col:marker_col + 4] = 1000.0  # hot spot
    return img


def view(name: str, pixels: np.ndarray) -> ViewImage:
    return ViewImage(name, pixels, (2.3, 2.3), "1.2.3", "1.2.840.10008.5.1.4.1.1.20", None)


def study(anterior=True, posterior=True) -> StudyViews:
    # The hot spot is on the patient's right: image left in the anterior view, image right
    # in the posterior view (seen from behind).
    return StudyViews("1.2.3.4", view("anterior", body(18)) if anterior else None,
                      view("posterior", body(64 - 18 - 4)) if posterior else None)


def hot_column(array: np.ndarray) -> int:
    return int(np.unravel_index(np.argmax(array[..., 0] if array.ndim == 3 else array), array.shape[:2])[1])


def test_per_view_inputs_share_the_anterior_orientation():
    inputs = network_inputs(study(), InputSpec("per_view", (128, 32)))
    assert [i.name for i in inputs] == ["anterior", "posterior"]
    for i in inputs:
        assert i.array.shape == (128, 32, 1) and i.array.dtype == np.float32
        assert i.array.min() == 0.0 and i.array.max() == 1.0   # dSPIC Eq. 1
        assert hot_column(i.array) < 16                         # patient's right on the image left


def test_aggregate_input_and_single_view_fallback():
    (agg,) = network_inputs(study(), InputSpec("aggregate", (128, 32)))
    assert agg.name == "aggregate" and agg.array.shape == (128, 32, 1) and hot_column(agg.array) < 16
    (only,) = network_inputs(study(anterior=False), InputSpec("aggregate", (128, 32)))
    assert only.name == "posterior" and hot_column(only.array) < 16


def test_heatmap_goes_back_to_each_view_in_its_stored_orientation():
    heat = np.zeros((128, 32), np.float32)
    heat[50:55, 4:8] = 1.0  # on the patient's right, in input space
    ant = heatmap_to_view(heat, "anterior", (256, 64))
    post = heatmap_to_view(heat, "posterior", (256, 64))
    assert ant.shape == post.shape == (256, 64)
    assert hot_column(ant) < 32 and hot_column(post) >= 32
    np.testing.assert_allclose(post, np.fliplr(ant))
    assert ant.min() >= 0.0 and ant.max() <= 1.0


def test_input_spec_round_trip_and_validation():
    spec = InputSpec("aggregate", (512, 128))
    assert InputSpec.from_card(spec.to_card()) == spec
    bone = InputSpec("aggregate", (512, 128), normalization="bone_window")
    assert bone.to_card()["normalization"] == "bone_window"
    assert InputSpec.from_card(bone.to_card()) == bone
    # Cards written before the field existed meant min-max.
    assert InputSpec.from_card({"views": "per_view", "resample_to": [64, 16]}).normalization == "minmax"
    with pytest.raises(ValueError, match="input mode"):
        InputSpec("stacked", (512, 128))
    with pytest.raises(ValueError, match="normalization"):
        InputSpec.from_card({"views": "per_view", "normalization": "zscore", "resample_to": [64, 16]})
    with pytest.raises(ValueError, match="normalization"):
        InputSpec("per_view", (64, 16), normalization="zscore")


def test_bone_window_inputs_do_not_depend_on_the_bladder():
    """Under min-max a hotter bladder dims the whole skeleton; under the bone window it does not."""
    quiet, loud = study(), study()
    for views, bladder in ((quiet, 10.0), (loud, 60.0)):
        for view in (views.anterior, views.posterior):
            view.pixels[100:104, 30:34] = bladder * view.pixels.max()  # mid-line, so in both views alike
    spec = InputSpec("aggregate", (128, 32), normalization="bone_window")
    minmax = InputSpec("aggregate", (128, 32))
    bone_quiet, bone_loud = (network_inputs(s, spec)[0].array for s in (quiet, loud))
    away = np.ones((128, 32), bool)
    away[46:58, 12:20] = False
    np.testing.assert_allclose(bone_quiet[..., 0][away], bone_loud[..., 0][away], atol=1e-6)
    mm_quiet, mm_loud = (network_inputs(s, minmax)[0].array[..., 0] for s in (quiet, loud))
    assert mm_loud[away].max() < 0.5 * mm_quiet[away].max()


def test_class_activation_map_peaks_on_the_evidence_even_when_confident():
    """Class 0's logit is the mean activation, so its evidence is exactly the bright spot."""
    import keras

    from spectnode.explain import LayerCam

    inputs = keras.Input((64, 16, 1))
    features = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    model.get_layer("predictions").set_weights([np.array([[50.0, -50.0]], np.float32), np.zeros(2, np.float32)])
    image = np.zeros((64, 16, 1), np.float32)
    image[40:44, 3:6] = 20.0
    assert model.predict(image[None], verbose=0)[0, 0] > 0.999  # saturated softmax
    cam = LayerCam(model)(image, 0)
    assert cam.shape == (64, 16) and cam.max() == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    assert 40 <= r < 44 and 3 <= c < 6


def test_feature_geometry_puts_each_cell_at_its_receptive_field_centre():
    """dSPIC-style literal paddings grow the maps beyond the image; each cell's centre in the input,
    as feature_geometry gives it, must be where that cell's receptive field is centred (found here
    from the gradient of the cell with respect to the input, independently of the formula)."""
    import keras
    import tensorflow as tf

    from spectnode.explain import feature_geometry

    inputs = keras.Input((64, 32, 1))
    x = keras.layers.ZeroPadding2D(2)(inputs)
    x = keras.layers.Conv2D(1, 5, strides=2, padding="valid", kernel_initializer="ones", name="a")(x)
    x = keras.layers.AveragePooling2D(3, strides=2, padding="valid", name="b")(x)  # max: the same geometry
    x = keras.layers.ZeroPadding2D(3)(x)
    x = keras.layers.Conv2D(1, 3, padding="valid", kernel_initializer="ones", name="c")(x)
    model = keras.Model(inputs, x)
    (a_row, b_row), (a_col, b_col) = feature_geometry(model, "c")
    image = tf.ones((1, 64, 32, 1))
    for i, j in ((5, 4), (8, 6)):  # cells whose receptive field lies wholly inside the image
        with tf.GradientTape() as tape:
            tape.watch(image)
            value = model(image)[0, i, j, 0]
        weight = tape.gradient(value, image).numpy()[0, ..., 0]
        rows, cols = np.indices(weight.shape)
        centre = ((weight * rows).sum() / weight.sum(), (weight * cols).sum() / weight.sum())
        assert centre == pytest.approx((a_row * i + b_row, a_col * j + b_col), abs=0.5)
    same = keras.layers.Conv2D(1, 3, padding="same", name="same")(inputs)
    assert feature_geometry(keras.Model(inputs, same), "same") == ((1.0, 0.0), (1.0, 0.0))
    branched = keras.layers.Add(name="sum")([same, inputs])
    assert feature_geometry(keras.Model(inputs, branched), "sum") is None  # not a chain: stretched instead
