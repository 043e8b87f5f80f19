"""CBAM (Woo et al. 2018) as used by dSPIC-AM and the RA-Conv blocks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from spectnode.models import CBAM, build_model, cbam_attention_maps


def _feature_map(shape=(2, 12, 10, 32), seed=0) -> np.ndarray:
    # Signed values, as a feature map after BN would have, so the max/mean pools differ.
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_keeps_input_shape_symbolic_and_eager():
    layer = CBAM(name="cbam")
    symbolic = keras.Input(shape=(31, 17, 48))
    assert tuple(layer(symbolic).shape) == (None, 31, 17, 48)
    features = _feature_map((3, 31, 17, 48))
    assert tuple(ops.convert_to_numpy(layer(features)).shape) == features.shape


def test_attention_maps_in_unit_interval_and_recompose_the_output():
    features = _feature_map()
    layer = CBAM()
    output = ops.convert_to_numpy(layer(features))
    channel_map, spatial_map = (ops.convert_to_numpy(m) for m in layer.attention_maps(features))
    assert channel_map.shape == (2, 1, 1, 32)
    assert spatial_map.shape == (2, 12, 10, 1)
    for attention in (channel_map, spatial_map):
        assert attention.min() >= 0.0 and attention.max() <= 1.0
    # Channel first, then spatial: F'' = M_s(F') * F' with F' = M_c(F) * F.
    np.testing.assert_allclose(output, features * channel_map * spatial_map, rtol=1e-5, atol=1e-6)


def test_channel_attention_uses_one_mlp_over_avg_and_max_pooling():
    features = _feature_map()
    layer = CBAM(reduction_ratio=16)
    layer(features)
    w1, b1 = (ops.convert_to_numpy(v) for v in layer.mlp_hidden.weights)
    w2, b2 = (ops.convert_to_numpy(v) for v in layer.mlp_output.weights)
    assert w1.shape == (32, 2) and w2.shape == (2, 32)  # reduction ratio 16

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0.0) @ w2 + b2

    expected = 1.0 / (1.0 + np.exp(-(mlp(features.mean(axis=(1, 2))) + mlp(features.max(axis=(1, 2))))))
    channel_map, _ = layer.attention_maps(features)
    np.testing.assert_allclose(ops.convert_to_numpy(channel_map)[:, 0, 0, :], expected, rtol=1e-5, atol=1e-6)
    # Spatial attention: a 7x7 convolution over the [mean; max] channel maps.
    assert tuple(layer.spatial_conv.kernel.shape) == (7, 7, 2, 1)


def test_parameter_count():
    layer = CBAM()
    layer.build((None, 20, 20, 96))
    # Shared MLP 96 -> 6 -> 96 with biases, plus the 7x7x2 -> 1 convolution with bias.
    assert layer.count_params() == (96 * 6 + 6) + (6 * 96 + 96) + (7 * 7 * 2 + 1)


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError):
        CBAM(reduction_ratio=0)
    with pytest.raises(ValueError):
        CBAM(spatial_kernel_size=4)


def test_saved_model_round_trip(tmp_path):
    """The layer is registered for serialisation: a saved model reloads and predicts the same."""
    model = build_model("SI_CLF+AM", (96, 64, 1), 4)
    images = np.random.default_rng(1).random((2, 96, 64, 1), dtype=np.float32)
    path = tmp_path / "si_clf_am.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert [type(layer) for layer in reloaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_allclose(
        np.asarray(reloaded(images, training=False)), np.asarray(model(images, training=False)), rtol=1e-5, atol=1e-6
    )


def test_attention_maps_of_a_built_model():
    images = np.random.default_rng(2).random((2, 128, 64, 1), dtype=np.float32)
    maps = cbam_attention_maps(build_model("SI_CLF+AM", (128, 64, 1), 4), images)
    assert list(maps) == ["am1", "am2"]
    channel_map, spatial_map = maps["am1"]
    assert channel_map.shape == (2, 1, 1, 64)
    # 128x64 -> conv1 11x11/s4/p2 -> 31x15 -> maxpool 3/s2 -> 15x7
    assert spatial_map.shape == (2, 15, 7, 1)
    for channel_map, spatial_map in maps.values():
        assert channel_map.min() >= 0.0 and channel_map.max() <= 1.0
        assert spatial_map.min() >= 0.0 and spatial_map.max() <= 1.0
    assert list(cbam_attention_maps(build_model("dSPIC-AM", (128, 64, 1), 4), images)) == ["am"]
    assert cbam_attention_maps(build_model("SI_CLF", (128, 64, 1), 4), images) == {}
