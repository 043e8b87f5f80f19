"""Tests of spectnode.imaging.preprocess: normalisation, resampling, inRAC
aggregation, augmentation and the network input."""

from __future__ import annotations

import numpy as np
import pytest

from spectnode.imaging.preprocess import (
    NETWORK_INPUT_SHAPE,
    AugmentationParams,
    BodyBounds,
    aggregate_views,
    align_to_bounds,
    apply_augmentation,
    augment,
    bone_window_normalize,
    find_body_bounds,
    minmax_normalize,
    normalize,
    prepare_aggregate,
    prepare_view,
    resample_to,
    sample_augmentation,
)

ROWS, COLS = 1024, 256


def body_image(
    rows: int = ROWS,
    cols: int = COLS,
    *,
    shift_rows: float = 0.0,
    shift_cols: float = 0.0,
    scale_rows: float = 1.0,
    scale_cols: float = 1.0,
) -> np.ndarray:
    """A noise-free, asymmetric body as seen from the front, head at row 0.

    Head, trunk, two legs, a spine, and a hot spot on the patient's right
    (image left). The body can be moved and stretched about the image centre,
    analytically, to make a misaligned second view.
    """
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = rows / 2, cols / 2
    y = (y - shift_rows - cy) / scale_rows + cy
    x = (x - shift_cols - cx) / scale_cols + cx
    v, u = y / rows, x / cols

    def ellipse(centre_v: float, centre_u: float, radius_v: float, radius_u: float) -> np.ndarray:
        return ((v - centre_v) / radius_v) ** 2 + ((u - centre_u) / radius_u) ** 2 <= 1

    image = np.zeros((rows, cols))
    image[ellipse(0.08, 0.5, 0.055, 0.11)] = 60
    image[ellipse(0.36, 0.5, 0.24, 0.27)] = 30
    image[ellipse(0.74, 0.41, 0.22, 0.07)] = 25
    image[ellipse(0.74, 0.59, 0.22, 0.07)] = 25
    image[(np.abs(u - 0.5) < 0.02) & (v > 0.15) & (v < 0.55)] = 90
    image[ellipse(0.30, 0.36, 0.015, 0.04)] = 220
    return image


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    """Poisson counts, with a faint background (0.2 counts/pixel) off the body."""
    rng = np.random.default_rng(seed)
    return rng.poisson(image + 0.2).astype(np.float32)


def best_shift(moving: np.ndarray, reference: np.ndarray, search: int = 6) -> tuple[int, int]:
    """Integer (rows, cols) shift of ``moving`` that best matches ``reference``."""
    best, best_error = (0, 0), np.inf
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            error = float(np.abs(np.roll(moving, (dy, dx), axis=(0, 1)) - reference).mean())
            if error < best_error:
                best, best_error = (dy, dx), error
    return best


# ------------------------------------------------------------------- min-max


def test_minmax_normalize_is_dspic_eq1() -> None:
    image = np.array([[10, 20], [30, 50]], dtype=np.uint16)
    out = minmax_normalize(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(minmax_normalize(np.full((3, 3), 7)), np.zeros((3, 3)))


def phantom_counts(bladder: float, rng_seed: int = 0) -> np.ndarray:
    """Background, a body of soft tissue and bone, a lesion at 4x bone, and a bladder."""
    rng = np.random.default_rng(rng_seed)
    image = rng.poisson(1.0, (200, 60)).astype(np.float32)
    image[10:190, 15:45] = 20.0   # soft tissue
    image[10:190, 25:35] = 50.0   # spine: bone
    image[80:84, 28:32] = 200.0   # lesion, 4x bone
    image[150:160, 20:40] = bladder
    return image


def test_bone_window_puts_bone_at_the_same_level_whatever_the_bladder() -> None:
    for bladder in (300.0, 3000.0, 30000.0):
        out = bone_window_normalize(phantom_counts(bladder))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        # The 90th body percentile is bone (50): bone -> 1/5, the lesion -> 4/5, the bladder saturates.
        assert out[100, 30] == pytest.approx(0.2)
        assert out[82, 30] == pytest.approx(0.8)
        assert out[155, 30] == 1.0
    # Min-max, by contrast, dims the bone as the bladder gets hotter.
    assert minmax_normalize(phantom_counts(30000.0))[100, 30] < 0.01


def test_bone_window_of_empty_or_negative_images() -> None:
    np.testing.assert_array_equal(bone_window_normalize(np.zeros((8, 8))), np.zeros((8, 8)))
    assert bone_window_normalize(np.zeros((0, 4))).shape == (0, 4)
    out = bone_window_normalize(phantom_counts(300.0) - 5.0)
    assert out.min() == 0.0


def test_normalize_by_name() -> None:
    image = phantom_counts(3000.0)
    np.testing.assert_array_equal(normalize(image, "minmax"), minmax_normalize(image))
    np.testing.assert_array_equal(normalize(image, "bone_window"), bone_window_normalize(image))
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(image, "zscore")


# ---------------------------------------------------------------- resampling


def test_resample_512_matrix_averages_2x2_blocks() -> None:
    rng = np.random.default_rng(0)
    image = rng.poisson(20, size=(2048, 512)).astype(np.uint16)
    out = resample_to(image)
    assert out.shape == NETWORK_INPUT_SHAPE and out.dtype == np.float32
    blocks = image.reshape(1024, 2, 256, 2).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, rtol=1e-5)


def test_resample_non_integer_factor_preserves_mean_and_same_shape_is_a_copy() -> None:
    rng = np.random.default_rng(1)
    image = rng.poisson(30, size=(1536, 384)).astype(np.float32)
    out = resample_to(image)
    assert out.shape == (1024, 256)
    assert out.mean() == pytest.approx(image.mean(), rel=1e-4)
    same = resample_to(out)
    np.testing.assert_array_equal(same, out)
    assert same is not out


def test_resample_upsampling_is_linear() -> None:
    image = np.tile(np.arange(128, dtype=np.float32), (512, 1))  # a ramp across columns
    out = resample_to(image)
    assert out.shape == (1024, 256)
    np.testing.assert_allclose(out[0, 1:-1], (np.arange(1, 255) + 0.5) / 2 - 0.5, atol=1e-4)
    np.testing.assert_allclose(out[:, 40], out[0, 40])


def test_resample_keep_aspect_pads_centred() -> None:
    image = np.ones((1024, 512), dtype=np.float32)
    out = resample_to(image, (1024, 256), keep_aspect=True)
    rows_with_data = np.flatnonzero(out.sum(axis=1))
    assert (rows_with_data[0], rows_with_data[-1]) == (256, 767)
    np.testing.assert_allclose(out[256:768], 1.0)


# ------------------------------------------------------------------- bounds


def test_find_body_bounds_ignores_noise_and_isolated_hot_pixels() -> None:
    image = np.zeros((ROWS, COLS), dtype=np.float32)
    image[100:900, 60:200] = 50
    image = noisy(image, seed=2)
    image[5, 5] = image[1020, 250] = 5000  # contamination specks outside the body
    bounds = find_body_bounds(image)
    assert tuple(bounds) == (100, 899, 60, 199)
    assert (bounds.height, bounds.width) == (800, 140)


def test_find_body_bounds_of_body_phantom() -> None:
    bounds = find_body_bounds(noisy(body_image(), seed=3))
    truth = find_body_bounds(body_image())
    assert all(abs(a - b) <= 1 for a, b in zip(bounds, truth))
    assert truth.top == pytest.approx(0.025 * ROWS, abs=2)
    assert truth.bottom == pytest.approx(0.96 * ROWS, abs=2)


def test_find_body_bounds_rejects_empty_image() -> None:
    with pytest.raises(ValueError):
        find_body_bounds(np.zeros((64, 32)))


# -------------------------------------------------------------- aggregation


@pytest.mark.parametrize(
    ("shift_rows", "shift_cols", "scale_rows"),
    [(9, -5, 1.0), (-14, 7, 1.0), (4, 3, 1.04)],
)
def test_aggregate_views_realigns_shifted_flipped_posterior(shift_rows, shift_cols, scale_rows) -> None:
    anterior = noisy(body_image(), seed=4)
    # The posterior as a camera stores it: the same body, seen from behind
    # (flipped), displaced (and stretched) on the table, with other counts.
    displaced = 0.8 * body_image(shift_rows=shift_rows, shift_cols=shift_cols, scale_rows=scale_rows)
    posterior = noisy(displaced, seed=5)[:, ::-1]

    fused = aggregate_views(anterior, posterior)
    assert fused.shape == anterior.shape and fused.dtype == np.float32
    aligned = fused - anterior
    # Alignment error: the residual shift between the realigned posterior and
    # the anterior body, and the disagreement of their four critical points.
    assert all(abs(s) <= 1 for s in best_shift(aligned, 0.8 * body_image()))
    assert all(abs(a - b) <= 2 for a, b in zip(find_body_bounds(aligned), find_body_bounds(anterior)))
    # The fused hot spot (on the patient's right) sits where the anterior's is.
    spot_rows, spot_cols = np.nonzero(fused > 0.75 * fused.max())
    assert abs(spot_rows.mean() - 0.30 * ROWS) <= 2 and abs(spot_cols.mean() - 0.36 * COLS) <= 2


def test_aggregate_without_flip_would_misplace_the_asymmetric_spot() -> None:
    anterior = body_image()
    posterior = body_image()[:, ::-1]
    fused = aggregate_views(anterior, posterior)
    np.testing.assert_allclose(fused, 2 * anterior, atol=1e-4)


def test_align_to_bounds_translation_only() -> None:
    image = np.zeros((50, 40), dtype=np.float32)
    image[10:20, 5:15] = 1
    moved = align_to_bounds(image, BodyBounds(10, 19, 5, 14), BodyBounds(13, 22, 20, 29), (50, 40), scale=False)
    np.testing.assert_array_equal(moved, np.roll(image, (3, 15), axis=(0, 1)))


# ------------------------------------------------------------- augmentation


def test_augment_is_deterministic_for_a_seed() -> None:
    image = body_image(512, 128)
    first = augment(image, np.random.default_rng(7), translate_px=4, rotate_deg=5)
    again = augment(image, np.random.default_rng(7), translate_px=4, rotate_deg=5)
    other = augment(image, np.random.default_rng(8), translate_px=4, rotate_deg=5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == image.shape and first.dtype == np.float32


def test_sample_augmentation_respects_bounds() -> None:
    rng = np.random.default_rng(9)
    draws = [sample_augmentation(rng, translate_px=3, rotate_deg=2.5) for _ in range(400)]
    assert {d.shift_rows for d in draws} == set(range(-3, 4))
    assert {d.shift_cols for d in draws} == set(range(-3, 4))
    assert all(-2.5 <= d.angle_deg <= 2.5 for d in draws)
    assert 0.4 < np.mean([d.mirror for d in draws]) < 0.6
    still = [sample_augmentation(rng, translate_px=0, rotate_deg=0, mirror=False) for _ in range(20)]
    assert set(still) == {AugmentationParams()}


def test_translation_is_exact_and_mirror_flips() -> None:
    image = body_image(512, 128)
    moved = apply_augmentation(image, AugmentationParams(shift_rows=-3, shift_cols=2))
    expected = np.zeros_like(image)
    expected[:-3, 2:] = image[3:, :-2]
    np.testing.assert_array_equal(moved, expected.astype(np.float32))
    np.testing.assert_array_equal(apply_augmentation(image, AugmentationParams(mirror=True)), image[:, ::-1])


def test_rotation_direction_and_value_range() -> None:
    image = np.zeros((9, 9), dtype=np.float32)
    image[4, 8] = 1  # right of centre
    rotated = apply_augmentation(image, AugmentationParams(angle_deg=90))
    assert tuple(np.argwhere(rotated > 0.5)[0]) == (0, 4)  # counter-clockwise: now above centre
    body = body_image(512, 128)
    for _ in range(5):
        out = augment(body, np.random.default_rng(_), translate_px=5, rotate_deg=10)
        assert out.min() >= 0 and out.max() <= body.max() + 1e-3


def test_augmented_body_moves_within_the_limits() -> None:
    body = body_image(512, 128)
    rows, cols = np.mgrid[0:512, 0:128]

    def centroid_and_angle(image: np.ndarray) -> tuple[float, float, float]:
        weight = image / image.sum()
        cy, cx = (weight * rows).sum(), (weight * cols).sum()
        cov_yy = (weight * (rows - cy) ** 2).sum()
        cov_xx = (weight * (cols - cx) ** 2).sum()
        cov_xy = (weight * (rows - cy) * (cols - cx)).sum()
        angle = 0.5 * np.degrees(np.arctan2(2 * cov_xy, cov_yy - cov_xx))  # long axis vs vertical
        return cy, cx, angle

    y0, x0, a0 = centroid_and_angle(body)
    centre_y, centre_x = (512 - 1) / 2, (128 - 1) / 2
    rng = np.random.default_rng(11)
    for _ in range(6):
        params = sample_augmentation(rng, translate_px=4, rotate_deg=6, mirror=False)
        y, x, a = centroid_and_angle(apply_augmentation(body, params))
        # The centroid turns about the image centre (counter-clockwise as
        # displayed for a positive angle), then moves by the shift.
        theta = np.radians(params.angle_deg)
        dy, dx = y0 - centre_y, x0 - centre_x
        expected_y = centre_y + np.cos(theta) * dy - np.sin(theta) * dx + params.shift_rows
        expected_x = centre_x + np.sin(theta) * dy + np.cos(theta) * dx + params.shift_cols
        assert abs(y - expected_y) <= 0.5 and abs(x - expected_x) <= 0.5
        assert abs(abs(a - a0) - abs(params.angle_deg)) <= 0.5
        assert abs(params.shift_rows) <= 4 and abs(params.shift_cols) <= 4 and abs(params.angle_deg) <= 6


# ------------------------------------------------------------ network input


def test_prepare_view_and_aggregate_give_network_input() -> None:
    view = noisy(body_image(2048, 512), seed=12)
    prepared = prepare_view(view)
    assert prepared.shape == (1024, 256, 1) and prepared.dtype == np.float32
    assert prepared.min() == 0.0 and prepared.max() == 1.0
    fused = prepare_aggregate(view, view[:, ::-1])
    assert fused.shape == (1024, 256, 1) and fused.dtype == np.float32
    assert fused.min() == 0.0 and fused.max() == 1.0
