"""Synthetic whole-body bone scans (99mTc-MDP, anterior + posterior) for training and tests.

Orientation (fixed):

* Head at the top: row 0 is cranial.
* ANTERIOR view: the patient as seen from the front, so the patient's RIGHT is on the image
  LEFT.
* POSTERIOR view: the patient as seen from behind, so the patient's LEFT is on the image
  LEFT.  Flipping the posterior image horizontally overlays it on the anterior one.
* Findings (:class:`Lesion`) are given in anterior-view pixel coordinates; the same finding
  lies at column ``cols - 1 - col`` in the posterior image.

Physics.  Each structure has a relative depth between the anterior (0) and posterior (1) skin.
Both views are attenuated projections: a source at depth ``z`` in a body of local thickness
``T`` is seen with weight ``exp(-mu z T)`` anteriorly and ``exp(-mu (1 - z) T)``
posteriorly, with ``mu`` 0.11-0.15 /cm; the posterior view also passes the couch.  Uniform
soft-tissue activity projects as ``(1 - exp(-mu T)) / mu``.  The collimator blur is a Gaussian
whose width grows with the distance from the detector, applied per depth layer.  A faint
scatter halo and room background are added, the expected image is scaled to 0.8-2.5 million
counts per view, and Poisson noise is drawn.  Everything is laid out in millimetres, so a
2048 x 512 matrix renders natively at about 1.1-1.2 mm pixels.

Classes (:data:`LABELS`): ``normal``; ``metastatic`` (1 to ~40 focal skeletal lesions, mostly
axial, sometimes a superscan); ``arthritic`` (roughly symmetric joint uptake, knees most
often); ``both``.  Confounders (injection site, urine contamination, mild degenerative
change, rib fractures, hot patellae, hyperostosis frontalis, dental uptake; variable bladder
and kidney activity) occur in every class at the same rate.

The output depends only on the state of the generator passed in and the arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, PhantomPatient, sample_anatomy
from .findings import (
    DISEASE_KINDS,
    Lesion,
    lesion_primitive,
    sample_arthritis,
    sample_confounders,
    sample_metastases,
)
from .render import DEPTH_LAYER_CENTRES, ProjectionCanvas

__all__ = [
    "LABELS",
    "PhantomScan",
    "synthesize_scan",
    "sample_findings",
    "render_expected_views",
    "COUNTS_PER_VIEW_RANGE",
    "disease_kinds",
]

LABELS: tuple[str, ...] = ("normal", "metastatic", "arthritic", "both")

#: Total counts per view are drawn inside this range.
COUNTS_PER_VIEW_RANGE: tuple[float, float] = (0.8e6, 2.5e6)


@dataclass
class PhantomScan:
    """One synthetic study.

    Attributes:
        anterior: Anterior view, uint16 counts, shape ``(rows, cols)``.
        posterior: Posterior view (seen from behind), uint16, same shape.
        label: One of :data:`LABELS`.
        lesions: Every focal finding, disease and confounders alike.
        patient: Demographics.
        pixel_spacing_mm: Square pixel size.
        superscan: True when the metastatic pattern is a diffuse "superscan".
    """

    anterior: np.ndarray
    posterior: np.ndarray
    label: str
    lesions: list[Lesion]
    patient: PhantomPatient
    pixel_spacing_mm: float
    superscan: bool = False


def sample_findings(anatomy: Anatomy, label: str, rng: np.random.Generator) -> tuple[list[Lesion], bool]:
    """Draw the findings for a label; also adjusts ``anatomy.gains`` for a superscan.

    Returns:
        ``(lesions, superscan)``.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    lesions: list[Lesion] = []
    superscan = False
    if label in ("metastatic", "both"):
        superscan = rng.random() < 0.05
        if superscan:
            anatomy.gains["axial"] *= float(rng.uniform(1.7, 2.5))
            anatomy.gains["kidney"] *= 0.08
            anatomy.gains["bladder"] *= 0.3
        lesions += sample_metastases(anatomy, rng, superscan)
    if label in ("arthritic", "both"):
        lesions += sample_arthritis(anatomy, rng)
    lesions += sample_confounders(anatomy, rng)
    return lesions, superscan


def _sigma_px(distance_mm: float, intrinsic_mm: float, slope: float, spacing: float) -> float:
    fwhm = math.hypot(intrinsic_mm, slope * distance_mm)
    return fwhm / 2.3548 / spacing


def render_expected_views(anatomy: Anatomy, lesions: list[Lesion],
                          resolution: tuple[float, float, float] = (3.8, 0.065, 35.0)
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free expected images, in relative units (not yet scaled to counts).

    Args:
        anatomy: The patient.
        lesions: Findings to add.
        resolution: ``(intrinsic FWHM mm, collimator FWHM growth per mm of distance,
            skin-to-detector gap mm)``.

    Returns:
        ``(anterior, posterior)`` float32 images, the posterior already flipped into its own
        (seen-from-behind) orientation.
    """
    rows, cols = anatomy.matrix
    s = anatomy.pixel_spacing_mm
    mu = anatomy.mu_per_mm
    canvas = ProjectionCanvas((rows, cols), s, anatomy.thickness_mm, mu)
    gains = anatomy.gains
    for prim in anatomy.primitives:
        canvas.add(prim, gains.get(prim.group, 1.0))
    for lesion in lesions:
        canvas.add(lesion_primitive(lesion, s))
    # soft tissue: uniform activity through the local thickness
    T = anatomy.thickness_mm
    soft = (anatomy.soft_tissue_ratio / mu) * (1.0 - np.exp(-mu * T))
    canvas.anterior[1] += soft
    canvas.posterior[1] += soft
    intrinsic, slope, gap = resolution
    t_ref = float(np.percentile(T[T > 0], 90)) if np.any(T > 0) else 200.0
    sigmas = [_sigma_px(gap + zc * t_ref, intrinsic, slope, s) for zc in DEPTH_LAYER_CENTRES]
    ant, post = canvas.project(sigmas)
    breast = anatomy.breast_mm
    if np.any(breast > 0):
        ant *= np.exp(-mu * breast)
        ant += (anatomy.soft_tissue_ratio / mu) * (1.0 - np.exp(-mu * breast))
    post *= anatomy.table_transmission
    return ant, post[:, ::-1].copy()


def _scatter(img: np.ndarray, fraction: float, sigma_mm: float, spacing: float) -> np.ndarray:
    """Broad low-level halo of scattered photons, computed on a 4x coarser grid."""
    rows, cols = img.shape
    f = 4
    r4, c4 = rows // f, cols // f
    coarse = img[: r4 * f, : c4 * f].reshape(r4, f, c4, f).mean(axis=(1, 3))
    coarse = ndimage.gaussian_filter(coarse, sigma_mm / (spacing * f), mode="constant", truncate=2.5)
    halo = np.zeros_like(img)
    # nearest-neighbour upsampling smoothed by a box of the block size: linear interpolation
    fine = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
    halo[: r4 * f, : c4 * f] = ndimage.uniform_filter(fine, f)
    return img + fraction * halo


def _poisson_counts(signal: np.ndarray, background: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of ``signal + background``, as uint16.

    Rows without any signal hold only the uniform background; their counts are drawn as one
    Poisson total spread uniformly over those pixels, which has exactly the same distribution
    as per-pixel draws and is much cheaper for the empty field below the feet.
    """
    rows, cols = signal.shape
    counts = np.zeros((rows, cols), np.uint16)
    occupied = np.flatnonzero(np.any(signal > 0, axis=1))
    r0, r1 = (int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else (0, 0)
    if r1 > r0:
        band = rng.poisson(signal[r0:r1] + background)
        counts[r0:r1] = np.minimum(band, 65535)
    empty_rows = np.r_[0:r0, r1:rows]
    if empty_rows.size:
        n_pixels = empty_rows.size * cols
        n = int(rng.poisson(background * n_pixels))
        spread = np.bincount(rng.integers(0, n_pixels, n), minlength=n_pixels).reshape(empty_rows.size, cols)
        counts[empty_rows] = np.minimum(spread, 65535)
    return counts


def synthesize_scan(rng: np.random.Generator, label: str, matrix: tuple[int, int] = (1024, 256),
                    patient_id: str = "PHANTOM") -> PhantomScan:
    """Generate one synthetic anterior + posterior whole-body bone scan.

    Args:
        rng: All randomness comes from this generator, so the same state and arguments give
            the same scan.
        label: One of :data:`LABELS`.
        matrix: ``(rows, cols)``, e.g. ``(1024, 256)`` (about 2.3 mm pixels) or
            ``(2048, 512)`` (about 1.15 mm pixels, rendered natively).
        patient_id: Patient ID to record in :attr:`PhantomScan.patient`.

    Returns:
        The :class:`PhantomScan`.

    Example:
        >>> scan = synthesize_scan(np.random.default_rng(0), "metastatic")
        >>> scan.anterior.shape, scan.anterior.dtype
        ((1024, 256), dtype('uint16'))
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    rows, cols = int(matrix[0]), int(matrix[1])
    if rows < 64 or cols < 16:
        raise ValueError(f"matrix {matrix} is too small for a whole-body scan")
    anatomy = sample_anatomy(rng, (rows, cols), patient_id)
    lesions, superscan = sample_findings(anatomy, label, rng)
    resolution = (float(rng.uniform(3.4, 4.4)), float(rng.uniform(0.055, 0.075)), float(rng.uniform(20.0, 55.0)))
    ant, post = render_expected_views(anatomy, lesions, resolution)
    s = anatomy.pixel_spacing_mm
    scatter_fraction = float(rng.uniform(0.04, 0.12))
    ant = _scatter(ant, scatter_fraction, 30.0, s)
    post = _scatter(post, scatter_fraction, 30.0, s)
    # scale to the study's count level; both views share one scale (same acquisition time)
    lo, hi = COUNTS_PER_VIEW_RANGE
    background = float(rng.uniform(0.01, 0.12)) * (s / 2.3) ** 2  # counts per pixel
    bg_total = background * rows * cols
    mean_target = float(np.exp(rng.uniform(math.log(0.9e6), math.log(2.3e6))))
    sa, sp = float(ant.sum()), float(post.sum())
    k = max(2.0 * mean_target - 2.0 * bg_total, 1.0) / max(sa + sp, 1e-9)
    # keep both views inside the range even when their ratio is unusual
    k_lo = (lo * 1.01 - bg_total) / min(sa, sp)
    k_hi = (hi * 0.99 - bg_total) / max(sa, sp)
    if k_lo <= k_hi:
        scales = [min(max(k, k_lo), k_hi)] * 2
    else:  # views differ by more than the range allows: clamp each one on its own
        scales = [min(max(k, (lo * 1.01 - bg_total) / x), (hi * 0.99 - bg_total) / x) for x in (sa, sp)]
    views = [_poisson_counts(img * scale, background, rng) for img, scale in zip((ant, post), scales)]
    return PhantomScan(
        anterior=views[0],
        posterior=views[1],
        label=label,
        lesions=lesions,
        patient=anatomy.patient,
        pixel_spacing_mm=s,
        superscan=superscan,
    )


def disease_kinds(label: str) -> frozenset[str]:
    """The disease lesion kinds a label implies."""
    return frozenset({"metastatic": {"metastasis"}, "arthritic": {"arthritis"},
                      "both": {"metastasis", "arthritis"}}.get(label, set())) & DISEASE_KINDS
