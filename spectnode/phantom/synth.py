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
whose width grows with the distance from the detector, applied per depth layer.  A scatter
halo and room background are added, the expected image is scaled to the study's counts, and
Poisson noise is drawn.  Everything is laid out in millimetres, so a 2048 x 512 matrix renders
natively at about half the pixel size.

Domain randomisation: what a reader ignores varies widely (:class:`Acquisition` and the
anatomy): collimator FWHM at 10 cm from 7 to 14 mm, pixel size 1.9-2.8 mm at 1024 rows, 0.3 to
3 million counts per view, scatter 3-30 %, room background, mild patient motion (part of the
body shifted sideways, or a slight blur), soft tissue to bone 1/15 to 1/5, breast and obesity
attenuation, body proportions, bone thickness, regional bone uptake, arm pose, and mild
symmetric physiological joint uptake in every patient.

Phases (:data:`PHASES`): ``delayed`` (the bone scan, 2-4 h after injection) and ``early`` (blood
pool, minutes after injection: cardiac blood pool, great vessels, liver, spleen and kidneys
dominate, the skeleton shows little contrast).

Classes (:data:`LABELS`): ``normal``; ``metastatic`` (1 to ~40 focal skeletal lesions, mostly
axial, sometimes a superscan); ``arthritic`` (focal, often asymmetric joint uptake clearly
above the patient's physiological level, knees most often); ``both``.  Confounders (mild
symmetric physiological joint uptake, injection site, urine contamination, mild degenerative
change, rib fractures, hot patellae, hyperostosis frontalis, dental uptake; variable bladder
and kidney activity) occur in every class at the same rate.

The output depends only on the state of the generator passed in and the arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, PhantomPatient, sample_anatomy
from .findings import (
    DISEASE_KINDS,
    Lesion,
    conspicuity_mm2,
    lesion_primitive,
    sample_arthritis,
    sample_confounders,
    sample_metastases,
    sample_physiological,
)
from .render import DEPTH_LAYER_CENTRES, ProjectionCanvas

if TYPE_CHECKING:
    import datetime
    from collections.abc import Iterable

    from .voxel import VoxelAnatomy

__all__ = [
    "LABELS",
    "PHASES",
    "ANATOMIES",
    "build_anatomy",
    "render_scan",
    "evolve_findings",
    "Acquisition",
    "sample_acquisition",
    "apply_phase",
    "COLLIMATOR_FWHM_10CM_RANGE_MM",
    "PhantomScan",
    "synthesize_scan",
    "sample_findings",
    "render_expected_views",
    "COUNTS_PER_VIEW_RANGE",
    "disease_kinds",
    "MIN_INDEX_SNR",
    "ideal_snr",
    "index_finding",
]

LABELS: tuple[str, ...] = ("normal", "metastatic", "arthritic", "both")

#: Total counts per view are drawn inside this range.
COUNTS_PER_VIEW_RANGE: tuple[float, float] = (0.3e6, 3.0e6)

#: Collimator (system) FWHM at 10 cm from the collimator face, drawn per study.
COLLIMATOR_FWHM_10CM_RANGE_MM: tuple[float, float] = (7.0, 14.0)

#: The least known-location ideal-observer SNR (:func:`ideal_snr`, in counts) of the index
#: finding of each disease kind a label names; a fainter one is raised (:func:`render_scan`).
#: Rose's criterion for a reader who knows where to look is 5; one who must search a whole
#: skeleton with its own structure needs several times that, so 3 x 5.  On 300 classic
#: phantoms drawn without it (seed 7001), 10 of 138 index metastases and 12 of 150 index
#: arthritic foci were below it, and the per-view model 1.1.0 found studies whose index
#: finding was under 15 in 2 of 22 (above 50: 0.82 of metastatic, 0.96 of arthritic).
MIN_INDEX_SNR: float = 15.0

#: Anatomy builders: ``classic`` (2-D primitives at relative depths, :mod:`.anatomy`) and
#: ``voxel`` (a skeleton graph of joint landmarks voxelised in 3-D, :mod:`.voxel`).
ANATOMIES: tuple[str, ...] = ("classic", "voxel")

#: Imaging phases: the delayed bone scan, or the early blood-pool images.
PHASES: tuple[str, ...] = ("delayed", "early")

# Primitive groups that are bone; the early phase dims them.
_BONE_GROUPS = ("bone", "axial", "appendicular", "joint", "face", "patella", "growth")


@dataclass(frozen=True)
class Acquisition:
    """How one study was acquired: camera, count level, scatter, background and motion.

    Attributes:
        fwhm_10cm_mm: System FWHM at 10 cm from the collimator face.
        intrinsic_fwhm_mm: FWHM at the collimator face.
        gap_mm: Skin-to-collimator distance.
        scatter_fraction: Scattered photons as a share of the primary image.
        scatter_sigma_mm: Width of the scatter halo.
        background_per_px: Room background, counts per 2.3 mm pixel.
        counts_per_view: Target mean total counts per view.
        motion: ``"none"``, ``"shift"`` (the body below ``motion_row_fraction`` moved
            sideways by ``motion_mm`` during the pass) or ``"blur"`` (slight movement
            throughout, a blur of ``motion_mm``).
        motion_row_fraction: Where a shift starts, as a fraction of the rows.
        motion_mm: Size of the shift or blur.
    """

    fwhm_10cm_mm: float
    intrinsic_fwhm_mm: float
    gap_mm: float
    scatter_fraction: float
    scatter_sigma_mm: float
    background_per_px: float
    counts_per_view: float
    motion: str = "none"
    motion_row_fraction: float = 0.5
    motion_mm: float = 0.0

    def resolution(self) -> tuple[float, float, float]:
        """``(intrinsic FWHM mm, FWHM growth per mm of distance, gap mm)`` for the renderer."""
        slope = math.sqrt(max(self.fwhm_10cm_mm ** 2 - self.intrinsic_fwhm_mm ** 2, 1.0)) / 100.0
        return self.intrinsic_fwhm_mm, slope, self.gap_mm


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw the acquisition of one study (domain randomisation of the camera and the scan)."""
    lo, hi = COLLIMATOR_FWHM_10CM_RANGE_MM
    fwhm = float(rng.uniform(lo, hi))
    u = rng.random()
    motion = "shift" if u < 0.12 else ("blur" if u < 0.22 else "none")
    c_lo, c_hi = COUNTS_PER_VIEW_RANGE
    return Acquisition(
        fwhm_10cm_mm=fwhm,
        intrinsic_fwhm_mm=float(rng.uniform(3.0, 4.5)),
        gap_mm=float(rng.uniform(15.0, 70.0)),
        scatter_fraction=float(rng.uniform(0.03, 0.30)),
        scatter_sigma_mm=float(rng.uniform(18.0, 50.0)),
        background_per_px=float(rng.uniform(0.0, 0.4)),
        counts_per_view=float(np.exp(rng.uniform(math.log(c_lo * 1.1), math.log(c_hi * 0.92)))),
        motion=motion,
        motion_row_fraction=float(rng.uniform(0.3, 0.85)),
        motion_mm=float(rng.uniform(2.0, 8.0)) if motion == "shift" else float(rng.uniform(1.5, 5.0)),
    )


def apply_phase(anatomy: Anatomy | VoxelAnatomy, phase: str, rng: np.random.Generator) -> None:
    """Set the tracer distribution of ``phase`` through ``anatomy.gains``.

    ``delayed`` leaves the bone scan as it is.  ``early`` (blood pool) dims the skeleton and the
    findings, raises soft tissue and fills the blood pool, liver, spleen and kidneys.  The
    ``"blood"`` and ``"organ"`` gains are concentrations relative to soft tissue.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    if phase == "delayed":
        return
    gains = anatomy.gains
    bone = float(rng.uniform(0.12, 0.3))
    for group in _BONE_GROUPS:
        gains[group] = gains.get(group, 1.0) * bone
    gains["lesion"] = bone * float(rng.uniform(1.0, 2.0))  # hyperaemic findings stand out a little
    gains["soft"] = float(rng.uniform(2.0, 4.0))
    gains["blood"] = float(rng.uniform(4.0, 8.0))
    gains["organ"] = float(rng.uniform(1.5, 3.0))
    gains["kidney"] = gains.get("kidney", 1.0) * float(rng.uniform(1.2, 2.5))
    gains["bladder"] = gains.get("bladder", 1.0) * float(rng.uniform(0.02, 0.12))


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
        anatomy: Name of the anatomy builder (see :data:`ANATOMIES`).
        phase: One of :data:`PHASES`.
        acquisition: How it was acquired (``None`` for scans made outside the generator).
        study_datetime: When it was acquired, if the generator fixes it (follow-ups);
            ``None`` lets the DICOM writer draw a date.
        visibility: For each disease kind of the label, how visible its index finding was as
            drawn, how much it was raised and how visible it is in the image (see
            :func:`render_scan`); empty otherwise.
    """

    anterior: np.ndarray
    posterior: np.ndarray
    label: str
    lesions: list[Lesion]
    patient: PhantomPatient
    pixel_spacing_mm: float
    superscan: bool = False
    anatomy: str = "classic"
    phase: str = "delayed"
    acquisition: Acquisition | None = None
    study_datetime: datetime.datetime | None = None
    visibility: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def sample_findings(anatomy: Anatomy | VoxelAnatomy, label: str, rng: np.random.Generator) -> tuple[list[Lesion], bool]:
    """Draw the findings for a label; also adjusts ``anatomy.gains`` for a superscan.

    Returns:
        ``(lesions, superscan)``.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    lesions: list[Lesion] = sample_physiological(anatomy, rng)
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


def evolve_findings(anatomy: Anatomy | VoxelAnatomy, lesions: list[Lesion], label: str, rng: np.random.Generator,
                    new_metastases_chance: float = 0.2) -> tuple[list[Lesion], str]:
    """The same patient's findings at a follow-up months later, and the label they give.

    Metastases grow (larger, hotter than drawn at the last visit; :func:`render_scan` raises
    each visit's faint index finding on its own, so a raised one can read fainter in the truth
    of the next visit, though it is raised again if it is faint there) and new ones appear; a
    patient without them develops them with ``new_metastases_chance``.  Arthritis persists
    at a similar level (never below :data:`~spectnode.phantom.findings.ARTHRITIS_MIN_RATIO`
    of the joint's physiological level).
    Physiological and degenerative uptake, fractures and benign variants stay; injection
    site and contamination are the new study's own.
    """
    from .findings import ARTHRITIS_MIN_RATIO

    kept: list[Lesion] = []
    for lesion in lesions:
        if lesion.kind in ("injection", "lymph_node", "contamination"):
            continue
        if lesion.kind == "metastasis":
            lesion = dataclasses.replace(
                lesion, radius_mm=min(lesion.radius_mm * float(rng.uniform(1.0, 1.3)), 30.0),
                relative_uptake=1.0 + (lesion.relative_uptake - 1.0) * float(rng.uniform(1.0, 1.4)))
        elif lesion.kind == "arthritis":
            ratio = max(ARTHRITIS_MIN_RATIO, lesion.relative_uptake / lesion.host_uptake
                        * float(rng.lognormal(0.0, 0.15)))
            lesion = dataclasses.replace(lesion, relative_uptake=lesion.host_uptake * ratio)
        kept.append(lesion)
    has_metastases = any(lesion.kind == "metastasis" for lesion in kept)
    if has_metastases:
        fresh = sample_metastases(anatomy, rng)
        kept += fresh[: int(rng.poisson(2.0))]
    elif rng.random() < new_metastases_chance:
        kept += sample_metastases(anatomy, rng)
        label = "both" if label == "arthritic" else "metastatic"
    kept += [lesion for lesion in sample_confounders(anatomy, rng)
             if lesion.kind in ("injection", "lymph_node", "contamination")]
    return kept, label


def _sigma_px(distance_mm: float, intrinsic_mm: float, slope: float, spacing: float) -> float:
    fwhm = math.hypot(intrinsic_mm, slope * distance_mm)
    return fwhm / 2.3548 / spacing


def render_expected_views(anatomy: Anatomy, lesions: list[Lesion],
                          resolution: tuple[float, float, float] = (3.8, 0.085, 35.0)
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free expected images, in relative units (not yet scaled to counts).

    The soft-tissue concentration is set here so that the image has the anatomy's
    ``soft_to_bone`` ratio (soft tissue over the lumbar spine at L3, posterior view, before
    blur, with the patient's normal bone uptake); it is stored in
    ``anatomy.soft_tissue_ratio``.

    Args:
        anatomy: The patient.
        lesions: Findings to add.
        resolution: ``(intrinsic FWHM mm, collimator FWHM growth per mm of distance,
            skin-to-detector gap mm)``; :meth:`Acquisition.resolution` gives it.

    Returns:
        ``(anterior, posterior)`` float32 images, the posterior already flipped into its own
        (seen-from-behind) orientation.
    """
    rows, cols = anatomy.matrix
    s = anatomy.pixel_spacing_mm
    mu = anatomy.mu_per_mm
    canvas = ProjectionCanvas((rows, cols), s, anatomy.thickness_mm, mu)
    gains = anatomy.gains
    relative_to_soft = ("blood", "organ")
    for prim in anatomy.primitives:
        if prim.group not in relative_to_soft:
            canvas.add(prim, gains.get(prim.group, 1.0))
    T = anatomy.thickness_mm
    unit_soft = (1.0 - np.exp(-mu * T)) / mu
    soft_conc = _soft_concentration(anatomy, canvas, unit_soft) * gains.get("soft", 1.0)
    anatomy.soft_tissue_ratio = soft_conc
    for prim in anatomy.primitives:
        if prim.group in relative_to_soft:
            canvas.add(prim, gains.get(prim.group, 0.0) * soft_conc)
    lesion_gain = gains.get("lesion", 1.0)
    for lesion in lesions:
        canvas.add(lesion_primitive(lesion, s), lesion_gain)
    # soft tissue: uniform activity through the local thickness
    soft = soft_conc * unit_soft
    canvas.anterior[1] += soft
    canvas.posterior[1] += soft
    intrinsic, slope, gap = resolution
    t_ref = float(np.percentile(T[T > 0], 90)) if np.any(T > 0) else 200.0
    sigmas = [_sigma_px(gap + zc * t_ref, intrinsic, slope, s) for zc in DEPTH_LAYER_CENTRES]
    ant, post = canvas.project(sigmas)
    breast = anatomy.breast_mm
    if np.any(breast > 0):
        ant *= np.exp(-mu * breast)
        ant += (soft_conc / mu) * (1.0 - np.exp(-mu * breast))
    post *= anatomy.table_transmission
    return ant, post[:, ::-1].copy()


def _soft_concentration(anatomy: Anatomy, canvas: ProjectionCanvas, unit_soft: np.ndarray) -> float:
    """Soft-tissue concentration (relative to bone) that gives ``anatomy.soft_to_bone`` at L3."""
    s = anatomy.pixel_spacing_mm
    x, y = anatomy.landmarks["L3"]
    rows, cols = anatomy.matrix
    r = min(max(int(round(y / s - 0.5)), 1), rows - 2)
    c = min(max(int(round(x / s - 0.5)), 1), cols - 2)
    window = np.s_[r - 1: r + 2, c - 1: c + 2]
    bone = float(sum(layer[window].mean() for layer in canvas.posterior))
    # measured against the patient's normal bone uptake, so a superscan or the early phase
    # (which change the axial gain) keep their own soft-tissue contrast
    ref = anatomy.reference_gains.get("axial", 1.0) / max(anatomy.gains.get("axial", 1.0), 1e-6)
    soft = float(unit_soft[window].mean())
    return anatomy.soft_to_bone * bone * ref / max(soft, 1e-6)


def _motion(img: np.ndarray, acquisition: Acquisition, spacing: float, mirrored: bool) -> np.ndarray:
    """Mild patient motion: part of the body shifted sideways, or a slight blur."""
    if acquisition.motion == "none":
        return img
    if acquisition.motion == "blur":
        return ndimage.gaussian_filter(img, acquisition.motion_mm / 2.3548 / spacing, truncate=2.5)
    shift = acquisition.motion_mm / spacing * (-1.0 if mirrored else 1.0)
    r0 = int(acquisition.motion_row_fraction * img.shape[0])
    out = img.copy()
    out[r0:] = ndimage.shift(img[r0:], (0.0, shift), order=1, mode="constant")
    return out


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
                    patient_id: str = "PHANTOM", anatomy: str = "classic",
                    phase: str = "delayed") -> PhantomScan:
    """Generate one synthetic anterior + posterior whole-body bone scan.

    Args:
        rng: All randomness comes from this generator, so the same state and arguments give
            the same scan.
        label: One of :data:`LABELS`.
        matrix: ``(rows, cols)``, e.g. ``(1024, 256)`` (about 2.3 mm pixels) or
            ``(2048, 512)`` (about 1.15 mm pixels, rendered natively).
        patient_id: Patient ID to record in :attr:`PhantomScan.patient`.
        anatomy: Which anatomy builder (:data:`ANATOMIES`).
        phase: One of :data:`PHASES`.

    Returns:
        The :class:`PhantomScan`.

    Example:
        >>> scan = synthesize_scan(np.random.default_rng(0), "metastatic")
        >>> scan.anterior.shape, scan.anterior.dtype
        ((1024, 256), dtype('uint16'))
    """
    _check_arguments(label, matrix, anatomy, phase)
    body = build_anatomy(anatomy, rng, (int(matrix[0]), int(matrix[1])), patient_id)
    lesions, superscan = sample_findings(body, label, rng)
    return render_scan(body, label, lesions, superscan, phase, rng)


def _check_arguments(label: str, matrix: tuple[int, int], anatomy: str, phase: str) -> None:
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    rows, cols = int(matrix[0]), int(matrix[1])
    if rows < 64 or cols < 16:
        raise ValueError(f"matrix {matrix} is too small for a whole-body scan")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, not {anatomy!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")


def build_anatomy(name: str, rng: np.random.Generator, matrix: tuple[int, int],
                  patient_id: str) -> Anatomy | VoxelAnatomy:
    """Draw one patient with the anatomy builder ``name`` (one of :data:`ANATOMIES`)."""
    if name == "classic":
        return sample_anatomy(rng, matrix, patient_id)
    if name == "voxel":
        from .voxel import sample_voxel_anatomy

        return sample_voxel_anatomy(rng, matrix, patient_id)
    raise ValueError(f"anatomy must be one of {ANATOMIES}, not {name!r}")


def _expected_views(anatomy: Anatomy | VoxelAnatomy, lesions: list[Lesion],
                    acquisition: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free anterior and posterior images of the acquisition, scatter and motion included."""
    s = anatomy.pixel_spacing_mm
    if isinstance(anatomy, Anatomy):
        ant, post = render_expected_views(anatomy, lesions, acquisition.resolution())
        ant = _scatter(ant, acquisition.scatter_fraction, acquisition.scatter_sigma_mm, s)
        post = _scatter(post, acquisition.scatter_fraction, acquisition.scatter_sigma_mm, s)
    else:
        from .voxel import render_voxel_views

        ant, post = render_voxel_views(anatomy, lesions, acquisition)
    return _motion(ant, acquisition, s, mirrored=False), _motion(post, acquisition, s, mirrored=True)


def _count_scales(ant: np.ndarray, post: np.ndarray, acquisition: Acquisition,
                  anatomy: Anatomy | VoxelAnatomy) -> tuple[list[float], float]:
    """``([anterior scale, posterior scale], background counts per pixel)`` for the study's count level."""
    rows, cols = anatomy.matrix
    lo, hi = COUNTS_PER_VIEW_RANGE
    background = acquisition.background_per_px * (anatomy.pixel_spacing_mm / 2.3) ** 2
    bg_total = background * rows * cols
    sa, sp = float(ant.sum()), float(post.sum())
    # both views share one scale (same acquisition time)
    k = max(2.0 * acquisition.counts_per_view - 2.0 * bg_total, 1.0) / max(sa + sp, 1e-9)
    # keep both views inside the range even when their ratio is unusual
    k_lo = (lo * 1.01 - bg_total) / min(sa, sp)
    k_hi = (hi * 0.99 - bg_total) / max(sa, sp)
    if k_lo <= k_hi:
        return [min(max(k, k_lo), k_hi)] * 2, background
    # views differ by more than the range allows: clamp each one on its own
    return [min(max(k, (lo * 1.01 - bg_total) / x), (hi * 0.99 - bg_total) / x) for x in (sa, sp)], background


def index_finding(lesions: list[Lesion], kind: str) -> int | None:
    """Position in ``lesions`` of the most conspicuous finding of ``kind`` (:func:`conspicuity_mm2`),
    or None if there is none."""
    of_kind = [i for i, lesion in enumerate(lesions) if lesion.kind == kind]
    return max(of_kind, key=lambda i: conspicuity_mm2(lesions[i])) if of_kind else None


def ideal_snr(excess: tuple[np.ndarray, np.ndarray], views: tuple[np.ndarray, np.ndarray],
              scales: list[float], background: float) -> float:
    """Known-location detectability of a finding in counts: the better view's ideal-observer SNR.

    ``sqrt(sum((k * excess)**2 / (k * view + background)))`` over the pixels of a view whose
    expected image is ``view`` (the finding included) scaled to counts by ``k``: the
    signal-to-noise ratio of the best linear detector of that finding on Poisson noise, which
    knows where it is and what the rest of the scan looks like.  Resolution, depth, scatter and
    the count level all enter; a reader, who must search and does not know the background, needs
    far more.
    """
    best = 0.0
    for e, v, k in zip(excess, views, scales):
        near = np.abs(e) > 1e-6 * max(float(np.abs(e).max()), 1e-30)  # the rest adds nothing to the sum
        if np.any(near):
            best = max(best, math.sqrt(float(np.sum((k * e[near]) ** 2 / (k * v[near] + background)))))
    return best


def _make_visible(anatomy: Anatomy | VoxelAnatomy, kinds: Iterable[str], lesions: list[Lesion],
                  acquisition: Acquisition, views: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[list[Lesion], tuple[np.ndarray, np.ndarray], dict[str, dict[str, float]]]:
    """Raise the index finding of each of ``kinds`` until its :func:`ideal_snr` reaches :data:`MIN_INDEX_SNR`.

    A label is what a reader could call from the scan.  The lesion rules of :mod:`.findings`
    (least conspicuity, least joint excess) speak of the lesion, not of the image: at 0.3 M
    counts, 14 mm FWHM and deep in the body a lesion that passes them can be lost in the noise.
    The finding's excess image is linear in its uptake above its host, so it is scaled in place
    (no random draw is added) and the finding records the raised uptake.  Kinds are taken in
    order, each on the image with the raises before it.

    Returns:
        ``(lesions, views, visibility)``; ``visibility[kind]`` holds the index finding's SNR as
        drawn (``index_snr``), the factor its excess uptake was raised by (``raised_by``, 1 if it
        was visible) and its SNR in the image made (``shown_snr``).
    """
    lesions = list(lesions)
    ant, post = views
    visibility: dict[str, dict[str, float]] = {}
    for kind in sorted(kinds):
        i = index_finding(lesions, kind)
        if i is None:
            continue
        without = _expected_views(anatomy, lesions[:i] + lesions[i + 1:], acquisition)
        excess = (ant - without[0], post - without[1])
        scales, background = _count_scales(ant, post, acquisition, anatomy)
        drawn = ideal_snr(excess, (ant, post), scales, background)
        factor, snr = 1.0, drawn
        # The SNR grows a little slower than the excess (its own counts add noise), so a few
        # steps; a finding with no excess in the image (none happens: findings lie inside the
        # field) cannot be raised and keeps its SNR of 0 on record.
        for _ in range(12):
            if snr >= MIN_INDEX_SNR or snr <= 0.0:
                break
            factor *= MIN_INDEX_SNR / snr * 1.01
            trial = (without[0] + factor * excess[0], without[1] + factor * excess[1])
            scales, background = _count_scales(*trial, acquisition, anatomy)
            snr = ideal_snr((factor * excess[0], factor * excess[1]), trial, scales, background)
        if factor > 1.0:
            ant, post = without[0] + factor * excess[0], without[1] + factor * excess[1]
            lesion = lesions[i]
            lesions[i] = dataclasses.replace(
                lesion, relative_uptake=lesion.host_uptake + factor * (lesion.relative_uptake - lesion.host_uptake))
        visibility[kind] = {"index_snr": round(drawn, 2), "raised_by": round(factor, 3), "shown_snr": round(snr, 2)}
    return lesions, (ant, post), visibility


def render_scan(anatomy: Anatomy | VoxelAnatomy, label: str, lesions: list[Lesion], superscan: bool, phase: str,
                rng: np.random.Generator) -> PhantomScan:
    """Acquire a patient with its findings: phase, acquisition, rendering, counts and noise.

    In a delayed-phase study each disease kind the label names has one finding a reader can
    see in the counts (:func:`_make_visible`), except the metastases of a superscan, which show
    as diffusely raised axial uptake rather than as foci.
    """
    apply_phase(anatomy, phase, rng)
    acquisition = sample_acquisition(rng)
    ant, post = _expected_views(anatomy, lesions, acquisition)
    visibility: dict[str, dict[str, float]] = {}
    if phase == "delayed":
        kinds = disease_kinds(label) - ({"metastasis"} if superscan else set())
        lesions, (ant, post), visibility = _make_visible(anatomy, kinds, lesions, acquisition, (ant, post))
    scales, background = _count_scales(ant, post, acquisition, anatomy)
    views = [_poisson_counts(img * scale, background, rng) for img, scale in zip((ant, post), scales)]
    return PhantomScan(
        anterior=views[0],
        posterior=views[1],
        label=label,
        lesions=lesions,
        patient=anatomy.patient,
        pixel_spacing_mm=anatomy.pixel_spacing_mm,
        superscan=superscan,
        anatomy=anatomy.name,
        phase=phase,
        acquisition=acquisition,
        visibility=visibility,
    )


def disease_kinds(label: str) -> frozenset[str]:
    """The disease lesion kinds a label implies."""
    return frozenset({"metastatic": {"metastasis"}, "arthritic": {"arthritis"},
                      "both": {"metastasis", "arthritis"}}.get(label, set())) & DISEASE_KINDS
