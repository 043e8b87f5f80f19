"""A randomised 3-D skeleton and body for the synthetic bone scan.

:func:`sample_anatomy` draws one patient (sex, age, height, build, pose) and returns an
:class:`Anatomy`: the tracer distribution of a normal skeleton, kidneys and bladder as
:class:`~spectnode.phantom.render.Primitive` objects in image millimetres, the soft-tissue
outline as an anterior-posterior thickness map, and registries of the places where findings
can be put (bone sites for metastases, joints for arthritis, veins for the injection).

Coordinates.  The anatomy is laid out in a *patient frame*: ``u`` (mm) lateral, positive
towards the patient's LEFT, and ``v`` (mm) caudal from the vertex of the skull.  The patient
frame maps onto the ANTERIOR view, which shows the patient as seen from the front (patient's
right on the image left), so ``u`` grows with the column index and ``v`` with the row index.
Depth ``z`` is relative: 0 at the anterior skin, 1 at the posterior skin.  Body proportions
follow standard anthropometric ratios of the standing height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .render import Primitive

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable, Sequence

    Point = tuple[float, float]  # (u, v) patient frame or (x, y) image mm, both in mm

__all__ = [
    "PIXEL_SPACING_RANGE_MM",
    "PhantomPatient",
    "Anatomy",
    "BoneSite",
    "Joint",
    "sample_patient",
    "sample_anatomy",
]

# Reference standing height (mm) for which the lateral dimensions below are written.
_REF_HEIGHT = 1750.0

#: Pixel size drawn at 1024 rows (it scales inversely with the row count).
PIXEL_SPACING_RANGE_MM: tuple[float, float] = (1.9, 2.8)

# Fractions of the standing height where the body's segments meet (vertex, lower neck, T12,
# top of the sacrum, knee, ankle, sole); each segment's length is drawn on its own.
_LENGTH_KNOTS = (0.0, 0.15, 0.32, 0.445, 0.70, 0.955, 1.0)
# Levels (fractions of the height) of the lateral width knots: head, neck, shoulders, chest,
# waist, pelvis, knees, ankles; the first two stay at scale 1.
_WIDTH_KNOTS = (0.0, 0.13, 0.18, 0.27, 0.36, 0.46, 0.70, 0.96)
# Primitive groups that are bone (thickness randomisation applies to them).
_BONE_GROUPS = frozenset({"bone", "axial", "appendicular", "joint", "face", "patella", "growth"})


@dataclass(frozen=True)
class PhantomPatient:
    """Demographics of a synthetic patient.

    Attributes:
        patient_id: Identifier written into the DICOM header.
        sex: ``"M"`` or ``"F"``.
        age: Age in years.
        height_cm: Standing height.
        weight_kg: Body weight.
        birth_date: Birth date, when the generator fixes it (``None``: drawn to fit the age).
    """

    patient_id: str
    sex: str
    age: int
    height_cm: float
    weight_kg: float
    birth_date: dt.date | None = None


@dataclass
class BoneSite:
    """A bone along which focal findings can be placed.

    Attributes:
        name: Readable site name, e.g. ``"L3 vertebral body"`` or ``"left rib 7"``.
        region: Coarse region: ``"spine"``, ``"rib"``, ``"pelvis"``, ``"sacrum"``, ``"skull"``,
            ``"sternum"``, ``"scapula"``, ``"clavicle"``, ``"femur"``, ``"humerus"`` or
            ``"distal_long_bone"``.
        points: Polyline along the bone in image mm.
        depths: Relative depth at each polyline point.
        radius_mm: Half-width of the bone across the polyline.
        thickness_mm: Anterior-posterior extent of the bone; a lesion cannot be thicker.
        weight: Relative chance of a metastasis here among the sites of its region.
    """

    name: str
    region: str
    points: list[tuple[float, float]]
    depths: list[float]
    radius_mm: float
    thickness_mm: float = 20.0
    weight: float = 1.0


@dataclass
class Joint:
    """A joint that can show arthritic or degenerative uptake.

    Attributes:
        name: E.g. ``"left knee"``.
        group: ``"knee"``, ``"shoulder"``, ``"hip"``, ``"elbow"``, ``"wrist"``, ``"hand"``,
            ``"ankle"``, ``"foot"``, ``"sternoclavicular"``, ``"acromioclavicular"`` or
            ``"facet"``.
        side: ``"left"``, ``"right"`` or ``"mid"``.
        centre: Image mm.
        depth: Relative depth.
        half_width_mm: Half extent across the limb (or horizontally).
        half_height_mm: Half extent along the limb.
        direction: Unit vector (image frame) along the limb.
        thickness_mm: Anterior-posterior extent of the joint's bone ends.
    """

    name: str
    group: str
    side: str
    centre: tuple[float, float]
    depth: float
    half_width_mm: float
    half_height_mm: float
    direction: tuple[float, float] = (0.0, 1.0)
    thickness_mm: float = 40.0


# Anterior-posterior bone thickness per site region and per joint group (mm): thin bones
# (calvarium, ribs, scapula) cannot hold a thick lesion.
_SITE_THICKNESS = {"skull": 10.0, "rib": 12.0, "sternum": 14.0, "scapula": 10.0, "clavicle": 14.0,
                   "spine": 30.0, "pelvis": 18.0, "sacrum": 28.0, "femur": 30.0, "humerus": 24.0,
                   "distal_long_bone": 26.0}
# For joints this is the subchondral bone that takes up tracer, not the whole joint.
_JOINT_THICKNESS = {"knee": 40.0, "shoulder": 35.0, "hip": 35.0, "elbow": 25.0, "wrist": 20.0, "hand": 12.0,
                    "ankle": 28.0, "foot": 16.0, "sternoclavicular": 14.0, "acromioclavicular": 12.0,
                    "facet": 12.0, "sacroiliac": 14.0}


@dataclass
class SoftPart:
    """A soft-tissue body part: a tapered capsule with an anterior-posterior thickness."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float
    t0: float
    t1: float


@dataclass
class Anatomy:
    """One sampled patient laid out in image millimetres.

    Attributes:
        patient: Demographics.
        matrix: ``(rows, cols)``.
        pixel_spacing_mm: Square pixel size.
        mu_per_mm: Effective soft-tissue attenuation coefficient at 140 keV.
        thickness_mm: Anterior-posterior body thickness per pixel (0 outside the body).
        breast_mm: Extra anterior soft tissue (breasts) per pixel; attenuates only the
            anterior view.
        primitives: Normal tracer distribution: skeleton, kidneys, bladder.
        bone_sites: Places for metastases and other focal bone findings.
        joints: Places for arthritis and degenerative change.
        injection_sites: ``(name, (x, y), depth)`` of veins used for the injection.
        landmarks: Named image-mm points (pelvis, knees, ...).
        soft_tissue_ratio: Soft-tissue activity concentration relative to normal bone; the
            renderer sets it from ``soft_to_bone``.
        gains: Per-group multipliers of the primitives' amplitudes.
        table_transmission: Fraction of posterior-view photons that pass the couch.
        age_years: Same as ``patient.age`` (kept for the renderer).
        soft_to_bone: Target soft-tissue to bone ratio of the image: the soft tissue's
            projected activity over the lumbar spine's at L3 in the posterior view (before
            blur), drawn from 1/15 to 1/5.
        physiological: Physiological uptake (relative to bone) of each joint that has some;
            the level above which joint uptake counts as arthritic.  Filled by the findings.
        reference_gains: ``gains`` as drawn, before a superscan or the phase changed them.
        name: Which anatomy builder made this (``"classic"``).
    """

    patient: PhantomPatient
    matrix: tuple[int, int]
    pixel_spacing_mm: float
    mu_per_mm: float
    thickness_mm: np.ndarray
    breast_mm: np.ndarray
    primitives: list[Primitive]
    bone_sites: list[BoneSite]
    joints: list[Joint]
    injection_sites: list[tuple[str, tuple[float, float], float]]
    landmarks: dict[str, tuple[float, float]]
    soft_tissue_ratio: float
    gains: dict[str, float] = field(default_factory=dict)
    table_transmission: float = 0.93
    age_years: int = 60
    soft_to_bone: float = 0.1
    physiological: dict[str, float] = field(default_factory=dict)
    reference_gains: dict[str, float] = field(default_factory=dict)
    name: str = "classic"


# --------------------------------------------------------------------------------------------
# patient sampling
# --------------------------------------------------------------------------------------------


def sample_patient(rng: np.random.Generator, patient_id: str = "PHANTOM") -> PhantomPatient:
    """Draw demographics typical of a bone-scan population (mostly older adults)."""
    sex = "M" if rng.random() < 0.5 else "F"
    if rng.random() < 0.06:
        age = int(rng.integers(16, 40))
    else:
        age = int(np.clip(round(rng.normal(64.0, 12.0)), 25, 92))
    mean_h, sd_h = (176.0, 7.0) if sex == "M" else (163.0, 6.5)
    height_cm = float(np.clip(rng.normal(mean_h, sd_h), 148.0, 200.0))
    bmi = float(np.clip(rng.lognormal(math.log(26.5), 0.2), 16.0, 48.0))
    weight_kg = round(bmi * (height_cm / 100.0) ** 2, 1)
    return PhantomPatient(patient_id, sex, age, round(height_cm, 1), weight_kg)


# --------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------


def _unit(dx: float, dy: float) -> tuple[float, float]:
    n = math.hypot(dx, dy)
    return (dx / n, dy / n) if n > 0 else (0.0, 1.0)


class _Builder:
    """Lays out one body; every method takes patient-frame (u, v) millimetres."""

    def __init__(self, rng: np.random.Generator, patient: PhantomPatient, matrix: tuple[int, int],
                 spacing: float) -> None:
        self.rng = rng
        self.patient = patient
        self.rows, self.cols = matrix
        self.s = spacing
        self.H = patient.height_cm * 10.0
        female = patient.sex == "F"
        bmi = patient.weight_kg / (patient.height_cm / 100.0) ** 2
        self.bmi = bmi
        # lateral scale of bones, head size, pelvis
        self.bl = (self.H / _REF_HEIGHT) * (0.93 if female else 1.0) * rng.normal(1.0, 0.03)
        self.hs = (0.96 if female else 1.0) * rng.normal(1.0, 0.03)
        self.pl = self.bl * (1.07 if female else 1.0) * rng.normal(1.0, 0.03)
        self.fat = max(0.0, bmi - 20.0) * rng.uniform(3.2, 4.8)  # extra half-width from fat (mm)
        self.shoulder = (0.115 if not female else 0.106) * self.H * rng.normal(1.0, 0.03)
        # image placement: vertex margin, lateral offset and a slight whole-body tilt (shear)
        self.top = rng.uniform(8.0, 110.0)
        self.xmid = self.cols * spacing / 2.0 + rng.normal(0.0, 8.0)
        self.tilt = math.tan(math.radians(rng.normal(0.0, 1.2)))
        self.pivot_v = 0.45 * self.H
        # pose
        self.head_tilt = math.radians(float(np.clip(rng.normal(0.0, 3.5), -9.0, 9.0)))
        self.head_pivot = 0.13 * self.H
        amp = 0.0
        if rng.random() < 0.3 + 0.004 * max(patient.age - 50, 0):
            amp = rng.normal(0.0, 9.0 if patient.age > 60 else 5.0)
        self.scoliosis_amp = amp
        self.scoliosis_periods = 1.0 if rng.random() < 0.6 else 2.0
        # proportions (domain randomisation): each body segment's length varies on its own
        # while the standing height stays, and the body's width varies per level
        knots = np.array(_LENGTH_KNOTS) * self.H
        seg = np.diff(knots) * np.clip(rng.normal(1.0, 0.06, len(knots) - 1), 0.82, 1.2)
        seg *= (knots[-1] - knots[0]) / seg.sum()
        self._v_knots = knots
        self._v_warped = np.concatenate([[knots[0]], knots[0] + np.cumsum(seg)])
        self._w_knots = np.array(_WIDTH_KNOTS) * self.H
        self._w_scale = np.concatenate([[1.0, 1.0], np.clip(rng.normal(1.0, 0.06, len(_WIDTH_KNOTS) - 2),
                                                            0.85, 1.18)])
        # cortical thickness of the tubular bones (and so their activity per length)
        self.bone_thickness = float(np.clip(rng.normal(1.0, 0.1), 0.75, 1.3))
        self.region_gain = 1.0
        u = rng.random()
        shared = "side" if u < 0.62 else ("abducted" if u < 0.8 else "chest")
        self.arm_pose = {side: (shared if rng.random() < 0.85 else str(rng.choice(["side", "abducted", "chest"])))
                         for side in (-1, 1)}
        self.primitives: list[Primitive] = []
        self.bone_sites: list[BoneSite] = []
        self.joints: list[Joint] = []
        self.soft: list[SoftPart] = []
        self.injection_sites: list[tuple[str, tuple[float, float], float]] = []
        self.landmarks: dict[str, tuple[float, float]] = {}
        # per-primitive uptake heterogeneity, so a normal skeleton is not perfectly uniform
        self.hetero = 0.12
        self._hetero_pool: list[float] = []
        self._hetero_next = 0

    # -- frame ------------------------------------------------------------------------------
    def warp_v(self, v: float) -> float:
        """Caudal distance after this patient's own segment lengths (same standing height)."""
        return float(np.interp(v, self._v_knots, self._v_warped))

    def width_scale(self, v: float) -> float:
        """Lateral stretch of the body at (unwarped) height v: shoulders, chest, waist, pelvis."""
        return float(np.interp(v, self._w_knots, self._w_scale))

    def P(self, u: float, v: float) -> tuple[float, float]:
        """Patient frame -> image mm (proportions warped; a small whole-body tilt as a shear)."""
        w = self.warp_v(v)
        return (self.xmid + u * self.width_scale(v) + (w - self.pivot_v) * self.tilt, self.top + w)

    def head(self, u: float, v: float, weight: float = 1.0) -> tuple[float, float]:
        """Rotate a head/neck point about the lower neck by the head tilt (times weight)."""
        a = self.head_tilt * weight
        dv = v - self.head_pivot
        return (u * math.cos(a) - dv * math.sin(a), self.head_pivot + u * math.sin(a) + dv * math.cos(a))

    def scol(self, v: float) -> float:
        """Lateral spine offset (scoliosis) at height v."""
        v0, v1 = 0.16 * self.H, 0.43 * self.H
        if v <= v0 or v >= v1 or self.scoliosis_amp == 0.0:
            return 0.0
        return self.scoliosis_amp * math.sin(self.scoliosis_periods * math.pi * (v - v0) / (v1 - v0))

    # -- primitive helpers (patient frame in, image frame stored) ---------------------------
    def _amp(self, amp: float) -> float:
        # drawn in blocks: one generator call per primitive would cost more than rendering it
        if self._hetero_next >= len(self._hetero_pool):
            self._hetero_pool = self.rng.lognormal(0.0, self.hetero, 512).tolist()
            self._hetero_next = 0
        self._hetero_next += 1
        return amp * self.region_gain * self._hetero_pool[self._hetero_next - 1]

    def capsule(self, p0: Point, p1: Point, r0: float, r1: float, amp: float, z0: float,
                z1: float | None = None, group: str = "bone", profile: str = "solid",
                image: bool = False) -> None:
        a = p0 if image else self.P(*p0)
        b = p1 if image else self.P(*p1)
        z1 = z0 if z1 is None else z1
        k = self.bone_thickness if group in _BONE_GROUPS else 1.0
        self.primitives.append(Primitive("capsule", (a, b), (r0 * k, r1 * k), (z0, z1), self._amp(amp * k),
                                         group, profile))

    def chain(self, pts: Sequence[Point], radius: float, amp: float, depths: Sequence[float],
              group: str = "bone", image: bool = False) -> None:
        """Consecutive capsules through patient-frame points with per-point depths."""
        for i in range(len(pts) - 1):
            self.capsule(pts[i], pts[i + 1], radius, radius, amp, depths[i], depths[i + 1], group, image=image)

    def ellipse(self, c: Point, a: float, b: float, amp: float, z: float, group: str = "bone",
                profile: str = "solid", direction: Point = (1.0, 0.0), image: bool = False,
                inner: float = 0.9) -> None:
        """Ellipse with semi-axis ``a`` along ``direction`` (image frame unit vector)."""
        cc = c if image else self.P(*c)
        angle = math.atan2(-direction[1], direction[0])
        self.primitives.append(Primitive("ellipse", (cc,), (a, b), (z,), self._amp(amp), group,
                                         profile, angle, inner))

    def polygon(self, pts: Iterable[Point], amp: float, z: float, group: str = "bone") -> None:
        self.primitives.append(Primitive("polygon", tuple(self.P(*p) for p in pts), (0.0, 0.0), (z,),
                                         self._amp(amp), group, "flat"))

    def site(self, name: str, region: str, pts: Iterable[Point], depths: Iterable[float], radius: float,
             image: bool = False, thickness: float | None = None, weight: float = 1.0) -> None:
        ipts = list(pts) if image else [self.P(*p) for p in pts]
        t = _SITE_THICKNESS[region] if thickness is None else thickness
        self.bone_sites.append(BoneSite(name, region, ipts, list(depths), radius, t, weight))

    def joint(self, name: str, group: str, side: str, c: Point, z: float, hw: float, hh: float,
              direction: Point = (0.0, 1.0), image: bool = False) -> None:
        cc = c if image else self.P(*c)
        self.joints.append(Joint(name, group, side, cc, z, hw, hh, direction, _JOINT_THICKNESS[group]))

    def softpart(self, p0: Point, p1: Point, r0: float, r1: float, t0: float, t1: float,
                 image: bool = False) -> None:
        a = p0 if image else self.P(*p0)
        b = p1 if image else self.P(*p1)
        self.soft.append(SoftPart(a, b, r0, r1, t0, t1))

    # -- body -------------------------------------------------------------------------------
    def build(self) -> None:
        rng = self.rng
        # each region's bone uptake varies on its own; the limbs stay nearly symmetric
        gains = rng.lognormal(0.0, 0.16, 6)
        for method, gain in zip((self._skull, self._spine_and_ribs, self._shoulder_girdle, self._pelvis),
                                gains[:4]):
            self.region_gain = float(gain)
            method()
        for side in (-1, 1):
            self.region_gain = float(gains[4] * rng.lognormal(0.0, 0.03))
            self._arm(side)
            self.region_gain = float(gains[5] * rng.lognormal(0.0, 0.03))
            self._leg(side)
        self.region_gain = 1.0
        self._blood_pool()
        self._soft_tissue()

    def _blood_pool(self) -> None:
        """Heart, great vessels, liver and spleen: dark on delayed images, the early phase's content.

        Amplitudes are chords in mm at unit concentration; the phase sets the concentration
        through the ``"blood"`` and ``"organ"`` gains (0 in the delayed phase).
        """
        H, bl, rng = self.H, self.bl, self.rng
        heart = (rng.normal(28.0, 8.0) * bl, rng.normal(0.262, 0.008) * H)
        self.ellipse(heart, 62 * bl, 50 * bl, 95.0, 0.35, group="blood", direction=_unit(1.0, 0.45),
                     profile="soft")
        arch = [(8 * bl, 0.225 * H), (-2 * bl, 0.185 * H), (18 * bl, 0.172 * H), (30 * bl, 0.19 * H)]
        self.chain(arch, 13.0, 22.0, [0.4, 0.45, 0.55, 0.7], group="blood")
        self.capsule((28 * bl, 0.20 * H), (8 * bl, 0.425 * H), 11.0, 9.0, 18.0, 0.65, 0.55, group="blood")
        self.capsule((-22 * bl, 0.30 * H), (-18 * bl, 0.425 * H), 12.0, 11.0, 20.0, 0.5, group="blood")
        for side in (-1, 1):  # iliac and femoral vessels
            self.capsule((side * 5 * bl, 0.425 * H), (side * 70 * bl, 0.49 * H), 7.0, 6.0, 12.0, 0.45, 0.3,
                         group="blood")
            self.capsule((side * 70 * bl, 0.49 * H), (side * 92 * bl, 0.66 * H), 6.0, 4.5, 9.0, 0.3, 0.4,
                         group="blood")
        liver = (-70 * bl, rng.normal(0.315, 0.008) * H)
        self.ellipse(liver, 105 * bl, 70 * bl, 120.0, 0.45, group="organ", direction=_unit(1.0, -0.25),
                     profile="soft")
        self.ellipse((78 * bl, 0.305 * H), 34 * bl, 52 * bl, 70.0, 0.7, group="organ", profile="soft")
        self.landmarks["heart"] = self.P(*heart)
        self.landmarks["liver"] = self.P(*liver)

    def _skull(self) -> None:
        _H, hs, rng = self.H, self.hs, self.rng
        a, b = 71.0 * hs, 93.0 * hs
        yc = 5.0 + b
        self.skull_centre_v = yc
        hd = self.head
        cx, cy = hd(0.0, yc)
        # calvarium: an ellipsoidal shell seen from the front; frontal half anterior,
        # occipital half posterior, so the two views differ by attenuation
        for z in (0.18, 0.82):
            self.ellipse((cx, cy), a, b, 4.2, z, group="axial", profile="shell",
                         direction=self._rot_dir(1.0, 0.0), inner=0.9)
        # skull base (petrous ridges) at mid depth
        for side in (-1, 1):
            self.capsule(hd(side * 18 * hs, yc + 32 * hs), hd(side * 58 * hs, yc + 48 * hs), 7, 6, 9.0,
                         0.5, group="axial")
        # facial bones, anterior
        face = "face"
        for side in (-1, 1):
            self.ellipse(hd(side * 31 * hs, yc + 30 * hs), 17 * hs, 15 * hs, 3.5, 0.1, group=face,
                         profile="shell", inner=0.75, direction=self._rot_dir(1.0, 0.0))
            self.capsule(hd(side * 45 * hs, yc + 48 * hs), hd(side * 66 * hs, yc + 40 * hs), 6, 5, 7.0,
                         0.25, group=face)
        self.ellipse(hd(0.0, yc + 56 * hs), 28 * hs, 15 * hs, 7.0, 0.12, group=face,
                     direction=self._rot_dir(1.0, 0.0))
        self.capsule(hd(-24 * hs, yc + 70 * hs), hd(24 * hs, yc + 70 * hs), 6, 6, 7.0, 0.08, group=face)
        # mandible: angles (deeper) round to the chin (anterior)
        mand = [hd(u * hs, yc + dv * hs) for u, dv in
                [(-50, 62), (-47, 88), (-33, 106), (0, 114), (33, 106), (47, 88), (50, 62)]]
        self.chain(mand, 6.5, 9.0, [0.55, 0.45, 0.2, 0.05, 0.2, 0.45, 0.55], group=face)
        # occipital protuberance / skull base posteriorly
        self.ellipse(hd(0.0, yc + 58 * hs), 38 * hs, 22 * hs, 10.0, 0.92, group="axial",
                     direction=self._rot_dir(1.0, 0.0))
        # sites: points on the calvarium (front or back half) for skull metastases
        angles = np.linspace(-2.6, 2.6, 9)
        ring = [hd(0.93 * a * math.sin(t), yc - 0.93 * b * math.cos(t)) for t in angles]
        self.site("skull", "skull", ring, [0.18] * len(ring), 8.0)
        self.site("skull", "skull", ring, [0.82] * len(ring), 8.0)
        inner = [hd(0.5 * a * math.sin(t), yc - 0.5 * b * math.cos(t)) for t in angles[2:-2]]
        self.site("skull", "skull", inner, [0.15 if rng.random() < 0.5 else 0.85] * len(inner), 8.0)
        self.landmarks["skull"] = self.P(cx, cy)
        self.landmarks["jaw"] = self.P(*hd(0.0, yc + 100 * hs))

    def _rot_dir(self, dx: float, dy: float) -> tuple[float, float]:
        a = self.head_tilt
        return (dx * math.cos(a) - dy * math.sin(a), dx * math.sin(a) + dy * math.cos(a))

    def _spine_and_ribs(self) -> None:
        H, bl, rng = self.H, self.bl, self.rng
        yc = self.skull_centre_v
        levels: list[tuple[str, float, float, float, float, float, float]] = []
        # (name, v, width, height, body amplitude, body depth, posterior-element depth)
        c1 = yc + 74 * self.hs
        c7 = 0.146 * H
        for i in range(7):
            v = c1 + (c7 - c1) * i / 6
            levels.append((f"C{i + 1}", v, (36 if i == 0 else 22 + i) * bl, 0.0085 * H, 10.0, 0.5, 0.78))
        for i in range(12):
            v = 0.158 * H + i * (0.318 - 0.158) * H / 11
            levels.append((f"T{i + 1}", v, (29 + 1.2 * i) * bl, (0.0105 + 0.0004 * i) * H, 17.0 + 0.8 * i,
                           0.64, 0.87))
        for i in range(5):
            v = 0.340 * H + i * 0.021 * H
            levels.append((f"L{i + 1}", v, (46 + 1.5 * i) * bl, 0.0165 * H, 30.0, 0.57 - 0.01 * i, 0.84))
        self.vertebrae = {}
        for name, v, w, h, amp, zb, zp in levels:
            cervical = name.startswith("C")
            # metastases favour the lumbar and lower thoracic spine over the cervical
            level_weight = 0.35 if cervical else (1.3 if name.startswith("L") else 1.0)
            weight = (1.0 - (v - c1) / (c7 - c1)) if cervical else 0.0
            sx = self.scol(v)
            centre = self.head(sx, v, weight) if cervical else (sx, v)
            self.vertebrae[name] = (centre, w, h, zb, zp)
            direction = self._rot_dir(1.0, 0.0) if cervical else (1.0, 0.0)
            # vertebral body: slightly wider than tall, end plates bright in projection
            self.ellipse(centre, 0.5 * w, 0.5 * h * 0.95, amp, zb, group="axial", direction=direction)
            # pedicles / facets (posterior arch) at the lateral margins
            for side in (-1, 1):
                pu, pv = centre[0] + side * 0.36 * w, centre[1] - 0.12 * h
                self.ellipse((pu, pv), 0.11 * w + 1.5, 0.22 * h + 1.0, 8.0 if not cervical else 6.0, zp,
                             group="axial")
                self.site(f"{name} {'left' if side > 0 else 'right'} pedicle", "spine", [(pu, pv)], [zp],
                          0.15 * w, thickness=16.0, weight=0.2 * level_weight)
                # facet joint below this vertebra (degenerative change, mostly lower lumbar)
                self.joint(f"{name} {'left' if side > 0 else 'right'} facet", "facet",
                           "left" if side > 0 else "right", (centre[0] + side * 0.3 * w, centre[1] + 0.5 * h),
                           zp, 0.12 * w + 3, 0.2 * h + 3)
            # spinous process (midline, most posterior)
            self.capsule((centre[0], centre[1] - 0.1 * h), (centre[0], centre[1] + 0.55 * h), 3.5, 3.0,
                         6.0, 0.93, group="axial")
            if name.startswith("L"):
                for side in (-1, 1):
                    self.capsule((centre[0] + side * 0.45 * w, centre[1]),
                                 (centre[0] + side * (0.45 * w + 18 * bl), centre[1] + 2),
                                 4.0, 3.0, 5.0, 0.8, group="axial")
            self.site(f"{name} vertebral body", "spine",
                      [(centre[0] - 0.2 * w, centre[1]), (centre[0] + 0.2 * w, centre[1])], [zb, zb], 0.3 * w,
                      weight=level_weight)
        self.landmarks["T1"] = self.P(*self.vertebrae["T1"][0])
        self.landmarks["L3"] = self.P(*self.vertebrae["L3"][0])
        self.landmarks["L5"] = self.P(*self.vertebrae["L5"][0])
        # ribs: each runs round an elliptic thorax from the spine (posterior) past the side
        # (lateral) to the costochondral junction (anterior) and descends as it goes
        lateral = [58, 84, 102, 114, 122, 127, 129, 129, 126, 120, 110, 96]
        theta_end = [2.75, 2.7, 2.68, 2.66, 2.64, 2.6, 2.55, 2.45, 2.3, 2.1, 1.75, 1.35]
        drop = [0.03, 0.048, 0.058, 0.064, 0.067, 0.068, 0.068, 0.066, 0.062, 0.054, 0.04, 0.026]
        chest_w = bl * rng.normal(1.0, 0.03)
        for k in range(12):
            (su, sv), w, _, _, _ = self.vertebrae[f"T{k + 1}"]
            R = lateral[k] * chest_w
            thetas = np.linspace(0.22, theta_end[k], 9 if k > 0 else 7)
            for side in (-1, 1):
                pts, depths, amps = [], [], []
                for th in thetas:
                    frac = (th - thetas[0]) / (math.pi - thetas[0])
                    u = su * (1.0 - 0.7 * frac) + side * max(R * math.sin(th), 0.5 * w + 4.0)
                    v = sv + drop[k] * H * frac ** 0.75
                    pts.append((u, v))
                    depths.append(0.5 + 0.42 * math.cos(th))
                # a rib seen end-on (running along the beam) projects more activity per length
                for i in range(len(pts) - 1):
                    du = pts[i + 1][0] - pts[i][0]
                    dv = pts[i + 1][1] - pts[i][1]
                    dz = (depths[i + 1] - depths[i]) * 220.0
                    l2 = math.hypot(du, dv)
                    amps.append(min(math.sqrt(l2 * l2 + dz * dz) / max(l2, 1e-3), 2.6))
                for i in range(len(pts) - 1):
                    self.capsule(pts[i], pts[i + 1], 4.2 * bl, 4.2 * bl, 5.2 * amps[i], depths[i], depths[i + 1],
                                 group="axial")
                self.site(f"{'left' if side > 0 else 'right'} rib {k + 1}", "rib", [self.P(*p) for p in pts],
                          depths, 5.0, image=True)
                if k == 0:
                    self.landmarks[f"{'left' if side > 0 else 'right'} rib 1"] = self.P(*pts[-1])
        # sternum (anterior)
        self.ellipse((0.0, 0.170 * H), 25 * bl, 19 * bl, 12.0, 0.06, group="axial")
        self.capsule((0.0, 0.19 * H), (0.0, 0.276 * H), 13 * bl, 15 * bl, 8.5, 0.05, group="axial")
        self.capsule((0.0, 0.279 * H), (0.0, 0.295 * H), 5.0, 3.5, 3.0, 0.08, group="axial")
        self.site("sternum", "sternum", [self.P(0.0, 0.168 * H), self.P(0.0, 0.275 * H)], [0.06, 0.05], 12.0,
                  image=True)

    def _shoulder_girdle(self) -> None:
        H, bl, S = self.H, self.bl, self.shoulder
        for side in (-1, 1):
            sname = "left" if side > 0 else "right"
            # clavicle: S-shaped, anterior medially and deeper laterally
            pts = [(side * 20 * bl, 0.159 * H), (side * 60 * bl, 0.153 * H), (side * (S - 45), 0.154 * H),
                   (side * (S - 12), 0.161 * H)]
            self.chain(pts, 6.0 * bl, 9.0, [0.07, 0.15, 0.3, 0.45], group="axial")
            self.ellipse(pts[0], 9 * bl, 8 * bl, 6.0, 0.07, group="axial")
            self.site(f"{sname} clavicle", "clavicle", [self.P(*p) for p in pts], [0.07, 0.15, 0.3, 0.45], 6.0,
                      image=True)
            self.joint(f"{sname} sternoclavicular joint", "sternoclavicular", sname, pts[0], 0.07, 12, 10)
            self.joint(f"{sname} acromioclavicular joint", "acromioclavicular", sname, pts[-1], 0.4, 10, 10)
            # scapula: thin posterior plate with thick lateral border and spine
            sup = (side * 82 * bl, 0.158 * H)
            gl = (side * (S - 36), 0.181 * H)
            inf = (side * 98 * bl, 0.283 * H)
            med = (side * 72 * bl, 0.19 * H)
            self.polygon([sup, (side * (S - 42), 0.168 * H), gl, inf, med], 3.2, 0.86, group="axial")
            self.capsule(gl, inf, 7.0, 5.0, 7.0, 0.75, 0.86, group="axial")
            self.capsule(med, (side * (S - 8), 0.165 * H), 5.5, 6.5, 7.0, 0.92, 0.8, group="axial")
            self.ellipse(inf, 8, 8, 5.0, 0.86, group="axial")
            self.ellipse((side * (S - 30), 0.182 * H), 8, 17, 9.0, 0.55, group="axial")
            self.ellipse((side * (S - 44), 0.171 * H), 7, 7, 6.0, 0.3, group="axial")
            self.site(f"{sname} scapula", "scapula", [self.P(*p) for p in (sup, gl, inf, med, sup)],
                      [0.86, 0.7, 0.86, 0.88, 0.86], 8.0, image=True)
            self.landmarks[f"{sname} shoulder"] = self.P(side * (S - 6), 0.182 * H)

    def _pelvis(self) -> None:
        H, pl = self.H, self.pl
        # sacrum: a tapering wedge, brightest along its midline
        self.capsule((0, 0.447 * H), (0, 0.505 * H), 44 * pl, 12 * pl, 10.0, 0.82, group="axial")
        self.capsule((0, 0.514 * H), (0, 0.53 * H), 5.0, 4.0, 6.0, 0.82, group="axial")
        self.site("sacrum", "sacrum", [self.P(-25 * pl, 0.44 * H), self.P(25 * pl, 0.44 * H),
                                       self.P(0, 0.49 * H)], [0.82] * 3, 14.0, image=True)
        self.landmarks["sacrum"] = self.P(0.0, 0.46 * H)
        for side in (-1, 1):
            sname = "left" if side > 0 else "right"
            ilium = [(48, 0.425), (52, 0.405), (80, 0.395), (115, 0.393), (136, 0.404), (141, 0.421),
                     (128, 0.44), (110, 0.462), (98, 0.473), (75, 0.47), (55, 0.458)]
            pts = [(side * u * pl, f * H) for u, f in ilium]
            self.polygon(pts, 10.0, 0.55, group="axial")
            crest = pts[1:7]
            self.chain(crest, 7.0, 9.0, [0.85, 0.75, 0.6, 0.4, 0.25, 0.25], group="axial")
            # sacroiliac joint, moderately bright posteriorly
            si0, si1 = (side * 44 * pl, 0.424 * H), (side * 38 * pl, 0.47 * H)
            self.capsule(si0, si1, 7.0, 6.0, 13.0, 0.8, group="axial")
            self.joint(f"{sname} sacroiliac joint", "sacroiliac", sname, ((si0[0] + si1[0]) / 2, 0.447 * H), 0.8,
                       9, 0.025 * H)
            # arcuate line to the acetabulum
            acet = (side * 95 * pl, 0.478 * H)
            self.capsule((side * 50 * pl, 0.45 * H), (acet[0] - side * 10, acet[1] - 20), 7.0, 7.0, 7.0, 0.5,
                         group="axial")
            self.ellipse(acet, 28 * pl, 28 * pl, 5.5, 0.5, group="axial", profile="shell", inner=0.75)
            # pubis and ischium
            self.capsule((side * 82 * pl, 0.484 * H), (side * 13 * pl, 0.49 * H), 8.0, 9.0, 8.0, 0.2, group="axial")
            self.capsule((side * 13 * pl, 0.503 * H), (side * 55 * pl, 0.521 * H), 7.0, 7.0, 7.0, 0.35,
                         group="axial")
            self.capsule((side * 92 * pl, 0.49 * H), (side * 63 * pl, 0.52 * H), 11.0, 10.0, 8.0, 0.6,
                         group="axial")
            self.ellipse((side * 62 * pl, 0.522 * H), 12, 11, 6.0, 0.7, group="axial")
            self.ellipse((side * 8 * pl, 0.494 * H), 8, 16, 6.0, 0.15, group="axial")
            self.site(f"{sname} ilium", "pelvis", [self.P(*p) for p in (pts[0], pts[3], pts[6], pts[8])],
                      [0.8, 0.6, 0.3, 0.5], 14.0, image=True)
            self.site(f"{sname} acetabulum", "pelvis", [self.P(*acet)], [0.5], 14.0, image=True)
            self.site(f"{sname} pubis", "pelvis",
                      [self.P(side * 70 * pl, 0.486 * H), self.P(side * 15 * pl, 0.49 * H)],
                      [0.2, 0.15], 8.0, image=True)
            self.site(f"{sname} ischium", "pelvis",
                      [self.P(side * 88 * pl, 0.495 * H), self.P(side * 62 * pl, 0.52 * H)],
                      [0.6, 0.7], 9.0, image=True)
            self.landmarks[f"{sname} hip"] = self.P(*acet)
        self.landmarks["symphysis"] = self.P(0.0, 0.492 * H)

    def _arm(self, side: int) -> None:
        H, bl, S, rng = self.H, self.bl, self.shoulder, self.rng
        sname = "left" if side > 0 else "right"
        # pose: by the side, abducted, or the forearm across the chest or abdomen
        pose = self.arm_pose[side]
        z_forearm = 0.5
        if pose == "abducted":
            abd = math.radians(rng.uniform(14.0, 40.0))
            carry = math.radians(rng.uniform(-4.0, 15.0))
        elif pose == "chest":
            abd = math.radians(rng.uniform(0.0, 10.0))
            carry = -abd - math.radians(rng.uniform(95.0, 145.0))  # elbow bent, hand towards the midline
            z_forearm = float(rng.uniform(0.03, 0.12))  # lying on the front of the trunk
        else:
            abd = math.radians(rng.uniform(1.0, 9.0))
            carry = math.radians(rng.uniform(-4.0, 12.0))
        head = (side * (S - 6), 0.182 * H)
        d_up = (side * math.sin(abd), math.cos(abd))
        l_hum = 0.172 * H
        elbow = (head[0] + d_up[0] * l_hum, head[1] + d_up[1] * l_hum)
        d_fo = (side * math.sin(abd + carry), math.cos(abd + carry))
        l_fa = 0.146 * H
        wrist = (elbow[0] + d_fo[0] * l_fa, elbow[1] + d_fo[1] * l_fa)
        lat_up = (side * d_up[1], -side * d_up[0])  # perpendicular, pointing away from the body
        lat_fo = (side * d_fo[1], -side * d_fo[0])
        z = 0.5
        # humerus
        self.ellipse(head, 22 * bl, 24 * bl, 17.0, z, group="appendicular")
        self.ellipse((head[0] + side * 14 * bl, head[1] + 4), 11, 12, 7.0, z, group="appendicular")
        hs0 = (head[0] + d_up[0] * 25, head[1] + d_up[1] * 25)
        self.capsule(hs0, (elbow[0] - d_up[0] * 12, elbow[1] - d_up[1] * 12), 11 * bl, 10 * bl, 11.0, z,
                     group="appendicular")
        self.ellipse((elbow[0] - d_up[0] * 8, elbow[1] - d_up[1] * 8), 29 * bl, 12 * bl, 10.0, z,
                     group="appendicular", direction=self._img_dir(lat_up))
        self.site(f"{sname} proximal humerus", "humerus",
                  [self.P(*head), self.P(head[0] + d_up[0] * 0.45 * l_hum, head[1] + d_up[1] * 0.45 * l_hum)],
                  [0.5, 0.5], 12.0, image=True)
        z = z_forearm
        # forearm: radius lateral, ulna medial (olecranon posterior)
        pronated = rng.random() < 0.5
        rad0 = (elbow[0] + lat_fo[0] * 9, elbow[1] + lat_fo[1] * 9)
        rad1 = (wrist[0] + lat_fo[0] * (-6 if pronated else 11), wrist[1] + lat_fo[1] * (-6 if pronated else 11))
        uln0 = (elbow[0] - lat_fo[0] * 9, elbow[1] - lat_fo[1] * 9)
        uln1 = (wrist[0] - lat_fo[0] * 9, wrist[1] - lat_fo[1] * 9)
        self.capsule(rad0, rad1, 6.5 * bl, 9 * bl, 8.0, z, group="appendicular")
        self.capsule(uln0, uln1, 7 * bl, 5 * bl, 7.5, z, group="appendicular")
        self.ellipse(uln0, 11, 11, 7.0, 0.7, group="appendicular")
        # hand: carpus, metacarpals and fingers; edge-on hands overlap their rays
        spread = 1.0 if rng.random() < 0.6 else 0.35
        d = d_fo
        carpus = (wrist[0] + d[0] * 16, wrist[1] + d[1] * 16)
        self.ellipse(carpus, 19 * bl * (0.6 + 0.4 * spread), 13 * bl, 14.0, z, group="appendicular",
                     direction=self._img_dir(lat_fo))
        flex = rng.uniform(0.55, 1.0)
        for i in range(5):
            off = (i - 2.0) * 8.5 * bl * spread
            if i == 0:  # thumb: lateral when supinated, medial when pronated
                off = (-1 if pronated else 1) * 24 * bl * spread
                start = (carpus[0] + lat_fo[0] * off * 0.6 + d[0] * 6, carpus[1] + lat_fo[1] * off * 0.6 + d[1] * 6)
                end = (start[0] + d[0] * 35 + lat_fo[0] * off * 0.5, start[1] + d[1] * 35 + lat_fo[1] * off * 0.5)
            else:
                off = (i - 2.5) * 8.5 * bl * spread * (-1 if pronated else 1)
                start = (carpus[0] + lat_fo[0] * off * 0.7 + d[0] * 12, carpus[1] + lat_fo[1] * off * 0.7 + d[1] * 12)
                end = (start[0] + d[0] * 58 * bl + lat_fo[0] * off * 0.4,
                       start[1] + d[1] * 58 * bl + lat_fo[1] * off * 0.4)
            self.capsule(start, end, 3.5, 4.0, 7.0, z, group="appendicular")
            tip = (end[0] + d[0] * 50 * flex * bl, end[1] + d[1] * 50 * flex * bl)
            self.capsule(end, tip, 3.5, 2.8, 5.0, z, group="appendicular")
        mcp = (carpus[0] + d[0] * 75 * bl, carpus[1] + d[1] * 75 * bl)
        self.joint(f"{sname} shoulder", "shoulder", sname, head, 0.5, 26 * bl, 26 * bl, self._img_dir(d_up))
        self.joint(f"{sname} elbow", "elbow", sname, elbow, 0.5, 26 * bl, 16 * bl, self._img_dir(d_up))
        self.joint(f"{sname} wrist", "wrist", sname, carpus, z, 20 * bl * (0.6 + 0.4 * spread), 16 * bl,
                   self._img_dir(d))
        self.joint(f"{sname} hand", "hand", sname, mcp, z, 24 * bl * (0.4 + 0.6 * spread), 12 * bl,
                   self._img_dir(d))
        # normal joints are a little hotter than the shafts
        for j in self.joints[-4:-1]:
            self.ellipse(j.centre, j.half_width_mm * 0.8, j.half_height_mm * 0.6, 5.0, j.depth, group="joint",
                         direction=(j.direction[1], -j.direction[0]), image=True)
        if self.patient.age < 21:
            for k, p in enumerate(((head[0] + d_up[0] * 18, head[1] + d_up[1] * 18),
                                   (wrist[0] - d[0] * 8, wrist[1] - d[1] * 8))):
                self.capsule((p[0] - lat_up[0] * 18, p[1] - lat_up[1] * 18),
                             (p[0] + lat_up[0] * 18, p[1] + lat_up[1] * 18),
                             2.5, 2.5, 22.0, 0.5 if k == 0 else z, group="growth")
        self.injection_sites.append((f"{sname} antecubital fossa",
                                     self.P(elbow[0] - lat_fo[0] * 4, elbow[1] + 6), 0.25))
        self.injection_sites.append((f"{sname} forearm",
                                     self.P(*(elbow[0] + d[0] * 0.55 * l_fa, elbow[1] + d[1] * 0.55 * l_fa)), 0.3))
        self.injection_sites.append((f"{sname} hand dorsum",
                                     self.P(carpus[0] + d[0] * 35, carpus[1] + d[1] * 35),
                                     0.15 if pronated else 0.85))
        self.landmarks[f"{sname} elbow"] = self.P(*elbow)
        self.landmarks[f"{sname} wrist"] = self.P(*wrist)
        self.landmarks[f"{sname} axilla"] = self.P(side * (S - 40), 0.205 * H)
        self.arm = getattr(self, "arm", {})
        self.arm[side] = (head, elbow, wrist, carpus, d_up, d_fo)

    def _img_dir(self, d: tuple[float, float]) -> tuple[float, float]:
        return _unit(d[0] + d[1] * self.tilt, d[1])

    def _leg(self, side: int) -> None:
        H, bl, pl, rng = self.H, self.bl, self.pl, self.rng
        sname = "left" if side > 0 else "right"
        hip = (side * 95 * pl, 0.478 * H)
        ankle_u = side * max(rng.normal(62.0, 12.0) * bl + math.tan(math.radians(rng.uniform(0, 5))) * 0.48 * H,
                             42.0)
        ankle = (ankle_u, 0.955 * H)
        kv = 0.703 * H
        knee = (hip[0] + (ankle[0] - hip[0]) * (kv - hip[1]) / (ankle[1] - hip[1]) - side * 4, kv)
        z = 0.47
        # proximal femur
        self.ellipse(hip, 23 * pl, 23 * pl, 18.0, 0.5, group="appendicular")
        troch = (side * 142 * pl, 0.493 * H)
        self.capsule(hip, (troch[0] - side * 14, troch[1]), 15.0, 15.0, 11.0, 0.5, group="appendicular")
        self.ellipse(troch, 17 * pl, 22 * pl, 12.0, 0.55, group="appendicular")
        self.ellipse((side * 110 * pl, 0.516 * H), 9, 9, 7.0, 0.45, group="appendicular")
        shaft0 = (side * 128 * pl, 0.505 * H)
        d = _unit(knee[0] - shaft0[0], knee[1] - shaft0[1])
        self.capsule(shaft0, (knee[0] - d[0] * 40, knee[1] - d[1] * 40), 13.5 * bl, 12.5 * bl, 14.0, z,
                     group="appendicular")
        # distal femur flares into the condyles; metaphyses are normally a bit hotter
        lat = (side * d[1], -side * d[0])
        self.capsule((knee[0] - d[0] * 40, knee[1] - d[1] * 40), (knee[0] - d[0] * 12, knee[1] - d[1] * 12),
                     12.5 * bl, 26 * bl, 10.0, z, group="appendicular")
        for sgn in (-1, 1):
            self.ellipse((knee[0] + lat[0] * sgn * 20 * bl, knee[1] - 4), 19 * bl, 21 * bl, 12.0, 0.5,
                         group="appendicular")
        self.ellipse((knee[0], knee[1] - 14), 23 * bl, 20 * bl, 9.0, 0.08, group="patella")
        self.site(f"{sname} proximal femur", "femur",
                  [self.P(*hip), self.P(*troch), self.P(shaft0[0] + d[0] * 90, shaft0[1] + d[1] * 90)],
                  [0.5, 0.55, 0.47], 13.0, image=True)
        self.site(f"{sname} distal femur", "distal_long_bone",
                  [self.P(shaft0[0] + d[0] * 150, shaft0[1] + d[1] * 150), self.P(knee[0], knee[1] - 20)],
                  [0.47, 0.5], 12.0, image=True)
        # tibia (anterior in the leg) and fibula (lateral, deeper)
        tib_top = (knee[0], knee[1] + 0.012 * H)
        self.ellipse(tib_top, 38 * bl, 13 * bl, 11.0, 0.42, group="appendicular")
        d2 = _unit(ankle[0] - knee[0], ankle[1] - knee[1])
        lat2 = (side * d2[1], -side * d2[0])
        self.capsule((tib_top[0], tib_top[1] + 10), (tib_top[0] + d2[0] * 60, tib_top[1] + d2[1] * 60),
                     28 * bl, 13 * bl, 8.0, 0.35, group="appendicular")
        mall_m = (ankle[0] - lat2[0] * 12, ankle[1] + 2)
        self.capsule((tib_top[0] + d2[0] * 60, tib_top[1] + d2[1] * 60), (mall_m[0], mall_m[1] - 8),
                     11.5 * bl, 11 * bl, 12.5, 0.3, group="appendicular")
        self.ellipse(mall_m, 12 * bl, 13 * bl, 11.0, 0.45, group="appendicular")
        fib0 = (knee[0] + lat2[0] * 33 * bl, knee[1] + 0.035 * H)
        mall_l = (ankle[0] + lat2[0] * 24 * bl, ankle[1] + 8)
        self.ellipse(fib0, 9, 9, 7.0, 0.6, group="appendicular")
        self.capsule(fib0, (mall_l[0], mall_l[1] - 6), 5.5, 5.5, 5.5, 0.6, group="appendicular")
        self.ellipse(mall_l, 9, 12, 9.0, 0.6, group="appendicular")
        self.site(f"{sname} tibia", "distal_long_bone",
                  [self.P(tib_top[0] + d2[0] * 40, tib_top[1] + d2[1] * 40), self.P(mall_m[0], mall_m[1] - 40)],
                  [0.35, 0.3], 11.0, image=True)
        # foot: supine with the toes pointing up and partly towards the feet (plantar flexion)
        pf = math.radians(rng.uniform(25.0, 65.0))
        er = math.radians(rng.uniform(0.0, 25.0))
        fd = (side * math.sin(er), math.cos(er))
        fl = math.sin(pf)
        self.ellipse((ankle[0], ankle[1] + 14), 22 * bl, 15 * bl, 14.0, 0.55, group="appendicular")
        self.ellipse((ankle[0] - fd[0] * 4, ankle[1] + 30), 20 * bl, 20 * bl, 14.0, 0.85, group="appendicular")
        tars = (ankle[0] + fd[0] * 40 * fl, ankle[1] + 20 + fd[1] * 40 * fl)
        self.ellipse(tars, 24 * bl, 14 * bl, 13.0, 0.35, group="appendicular")
        mt_heads = []
        for i in range(5):
            off = (i - 2.0) * 9.0 * bl * (-side)  # first ray medial
            start = (tars[0] + off * fd[1], tars[1] + 10 * fl)
            end = (start[0] + fd[0] * 70 * fl + off * 0.4, start[1] + fd[1] * 70 * fl)
            self.capsule(start, end, 4.5, 4.0, 4.5 if i else 6.5, 0.28, 0.15, group="appendicular")
            toe = (end[0] + fd[0] * 28 * fl, end[1] + fd[1] * 28 * fl)
            self.capsule(end, toe, 4.0 if i else 5.0, 3.0, 2.0, 0.12, group="appendicular")
            mt_heads.append(end)
        self.joint(f"{sname} hip", "hip", sname, hip, 0.5, 28 * pl, 28 * pl)
        self.joint(f"{sname} knee", "knee", sname, (knee[0], knee[1] + 4), 0.45, 44 * bl, 24 * bl, self._img_dir(d))
        self.joint(f"{sname} ankle", "ankle", sname, (ankle[0], ankle[1] + 10), 0.55, 30 * bl, 18 * bl)
        self.joint(f"{sname} foot", "foot", sname, mt_heads[0] if rng.random() < 0.5 else tars, 0.25, 18 * bl,
                   14 * bl, self._img_dir(fd))
        for j in self.joints[-4:-1]:
            self.ellipse(j.centre, j.half_width_mm * 0.8, j.half_height_mm * 0.6, 6.0, j.depth, group="joint",
                         direction=(j.direction[1], -j.direction[0]), image=True)
        if self.patient.age < 21:
            for p, hw in (((knee[0] - d[0] * 28, knee[1] - d[1] * 28), 34), ((tib_top[0], tib_top[1] + 16), 30)):
                self.capsule((p[0] - lat[0] * hw, p[1] - lat[1] * hw), (p[0] + lat[0] * hw, p[1] + lat[1] * hw),
                             3.0, 3.0, 24.0, 0.45, group="growth")
        self.landmarks[f"{sname} knee"] = self.P(*knee)
        self.landmarks[f"{sname} ankle"] = self.P(*ankle)
        self.landmarks[f"{sname} foot"] = self.P(*tars)
        self.leg = getattr(self, "leg", {})
        self.leg[side] = (hip, knee, ankle, tars, fd, fl)

    def _soft_tissue(self) -> None:
        H, S, fat, rng = self.H, self.shoulder, self.fat, self.rng
        female = self.patient.sex == "F"
        yc = self.skull_centre_v
        hs = self.hs
        hd = self.head
        # head and face, neck
        self.softpart(hd(0, yc - 25 * hs), hd(0, yc + 30 * hs), 80 * hs, 78 * hs, 185 * hs, 185 * hs)
        self.softpart(hd(0, yc + 35 * hs), hd(0, yc + 95 * hs), 70 * hs, 55 * hs, 170 * hs, 140 * hs)
        self.softpart(hd(0, yc + 95 * hs, 0.5), (0, 0.158 * H), 52 + 0.3 * fat, 58 + 0.4 * fat, 115 + fat,
                      125 + fat)
        # torso: per-height half-width and thickness knots, rendered row by row
        hip_extra = 14.0 if female else 0.0
        depth = rng.normal(1.0, 0.05)
        self.torso = [
            (0.150 * H, 58 + 0.4 * fat, (120 + fat) * depth),
            (0.165 * H, S - 25 + 0.5 * fat, (160 + 1.2 * fat) * depth),
            (0.182 * H, S + 10 + 0.6 * fat, (185 + 1.4 * fat) * depth),
            (0.205 * H, S - 32 + 0.8 * fat, (205 + 1.5 * fat) * depth),
            (0.27 * H, 0.092 * H * self.bl / (self.H / _REF_HEIGHT) * 0.95 + fat, (215 + 1.6 * fat) * depth),
            (0.34 * H, 0.080 * H + 1.3 * fat + 0.5 * hip_extra, (200 + 2.2 * fat) * depth),
            (0.40 * H, 0.088 * H + 1.3 * fat + hip_extra, (205 + 2.0 * fat) * depth),
            (0.46 * H, 0.099 * H * self.pl / self.bl + fat + hip_extra, (215 + 1.6 * fat) * depth),
            (0.495 * H, 0.094 * H * self.pl / self.bl + 0.9 * fat + hip_extra, (200 + 1.3 * fat) * depth),
            (0.52 * H, 0.06 * H + 0.5 * fat, (170 + fat) * depth),
            (0.535 * H, 0.02 * H, (120 + fat) * depth),
        ]
        # arms and legs
        for side in (-1, 1):
            head, elbow, wrist, carpus, d_up, d_fo = self.arm[side]
            self.softpart(head, elbow, 48 + 0.25 * fat, 36 + 0.25 * fat, 100 + 0.6 * fat, 80 + 0.4 * fat)
            self.softpart(elbow, wrist, 36 + 0.2 * fat, 25 + 0.1 * fat, 78 + 0.4 * fat, 45)
            tip = (carpus[0] + d_fo[0] * 140 * self.bl, carpus[1] + d_fo[1] * 140 * self.bl)
            self.softpart(wrist, carpus, 25, 30, 45, 35)
            self.softpart(carpus, tip, 34, 20, 32, 20)
            hip, knee, ankle, tars, fd, fl = self.leg[side]
            thigh_top = (side * (0.05 * H + 0.3 * fat), 0.49 * H)
            self.softpart(thigh_top, knee, 88 + 0.7 * fat, 55 + 0.3 * fat, 180 + 1.2 * fat, 115 + 0.3 * fat)
            calf = (knee[0] + (ankle[0] - knee[0]) * 0.3, knee[1] + (ankle[1] - knee[1]) * 0.3)
            self.softpart(knee, calf, 55 + 0.3 * fat, 58 + 0.3 * fat, 115 + 0.3 * fat, 120 + 0.3 * fat)
            self.softpart(calf, ankle, 58 + 0.3 * fat, 34, 120 + 0.3 * fat, 75)
            toe = (tars[0] + fd[0] * 100 * fl, tars[1] + fd[1] * 100 * fl)
            self.softpart((ankle[0], ankle[1] + 10), toe, 38, 30, 95, 60)
        self.female = female


def _thickness_map(builder: _Builder, shape: tuple[int, int], s: float) -> np.ndarray:
    """Anterior-posterior body thickness (mm) per pixel: the max over all soft parts."""
    rows, cols = shape
    T = np.zeros(shape, np.float32)
    xs = (np.arange(cols, dtype=np.float32) + 0.5) * s
    ys = (np.arange(rows, dtype=np.float32) + 0.5) * s
    # torso, row by row (knots in patient v; the centre line follows the tilt)
    knots = [(builder.warp_v(v), half * builder.width_scale(v), thick) for v, half, thick in builder.torso]
    v_img = ys - builder.top
    v0, v1 = knots[0][0], knots[-1][0]
    rsel = np.nonzero((v_img >= v0) & (v_img <= v1))[0]
    if rsel.size:
        vv = v_img[rsel]
        half = np.interp(vv, [k[0] for k in knots], [k[1] for k in knots])
        thick = np.interp(vv, [k[0] for k in knots], [k[2] for k in knots])
        centre = builder.xmid + (vv - builder.pivot_v) * builder.tilt
        q = (xs[None, :] - centre[:, None]) / half[:, None]
        prof = np.clip(1.0 - q * q, 0.0, None) ** 0.3
        T[rsel] = np.maximum(T[rsel], prof * thick[:, None])
    for part in builder.soft:
        (xa, ya), (xb, yb) = part.p0, part.p1
        rmax = max(part.r0, part.r1)
        c0 = max(int((min(xa, xb) - rmax) / s), 0)
        c1 = min(int((max(xa, xb) + rmax) / s) + 2, cols)
        r0 = max(int((min(ya, yb) - rmax) / s), 0)
        r1 = min(int((max(ya, yb) + rmax) / s) + 2, rows)
        if c0 >= c1 or r0 >= r1:
            continue
        gx = xs[None, c0:c1] - xa
        gy = ys[r0:r1, None] - ya
        dx, dy = xb - xa, yb - ya
        l2 = dx * dx + dy * dy
        t = np.clip((gx * dx + gy * dy) / l2, 0.0, 1.0) if l2 > 0 else np.zeros((r1 - r0, c1 - c0), np.float32)
        ex, ey = gx - t * dx, gy - t * dy
        rad = part.r0 + t * (part.r1 - part.r0)
        q2 = (ex * ex + ey * ey) / (rad * rad)
        prof = np.clip(1.0 - q2, 0.0, None) ** 0.35
        th = part.t0 + t * (part.t1 - part.t0)
        np.maximum(T[r0:r1, c0:c1], prof * th, out=T[r0:r1, c0:c1])
    return T


def _breast_map(builder: _Builder, shape: tuple[int, int], s: float) -> np.ndarray:
    """Extra anterior soft tissue over the lower chest (female breasts, obese male chest)."""
    rows, cols = shape
    out = np.zeros(shape, np.float32)
    rng = builder.rng
    if builder.female:
        extra = rng.uniform(10.0, 80.0) + 0.8 * builder.fat
        if rng.random() < 0.06:  # mastectomy on one side
            sides = [1] if rng.random() < 0.5 else [-1]
        else:
            sides = [-1, 1]
    elif builder.bmi > 28.0:
        extra = rng.uniform(0.4, 1.0) * builder.fat
        sides = [-1, 1]
    else:
        return out
    H = builder.H
    xs = (np.arange(cols, dtype=np.float32) + 0.5) * s
    ys = (np.arange(rows, dtype=np.float32) + 0.5) * s
    for side in sides:
        cx, cy = builder.P(side * (0.05 * H + 0.3 * builder.fat), (0.262 + rng.uniform(0.0, 0.02)) * H)
        a = 0.045 * H + 0.5 * builder.fat
        b = 0.034 * H + 0.3 * builder.fat
        q2 = ((xs[None, :] - cx) / a) ** 2 + ((ys[:, None] - cy) / b) ** 2
        np.maximum(out, extra * np.clip(1.0 - q2, 0.0, None) ** 0.7, out=out)
    return out


def _organs(builder: _Builder) -> None:
    """Kidneys (posterior) and bladder (anterior, very variable filling)."""
    H, bl, rng = builder.H, builder.bl, builder.rng
    for side in (-1, 1):
        if rng.random() < 0.015:  # nephrectomy / non-functioning kidney
            continue
        v = (0.332 if side > 0 else 0.342) * H + rng.normal(0.0, 0.006 * H)
        u = side * (62 + rng.normal(0, 5)) * bl
        tilt = math.radians(side * rng.uniform(5.0, 22.0))  # upper pole towards the midline
        direction = builder._img_dir((math.sin(tilt), math.cos(tilt)))
        a_len = rng.uniform(48.0, 60.0) * bl
        builder.ellipse((u, v), a_len, 27 * bl, 32.0, 0.72, group="kidney", direction=direction)
        builder.landmarks[f"{'left' if side > 0 else 'right'} kidney"] = builder.P(u, v)
        # collecting system, sometimes retaining more tracer
        builder.ellipse((u - side * 18 * bl, v + 6), 11, 14, 18.0 * rng.lognormal(0.0, 0.5), 0.68, group="kidney")
    # bladder sits above the symphysis; size and activity vary a lot
    fill = rng.uniform(0.15, 1.0) ** 1.3
    a = (22.0 + 55.0 * fill) * builder.pl
    b = (16.0 + 42.0 * fill)
    v = 0.488 * H - 0.75 * b + rng.normal(0, 5)
    builder.ellipse((rng.normal(0.0, 6.0), v), a, b, 2.0 * b, 0.3, group="bladder")
    builder.landmarks["bladder"] = builder.P(0.0, v)


def sample_anatomy(rng: np.random.Generator, matrix: tuple[int, int] = (1024, 256),
                   patient_id: str = "PHANTOM") -> Anatomy:
    """Draw a patient and lay out the normal tracer distribution on a ``matrix`` grid.

    Args:
        rng: Source of all randomness.
        matrix: ``(rows, cols)``; the pixel size is drawn from :data:`PIXEL_SPACING_RANGE_MM` at 1024 rows and scales
            inversely with the row count, so larger matrices render at finer resolution.
        patient_id: Patient ID to record.

    Returns:
        The :class:`Anatomy` of one patient.
    """
    rows, cols = matrix
    spacing = float(rng.uniform(PIXEL_SPACING_RANGE_MM[0], PIXEL_SPACING_RANGE_MM[1])) * 1024.0 / rows
    patient = sample_patient(rng, patient_id)
    b = _Builder(rng, patient, (rows, cols), spacing)
    b.build()
    _organs(b)
    thickness = _thickness_map(b, (rows, cols), spacing)
    breast = _breast_map(b, (rows, cols), spacing)
    age = patient.age
    # bone-to-soft-tissue ratio falls with age and renal failure; joints and long bones
    # stand out less in the elderly
    # soft tissue to bone: from 1/15 to 1/5, higher with age (and renal failure)
    soft_to_bone = float(np.exp(rng.uniform(math.log(1 / 15.0), math.log(1 / 5.0))))
    if age > 70 and rng.random() < 0.3:
        soft_to_bone = min(soft_to_bone * 1.4, 1 / 5.0)
    appendicular = float(np.clip(rng.normal(1.0, 0.1) - 0.005 * max(age - 50, 0), 0.6, 1.3))
    gains = {
        "bone": 1.0,
        "axial": 1.0,
        "appendicular": appendicular,
        "joint": float(np.clip(rng.normal(1.0, 0.25) - 0.012 * max(age - 40, 0), 0.15, 1.6)),
        "face": float(rng.lognormal(0.0, 0.25)),
        "patella": float(rng.lognormal(0.0, 0.3)),
        "growth": 1.0,
        "kidney": float(rng.lognormal(math.log(0.75), 0.5)),
        "bladder": float(rng.lognormal(math.log(1.6), 0.7)),
        # blood pool and vascular organs: the early phase sets these
        "blood": 0.0,
        "organ": 0.0,
    }
    return Anatomy(
        patient=patient,
        matrix=(rows, cols),
        pixel_spacing_mm=spacing,
        mu_per_mm=float(rng.uniform(0.011, 0.015)),
        thickness_mm=thickness,
        breast_mm=breast,
        primitives=b.primitives,
        bone_sites=b.bone_sites,
        joints=b.joints,
        injection_sites=b.injection_sites,
        landmarks=b.landmarks,
        soft_tissue_ratio=soft_to_bone / 10.0,
        gains=gains,
        table_transmission=float(rng.uniform(0.85, 0.97)),
        age_years=age,
        soft_to_bone=soft_to_bone,
        reference_gains=dict(gains),
    )
