"""Preprocessing of whole-body views as the two papers describe it.

* :func:`minmax_normalize`: dSPIC Eq. 1, ``x_N = (x - x_min) / (x_max - x_min)``.
* :func:`bone_window_normalize`: a reading window referenced to the body's
  bone uptake instead of the hottest pixel (see its docstring for why).
* :func:`resample_to`: bring any matrix (e.g. 512x2048) to the networks'
  256 columns x 1024 rows.
* :func:`find_body_bounds` and :func:`aggregate_views`: Classifier-inRAC's view
  aggregation: flip the posterior horizontally, find the body's top, bottom,
  left and right "critical points" by sweeping a horizontal and a vertical
  line, align the two views by those points, add them pixel-wise.
* :func:`augment`: both papers' parametric augmentation: mirroring,
  translation by up to +/- t pixels and rotation by up to +/- r degrees.
* :func:`prepare_view` / :func:`prepare_aggregate`: the network input,
  float32 (1024, 256, 1) in [0, 1].

Arrays are (rows, cols), head at row 0 (see :mod:`spectnode.imaging.views`).
Everything is plain NumPy (no SciPy), so it runs wherever the node runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "NETWORK_INPUT_SHAPE",
    "BodyBounds",
    "AugmentationParams",
    "NORMALIZATIONS",
    "minmax_normalize",
    "bone_window_normalize",
    "normalize",
    "resample_to",
    "find_body_bounds",
    "align_to_bounds",
    "aggregate_views",
    "sample_augmentation",
    "apply_augmentation",
    "augment",
    "prepare_view",
    "prepare_aggregate",
]

#: (rows, cols) the papers feed to their networks: 256 wide, 1024 tall.
NETWORK_INPUT_SHAPE: Final = (1024, 256)


def minmax_normalize(image: np.ndarray) -> np.ndarray:
    """Min-max normalise an image to [0, 1] (dSPIC Eq. 1).

    Args:
        image: Array of any shape and real dtype.

    Returns:
        float32 array of the same shape, ``(x - min) / (max - min)``. A
        constant image (max == min) has no range to scale and gives all zeros.
    """
    values = np.asarray(image, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return ((values - low) / (high - low)).astype(np.float32)


#: Body pixels: above this share of the image's 98th percentile.  In a
#: whole-body scan the body covers 30-50 % of the frame, so that percentile
#: lies in the body, and one tenth of it separates the body from background.
_BODY_THRESHOLD: Final = 0.1
#: The bone reference: this percentile of the body pixels.  About 90 % of a
#: bone scan's body pixels are soft tissue and ordinary bone, so it sits at
#: bright normal bone and is moved neither by the bladder nor by a few lesions.
_BONE_REFERENCE_PERCENTILE: Final = 90.0
#: The window's top, in multiples of the bone reference.  Hotter pixels (the
#: bladder, the injection site, intense lesions) saturate at 1.
_BONE_WINDOW_TOP: Final = 5.0


def bone_window_normalize(image: np.ndarray) -> np.ndarray:
    """Scale an image to a bone window: 0 to 5 times the body's bone reference, clipped.

    Min-max normalisation (dSPIC Eq. 1) divides by the hottest pixel, which in
    a bone scan is usually the bladder or the injection site at 5 to 60 times
    bone uptake.  Bone then lands anywhere between about 0.02 and 0.2, and a
    network must find the same lesion at every one of those scales.  A
    physician reads the scan with a window set to the skeleton and lets the
    bladder saturate; this does the same, reproducibly: the reference is the
    90th percentile of the body's pixels, and the window runs from 0 to five
    times that.  Ordinary bone lands near 0.2 in every scan, and a lesion at
    several times its bone's uptake stands out at the same level in every scan.

    Args:
        image: Array of counts (any real dtype); negative values count as 0.

    Returns:
        float32 array of the same shape in [0, 1].  An image with no counts
        gives all zeros.
    """
    values = np.maximum(np.asarray(image, dtype=np.float32), 0.0)
    if not values.size:
        return values
    body = values > _BODY_THRESHOLD * float(np.percentile(values, 98.0))
    if not body.any():
        return np.zeros_like(values)
    reference = float(np.percentile(values[body], _BONE_REFERENCE_PERCENTILE))
    if reference <= 0.0:
        return np.zeros_like(values)
    return np.clip(values / (_BONE_WINDOW_TOP * reference), 0.0, 1.0).astype(np.float32)


#: Normalisations by the name a model card gives them.
NORMALIZATIONS: Final = {"minmax": minmax_normalize, "bone_window": bone_window_normalize}


def normalize(image: np.ndarray, normalization: str = "minmax") -> np.ndarray:
    """Apply the normalisation named ``normalization`` (a key of :data:`NORMALIZATIONS`)."""
    try:
        function = NORMALIZATIONS[normalization]
    except KeyError:
        raise ValueError(f"unknown normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}") from None
    return function(image)


def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix resampling one axis; rows sum to 1.

    Downsampling (n_out < n_in) averages each output pixel's footprint,
    weighting input pixels by their overlap (area averaging), so counts are
    neither dropped nor aliased. Upsampling interpolates linearly between
    pixel centres (edges clamped).
    """
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if n_out < n_in:
        edges = np.arange(n_out + 1) * scale
        for i in range(n_out):
            start, stop = edges[i], edges[i + 1]
            first, last = int(np.floor(start)), min(int(np.ceil(stop)), n_in)
            for j in range(first, last):
                weights[i, j] = min(stop, j + 1) - max(start, j)
    else:
        centres = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        lower = np.floor(centres).astype(int)
        upper = np.minimum(lower + 1, n_in - 1)
        fraction = centres - lower
        weights[np.arange(n_out), lower] += 1 - fraction
        weights[np.arange(n_out), upper] += fraction
    return weights / weights.sum(axis=1, keepdims=True)


def resample_to(
    image: np.ndarray,
    shape: tuple[int, int] = NETWORK_INPUT_SHAPE,
    *,
    keep_aspect: bool = False,
) -> np.ndarray:
    """Resample a 2-D image to ``shape`` (rows, cols).

    Each axis is resampled separately: area averaging when shrinking (a
    512x2048 scan becomes the mean of 2x2 blocks), linear interpolation when
    enlarging. An image already of ``shape`` is returned as a float32 copy.

    Args:
        image: 2-D array (rows, cols).
        shape: Target (rows, cols); default (1024, 256).
        keep_aspect: If False (default, as the papers), each axis is scaled
            to fit, stretching if the aspect ratios differ. If True, both axes
            are scaled by the same factor so the whole image fits, and the
            rest is zero-padded, image centred.

    Returns:
        float32 array of ``shape``.
    """
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {values.shape}")
    rows, cols = shape
    if values.shape == (rows, cols):
        return values.astype(np.float32)
    if not keep_aspect:
        out_rows, out_cols = rows, cols
    else:
        factor = min(rows / values.shape[0], cols / values.shape[1])
        out_rows = max(1, min(rows, round(values.shape[0] * factor)))
        out_cols = max(1, min(cols, round(values.shape[1] * factor)))
    resampled = (
        _axis_weights(values.shape[0], out_rows)
        @ values
        @ _axis_weights(values.shape[1], out_cols).T
    )
    if (out_rows, out_cols) == (rows, cols):
        return resampled.astype(np.float32)
    padded = np.zeros((rows, cols), dtype=np.float32)
    top, left = (rows - out_rows) // 2, (cols - out_cols) // 2
    padded[top : top + out_rows, left : left + out_cols] = resampled
    return padded


@dataclass(frozen=True)
class BodyBounds:
    """The four critical points of inRAC as inclusive pixel indices.

    ``top`` / ``bottom`` are the first / last rows, ``left`` / ``right`` the
    first / last columns that contain body. Unpacks as a tuple
    ``(top, bottom, left, right)``.
    """

    top: int
    bottom: int
    left: int
    right: int

    def __iter__(self) -> Iterator[int]:
        return iter((self.top, self.bottom, self.left, self.right))

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1


def _median3(values: np.ndarray) -> np.ndarray:
    """3x3 median (edge-padded).

    It removes isolated noise counts, and unlike a mean it does not widen the
    body: a pixel just outside a straight edge has only 3 of 9 neighbours
    inside, so its median stays background.
    """
    padded = np.pad(values, 1, mode="edge")
    rows, cols = values.shape
    stack = np.stack([padded[dy : dy + rows, dx : dx + cols] for dy in range(3) for dx in range(3)])
    return np.median(stack, axis=0)


def find_body_bounds(
    image: np.ndarray,
    *,
    threshold_fraction: float = 0.05,
    min_pixels: int = 2,
) -> BodyBounds:
    """Find the body's top, bottom, left and right edges by line sweeps (inRAC).

    A horizontal line sweeps down from the top and up from the bottom; the
    first line on which the uptake exceeds a threshold gives P_Ceil (top) and
    P_Floor (bottom). A vertical line sweeps in from the left and from the
    right for P_Left and P_Right. So that a noisy count cannot stop a sweep,
    the image is first 3x3-median filtered, and a line counts as body only
    when at least ``min_pixels`` of its pixels exceed the threshold.

    Args:
        image: 2-D array (rows, cols) of counts or normalised values.
        threshold_fraction: Threshold above the image minimum, as a fraction
            of the filtered image's 99.5th percentile (a robust maximum that a few hot pixels cannot
            raise). Body soft tissue in a bone scan lies well above 5 % of it.
        min_pixels: Pixels above threshold a line needs to count as body.

    Returns:
        :class:`BodyBounds` ``(top, bottom, left, right)``, inclusive.

    Raises:
        ValueError: If no line reaches the threshold (empty image).
    """
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {values.shape}")
    smoothed = _median3(values - values.min())
    reference = float(np.percentile(smoothed, 99.5))
    if reference <= 0:
        reference = float(smoothed.max())
    if reference <= 0:
        raise ValueError("image is constant: no body to find")
    above = smoothed > threshold_fraction * reference
    body_rows = np.flatnonzero(above.sum(axis=1) >= min_pixels)
    body_cols = np.flatnonzero(above.sum(axis=0) >= min_pixels)
    if body_rows.size == 0 or body_cols.size == 0:
        raise ValueError("no line of the image reaches the body threshold")
    # The first / last hits of the sweeps in each direction.
    return BodyBounds(
        top=int(body_rows[0]),
        bottom=int(body_rows[-1]),
        left=int(body_cols[0]),
        right=int(body_cols[-1]),
    )


def _linear_sample_matrix(n_out: int, n_in: int, positions: np.ndarray) -> np.ndarray:
    """(n_out, n_in) matrix sampling an axis at fractional ``positions``; 0 outside."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    lower = np.floor(positions).astype(int)
    fraction = positions - lower
    for offset, weight in ((0, 1 - fraction), (1, fraction)):
        index = lower + offset
        inside = (index >= 0) & (index < n_in)
        weights[np.arange(n_out)[inside], index[inside]] += weight[inside]
    return weights


def align_to_bounds(
    image: np.ndarray,
    source: BodyBounds,
    target: BodyBounds,
    shape: tuple[int, int],
    *,
    scale: bool = True,
) -> np.ndarray:
    """Move (and optionally scale) ``image`` so that ``source`` lands on ``target``.

    Each axis is mapped separately: the row range ``[source.top,
    source.bottom]`` goes to ``[target.top, target.bottom]`` and likewise for
    columns, by a translation plus (with ``scale``) a stretch. Pixel values are
    sampled with linear interpolation; pixels mapped from outside ``image``
    are 0.

    Args:
        image: 2-D array to move.
        source: Bounds of the body in ``image``.
        target: Where the body should be.
        shape: (rows, cols) of the output.
        scale: If False, only translate, matching the bounds' centres.

    Returns:
        float32 array of ``shape``.
    """
    values = np.asarray(image, dtype=np.float64)
    sampling = []
    for n_out, n_in, (s0, s1), (t0, t1) in (
        (shape[0], values.shape[0], (source.top, source.bottom), (target.top, target.bottom)),
        (shape[1], values.shape[1], (source.left, source.right), (target.left, target.right)),
    ):
        factor = (s1 - s0) / (t1 - t0) if scale and t1 != t0 else 1.0
        out_positions = np.arange(n_out, dtype=np.float64)
        if scale:
            positions = s0 + (out_positions - t0) * factor
        else:
            positions = out_positions + ((s0 + s1) - (t0 + t1)) / 2.0
        sampling.append(_linear_sample_matrix(n_out, n_in, positions))
    return (sampling[0] @ values @ sampling[1].T).astype(np.float32)


def aggregate_views(
    anterior: np.ndarray,
    posterior: np.ndarray,
    *,
    scale: bool = True,
    threshold_fraction: float = 0.05,
) -> np.ndarray:
    """Fuse the two views pixel-wise (Classifier-inRAC view aggregation).

    1. Flip the posterior horizontally about its central vertical line, so the
       patient's right is on the image's left in both views.
    2. Find the four critical points (top, bottom, left, right) of each view
       with :func:`find_body_bounds`.
    3. Align the flipped posterior to the anterior: per axis, translate (and
       with ``scale``, stretch) so its bounds coincide with the anterior's
       (:func:`align_to_bounds`, linear interpolation). The anterior is the
       reference and is not resampled.
    4. Add the two pixel-wise.

    Args:
        anterior: 2-D anterior view (head up, facing the patient).
        posterior: 2-D posterior view as stored (head up, seen from behind).
            It may differ in shape from the anterior.
        scale: Allow stretching as well as translation when aligning.
        threshold_fraction: Passed to :func:`find_body_bounds`.

    Returns:
        float32 array of the anterior's shape: ``anterior + aligned
        posterior``, not normalised (use :func:`minmax_normalize`).
    """
    anterior = np.asarray(anterior, dtype=np.float32)
    flipped = np.asarray(posterior, dtype=np.float32)[:, ::-1]
    anterior_bounds = find_body_bounds(anterior, threshold_fraction=threshold_fraction)
    posterior_bounds = find_body_bounds(flipped, threshold_fraction=threshold_fraction)
    aligned = align_to_bounds(flipped, posterior_bounds, anterior_bounds, anterior.shape, scale=scale)
    return anterior + aligned


@dataclass(frozen=True)
class AugmentationParams:
    """One draw of the parametric augmentation.

    Attributes:
        mirror: Flip left-right (dSPIC Eq. 2) before moving.
        shift_rows: Translation down (+) or up (-) in pixels.
        shift_cols: Translation right (+) or left (-) in pixels.
        angle_deg: Rotation about the image centre, counter-clockwise as
            displayed (positive) or clockwise (negative).
    """

    mirror: bool = False
    shift_rows: int = 0
    shift_cols: int = 0
    angle_deg: float = 0.0


def sample_augmentation(
    rng: np.random.Generator,
    *,
    translate_px: int = 3,
    rotate_deg: float = 3.0,
    mirror: bool = True,
) -> AugmentationParams:
    """Draw augmentation parameters.

    Args:
        rng: Source of randomness (``np.random.default_rng(seed)``).
        translate_px: t: each axis is shifted by an integer drawn uniformly
            from [-t, t].
        rotate_deg: r: the angle is drawn uniformly from [-r, r].
        mirror: If True, mirror with probability 1/2.

    Returns:
        The drawn :class:`AugmentationParams`.
    """
    if translate_px < 0 or rotate_deg < 0:
        raise ValueError("translate_px and rotate_deg must be >= 0")
    do_mirror = bool(mirror and rng.random() < 0.5)
    shift_rows, shift_cols = (int(v) for v in rng.integers(-translate_px, translate_px + 1, size=2))
    angle = float(rng.uniform(-rotate_deg, rotate_deg)) if rotate_deg > 0 else 0.0
    return AugmentationParams(do_mirror, shift_rows, shift_cols, angle)


def apply_augmentation(image: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """Mirror, rotate about the centre, then translate; bilinear, zero fill.

    Args:
        image: 2-D array (rows, cols).
        params: What to do.

    Returns:
        float32 array of the same shape. With no rotation and integer shifts
        the result is an exact shift (no interpolation blur).
    """
    values = np.asarray(image, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {values.shape}")
    if params.mirror:
        values = values[:, ::-1]
    rows, cols = values.shape
    centre_r, centre_c = (rows - 1) / 2.0, (cols - 1) / 2.0
    out_r, out_c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    # Inverse mapping: for each output pixel, where it comes from.
    r = out_r - params.shift_rows - centre_r
    c = out_c - params.shift_cols - centre_c
    theta = np.deg2rad(params.angle_deg)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    # With rows growing downwards, a counter-clockwise (as displayed) rotation
    # maps (r, c) -> (cos*r - sin*c, sin*r + cos*c); sample through its inverse.
    src_r = cos_t * r + sin_t * c + centre_r
    src_c = -sin_t * r + cos_t * c + centre_c
    return _bilinear(values, src_r, src_c)


def _bilinear(values: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    rows, cols = values.shape
    r0, c0 = np.floor(src_r).astype(np.int64), np.floor(src_c).astype(np.int64)
    fr, fc = (src_r - r0).astype(np.float32), (src_c - c0).astype(np.float32)
    result = np.zeros(src_r.shape, dtype=np.float32)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
            weight = wr * wc * inside
            result += weight * values[np.clip(rr, 0, rows - 1), np.clip(cc, 0, cols - 1)]
    return result


def augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    translate_px: int = 3,
    rotate_deg: float = 3.0,
    mirror: bool = True,
) -> np.ndarray:
    """Randomly mirror, translate and rotate an image (dSPIC / inRAC augmentation).

    Draws parameters with :func:`sample_augmentation` and applies them with
    :func:`apply_augmentation`. The same generator state gives the same output.

    Args:
        image: 2-D array (rows, cols).
        rng: ``np.random.Generator``.
        translate_px: Maximum shift t in pixels per axis (the inRAC paper
            illustrates t = 3).
        rotate_deg: Maximum rotation r in degrees (the inRAC paper
            illustrates r = 3).
        mirror: Allow left-right mirroring (probability 1/2).

    Returns:
        float32 array of the same shape.
    """
    params = sample_augmentation(rng, translate_px=translate_px, rotate_deg=rotate_deg, mirror=mirror)
    return apply_augmentation(image, params)


def prepare_view(
    pixels: np.ndarray,
    shape: tuple[int, int] = NETWORK_INPUT_SHAPE,
    *,
    keep_aspect: bool = False,
    normalization: str = "minmax",
) -> np.ndarray:
    """Network input from one view: resample, normalise, add a channel.

    Args:
        pixels: 2-D view (e.g. ``ViewImage.pixels``).
        shape: (rows, cols) of the network input.
        keep_aspect: See :func:`resample_to`.
        normalization: A key of :data:`NORMALIZATIONS` (the papers' ``"minmax"`` by default).

    Returns:
        float32 array (rows, cols, 1) in [0, 1]; (1024, 256, 1) by default.
    """
    resampled = resample_to(pixels, shape, keep_aspect=keep_aspect)
    return normalize(resampled, normalization)[..., np.newaxis]


def prepare_aggregate(
    anterior: np.ndarray,
    posterior: np.ndarray,
    shape: tuple[int, int] = NETWORK_INPUT_SHAPE,
    *,
    keep_aspect: bool = False,
    normalization: str = "minmax",
) -> np.ndarray:
    """Network input from both views (Classifier-inRAC): resample, aggregate, normalise.

    ``normalization`` is as for :func:`prepare_view`.

    Returns:
        float32 array (rows, cols, 1) in [0, 1].
    """
    fused = aggregate_views(
        resample_to(anterior, shape, keep_aspect=keep_aspect),
        resample_to(posterior, shape, keep_aspect=keep_aspect),
    )
    return normalize(fused, normalization)[..., np.newaxis]
