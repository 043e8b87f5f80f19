"""Guards run on a study's views before any model: is this a delayed whole-body bone scan?

:func:`check_study` returns ``None`` for a study the models may read, or a
:class:`~spectnode.imaging.views.NotAssessable` with one of two codes:

``early_phase``
    A flow or blood-pool (early) image, not the delayed bone phase (2-5 h
    after injection) that the models were made for. Told (a) by a phase word
    in SeriesDescription, ImageID, ProtocolName or a view code's meaning
    (``early``, ``flow``, ``blood pool``, ``perfusion``, German ``früh``,
    ``Frühphase``, ``Blutpool``, ``Weichteilphase``, ...; not when a delayed
    word such as ``spät``, ``late`` or ``delayed`` is also there); or (b) by
    content: little skeletal contrast in the legs (below
    :data:`EARLY_LEG_BONE_CONTRAST`) *and* in the trunk (spine and ribs over
    the row's median below :data:`EARLY_TRUNK_BONE_CONTRAST`), while the trunk
    holds hot soft-tissue activity (heart, vessels, liver, kidneys). A
    delayed scan shows its spine at several times the paraspinal tissue;
    blood-pool images show the skeleton faintly through the soft tissue.
``not_bone_scan``
    The pixels are not a whole-body bone scan: counts implausible for a
    whole-body acquisition, no body outline standing out of a dark
    background, or no skeleton brighter than the soft tissue.

What a delayed whole-body bone scan must show, and the loose limits used
(physical reasoning, not any phantom's statistics):

* Counts: 0.5-5 million per view at 10-20 min of acquisition; accepted
  :data:`COUNTS_RANGE` (ten times looser each way). Values are the stored
  counts after the modality LUT; small negatives of lossy codecs are clipped.
* A body outline: on the image smoothed to 5 mm, the largest connected
  region above a quarter of the 90th percentile (soft tissue of a body that
  fills 10 % of the field or more). It must be at least
  :data:`MIN_BODY_LENGTH_MM` long and span 35 % of the field, fill 3-85 % of
  it, leave background on both sides in 80 % of its rows and on at least one
  side in half of them (arms may touch an edge), and stand at least
  :data:`MIN_BODY_CONTRAST` times above the background.
* A skeleton brighter than soft tissue: in the legs (56-92 % of the body's
  length, where no organ lies) the brightest point of a row (femur, tibia) is
  at least :data:`MIN_LEG_BONE_CONTRAST` times the row's median. Delayed
  Tc-99m MDP gives bone-to-soft-tissue ratios of 3-10 at the bone itself.

A hot bladder or kidneys do not trouble these checks: they are not in the
legs, and no check bounds the hottest pixel.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage

from spectnode.imaging.view_labels import label_words
from spectnode.imaging.views import (
    EARLY_PHASE,
    NOT_BONE_SCAN,
    NotAssessable,
    StudyViews,
    ViewImage,
)

__all__ = [
    "COUNTS_RANGE",
    "EARLY_LEG_BONE_CONTRAST",
    "EARLY_TRUNK_BONE_CONTRAST",
    "MIN_BODY_CONTRAST",
    "MIN_BODY_LENGTH_MM",
    "MIN_LEG_BONE_CONTRAST",
    "check_study",
    "check_view",
    "early_phase_words",
]

#: Total counts per view accepted as a whole-body acquisition.
COUNTS_RANGE: Final = (5e4, 5e7)
#: Shortest body outline accepted (a small child is about 0.8 m long).
MIN_BODY_LENGTH_MM: Final = 700.0
#: Body (median) over background (median; floored at 2 % of the body).
MIN_BODY_CONTRAST: Final = 3.0
#: Brightest point over median of a leg row.
MIN_LEG_BONE_CONTRAST: Final = 1.35
#: Trunk 99th percentile over the legs' median above which low bone contrast means blood pool.
MIN_EARLY_TRUNK_ACTIVITY: Final = 1.5
#: Below both of these (legs' and trunk rows' brightest point over their median), with trunk
#: activity, the image is a blood-pool image. Measured on phantoms (issue 14 notes): delayed
#: views 1.73 / 2.21 and up (5th percentiles), blood pool 1.66 / 1.93 and down (95th);
#: pydicom's real GE delayed view 1.63 / 2.19.
EARLY_LEG_BONE_CONTRAST: Final = 1.55
EARLY_TRUNK_BONE_CONTRAST: Final = 1.95

_SMOOTHING_MM: Final = 5.0
_DEFAULT_SPACING_MM: Final = 2.3
_LEG_ROWS: Final = (0.56, 0.92)
_TRUNK_ROWS: Final = (0.15, 0.50)

# Whole words naming an early phase; words starting with a prefix (German compounds:
# Frühphase, Frühaufnahme, Blutpoolphase) count too.
_EARLY_WORDS: Final = frozenset({"EARLY", "FLOW", "POOL", "BLOODPOOL", "PERFUSION", "PERF", "ANGIO",
                                 "FRUEH", "FRUH", "VASCULAR", "ARTERIAL", "WEICHTEIL"})
_EARLY_PREFIXES: Final = ("FRUEH", "BLUTPOOL", "WEICHTEIL", "PERFUSION", "BLOODPOOL")
_DELAYED_WORDS: Final = frozenset({"SPAET", "SPAT", "LATE", "DELAYED", "DELAY", "SPAETPHASE",
                                   "SPATPHASE", "SPAETAUFNAHME", "KNOCHENPHASE", "MINERALISATION"})


def early_phase_words(text: str) -> list[str]:
    """The early-phase words of ``text`` (folded, upper case); none if a delayed word is there too."""
    words = label_words(text)
    if any(word in _DELAYED_WORDS or word.startswith(("SPAET", "SPAT")) for word in words):
        return []
    return [w for w in words if w in _EARLY_WORDS or w.startswith(_EARLY_PREFIXES)]


def _described_early(image: ViewImage) -> NotAssessable | None:
    for attribute, text, shown in image.descriptions:  # shown: quoted, or withheld, by safe_text
        if early_phase_words(text):
            return NotAssessable("", (
                f"early (blood-pool) phase, not a delayed bone scan: {attribute} {shown} "
                f"of the {image.view} view names a flow or blood-pool phase"), EARLY_PHASE)
    return None


def _body(smoothed: np.ndarray) -> np.ndarray:
    threshold = 0.25 * float(np.percentile(smoothed, 90))
    labels, count = ndimage.label(smoothed > threshold)
    if count == 0:
        return np.zeros(smoothed.shape, dtype=bool)
    sizes = ndimage.sum(np.ones_like(smoothed), labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def _rows(body: np.ndarray, band: tuple[float, float]) -> slice:
    rows = np.flatnonzero(body.any(axis=1))
    top, length = int(rows[0]), int(rows[-1] - rows[0])
    return slice(top + int(band[0] * length), top + max(int(band[1] * length), 1))


def check_view(image: ViewImage) -> NotAssessable | None:
    """Content checks of one view (module docstring); ``None`` when it is a delayed bone scan.

    The returned NotAssessable has an empty study_uid; :func:`check_study` fills it.
    """
    described = _described_early(image)
    if described is not None:
        return described
    what = f"the image is not a whole-body bone scan: the {image.view} view"
    pixels = np.clip(np.asarray(image.pixels, dtype=np.float64), 0, None)
    total = float(pixels.sum())
    low, high = COUNTS_RANGE
    if not low <= total <= high:
        return NotAssessable("", (
            f"{what} holds {total:.3g} counts; a whole-body acquisition holds "
            f"{low:.0e} to {high:.0e}"), NOT_BONE_SCAN)
    spacing = float(np.mean(image.pixel_spacing_mm)) if image.pixel_spacing_mm else _DEFAULT_SPACING_MM
    smoothed = ndimage.gaussian_filter(pixels, _SMOOTHING_MM / spacing)
    body = _body(smoothed)
    rows_with_body = np.flatnonzero(body.any(axis=1))
    n_rows = pixels.shape[0]
    length_mm = (rows_with_body[-1] - rows_with_body[0] + 1) * spacing if rows_with_body.size else 0.0
    area = float(body.mean())
    if length_mm < MIN_BODY_LENGTH_MM or rows_with_body.size < 0.35 * n_rows or not 0.03 <= area <= 0.85:
        return NotAssessable("", (
            f"{what} shows no body outline: its largest bright region is {length_mm:.0f} mm long over "
            f"{rows_with_body.size} of {n_rows} rows and fills {100 * area:.0f} % of the field "
            f"(a body is at least {MIN_BODY_LENGTH_MM:.0f} mm and 35 % of the rows long, and fills 3-85 %)"),
            NOT_BONE_SCAN)
    edges = body[rows_with_body][:, [0, -1]]
    both_sides, one_side = float(edges.all(axis=1).mean()), float(edges.any(axis=1).mean())
    inside, outside = float(np.median(smoothed[body])), float(np.median(smoothed[~body]))
    # floor the background at 2 % of the body so that a clean zero background is not a division by 0
    contrast = inside / max(outside, 0.02 * inside)
    if both_sides > 0.2 or one_side > 0.5 or contrast < MIN_BODY_CONTRAST:
        return NotAssessable("", (
            f"{what} shows no body outline on a dark background: the bright region reaches both sides of "
            f"the field in {100 * both_sides:.0f} % of its rows (at most 20 %), a side in {100 * one_side:.0f} % "
            f"(at most 50 %), and it is {contrast:.1f} times the background (at least {MIN_BODY_CONTRAST:g})"),
            NOT_BONE_SCAN)
    legs = _rows(body, _LEG_ROWS)
    ratios = [row[mask].max() / max(float(np.median(row[mask])), 1e-9)
              for row, mask in zip(smoothed[legs], body[legs]) if mask.sum() >= 3]
    leg_contrast = float(np.median(ratios)) if ratios else 0.0
    trunk_rows = _rows(body, _TRUNK_ROWS)
    trunk = smoothed[trunk_rows][body[trunk_rows]]
    leg_level = float(np.median(smoothed[legs][body[legs]]))
    trunk_activity = float(np.percentile(trunk, 99)) / max(leg_level, 1e-9) if trunk.size else 0.0
    trunk_ratios = [row[mask].max() / max(float(np.median(row[mask])), 1e-9)
                    for row, mask in zip(smoothed[trunk_rows], body[trunk_rows]) if mask.sum() >= 3]
    trunk_contrast = float(np.median(trunk_ratios)) if trunk_ratios else 0.0
    faint_skeleton = leg_contrast < EARLY_LEG_BONE_CONTRAST and trunk_contrast < EARLY_TRUNK_BONE_CONTRAST
    if leg_contrast >= MIN_LEG_BONE_CONTRAST and not (faint_skeleton and trunk_activity >= MIN_EARLY_TRUNK_ACTIVITY):
        return None
    if trunk_activity >= MIN_EARLY_TRUNK_ACTIVITY:
        return NotAssessable("", (
            f"early (blood-pool) phase, not a delayed bone scan: the {image.view} view shows trunk "
            f"activity {trunk_activity:.1f} times the legs' (heart, vessels, kidneys) with little skeletal "
            f"contrast (bone over soft tissue {leg_contrast:.2f} in the legs and {trunk_contrast:.2f} in the "
            f"trunk; a delayed scan shows at least {EARLY_LEG_BONE_CONTRAST:g} or {EARLY_TRUNK_BONE_CONTRAST:g})"),
            EARLY_PHASE)
    return NotAssessable("", (
        f"{what} shows no skeleton brighter than the soft tissue (leg bone {leg_contrast:.2f} times the "
        f"soft tissue; a bone scan shows at least {MIN_LEG_BONE_CONTRAST:g})"), NOT_BONE_SCAN)


def check_study(views: StudyViews) -> NotAssessable | None:
    """Run :func:`check_view` on every view; the first problem, or ``None``."""
    for image in (views.anterior, views.posterior):
        if image is None:
            continue
        problem = check_view(image)
        if problem is not None:
            return NotAssessable(views.study_uid, problem.reason, problem.code)
    return None
