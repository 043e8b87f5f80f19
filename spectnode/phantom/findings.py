"""Focal findings of the synthetic bone scan: disease (the labels) and confounders.

Disease findings decide the label: ``"metastasis"`` lesions (label ``metastatic``) and
``"arthritis"`` lesions (label ``arthritic``).  Every other kind is a confounder that occurs
in all four classes at the same rates, so it cannot give the label away:

``injection``
    Injection site in an arm or hand vein, sometimes extravasated (a wider, softer spot),
    occasionally with a faint axillary ``lymph_node``.
``contamination``
    Urine on the skin, clothes or couch near the pelvis; lies at a body surface.
``physiological``
    Mild, symmetric joint and spine uptake that normal patients have (knees, shoulders,
    sacroiliac, sternoclavicular and acromioclavicular joints, hips, ankles, wrists, elbows,
    lower lumbar facets), drawn for every patient.  Its level at a joint is that patient's
    physiological level (:attr:`Anatomy.physiological`).
``degenerative``
    Mild degenerative change at one to three joints, more often and more widespread with
    age (lower lumbar facets, knees, AC or SC joints, big toe, thumb base), at most
    :data:`DEGENERATIVE_MAX_RATIO` times the joint's physiological level.
``fracture``
    Healing fractures of one to three adjacent ribs, in a vertical line.
``hot_patella``, ``hyperostosis_frontalis``, ``dental``
    Common benign variants.

Labels are what a reader would call from the images, as in the papers' data sets: a
metastatic study (other than a superscan) has at least one metastasis a reader can see, one
whose :func:`conspicuity_mm2` reaches :data:`MIN_INDEX_CONSPICUITY_MM2`.  Its other
metastases may be as faint as real ones are.  An arthritic study has joint uptake ABOVE the
patient's own physiological level: every ``arthritis`` lesion is focal (smaller than the
joint) and at least :data:`ARTHRITIS_MIN_RATIO` times that joint's physiological level, and
is often on one side only or clearly asymmetric.  Mild symmetric joint uptake and mild
degenerative change are normal.

``relative_uptake`` is the activity concentration of the finding as a multiple of the
patient's normal-bone concentration.  Bone findings replace the bone they sit in, so they
add ``relative_uptake - 1`` times the bone concentration; soft-tissue findings (injection,
extravasation, contamination, lymph node) add ``relative_uptake`` times it.  Joint findings
sit on the joint's physiological uptake (:attr:`Lesion.host_uptake`) and add
``relative_uptake - host_uptake``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .render import Primitive

if TYPE_CHECKING:
    from .anatomy import Anatomy, BoneSite, Joint
    from .voxel import VoxelAnatomy

__all__ = [
    "Lesion",
    "DISEASE_KINDS",
    "SOFT_TISSUE_KINDS",
    "sample_metastases",
    "conspicuity_mm2",
    "MIN_INDEX_CONSPICUITY_MM2",
    "sample_arthritis",
    "sample_physiological",
    "sample_confounders",
    "lesion_primitive",
    "joint_excess_ratio",
    "ARTHRITIS_MIN_RATIO",
    "DEGENERATIVE_MAX_RATIO",
]

#: Every arthritic lesion is at least this many times its joint's physiological level.
ARTHRITIS_MIN_RATIO: float = 1.7
#: Degenerative change in a normal study stays at or below this ratio to the physiological level.
DEGENERATIVE_MAX_RATIO: float = 1.35

DISEASE_KINDS: frozenset[str] = frozenset({"metastasis", "arthritis"})
SOFT_TISSUE_KINDS: frozenset[str] = frozenset({"injection", "contamination", "lymph_node"})


@dataclass(frozen=True)
class Lesion:
    """One focal finding.

    Attributes:
        kind: ``"metastasis"``, ``"arthritis"`` or a confounder kind (see module docs).
        site: Readable anatomical site, e.g. ``"T8 vertebral body"`` or ``"left knee"``.
        row: Centre row in the ANTERIOR view (pixels, may be fractional).
        col: Centre column in the ANTERIOR view; the posterior view shows the finding at
            ``cols - 1 - col``.
        depth: 0 at the anterior body surface, 1 at the posterior surface.
        radius_mm: Semi-axis of the long axis.
        relative_uptake: Concentration relative to normal bone (see module docs).
        elongation: Long-axis to short-axis ratio (1 = round).
        orientation_deg: Direction of the long axis in the anterior view, degrees
            counter-clockwise from the image's horizontal.
        thickness_mm: Anterior-posterior extent; findings in thin bones (calvarium, ribs)
            are thinner than they are wide.  ``None`` means twice the short semi-axis.
        host_uptake: Uptake of what the finding replaces, relative to bone: 1 for bone, the
            joint's physiological level for joint findings, 0 in soft tissue.
    """

    kind: str
    site: str
    row: float
    col: float
    depth: float
    radius_mm: float
    relative_uptake: float
    elongation: float = 1.0
    orientation_deg: float = 0.0
    thickness_mm: float | None = None
    host_uptake: float = 1.0


def _make(kind: str, site: str, xy: tuple[float, float], depth: float, radius: float, rel: float,
          spacing: float, elongation: float = 1.0, direction: tuple[float, float] = (1.0, 0.0),
          thickness: float | None = None, host: float | None = None) -> Lesion:
    angle = math.degrees(math.atan2(-direction[1], direction[0]))
    if host is None:
        host = 0.0 if kind in SOFT_TISSUE_KINDS else 1.0
    return Lesion(kind, site, xy[1] / spacing - 0.5, xy[0] / spacing - 0.5, float(np.clip(depth, 0.0, 1.0)),
                  float(radius), float(rel), float(elongation), float(angle),
                  None if thickness is None else float(thickness), float(host))


def joint_excess_ratio(lesion: Lesion) -> float:
    """A joint finding's uptake over the physiological level of its joint (1 = no excess)."""
    return lesion.relative_uptake / max(lesion.host_uptake, 1e-6)


def lesion_primitive(lesion: Lesion, spacing: float) -> Primitive:
    """The tracer distribution of a finding: an ellipsoid whose depth semi-axis is its short axis."""
    a = lesion.radius_mm
    b = a / max(lesion.elongation, 1.0)
    extra = lesion.relative_uptake - lesion.host_uptake
    soft = lesion.kind == "injection" and "extravasation" in lesion.site
    centre = ((lesion.col + 0.5) * spacing, (lesion.row + 0.5) * spacing)
    chord = 2.0 * b if lesion.thickness_mm is None else min(2.0 * b, lesion.thickness_mm)
    return Primitive("ellipse", (centre,), (a, b), (lesion.depth,), extra * chord, "lesion",
                     "soft" if soft else "solid", math.radians(lesion.orientation_deg))


def _point_on(site: BoneSite, rng: np.random.Generator) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """A random point on a site's polyline, its depth and the local bone direction."""
    pts = site.points
    if len(pts) == 1:
        ang = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(0, 0.4 * site.radius_mm)
        return (pts[0][0] + r * math.cos(ang), pts[0][1] + r * math.sin(ang)), site.depths[0], (1.0, 0.0)
    lengths = np.array([math.dist(pts[i], pts[i + 1]) for i in range(len(pts) - 1)]) + 1e-6
    i = int(rng.choice(len(lengths), p=lengths / lengths.sum()))
    t = rng.random()
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    d = ((x1 - x0) / lengths[i], (y1 - y0) / lengths[i])
    jitter = rng.uniform(-0.4, 0.4) * site.radius_mm
    x = x0 + t * (x1 - x0) - d[1] * jitter
    y = y0 + t * (y1 - y0) + d[0] * jitter
    z = site.depths[i] + t * (site.depths[i + 1] - site.depths[i])
    return (x, y), z, d


# regional distribution of skeletal metastases (axial skeleton dominates)
_MET_REGIONS = {
    "spine": 0.36, "rib": 0.22, "pelvis": 0.13, "sacrum": 0.05, "skull": 0.06, "sternum": 0.03,
    "scapula": 0.03, "clavicle": 0.01, "femur": 0.06, "humerus": 0.03, "distal_long_bone": 0.01,
}


#: The least conspicuity of a metastatic study's most conspicuous metastasis: for example a
#: 10 mm-radius lesion at 3 times bone uptake, 15 mm at 1.9 times or 7 mm at about 5 times.  Fainter
#: single lesions are invisible on a planar whole-body scan, and no reader would call the study
#: metastatic from it.
MIN_INDEX_CONSPICUITY_MM2: float = 200.0


def conspicuity_mm2(lesion: Lesion) -> float:
    """How plainly a bone finding shows: its excess over what it sits in times its area.

    ``(relative_uptake - host_uptake) * min(radius_mm, 15)**2``; the host is bone (1) for a
    metastasis, the joint's physiological level for a joint finding.  The radius is capped
    because a large, faint lesion spreads its excess over bone that already shows, rather than
    standing out.
    """
    return (lesion.relative_uptake - lesion.host_uptake) * min(lesion.radius_mm, 15.0) ** 2


def sample_metastases(anatomy: Anatomy | VoxelAnatomy, rng: np.random.Generator,
                      superscan: bool = False) -> list[Lesion]:
    """Draw 1 to ~40 skeletal metastases, mostly in the axial skeleton.

    Unless ``superscan``, draws are repeated until one metastasis reaches
    :data:`MIN_INDEX_CONSPICUITY_MM2`, so that the label is one a reader could give.  Metastases
    that fall outside the field of view (an abducted arm) are left out.

    Args:
        anatomy: The patient.
        rng: Randomness.
        superscan: Draw many small, low-contrast lesions (the caller raises axial uptake).
    """
    rows, cols = anatomy.matrix
    while True:
        # a metastasis in a limb outside the field of view is not on the scan
        lesions = [lesion for lesion in _draw_metastases(anatomy, rng, superscan)
                   if 0.0 <= lesion.row < rows and 0.0 <= lesion.col < cols]
        if lesions and (superscan or max(map(conspicuity_mm2, lesions)) >= MIN_INDEX_CONSPICUITY_MM2):
            return lesions


def _draw_metastases(anatomy: Anatomy | VoxelAnatomy, rng: np.random.Generator, superscan: bool) -> list[Lesion]:
    s = anatomy.pixel_spacing_mm
    by_region: dict[str, list[BoneSite]] = {}
    for site in anatomy.bone_sites:
        by_region.setdefault(site.region, []).append(site)
    regions = [r for r in _MET_REGIONS if r in by_region]
    weights = np.array([_MET_REGIONS[r] for r in regions])
    weights /= weights.sum()
    if superscan:
        n = int(rng.integers(15, 41))
    else:
        u = rng.random()
        if u < 0.25:
            n = 1
        elif u < 0.55:
            n = int(rng.integers(2, 5))
        elif u < 0.8:
            n = int(rng.integers(5, 13))
        else:
            n = int(rng.integers(13, 41))
    # spread: some patients have lesions concentrated in a few regions
    if rng.random() < 0.4:
        weights = weights * rng.dirichlet(np.full(len(regions), 0.7)) + 1e-4
        weights /= weights.sum()
    lesions = []
    for _ in range(n):
        region = regions[int(rng.choice(len(regions), p=weights))]
        candidates = by_region[region]
        site_w = np.array([c.weight for c in candidates])
        site = candidates[int(rng.choice(len(candidates), p=site_w / site_w.sum()))]
        xy, z, d = _point_on(site, rng)
        radius = float(np.exp(rng.uniform(math.log(5.0), math.log(17.0))))
        rel = 1.0 + float(rng.lognormal(math.log(1.7), 0.6))
        if superscan:
            rel = 1.0 + float(rng.lognormal(math.log(0.6), 0.4))
        elong, direction = float(rng.uniform(1.0, 1.5)), (math.cos(rng.uniform(0, math.pi)),
                                                          math.sin(rng.uniform(0, math.pi)))
        if region == "rib":
            radius = min(radius, 12.0)
            elong, direction = float(rng.uniform(1.3, 2.6)), d
        elif region == "spine" and "body" in site.name and rng.random() < 0.35:
            # the whole vertebral body
            radius = site.radius_mm * 1.55
            elong, direction = float(rng.uniform(1.1, 1.5)), (1.0, 0.0)
            xy = ((site.points[0][0] + site.points[1][0]) / 2, site.points[0][1])
        elif region in ("femur", "humerus", "distal_long_bone", "clavicle"):
            elong, direction = float(rng.uniform(1.2, 2.2)), d
        # lesions may expand the bone a little beyond its normal thickness
        thickness = site.thickness_mm * float(rng.uniform(1.0, 1.4))
        lesions.append(_make("metastasis", site.name, xy, z + rng.normal(0, 0.03), radius, rel, s, elong, direction,
                             thickness))
    return lesions


# chance that a patient shows physiological uptake at a joint group, and its largest excess
_PHYSIOLOGICAL_GROUPS = {
    "knee": (0.75, 0.8), "shoulder": (0.7, 0.7), "sacroiliac": (0.8, 0.7), "sternoclavicular": (0.6, 0.8),
    "acromioclavicular": (0.5, 0.6), "hip": (0.4, 0.4), "ankle": (0.5, 0.6), "wrist": (0.4, 0.5),
    "elbow": (0.3, 0.4), "facet": (0.5, 0.5),
}

# chance of each joint group being arthritic (at least one is)
_ARTHRITIS_GROUPS = {
    "knee": 0.6, "shoulder": 0.3, "hip": 0.22, "hand": 0.25, "wrist": 0.22, "foot": 0.25, "ankle": 0.2,
    "elbow": 0.1, "sternoclavicular": 0.07, "acromioclavicular": 0.1, "sacroiliac": 0.08,
}


def _visible_joints(anatomy: Anatomy | VoxelAnatomy) -> list[Joint]:
    # a hand or foot (partly) outside the field of view cannot show what a label claims
    s = anatomy.pixel_spacing_mm
    rows, cols = anatomy.matrix
    visible = []
    for j in anatomy.joints:
        margin = j.half_width_mm / s
        c, r = j.centre[0] / s - 0.5, j.centre[1] / s - 0.5
        if margin <= c < cols - margin and margin <= r < rows - margin:
            visible.append(j)
    return visible


def sample_physiological(anatomy: Anatomy | VoxelAnatomy, rng: np.random.Generator) -> list[Lesion]:
    """Mild symmetric joint uptake a normal patient has; records the levels in ``anatomy.physiological``.

    Drawn for every patient whatever the label, so it says nothing about the class.  Lower
    lumbar facets stand for physiological spine uptake.  Younger patients' joints are a
    little more active.
    """
    s = anatomy.pixel_spacing_mm
    activity = float(rng.lognormal(0.0, 0.35)) * (1.25 if anatomy.patient.age < 40 else 1.0)
    lesions: list[Lesion] = []
    for group, (chance, largest) in _PHYSIOLOGICAL_GROUPS.items():
        if rng.random() >= chance:
            continue
        excess = largest * float(rng.uniform(0.2, 1.0)) * activity
        joints = [j for j in anatomy.joints if j.group == group]
        if group == "facet":
            joints = [j for j in joints if j.name[:2] in ("L4", "L5")]
        scale = float(rng.uniform(0.8, 1.05))
        for joint in joints:
            rel = 1.0 + excess * float(rng.lognormal(0.0, 0.04))  # symmetric within a few per cent
            anatomy.physiological[joint.name] = rel
            lesions.append(_joint_lesion("physiological", joint, rel, scale, s, rng, focal=False, host=1.0))
    return lesions


def _joint_lesion(kind: str, joint: Joint, rel: float, scale: float, s: float,
                  rng: np.random.Generator, focal: bool = True, host: float = 1.0) -> Lesion:
    across = (joint.direction[1], -joint.direction[0])
    radius = joint.half_width_mm * scale
    elong = max(joint.half_width_mm / joint.half_height_mm, 1.0) * rng.uniform(0.85, 1.15)
    cx, cy = joint.centre
    if focal:
        # a focus within the joint: a compartment (the medial one most often in the knee)
        # or one margin, not the whole joint
        offset = float(rng.uniform(0.2, 0.5)) * joint.half_width_mm
        sign = -1.0 if joint.side == "left" else 1.0
        if not (joint.group == "knee" and rng.random() < 0.6):
            sign = 1.0 if rng.random() < 0.5 else -1.0
        cx += sign * across[0] * offset
        cy += sign * across[1] * offset
        elong = max(1.0, elong * 0.7)
    return _make(kind, joint.name, (cx, cy), joint.depth + rng.normal(0, 0.03), radius, rel, s, elong, across,
                 joint.thickness_mm * min(radius / joint.half_width_mm, 1.0), host)


def sample_arthritis(anatomy: Anatomy | VoxelAnatomy, rng: np.random.Generator) -> list[Lesion]:
    """Focal joint uptake clearly above the patient's physiological level, often asymmetric.

    Call after :func:`sample_physiological`: each lesion sits on its joint's physiological
    level and reaches at least :data:`ARTHRITIS_MIN_RATIO` times it.
    """
    s = anatomy.pixel_spacing_mm
    groups = [g for g, p in _ARTHRITIS_GROUPS.items() if rng.random() < p]
    if not groups:
        groups = ["knee"]
    visible = _visible_joints(anatomy)
    if not any(j.group in groups for j in visible):
        groups = ["knee"]
    lesions = []
    for group in groups:
        joints = [j for j in visible if j.group == group]
        if not joints:
            continue
        # asymmetric: one side only (often), or both at clearly different intensities
        if len(joints) > 1 and rng.random() < 0.45:
            chosen = joints
        else:
            chosen = [joints[int(rng.integers(len(joints)))]]
        group_ratio = ARTHRITIS_MIN_RATIO + float(rng.lognormal(math.log(0.8), 0.6))
        for joint in chosen:
            host = anatomy.physiological.get(joint.name, 1.0)
            ratio = max(ARTHRITIS_MIN_RATIO, group_ratio * float(rng.lognormal(0.0, 0.3)))
            scale = float(rng.uniform(0.4, 0.8))
            lesions.append(_joint_lesion("arthritis", joint, host * ratio, scale, s, rng, host=host))
    return lesions


def sample_confounders(anatomy: Anatomy | VoxelAnatomy, rng: np.random.Generator) -> list[Lesion]:
    """Findings that occur in every class at the same rate (injection, contamination, ...)."""
    s = anatomy.pixel_spacing_mm
    lesions: list[Lesion] = []
    age = anatomy.patient.age
    # injection site
    if rng.random() < 0.4:
        u = rng.random()
        kind = "antecubital fossa" if u < 0.6 else ("hand dorsum" if u < 0.85 else "forearm")
        side = "left" if rng.random() < 0.45 else "right"
        name, xy, z = next(site for site in anatomy.injection_sites if site[0] == f"{side} {kind}")
        xy = (xy[0] + rng.normal(0, 4), xy[1] + rng.normal(0, 6))
        rel = float(np.exp(rng.uniform(math.log(1.5), math.log(60.0))))
        lesions.append(_make("injection", name, xy, z, rng.uniform(3.5, 8.0), rel, s))
        if rng.random() < 0.25:
            lesions.append(_make("injection", f"{name} extravasation",
                                 (xy[0] + rng.normal(0, 6), xy[1] + rng.normal(0, 10)),
                                 z + 0.1, rng.uniform(15.0, 35.0), float(rng.uniform(0.3, 2.0)), s,
                                 rng.uniform(1.0, 1.8), (0.0, 1.0)))
            if rng.random() < 0.35:
                ax = anatomy.landmarks[f"{side} axilla"]
                lesions.append(_make("lymph_node", f"{side} axilla",
                                     (ax[0] + rng.normal(0, 8), ax[1] + rng.normal(0, 10)),
                                     0.5, rng.uniform(4.0, 8.0), float(rng.uniform(0.5, 3.0)), s))
    # urine contamination near the pelvis, on the skin/clothes (anterior) or the couch (posterior)
    if rng.random() < 0.08:
        sx, sy = anatomy.landmarks["symphysis"]
        for _ in range(int(rng.integers(1, 4))):
            xy = (sx + rng.normal(0, 45), sy + rng.uniform(-20, 180))
            z = 0.0 if rng.random() < 0.6 else 1.0
            lesions.append(_make("contamination", "perineum/upper thigh", xy, z, rng.uniform(3.0, 9.0),
                                 float(np.exp(rng.uniform(math.log(2.0), math.log(40.0)))), s))
    # mild degenerative change, more often and at more joints with age
    if rng.random() < 0.25 + 0.012 * max(age - 50, 0):
        for _ in range(int(rng.integers(1, 4 if age > 65 else 3))):
            u = rng.random()
            if u < 0.35:
                level = ["L3", "L4", "L5"][int(rng.integers(3))]
                side = "left" if rng.random() < 0.5 else "right"
                joint = next(j for j in anatomy.joints if j.name == f"{level} {side} facet")
                scale = 1.0
            else:
                group = ("knee" if u < 0.55 else "acromioclavicular" if u < 0.67 else "foot" if u < 0.77 else
                         "sternoclavicular" if u < 0.85 else "hand" if u < 0.92 else "facet")
                joints = [j for j in anatomy.joints if j.group == group]
                if group == "facet":
                    joints = [j for j in joints if j.name.startswith("C")]
                joint = joints[int(rng.integers(len(joints)))]
                scale = 0.45 if group in ("knee", "foot", "hand") else 1.0
            host = anatomy.physiological.get(joint.name, 1.0)
            rel = host * float(rng.uniform(1.1, DEGENERATIVE_MAX_RATIO))
            lesions.append(_joint_lesion("degenerative", joint, rel, scale * float(rng.uniform(0.8, 1.0)), s, rng,
                                         host=host))
    # healing rib fractures: adjacent ribs, same side, aligned
    if rng.random() < 0.04:
        side = "left" if rng.random() < 0.5 else "right"
        first = int(rng.integers(3, 10))
        frac_pos = rng.uniform(0.35, 0.75)
        for k in range(first, first + int(rng.integers(1, 4))):
            site = next(b for b in anatomy.bone_sites if b.name == f"{side} rib {k}")
            idx = frac_pos * (len(site.points) - 1)
            i = min(int(idx), len(site.points) - 2)
            t = idx - i
            (x0, y0), (x1, y1) = site.points[i], site.points[i + 1]
            z = site.depths[i] + t * (site.depths[i + 1] - site.depths[i])
            lesions.append(_make("fracture", site.name, (x0 + t * (x1 - x0), y0 + t * (y1 - y0)), z,
                                 rng.uniform(4.0, 6.5), float(rng.uniform(2.0, 5.0)), s, thickness=site.thickness_mm))
    if rng.random() < 0.03:
        rel = float(rng.uniform(1.8, 3.2))
        for side in ("left", "right"):
            kx, ky = anatomy.landmarks[f"{side} knee"]
            lesions.append(_make("hot_patella", f"{side} patella", (kx, ky - 14), 0.08, rng.uniform(16, 21),
                                 rel * float(rng.lognormal(0, 0.15)), s, thickness=20.0))
    if rng.random() < (0.12 if anatomy.patient.sex == "F" and age > 50 else 0.02):
        cx, cy = anatomy.landmarks["skull"]
        lesions.append(_make("hyperostosis_frontalis", "frontal bone",
                             (cx + rng.normal(0, 4), cy - rng.uniform(20, 45)),
                             0.1, rng.uniform(22.0, 35.0), float(rng.uniform(1.4, 2.2)), s, rng.uniform(1.4, 2.0),
                             thickness=12.0))
    if rng.random() < 0.08:
        jx, jy = anatomy.landmarks["jaw"]
        lesions.append(_make("dental", "mandible/maxilla", (jx + rng.normal(0, 25), jy - rng.uniform(0, 35)),
                             0.1, rng.uniform(5.0, 9.0), float(rng.uniform(1.8, 3.5)), s))
    return lesions
