"""Each network's layers against the paper's table, on the papers' 1024x256x1 image.

The expected tables below are transcribed by hand from dSPIC Tables 3 and 7
and inRAC Tables 1, 7 and 9 (plus Simonyan & Zisserman's configuration A and
Szegedy et al.'s Table 1, which inRAC Table 9 cites). Output shapes were
worked out by hand with out = floor((in + 2P - k) / S) + 1 and are written
out literally, not computed by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from spectnode.models import (
    ARCHITECTURES,
    DEFAULT_INPUT_SHAPE,
    build_model,
    count_params,
    last_feature_layer,
    layer_table,
    list_architectures,
)

CANONICAL = [
    "dSPIC-AM",
    "dSPIC-RM",
    "SI_CLF",
    "SI_CLF+AM",
    "SI_CLF+RM",
    "SI_CLF+AM+RM",
    "AlexNet",
    "Classifier-inRAC",
    "Classifier-outRAC",
    "Classifier-18",
    "Classifier-34",
    "VGG11",
    "Inception-v1",
]
CLASSES = 4


@pytest.fixture(scope="module")
def full_models():
    """Every canonical architecture built once at 1024x256x1 (about 10 s on 2 cores)."""
    return {name: build_model(name, DEFAULT_INPUT_SHAPE, CLASSES) for name in CANONICAL}


# --- dSPIC Table 3 and Table 7 -------------------------------------------------
# Rows: ("conv", kernel, filters, stride, padding P, output shape)
#       ("maxpool", kernel, stride, output shape)
#       ("AM", output shape)                 CBAM, shape-preserving
#       ("RM", channels, output shape)       residual module: two 3x3 convs + add
#       ("FC", units)
# Every table ends with "SoftMax" (written 3 in the paper; our width = classes).


def _dspic_table(added: tuple) -> list[tuple]:
    return [
        ("conv", 11, 96, 4, 2, (255, 63, 96)),
        ("maxpool", 3, 2, (127, 31, 96)),
        added,
        ("conv", 5, 256, 1, 2, (127, 31, 256)),
        ("maxpool", 3, 2, (63, 15, 256)),
        ("conv", 3, 384, 1, 3, (67, 19, 384)),
        ("conv", 3, 384, 1, 3, (71, 23, 384)),
        ("conv", 3, 256, 1, 1, (71, 23, 256)),
        ("FC", 4096),
        ("FC", 4096),
    ]


PAPER_TABLES: dict[str, list[tuple]] = {
    "dSPIC-AM": _dspic_table(("AM", (127, 31, 96))),
    "dSPIC-RM": _dspic_table(("RM", 96, (127, 31, 96))),
    "SI_CLF": [
        ("conv", 11, 64, 4, 2, (255, 63, 64)),
        ("maxpool", 3, 2, (127, 31, 64)),
        ("conv", 7, 128, 1, 2, (125, 29, 128)),
        ("maxpool", 3, 2, (62, 14, 128)),
        ("conv", 5, 128, 1, 3, (64, 16, 128)),
        ("conv", 3, 256, 1, 3, (68, 20, 256)),
        ("conv", 3, 256, 1, 1, (68, 20, 256)),
        ("maxpool", 3, 2, (33, 9, 256)),
        ("FC", 1024),
        ("FC", 1024),
    ],
    "SI_CLF+AM": [
        ("conv", 11, 64, 4, 2, (255, 63, 64)),
        ("maxpool", 3, 2, (127, 31, 64)),
        ("AM", (127, 31, 64)),
        ("conv", 7, 128, 1, 2, (125, 29, 128)),
        ("maxpool", 3, 2, (62, 14, 128)),
        ("conv", 5, 128, 1, 3, (64, 16, 128)),
        ("conv", 3, 256, 1, 3, (68, 20, 256)),
        ("conv", 3, 256, 1, 1, (68, 20, 256)),
        ("AM", (68, 20, 256)),
        ("maxpool", 3, 2, (33, 9, 256)),
        ("FC", 1024),
        ("FC", 1024),
    ],
    "SI_CLF+RM": [
        ("conv", 11, 64, 4, 2, (255, 63, 64)),
        ("maxpool", 3, 2, (127, 31, 64)),
        ("RM", 64, (127, 31, 64)),
        ("conv", 7, 128, 1, 2, (125, 29, 128)),
        ("maxpool", 3, 2, (62, 14, 128)),
        ("conv", 5, 128, 1, 3, (64, 16, 128)),
        ("conv", 3, 256, 1, 3, (68, 20, 256)),
        ("conv", 3, 256, 1, 1, (68, 20, 256)),
        ("maxpool", 3, 2, (33, 9, 256)),
        ("FC", 1024),
        ("FC", 1024),
    ],
    "SI_CLF+AM+RM": [
        ("conv", 11, 64, 4, 2, (255, 63, 64)),
        ("maxpool", 3, 2, (127, 31, 64)),
        ("RM", 64, (127, 31, 64)),
        ("AM", (127, 31, 64)),
        ("conv", 7, 128, 1, 2, (125, 29, 128)),
        ("maxpool", 3, 2, (62, 14, 128)),
        ("conv", 5, 128, 1, 3, (64, 16, 128)),
        ("conv", 3, 256, 1, 3, (68, 20, 256)),
        ("conv", 3, 256, 1, 1, (68, 20, 256)),
        ("AM", (68, 20, 256)),
        ("maxpool", 3, 2, (33, 9, 256)),
        ("FC", 1024),
        ("FC", 1024),
    ],
    "AlexNet": [
        ("conv", 11, 64, 4, 2, (255, 63, 64)),
        ("maxpool", 3, 2, (127, 31, 64)),
        ("conv", 5, 256, 1, 2, (127, 31, 256)),
        ("maxpool", 3, 2, (63, 15, 256)),
        ("conv", 3, 384, 1, 3, (67, 19, 384)),
        ("conv", 3, 384, 1, 3, (71, 23, 384)),
        ("FC", 1024),
        ("FC", 1024),
    ],
}


def _expand_paper_rows(rows: list[tuple], head: str) -> list[tuple]:
    """Paper rows -> the comparable (kind, ...) rows of layer_table()."""
    expanded: list[tuple] = []
    for index, row in enumerate(rows):
        if row[0] == "FC" and (index == 0 or rows[index - 1][0] != "FC"):
            expanded.append(("gap",) if head == "gap" else ("flatten",))
        if row[0] == "conv":
            expanded.append(("conv",) + row[1:] + ("relu",))
        elif row[0] == "maxpool":
            expanded.append(row)
        elif row[0] == "AM":
            expanded.append(("cbam", row[1]))
        elif row[0] == "RM":
            _, channels, shape = row
            expanded += [
                ("conv", 3, channels, 1, 1, shape, "relu"),
                ("conv", 3, channels, 1, 1, shape, "linear"),
                ("add", shape),
            ]
        elif row[0] == "FC":
            expanded.append(("dense", row[1], "relu"))
    expanded.append(("dense", CLASSES, "softmax"))
    return expanded


def _comparable_rows(model) -> list[tuple]:
    rows = []
    for info in layer_table(model):
        if info.kind == "conv":
            rows.append(
                ("conv", info.kernel_size, info.width, info.strides, info.padding, info.output_shape, info.activation)
            )
        elif info.kind == "maxpool":
            assert info.padding == 0, f"{info.name}: the paper's pools are unpadded"
            rows.append(("maxpool", info.kernel_size, info.strides, info.output_shape))
        elif info.kind in ("cbam", "add"):
            rows.append((info.kind, info.output_shape))
        elif info.kind in ("gap", "flatten"):
            rows.append((info.kind,))
        elif info.kind == "dense":
            rows.append(("dense", info.width, info.activation))
        elif info.kind in ("relu", "dropout"):
            continue  # ReLU after the residual add; dropout has no parameters or shape
        else:
            raise AssertionError(f"unexpected layer {info.name} ({info.kind}) in {model.name}")
    return rows


@pytest.mark.parametrize("name", list(PAPER_TABLES))
def test_dspic_family_matches_paper_table(full_models, name):
    model = full_models[name]
    assert model.name == name.replace("+", "_")  # "+" is not allowed in TF name scopes
    assert _comparable_rows(model) == _expand_paper_rows(PAPER_TABLES[name], head="gap")


@pytest.mark.parametrize("name", ["dSPIC-AM-flatten", "dSPIC-RM-flatten"])
def test_dspic_flatten_trunk_and_head(name):
    """Paper-as-written head: the trunk on 1024x256 ends in 71x23x256, flattened into FC-4096."""
    trunk = build_model(name, DEFAULT_INPUT_SHAPE, CLASSES, include_top=False)
    paper_rows = PAPER_TABLES[name.removesuffix("-flatten")]
    expected = _expand_paper_rows(paper_rows, head="flatten")
    assert _comparable_rows(trunk) == expected[: expected.index(("flatten",))]
    assert tuple(trunk.output.shape[1:]) == (71, 23, 256)
    # The head itself on a small image with narrow FC layers (the full one is 6.9 GB).
    small = build_model(name, (64, 48, 1), CLASSES, fc_units=(16, 8))
    head_rows = [row for row in _comparable_rows(small) if row[0] in ("flatten", "gap", "dense")]
    assert head_rows == [("flatten",), ("dense", 16, "relu"), ("dense", 8, "relu"), ("dense", CLASSES, "softmax")]
    assert small.name == name.replace("+", "_")


# --- inRAC Tables 1 and 7 -----------------------------------------------------
# (filters, blocks) per RA-Conv stage; every block is [3x3, f; 3x3, f].
RA_CONV_STAGES = {
    "Classifier-inRAC": [(64, 2), (128, 3), (256, 5), (512, 2)],
    "Classifier-outRAC": [(64, 2), (128, 3), (256, 5), (512, 2)],
    "Classifier-18": [(64, 2), (128, 2), (256, 2), (512, 2)],
    "Classifier-34": [(64, 3), (128, 4), (256, 6), (512, 3)],
}
# Stage output shapes on 1024x256: stem /4, then /2 per stage from the second on.
RA_CONV_STAGE_SHAPES = [(256, 64, 64), (128, 32, 128), (64, 16, 256), (32, 8, 512)]
CBAM_POSITION = {
    "Classifier-inRAC": "inside",
    "Classifier-outRAC": "outside",
    "Classifier-18": "inside",
    "Classifier-34": "inside",
}


@pytest.mark.parametrize("name", list(RA_CONV_STAGES))
def test_ra_conv_family_matches_paper_table(full_models, name):
    model = full_models[name]
    assert model.name == name
    rows = {info.name: info for info in layer_table(model)}
    # Stem (Table 1): Conv 7x7, 64, stride 2 / batch normalization / 3x3 max pooling, stride 2.
    stem = rows["conv1"]
    assert (stem.kernel_size, stem.width, stem.strides, stem.output_shape) == (7, 64, 2, (512, 128, 64))
    assert rows["conv1_bn"].kind == "bn"
    pool = rows["pool1"]
    assert (pool.kind, pool.kernel_size, pool.strides, pool.output_shape) == ("maxpool", 3, 2, (256, 64, 64))

    for stage, ((filters, blocks), stage_shape) in enumerate(zip(RA_CONV_STAGES[name], RA_CONV_STAGE_SHAPES), start=2):
        built_blocks = {n.split("_")[1] for n in rows if n.startswith(f"stage{stage}_block")}
        assert len(built_blocks) == blocks, f"stage {stage}"
        for block in range(1, blocks + 1):
            prefix = f"stage{stage}_block{block}"
            for conv in ("conv1", "conv2"):
                info = rows[f"{prefix}_{conv}"]
                expected_stride = 2 if (stage > 2 and block == 1 and conv == "conv1") else 1
                assert (info.kernel_size, info.width, info.strides, info.padding) == (3, filters, expected_stride, 1)
                assert info.output_shape == stage_shape
            assert rows[f"{prefix}_add"].output_shape == stage_shape
            cbam = model.get_layer(f"{prefix}_cbam")
            if CBAM_POSITION[name] == "inside":
                # On the residual branch, before the addition (Woo et al.'s ResNet+CBAM).
                assert cbam.input is model.get_layer(f"{prefix}_bn2").output
                assert cbam.output in model.get_layer(f"{prefix}_add").input
            else:
                assert cbam.input is model.get_layer(f"{prefix}_out").output
            assert tuple(cbam.output.shape[1:]) == stage_shape
    assert rows["avg_pool"].kind == "gap"
    assert (rows["predictions"].width, rows["predictions"].activation) == (CLASSES, "softmax")
    # The depth the papers name, counted in the built model: its weight layers on the main path (every
    # convolution and dense layer; the 1x1 projection shortcuts are not counted, as in He et al.).
    weight_layers = [info for info in layer_table(model) if info.kind in ("conv", "dense")
                     and not info.name.endswith("_shortcut_conv")]
    assert len(weight_layers) == PAPER_DEPTH[name]


#: Depths as the papers state them: inRAC section 2.3 "the proposed 26-layer CNN" (Classifier-inRAC and
#: its outRAC variant), and Table 7's ResNet-18 and ResNet-34 depths.
PAPER_DEPTH = {"Classifier-inRAC": 26, "Classifier-outRAC": 26, "Classifier-18": 18, "Classifier-34": 34}


def _ra_conv_params_by_hand(stages: list[tuple[int, int]], classes: int) -> int:
    """Parameters of an RA-Conv net on a 1-channel input, from the layer formulas (weights + biases;
    BatchNormalization keeps 4 values per channel: gamma, beta, moving mean and variance)."""

    def cbam(c: int) -> int:
        hidden = c // 16  # Woo et al.: shared MLP with reduction ratio 16, then a 7x7 conv over 2 maps
        return (c * hidden + hidden) + (hidden * c + c) + (7 * 7 * 2 * 1 + 1)

    total = 7 * 7 * 1 * 64 + 4 * 64  # conv1 (no bias, BN follows) + BN
    channels = 64
    for stage, (filters, blocks) in enumerate(stages):
        for block in range(blocks):
            downsample = stage > 0 and block == 0
            total += 3 * 3 * channels * filters + 4 * filters  # conv1 + bn1
            total += 3 * 3 * filters * filters + 4 * filters  # conv2 + bn2
            total += cbam(filters)
            if downsample or channels != filters:
                total += channels * filters + 4 * filters  # 1x1 projection shortcut + BN
            channels = filters
    return total + channels * classes + classes  # GAP, then the softmax layer


@pytest.mark.parametrize("name", list(RA_CONV_STAGES))
def test_ra_conv_parameter_count_matches_a_hand_count(full_models, name):
    assert full_models[name].count_params() == _ra_conv_params_by_hand(RA_CONV_STAGES[name], CLASSES)


# --- inRAC Table 9: VGG 11 (configuration A) and Inception-v1 -------------------
VGG11_TABLE = [
    ("conv", 3, 64, 1, 1, (1024, 256, 64), "relu"),
    ("maxpool", 2, 2, (512, 128, 64)),
    ("conv", 3, 128, 1, 1, (512, 128, 128), "relu"),
    ("maxpool", 2, 2, (256, 64, 128)),
    ("conv", 3, 256, 1, 1, (256, 64, 256), "relu"),
    ("conv", 3, 256, 1, 1, (256, 64, 256), "relu"),
    ("maxpool", 2, 2, (128, 32, 256)),
    ("conv", 3, 512, 1, 1, (128, 32, 512), "relu"),
    ("conv", 3, 512, 1, 1, (128, 32, 512), "relu"),
    ("maxpool", 2, 2, (64, 16, 512)),
    ("conv", 3, 512, 1, 1, (64, 16, 512), "relu"),
    ("conv", 3, 512, 1, 1, (64, 16, 512), "relu"),
    ("maxpool", 2, 2, (32, 8, 512)),
    ("gap",),
    ("dense", 4096, "relu"),
    ("dense", 4096, "relu"),
    ("dense", CLASSES, "softmax"),
]


def test_vgg11_matches_configuration_a(full_models):
    model = full_models["VGG11"]
    assert model.name == "VGG11"
    rows = _comparable_rows(model)
    assert rows == VGG11_TABLE
    assert sum(row[0] in ("conv", "dense") for row in rows) == 11  # "Number of weight layers: 11"


# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj, output shape) from Szegedy et al. Table 1.
INCEPTION_TABLE = {
    "inception3a": (64, 96, 128, 16, 32, 32, (128, 32, 256)),
    "inception3b": (128, 128, 192, 32, 96, 64, (128, 32, 480)),
    "inception4a": (192, 96, 208, 16, 48, 64, (64, 16, 512)),
    "inception4b": (160, 112, 224, 24, 64, 64, (64, 16, 512)),
    "inception4c": (128, 128, 256, 24, 64, 64, (64, 16, 512)),
    "inception4d": (112, 144, 288, 32, 64, 64, (64, 16, 528)),
    "inception4e": (256, 160, 320, 32, 128, 128, (64, 16, 832)),
    "inception5a": (256, 160, 320, 32, 128, 128, (32, 8, 832)),
    "inception5b": (384, 192, 384, 48, 128, 128, (32, 8, 1024)),
}


def test_inception_v1_matches_googlenet_table(full_models):
    model = full_models["Inception-v1"]
    assert model.name == "Inception-v1"
    rows = {info.name: info for info in layer_table(model)}
    stem = [
        (rows[n].kernel_size, rows[n].width, rows[n].strides, rows[n].output_shape)
        for n in ("conv1", "conv2_reduce", "conv2")
    ]
    assert stem == [(7, 64, 2, (512, 128, 64)), (1, 64, 1, (256, 64, 64)), (3, 192, 1, (256, 64, 192))]
    assert [n for n, info in rows.items() if info.kind == "concat"] == list(INCEPTION_TABLE)  # 9 Inception blocks
    for block, (n1, n3r, n3, n5r, n5, proj, shape) in INCEPTION_TABLE.items():
        branches = {suffix: (rows[f"{block}_{suffix}"].kernel_size, rows[f"{block}_{suffix}"].width)
                    for suffix in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")}
        assert branches == {
            "1x1": (1, n1), "3x3_reduce": (1, n3r), "3x3": (3, n3),
            "5x5_reduce": (1, n5r), "5x5": (5, n5), "pool_proj": (1, proj),
        }
        assert rows[block].output_shape == shape
    kernels = {info.kernel_size for info in rows.values() if info.kind == "conv" and info.name != "conv1"}
    assert kernels == {1, 3, 5}  # Table 9: "Filter 1x1, 3x3, 5x5"
    assert (rows["predictions"].width, rows["predictions"].activation) == (CLASSES, "softmax")
    assert len(model.outputs) == 1  # no auxiliary heads


# --- every registered model: forward pass on a tiny image ----------------------


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_pass_gives_probabilities(name):
    options = {"fc_units": (16, 8)} if name.endswith("-flatten") else {}
    model = build_model(name, (128, 64, 1), CLASSES, **options)
    images = np.random.default_rng(0).random((2, 128, 64, 1), dtype=np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (2, CLASSES)
    assert np.all(probabilities >= 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# --- parameter counts -----------------------------------------------------------


def test_parameter_counts_on_paper_input(full_models):
    listed = {entry["name"]: entry["params"] for entry in list_architectures(DEFAULT_INPUT_SHAPE, CLASSES)}
    assert list(listed) == list(ARCHITECTURES)
    for name in CANONICAL:
        assert listed[name] == full_models[name].count_params(), name

    # dSPIC-AM as written, counted by hand from Table 3 (weights + biases):
    trunk = (11 * 11 * 1 * 96 + 96  # conv1
             + (96 * 6 + 6) + (6 * 96 + 96) + (7 * 7 * 2 * 1 + 1)  # CBAM: shared MLP 96-6-96, 7x7 conv
             + 5 * 5 * 96 * 256 + 256 + 3 * 3 * 256 * 384 + 384 + 3 * 3 * 384 * 384 + 384 + 3 * 3 * 384 * 256 + 256)
    head = 71 * 23 * 256 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * CLASSES + CLASSES
    assert listed["dSPIC-AM-flatten"] == trunk + head == 1_732_851_725
    assert listed["dSPIC-AM-flatten"] == pytest.approx(1.73e9, rel=0.005)  # field guide: ~1.73 billion
    residual_module = 2 * (3 * 3 * 96 * 96 + 96)
    cbam = (96 * 6 + 6) + (6 * 96 + 96) + (7 * 7 * 2 + 1)
    assert listed["dSPIC-RM-flatten"] == listed["dSPIC-AM-flatten"] - cbam + residual_module
    assert listed["dSPIC-AM"] == pytest.approx(21.6e6, rel=0.005)  # field guide: GAP head ~21.6 M
    assert listed["Classifier-inRAC"] == pytest.approx(15.1e6, rel=0.005)  # field guide: ~15.1 M
    assert listed["Classifier-outRAC"] == listed["Classifier-inRAC"]  # same layers, CBAM moved


@pytest.mark.parametrize("name", ["dSPIC-AM-flatten", "dSPIC-RM-flatten", "SI_CLF+AM+RM", "AlexNet", "VGG11"])
def test_flatten_count_without_weights_matches_keras(name):
    """The analytic flatten-head count equals model.count_params() where the model is small enough to build."""
    options = {"head": "flatten", "fc_units": (64, 32)}
    built = build_model(name, (96, 64, 1), CLASSES, **options)
    assert any(info.kind == "flatten" for info in layer_table(built))
    assert count_params(name, (96, 64, 1), CLASSES, **options) == built.count_params()


def test_last_feature_layer_is_what_the_head_pools(full_models):
    expected = {
        "dSPIC-AM": ("conv5", (71, 23, 256)),
        "SI_CLF+AM": ("pool3", (33, 9, 256)),
        "AlexNet": ("conv4", (71, 23, 384)),
        "Classifier-inRAC": ("stage5_block2_out", (32, 8, 512)),
        "Classifier-outRAC": ("stage5_block2_cbam", (32, 8, 512)),
        "VGG11": ("block5_pool", (32, 8, 512)),
        "Inception-v1": ("inception5b", (32, 8, 1024)),
    }
    for name, (layer_name, shape) in expected.items():
        layer = last_feature_layer(full_models[name])
        assert (layer.name, tuple(layer.output.shape[1:])) == (layer_name, shape), name
    trunk = build_model("dSPIC-RM", (128, 64, 1), CLASSES, include_top=False)
    assert last_feature_layer(trunk).name == "conv5"


@pytest.mark.parametrize(("head", "pooled"), [("gap", 256), ("gmp", 256), ("gap_gmp", 512)])
def test_pooling_heads_pool_the_last_map_by_mean_max_or_both(head, pooled):
    import keras

    model = build_model("dSPIC-AM", (128, 64, 1), CLASSES, head=head, fc_units=(8,))
    assert last_feature_layer(model).name == "conv5"
    assert model.get_layer("fc1").input.shape[-1] == pooled
    # what fc1 reads is the mean, the maximum, or both, of conv5 over its cells
    probe = keras.Model(model.inputs, model.get_layer("fc1").input)
    conv5 = keras.Model(model.inputs, model.get_layer("conv5").output)
    x = np.random.default_rng(0).random((1, 128, 64, 1), dtype=np.float32)
    fmap = np.asarray(conv5(x))[0]
    features = np.asarray(probe(x))[0]
    by_kind = {"gap": fmap.mean(axis=(0, 1)), "gmp": fmap.max(axis=(0, 1))}
    expected = np.concatenate([by_kind["gap"], by_kind["gmp"]]) if head == "gap_gmp" else by_kind[head]
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
