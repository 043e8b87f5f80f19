"""The second anatomy ("voxel"), written independently of :mod:`.anatomy`.

Construction.  A skeleton *graph*: joint landmarks (vertex, C7, shoulders, elbows, wrists, hips,
knees, ankles, ...) are placed in 3-D from segment-length ratios of the standing height
(Drillis-Contini style tables, each segment drawn on its own), and every bone is an edge or a
small set of edges of that graph.  Bones are tubes with superelliptic cross-sections (a long
bone is a cortical shell, hotter at its metaphyses), superellipsoids (vertebral bodies,
carpus) and shells (calvarium, acetabulum).  The spine follows a sagittal curve (cervical and
lumbar lordosis, thoracic kyphosis), so vertebrae lie at different depths; the ribs are 3-D arcs
round the thorax.  The body is a union of superelliptic cross-sections (trunk) and elliptic
tubes (limbs) lying on the couch, with lungs inside the chest.

Coordinates: ``x`` (mm) to the ANTERIOR view's image right (the patient's left), ``y`` (mm)
down from row 0, ``z`` (mm) height above the couch (so the anterior detector looks down from
large ``z``).  Registries (bone sites, joints, landmarks, injection sites) use the same names as
:mod:`.anatomy`, so every finding of :mod:`.findings` can be placed on either anatomy; their
depths are relative (0 anterior skin, 1 posterior skin) as the findings expect.

Physics (:func:`render_voxel_views`), also chosen independently of :mod:`.synth`: activity is
sampled on 3-D grids; attenuation follows the real path through tissue voxels (soft tissue
about 0.14/cm, lungs a third of that, and the couch for the posterior view); the anterior
detector sits above the highest point of the body and the posterior one below the couch, and
the collimator FWHM grows linearly with the distance (equal to the study's FWHM at 10 cm);
scatter is a two-component (short and long range) kernel whose strength grows with the local
body thickness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .anatomy import BoneSite, Joint, PhantomPatient, sample_patient

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .findings import Lesion
    from .synth import Acquisition

__all__ = ["Solid", "VoxelAnatomy", "render_voxel_views", "sample_voxel_anatomy"]

# Landmark heights as fractions of the standing height, measured down from the vertex.
_LEVELS = {"chin": 0.125, "c7": 0.165, "shoulder": 0.182, "sternum_top": 0.19, "nipple": 0.28,
           "elbow": 0.37, "t12": 0.33, "iliac_crest": 0.41, "wrist": 0.515, "hip": 0.485,
           "knuckle": 0.585, "knee": 0.715, "ankle": 0.961}
# Half breadths as fractions of the height: biacromial, chest, waist, bi-iliac, hip joints.
_BREADTHS = {"shoulder": 0.115, "chest": 0.088, "waist": 0.075, "pelvis": 0.083, "hip_joint": 0.05}
_BONE_GROUPS = ("axial", "appendicular", "joint", "face")
_DZ_MM = 2.5  # depth step of the activity sampling
_DZ_COARSE_MM = 5.0  # depth step of the attenuation grid

Point3 = tuple[float, float, float]  # (x, y, z) in mm


@dataclass
class Solid:
    """One 3-D piece of tracer: a tube (``p0``-``p1``) or a superellipsoid (centre ``p0``).

    ``radii`` are the tube's (across, depth) radii at the two ends ``(r0x, r0z, r1x, r1z)``,
    or the superellipsoid's semi-axes ``(a, b, c)`` along (in-plane direction ``angle``, across,
    depth).  ``exponent`` shapes the cross-section (2 ellipse, larger squarer); ``shell`` is the
    inner/outer ratio of a hollow solid (0 for solid).  ``concentration`` is relative to normal
    bone.
    """

    kind: str
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radii: tuple[float, ...]
    concentration: float
    group: str
    exponent: float = 2.0
    shell: float = 0.0
    angle: float = 0.0
    soft_edge: bool = False


@dataclass
class VoxelAnatomy:
    """One patient built by the voxel builder; the registries match :class:`.anatomy.Anatomy`'s."""

    patient: PhantomPatient
    matrix: tuple[int, int]
    pixel_spacing_mm: float
    solids: list[Solid]
    z_top: np.ndarray  # anterior skin height above the couch (mm) per pixel, 0 outside
    z_bottom: np.ndarray  # posterior skin height per pixel
    lungs: list[tuple[tuple[float, float, float], tuple[float, float, float]]]
    bone_sites: list[BoneSite]
    joints: list[Joint]
    injection_sites: list[tuple[str, tuple[float, float], float]]
    landmarks: dict[str, tuple[float, float]]
    gains: dict[str, float]
    soft_to_bone: float
    mu_soft_per_mm: float
    couch_transmission: float
    physiological: dict[str, float] = field(default_factory=dict)
    reference_gains: dict[str, float] = field(default_factory=dict)
    soft_tissue_ratio: float = 0.0
    name: str = "voxel"
    grid_factor: int = 1  # the body is sampled on a grid this many times coarser than the matrix


class _Graph:
    """Landmarks and bones of one body; ``P`` is a 3-D point (x, y, z) in mm."""

    # set while the body is built: by _build_skeleton, then by _limbs
    vertebrae: dict[str, tuple[Point3, float, float]]  # centre, width, height
    head: tuple[Point3, float, float, float]  # centre and semi-axes
    arm_pose: str
    arm_parts: dict[int, tuple[Point3, Point3, Point3, Point3]]  # per side: shoulder, elbow, wrist, fingertip
    leg_parts: dict[int, tuple[Point3, Point3, Point3, Point3]]  # per side: hip, knee, ankle, tarsus

    def __init__(self, rng: np.random.Generator, patient: PhantomPatient, matrix: tuple[int, int], s: float):
        self.rng, self.patient, self.s = rng, patient, s
        self.rows, self.cols = matrix
        H = patient.height_cm * 10.0
        self.H = H
        female = patient.sex == "F"
        bmi = patient.weight_kg / (patient.height_cm / 100.0) ** 2
        self.fat = max(bmi - 21.0, 0.0) * float(rng.uniform(2.5, 5.0))  # mm of extra half-breadth
        def jitter(sd: float) -> float:
            return float(np.clip(rng.normal(1.0, sd), 1 - 2.5 * sd, 1 + 2.5 * sd))

        self.level = {k: v * H * (jitter(0.025) if k != "ankle" else 1.0) for k, v in _LEVELS.items()}
        self.breadth = {k: v * H * jitter(0.06) for k, v in _BREADTHS.items()}
        if female:
            self.breadth["shoulder"] *= 0.93
            self.breadth["pelvis"] *= 1.07
        self.top = float(rng.uniform(5.0, 120.0))
        self.xmid = self.cols * s / 2.0 + float(rng.normal(0.0, 10.0))
        self.roll = math.radians(float(rng.normal(0.0, 1.5)))  # whole-body in-plane rotation
        self.cortex = float(np.clip(rng.normal(0.55, 0.08), 0.35, 0.75))  # inner/outer ratio of long bones
        self.thick = float(np.clip(rng.normal(1.0, 0.1), 0.75, 1.3))  # bone radius scale
        self.trunk_depth = (0.125 * H + 0.9 * self.fat) * jitter(0.06)  # back to belly at the waist
        self.lordosis = float(rng.uniform(0.0, 25.0))
        self.kyphosis = float(rng.uniform(0.0, 30.0)) + 0.2 * max(patient.age - 50, 0)
        self.solids: list[Solid] = []
        self.sites: list[BoneSite] = []
        self.joints: list[Joint] = []
        self.landmarks: dict[str, tuple[float, float]] = {}
        self.injection: list[tuple[str, tuple[float, float], float]] = []
        self.pending_depths: list[tuple[object, str]] = []
        self.gain = 1.0

    # -- frame ------------------------------------------------------------------------------
    def xy(self, u: float, v: float) -> tuple[float, float]:
        """Patient frame (u lateral to the patient's left, v down from the vertex) -> image mm."""
        c, s_ = math.cos(self.roll), math.sin(self.roll)
        v0 = 0.5 * self.H
        return (self.xmid + u * c - (v - v0) * s_, self.top + v0 + u * s_ + (v - v0) * c)

    def P(self, u: float, v: float, z: float) -> tuple[float, float, float]:
        x, y = self.xy(u, v)
        return (x, y, z)

    # -- solids -----------------------------------------------------------------------------
    def tube(self, a: Point3, b: Point3, r0: float, r1: float | None = None, conc: float = 1.0,
             group: str = "axial", depth_aspect: float = 1.0, exponent: float = 2.0, shell: float = 0.0) -> None:
        r1 = r0 if r1 is None else r1
        k = self.thick if group in _BONE_GROUPS else 1.0
        self.solids.append(Solid("tube", a, b, (r0 * k, r0 * k * depth_aspect, r1 * k, r1 * k * depth_aspect),
                                 conc * self.gain * float(self.rng.lognormal(0.0, 0.1)), group, exponent, shell))

    def blob(self, c: Point3, a: float, b: float, cz: float, conc: float = 1.0, group: str = "axial",
             angle: float = 0.0, exponent: float = 2.0, shell: float = 0.0, soft: bool = False) -> None:
        self.solids.append(Solid("blob", c, c, (a, b, cz), conc * self.gain * float(self.rng.lognormal(0.0, 0.1)),
                                 group, exponent, shell, angle + self.roll, soft))

    def site(self, name: str, region: str, pts3: Sequence[Point3], radius: float, thickness: float,
             weight: float = 1.0) -> None:
        site = BoneSite(name, region, [(p[0], p[1]) for p in pts3], [p[2] for p in pts3], radius, thickness, weight)
        self.sites.append(site)

    def joint(self, name: str, group: str, side: str, c3: Point3, hw: float, hh: float,
              direction: tuple[float, float] = (0.0, 1.0), thickness: float = 30.0) -> None:
        j = Joint(name, group, side, (c3[0], c3[1]), c3[2], hw, hh, _rot(direction, self.roll), thickness)
        self.joints.append(j)


def _rot(d: tuple[float, float], a: float) -> tuple[float, float]:
    c, s = math.cos(a), math.sin(a)
    x, y = d[0] * c - d[1] * s, d[0] * s + d[1] * c
    n = math.hypot(x, y) or 1.0
    return (x / n, y / n)


def _lerp(a: Point3, b: Point3, t: float) -> Point3:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _build_skeleton(g: _Graph) -> np.ndarray:
    """Lay out trunk and head bones; returns the regional uptake gains (the limbs use the last ones)."""
    rng, H, L, B = g.rng, g.H, g.level, g.breadth
    D = g.trunk_depth
    gains = rng.lognormal(0.0, 0.15, 6)
    # --- skull: an ellipsoidal shell, the face in front, resting on a head holder
    g.gain = float(gains[0])
    head_a, head_b = 0.043 * H * float(rng.normal(1.0, 0.04)), 0.058 * H * float(rng.normal(1.0, 0.04))
    head_c = 0.056 * H
    hz = head_c + float(rng.uniform(10.0, 35.0))
    head_v = head_b + 3.0
    hc = g.P(0.0, head_v, hz)
    shell = float(rng.uniform(0.86, 0.92))
    g.blob(hc, head_b, head_a, head_c, 1.0, "axial", angle=math.pi / 2, shell=shell)
    g.blob(g.P(0.0, head_v + 0.45 * head_b, hz - 0.35 * head_c), 0.55 * head_a, 0.3 * head_b, 0.35 * head_c, 0.8,
           "axial", exponent=3.0)  # skull base
    g.blob(g.P(0.0, head_v + 0.7 * head_b, hz + 0.55 * head_c), 0.45 * head_a, 0.25 * head_b, 0.3 * head_c, 0.7,
           "face")
    jaw = [g.P(s * 0.8 * head_a, L["chin"] - 0.045 * H, hz - 0.1 * head_c) for s in (-1, 1)]
    chin = g.P(0.0, L["chin"], hz + 0.6 * head_c)
    for end in jaw:
        g.tube(end, chin, 6.0, 5.5, 1.2, "face", exponent=2.5)
    ring = [g.P(0.9 * head_a * math.sin(t), head_v - 0.9 * head_b * math.cos(t), hz + sgn * 0.75 * head_c)
            for sgn in (1, -1) for t in np.linspace(-2.4, 2.4, 7)]
    g.site("skull", "skull", ring[:7], 8.0, 9.0)
    g.site("skull", "skull", ring[7:], 8.0, 9.0)
    g.landmarks["skull"] = g.xy(0.0, head_v)
    g.landmarks["jaw"] = g.xy(0.0, L["chin"] - 0.01 * H)
    # --- spine along a sagittal curve; z of the body centres above the couch
    g.gain = float(gains[1])
    back = 0.0  # posterior skin of the trunk rests on the couch

    def spine_z(v: float) -> float:
        t = (v - L["c7"]) / (L["iliac_crest"] + 0.05 * H - L["c7"])
        kyph = -g.kyphosis * math.sin(math.pi * min(max(t / 0.6, 0.0), 1.0))
        lord = g.lordosis * math.sin(math.pi * min(max((t - 0.55) / 0.45, 0.0), 1.0))
        return back + 0.38 * D + kyph + lord

    names = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    top_v, bottom_v = L["chin"] + 0.005 * H, L["iliac_crest"] + 0.035 * H
    # vertebral heights grow down the spine: cervical 0.6, thoracic 1, lumbar 1.45 (relative)
    rel = np.array([0.6] * 7 + [1.0] * 12 + [1.45] * 5) * rng.lognormal(0.0, 0.04, 24)
    edges = top_v + np.concatenate([[0.0], np.cumsum(rel)]) / rel.sum() * (bottom_v - top_v)
    vertebrae = {}
    for i, name in enumerate(names):
        v = 0.5 * (edges[i] + edges[i + 1])
        h = edges[i + 1] - edges[i]
        cerv, lumb = name[0] == "C", name[0] == "L"
        w = (0.011 if cerv else 0.0155 if not lumb else 0.024) * H * float(rng.normal(1.0, 0.03))
        if name[0] == "T":
            w *= 1.0 + 0.04 * (int(name[1:]) - 1) / 11 * 3
        z = spine_z(v) if not cerv else 0.5 * (hz + spine_z(L["c7"]))
        c3 = g.P(0.0, v, z)
        vertebrae[name] = (c3, w, h)
        depth_r = (0.55 if not lumb else 0.7) * w
        g.blob(c3, 0.42 * h, 0.5 * w, depth_r, 1.3 if lumb else 1.1, "axial", angle=math.pi / 2, exponent=3.0)
        # posterior arch: pedicles and the spinous process, nearer the back
        zp = max(z - depth_r - 14.0, 12.0)
        for side in (-1, 1):
            p = g.P(side * 0.38 * w, v - 0.1 * h, zp + 6.0)
            g.blob(p, 0.25 * h, 0.14 * w + 2.0, 7.0, 1.2, "axial")
            sname = "left" if side > 0 else "right"
            g.site(f"{name} {sname} pedicle", "spine", [p], 0.15 * w, 14.0, weight=0.2)
            g.joint(f"{name} {sname} facet", "facet", sname, g.P(side * 0.3 * w, v + 0.5 * h, zp + 5.0),
                    0.12 * w + 3.0, 0.2 * h + 3.0, thickness=12.0)
        g.tube(g.P(0.0, v - 0.2 * h, zp), g.P(0.0, v + 0.5 * h, max(zp - 18.0, 6.0)), 3.5, 3.0, 1.3, "axial")
        g.site(f"{name} vertebral body", "spine", [g.P(-0.2 * w, v, z), g.P(0.2 * w, v, z)], 0.3 * w, 2 * depth_r,
               weight=0.35 if cerv else (1.3 if lumb else 1.0))
    for name in ("T1", "L3", "L5"):
        g.landmarks[name] = vertebrae[name][0][:2]
    # --- ribs: 3-D arcs from the transverse processes round to the costal cartilages
    chest = B["chest"]
    front = back + D * 1.05
    for k in range(1, 13):
        (cx, cy, cz), w, h = vertebrae[f"T{k}"]
        reach = chest * (0.55 + 0.45 * math.sin(math.pi * min(k / 8.0, 1.0) * 0.5 + 0.02 * k)) * (
            1.0 if k < 11 else 0.85)
        drop = (0.035 + 0.004 * min(k, 8)) * H
        sweep = np.linspace(0.05, 1.0 if k < 11 else 0.6, 9)
        for side in (-1, 1):
            pts = []
            for t in sweep:
                ang = math.pi * t
                u = side * (0.5 * w + reach * math.sin(ang) + 4.0)
                v = _patient_v(g, cx, cy) + drop * t ** 0.8
                z = (cz - 10.0) + ((front - 14.0) - (cz - 10.0)) * (1 - math.cos(ang)) / 2
                z = max(z, 14.0)
                pts.append(g.P(u, v, z))
            for a, b in pairwise(pts):
                g.tube(a, b, 4.3, None, 1.05, "axial", exponent=2.0)
            sname = "left" if side > 0 else "right"
            g.site(f"{sname} rib {k}", "rib", pts, 5.0, 11.0)
            if k == 1:
                g.landmarks[f"{sname} rib 1"] = pts[-1][:2]
    # sternum and clavicles
    st0, st1 = g.P(0.0, L["sternum_top"], front - 10.0), g.P(0.0, L["sternum_top"] + 0.09 * H, front - 8.0)
    g.tube(st0, st1, 14.0, 11.0, 0.8, "axial", depth_aspect=0.6, exponent=3.0)
    g.site("sternum", "sternum", [st0, st1], 12.0, 14.0)
    g.gain = float(gains[2])
    S = B["shoulder"]
    for side in (-1, 1):
        sname = "left" if side > 0 else "right"
        med = g.P(side * 0.012 * H, L["sternum_top"] - 0.004 * H, front - 14.0)
        lat = g.P(side * (S - 0.01 * H), L["shoulder"] - 0.012 * H, 0.55 * D)
        mid = _lerp(med, lat, 0.5)
        mid = (mid[0], mid[1] - 0.006 * H, mid[2] + 6.0)
        g.tube(med, mid, 6.5, 6.0, 1.2, "axial")
        g.tube(mid, lat, 6.0, 6.5, 1.2, "axial")
        g.site(f"{sname} clavicle", "clavicle", [med, mid, lat], 6.0, 13.0)
        g.joint(f"{sname} sternoclavicular joint", "sternoclavicular", sname, med, 11.0, 9.0, thickness=14.0)
        g.joint(f"{sname} acromioclavicular joint", "acromioclavicular", sname, lat, 10.0, 9.0, thickness=12.0)
        # scapula: a thin triangular plate on the back of the chest, thick lateral border
        sup = g.P(side * 0.045 * H, L["shoulder"] - 0.004 * H, 26.0)
        glen = g.P(side * (S - 0.024 * H), L["shoulder"] + 0.004 * H, 0.42 * D)
        inf = g.P(side * 0.058 * H, L["shoulder"] + 0.1 * H, 22.0)
        for a, b in ((sup, glen), (glen, inf), (inf, sup)):
            g.tube(a, b, 6.0, 5.0, 0.9, "axial", depth_aspect=0.7)
        g.blob(_lerp(_lerp(sup, glen, 0.5), inf, 0.4), 0.045 * H, 0.03 * H, 3.5, 0.7, "axial", angle=math.pi / 2)
        g.site(f"{sname} scapula", "scapula", [sup, glen, inf, sup], 8.0, 10.0)
        g.landmarks[f"{sname} shoulder"] = glen[:2]
        g.landmarks[f"{sname} axilla"] = g.xy(side * (S - 0.035 * H), L["shoulder"] + 0.03 * H)
    # --- pelvis
    g.gain = float(gains[3])
    P_ = B["pelvis"]
    sac_top = g.P(0.0, L["iliac_crest"] + 0.04 * H, 0.35 * D)
    sac_tip = g.P(0.0, L["hip"] + 0.03 * H, 0.25 * D)
    g.tube(sac_top, sac_tip, 0.028 * H, 0.009 * H, 1.1, "axial", depth_aspect=0.55, exponent=2.6)
    g.site("sacrum", "sacrum", [g.P(-0.015 * H, L["iliac_crest"] + 0.045 * H, 0.35 * D),
                                 g.P(0.015 * H, L["iliac_crest"] + 0.045 * H, 0.35 * D), sac_tip], 14.0, 26.0)
    g.landmarks["sacrum"] = sac_top[:2]
    sym = g.P(0.0, L["hip"] + 0.01 * H, 0.8 * D)
    g.landmarks["symphysis"] = sym[:2]
    for side in (-1, 1):
        sname = "left" if side > 0 else "right"
        crest = [g.P(side * P_ * f, L["iliac_crest"] + dv * H, z) for f, dv, z in
                 ((0.45, 0.02, 0.3 * D), (0.8, 0.0, 0.45 * D), (1.0, 0.012, 0.65 * D), (0.95, 0.035, 0.8 * D))]
        for a, b in pairwise(crest):
            g.tube(a, b, 7.0, None, 1.1, "axial")
        wing_c = g.P(side * 0.72 * P_, L["iliac_crest"] + 0.035 * H, 0.5 * D)
        g.blob(wing_c, 0.03 * H, 0.26 * P_, 6.0, 0.9, "axial", angle=math.pi / 2 + side * 0.3)
        si = g.P(side * 0.3 * P_, L["iliac_crest"] + 0.04 * H, 0.3 * D)
        g.tube(si, g.P(side * 0.27 * P_, L["iliac_crest"] + 0.07 * H, 0.3 * D), 6.5, 6.0, 1.5, "axial")
        g.joint(f"{sname} sacroiliac joint", "sacroiliac", sname, _lerp(si, g.P(side * 0.27 * P_, L["iliac_crest"]
                                                                               + 0.07 * H, 0.3 * D), 0.5),
                9.0, 0.025 * H, thickness=14.0)
        hip = g.P(side * B["hip_joint"], L["hip"], 0.5 * D)
        g.blob(hip, 0.016 * H, 0.016 * H, 0.016 * H, 1.0, "axial", shell=0.7)
        g.tube(hip, _lerp(sym, hip, 0.15), 8.0, 8.5, 1.0, "axial")  # superior pubic ramus
        isch = g.P(side * 0.7 * B["hip_joint"], L["hip"] + 0.03 * H, 0.3 * D)
        g.tube(hip, isch, 10.0, 9.0, 1.0, "axial")
        g.tube(isch, _lerp(sym, isch, 0.1), 7.0, 7.0, 0.9, "axial")
        g.site(f"{sname} ilium", "pelvis", [crest[0], crest[1], crest[2], wing_c], 14.0, 18.0)
        g.site(f"{sname} acetabulum", "pelvis", [hip], 14.0, 18.0)
        g.site(f"{sname} pubis", "pelvis", [_lerp(sym, hip, 0.8), _lerp(sym, hip, 0.15)], 8.0, 16.0)
        g.site(f"{sname} ischium", "pelvis", [hip, isch], 9.0, 16.0)
        g.landmarks[f"{sname} hip"] = hip[:2]
    g.vertebrae = vertebrae
    g.head = (hc, head_a, head_b, head_c)
    return gains


def _patient_v(g: _Graph, x: float, y: float) -> float:
    """Inverse of the frame's rotation for the v coordinate."""
    c, s = math.cos(g.roll), math.sin(g.roll)
    v0 = 0.5 * g.H
    dx, dy = x - g.xmid, y - (g.top + v0)
    return v0 + (-dx * s + dy * c)


def _limbs(g: _Graph, gains: np.ndarray) -> None:
    rng, H, L, B = g.rng, g.H, g.level, g.breadth
    D = g.trunk_depth
    pose = "side" if rng.random() < 0.6 else ("abducted" if rng.random() < 0.5 else "chest")
    g.arm_pose = pose
    g.arm_parts = {}
    g.leg_parts = {}
    for side in (-1, 1):
        sname = "left" if side > 0 else "right"
        g.gain = float(gains[4] * rng.lognormal(0.0, 0.03))
        head_u = B["shoulder"] - 0.02 * H
        shoulder = g.P(side * head_u, L["shoulder"] + 0.006 * H, 0.45 * D)
        hum = (L["elbow"] - L["shoulder"]) * float(rng.normal(1.0, 0.04))
        fore = (L["wrist"] - L["elbow"]) * float(rng.normal(1.0, 0.04))
        ab = math.radians(rng.uniform(2, 10) if pose != "abducted" else rng.uniform(15, 40))
        elbow = g.P(side * (head_u + hum * math.sin(ab)), L["shoulder"] + 0.006 * H + hum * math.cos(ab),
                    0.3 * D if pose != "chest" else 0.45 * D)
        eu, ev = side * (head_u + hum * math.sin(ab)), L["shoulder"] + 0.006 * H + hum * math.cos(ab)
        if pose == "chest":
            ang = math.radians(rng.uniform(100.0, 140.0))  # from straight down towards the midline and up
            wu, wv = eu - side * fore * math.sin(ang), ev - fore * math.cos(ang)
            wz = D * 1.05 + 20.0
        else:
            ang = ab + math.radians(rng.uniform(-3, 12))
            wu, wv = eu + side * fore * math.sin(ang), ev + fore * math.cos(ang)
            wz = 0.22 * D
        wrist = g.P(wu, wv, wz)
        elbow = (elbow[0], elbow[1], 0.3 * D if pose != "chest" else 0.5 * D + 10.0)
        g.blob(shoulder, 0.013 * H, 0.013 * H, 0.013 * H, 1.4, "appendicular")
        g.tube(shoulder, elbow, 0.0072 * H, 0.0065 * H, 1.5, "appendicular", shell=g.cortex)
        g.blob(_lerp(shoulder, elbow, 0.93), 0.009 * H, 0.016 * H, 0.009 * H, 1.3, "appendicular",
               angle=math.atan2(elbow[1] - shoulder[1], elbow[0] - shoulder[0]) - g.roll)
        for off in (-1, 1):  # radius and ulna
            o = (off * 5.0, 0.0, 0.0)
            g.tube(_add(elbow, o), _add(wrist, o), 4.5, 5.0 if off > 0 else 3.8, 1.5, "appendicular",
                   shell=g.cortex * 0.9)
        d = _unit3(wrist, elbow)
        hand_len = 0.108 * H * float(rng.normal(1.0, 0.04))
        carpus = _add(wrist, _scale(d, 12.0))
        g.blob(carpus, 0.014 * H, 0.01 * H, 8.0, 1.6, "appendicular",
               angle=math.atan2(d[1], d[0]) - g.roll)
        spread = float(rng.uniform(0.4, 1.0))
        perp = (-d[1], d[0], 0.0)
        mcp = _add(carpus, _scale(d, 0.45 * hand_len))
        for i in range(5):
            ray = _scale(perp, (i - 2) * 8.0 * spread)
            base = _add(carpus, _scale(ray, 0.6))
            mc = _add(_add(carpus, _scale(d, 0.42 * hand_len)), ray)
            tip = _add(mc, _add(_scale(d, 0.5 * hand_len * float(rng.uniform(0.6, 1.0))), _scale(ray, 0.3)))
            g.tube(base, mc, 3.4, 3.2, 1.3, "appendicular")
            g.tube(mc, tip, 3.0, 2.4, 1.0, "appendicular")
        g.site(f"{sname} proximal humerus", "humerus", [shoulder, _lerp(shoulder, elbow, 0.45)], 12.0, 22.0)
        g.joint(f"{sname} shoulder", "shoulder", sname, shoulder, 0.024 * H, 0.024 * H, _unit3(elbow, shoulder)[:2],
                thickness=34.0)
        g.joint(f"{sname} elbow", "elbow", sname, elbow, 0.024 * H, 0.015 * H, _unit3(wrist, elbow)[:2],
                thickness=24.0)
        g.joint(f"{sname} wrist", "wrist", sname, carpus, 0.018 * H, 0.014 * H, d[:2], thickness=18.0)
        g.joint(f"{sname} hand", "hand", sname, mcp, 0.022 * H * (0.5 + 0.5 * spread), 0.011 * H, d[:2],
                thickness=12.0)
        g.injection.append((f"{sname} antecubital fossa", _add(elbow, (0.0, 6.0, 0.0))[:2], 0.2))
        g.injection.append((f"{sname} forearm", _lerp(elbow, wrist, 0.55)[:2], 0.25))
        g.injection.append((f"{sname} hand dorsum", _add(carpus, _scale(d, 30.0))[:2], 0.15))
        g.landmarks[f"{sname} elbow"] = elbow[:2]
        g.landmarks[f"{sname} wrist"] = wrist[:2]
        g.arm_parts[side] = (shoulder, elbow, wrist, _add(carpus, _scale(d, hand_len)))
        # leg
        g.gain = float(gains[5] * rng.lognormal(0.0, 0.03))
        hip = g.P(side * B["hip_joint"], L["hip"], 0.5 * D)
        ankle_u = side * (B["hip_joint"] * float(rng.uniform(0.6, 1.3)))
        knee = g.P(side * B["hip_joint"] * 0.85, L["knee"], 0.055 * H)
        ankle = g.P(ankle_u, L["ankle"] - 0.02 * H, 0.04 * H)
        neck = g.P(side * (B["hip_joint"] + 0.025 * H), L["hip"] + 0.02 * H, 0.45 * D)
        g.blob(hip, 0.014 * H, 0.014 * H, 0.014 * H, 1.6, "appendicular")
        g.tube(hip, neck, 0.0085 * H, 0.009 * H, 1.3, "appendicular")
        g.blob(neck, 0.011 * H, 0.013 * H, 0.012 * H, 1.3, "appendicular")
        g.tube(neck, knee, 0.0085 * H, 0.0095 * H, 1.6, "appendicular", shell=g.cortex)
        for off in (-1, 1):  # condyles and tibial plateau
            g.blob(_add(knee, (off * 0.011 * H, -0.008 * H, 0.0)), 0.011 * H, 0.01 * H, 0.013 * H, 1.5,
                   "appendicular")
        g.blob(_add(knee, (0.0, 0.012 * H, 0.0)), 0.008 * H, 0.021 * H, 0.012 * H, 1.3, "appendicular",
               angle=math.pi / 2)
        g.blob(_add(knee, (0.0, -0.01 * H, 0.02 * H)), 0.012 * H, 0.012 * H, 0.006 * H, 0.8, "appendicular")
        g.tube(_add(knee, (0.0, 0.02 * H, 0.0)), ankle, 0.0085 * H, 0.007 * H, 1.5, "appendicular",
               shell=g.cortex)
        g.tube(_add(knee, (side * 0.017 * H, 0.025 * H, -8.0)), _add(ankle, (side * 0.014 * H, 0.0, -5.0)), 3.5,
               None, 1.2, "appendicular")
        g.blob(ankle, 0.011 * H, 0.009 * H, 0.01 * H, 1.2, "appendicular")
        foot_d = _rot((side * math.sin(math.radians(rng.uniform(0, 25))), 1.0), 0.0)
        fl = math.sin(math.radians(rng.uniform(20.0, 60.0)))
        heel = _add(ankle, (0.0, 0.015 * H, -0.015 * H))
        g.blob(heel, 0.011 * H, 0.011 * H, 0.013 * H, 0.9, "appendicular")
        tars = _add(ankle, (foot_d[0] * 0.03 * H * fl, 0.02 * H + foot_d[1] * 0.03 * H * fl, 0.02 * H))
        g.blob(tars, 0.014 * H, 0.009 * H, 0.01 * H, 1.3, "appendicular")
        mt_head = tars  # replaced by the first metatarsal's head below
        for i in range(5):
            ray = (-side * (i - 2) * 8.0, 0.0, 0.0)
            start = _add(tars, ray)
            end = _add(start, (foot_d[0] * 0.04 * H * fl, foot_d[1] * 0.04 * H * fl, 0.02 * H))
            g.tube(start, end, 4.0 if i else 5.0, 3.5, 1.2, "appendicular")
            if i == 0:
                mt_head = end
        g.site(f"{sname} proximal femur", "femur", [hip, neck, _lerp(neck, knee, 0.3)], 13.0, 28.0)
        g.site(f"{sname} distal femur", "distal_long_bone", [_lerp(neck, knee, 0.5), _lerp(neck, knee, 0.93)], 12.0,
               26.0)
        g.site(f"{sname} tibia", "distal_long_bone", [_lerp(knee, ankle, 0.15), _lerp(knee, ankle, 0.85)], 11.0, 24.0)
        g.joint(f"{sname} hip", "hip", sname, hip, 0.016 * H, 0.016 * H, thickness=34.0)
        g.joint(f"{sname} knee", "knee", sname, _add(knee, (0.0, 0.003 * H, 0.0)), 0.025 * H, 0.014 * H,
                _unit3(ankle, knee)[:2], thickness=40.0)
        g.joint(f"{sname} ankle", "ankle", sname, _add(ankle, (0.0, 0.005 * H, 0.0)), 0.017 * H, 0.01 * H,
                thickness=26.0)
        g.joint(f"{sname} foot", "foot", sname, mt_head if rng.random() < 0.5 else tars, 0.011 * H, 0.008 * H,
                foot_d, thickness=16.0)
        g.landmarks[f"{sname} knee"] = knee[:2]
        g.landmarks[f"{sname} ankle"] = ankle[:2]
        g.landmarks[f"{sname} foot"] = tars[:2]
        g.leg_parts[side] = (hip, knee, ankle, tars)
    g.gain = 1.0


def _add(a: Point3, b: Point3) -> Point3:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _scale(a: Point3, k: float) -> Point3:
    return (a[0] * k, a[1] * k, a[2] * k)


def _unit3(a: Point3, b: Point3) -> Point3:
    d = (a[0] - b[0], a[1] - b[1], a[2] - b[2])
    n = math.sqrt(sum(x * x for x in d)) or 1.0
    return (d[0] / n, d[1] / n, d[2] / n)


def _organs(g: _Graph) -> None:
    """Kidneys, bladder; heart, great vessels, liver and spleen (early phase)."""
    rng, H, L, D = g.rng, g.H, g.level, g.trunk_depth
    for side in (-1, 1):
        if rng.random() < 0.015:
            continue
        v = L["t12"] + (0.01 if side < 0 else 0.0) * H + float(rng.normal(0.0, 0.006)) * H
        c = g.P(side * 0.037 * H, v, 0.3 * D)
        g.blob(c, 0.031 * H, 0.016 * H, 0.014 * H, 1.0, "kidney", angle=math.pi / 2 + side * 0.25)
        g.landmarks[f"{'left' if side > 0 else 'right'} kidney"] = c[:2]
    fill = float(rng.uniform(0.15, 1.0))
    bl = g.P(float(rng.normal(0.0, 5.0)), L["hip"] - 0.005 * H - 0.01 * H * fill, 0.65 * D)
    g.blob(bl, (0.02 + 0.025 * fill) * H, (0.025 + 0.03 * fill) * H, (0.02 + 0.02 * fill) * H, 0.6, "bladder")
    g.landmarks["bladder"] = bl[:2]
    heart = g.P(0.015 * H + float(rng.normal(0, 6)), L["nipple"] - 0.01 * H, 0.62 * D)
    g.blob(heart, 0.04 * H, 0.033 * H, 0.03 * H, 1.0, "blood", angle=0.6, soft=True)
    g.landmarks["heart"] = heart[:2]
    aorta = [g.P(0.006 * H, L["sternum_top"] + 0.02 * H, 0.65 * D), g.P(0.012 * H, L["sternum_top"], 0.5 * D),
             g.P(0.01 * H, L["t12"], 0.45 * D), g.P(0.004 * H, L["iliac_crest"], 0.45 * D)]
    for a, b in pairwise(aorta):
        g.tube(a, b, 11.0, 9.5, 1.0, "blood")
    for side in (-1, 1):
        g.tube(aorta[-1], g.P(side * 0.05 * H, L["hip"] + 0.01 * H, 0.6 * D), 6.5, 5.5, 1.0, "blood")
    liver = g.P(-0.04 * H, L["t12"] - 0.025 * H, 0.55 * D)
    g.blob(liver, 0.06 * H, 0.04 * H, 0.045 * H, 1.0, "organ", angle=-0.25, soft=True)
    g.landmarks["liver"] = liver[:2]
    g.blob(g.P(0.05 * H, L["t12"] - 0.03 * H, 0.35 * D), 0.028 * H, 0.018 * H, 0.02 * H, 1.0, "organ", soft=True)


def _body_surfaces(g: _Graph) -> tuple[np.ndarray, np.ndarray, list]:
    """Anterior and posterior skin heights per pixel, and the lungs (centre, semi-axes)."""
    rows, cols, s, H, L, B, D = g.rows, g.cols, g.s, g.H, g.level, g.breadth, g.trunk_depth
    top = np.zeros((rows, cols), np.float32)
    bottom = np.full((rows, cols), np.inf, np.float32)
    xs = (np.arange(cols, dtype=np.float32) + 0.5) * s
    ys = (np.arange(rows, dtype=np.float32) + 0.5) * s
    fat = g.fat

    def add_tube(a: Sequence[float], b: Sequence[float], ra: float, rb: float, za: float, zb: float,
                 ta: float, tb: float) -> None:
        """Limb/neck: elliptic cross-section, half breadth r and half depth t, centre height z."""
        rmax = max(ra, rb)
        c0, c1 = max(int((min(a[0], b[0]) - rmax) / s), 0), min(int((max(a[0], b[0]) + rmax) / s) + 2, cols)
        r0, r1 = max(int((min(a[1], b[1]) - rmax) / s), 0), min(int((max(a[1], b[1]) + rmax) / s) + 2, rows)
        if c0 >= c1 or r0 >= r1:
            return
        gx, gy = xs[None, c0:c1] - a[0], ys[r0:r1, None] - a[1]
        dx, dy = b[0] - a[0], b[1] - a[1]
        l2 = dx * dx + dy * dy or 1.0
        t = np.clip((gx * dx + gy * dy) / l2, 0.0, 1.0)
        e2 = (gx - t * dx) ** 2 + (gy - t * dy) ** 2
        r = ra + t * (rb - ra)
        q = np.clip(1.0 - e2 / (r * r), 0.0, None)
        half = (ta + t * (tb - ta)) * np.sqrt(q)
        zc = za + t * (zb - za)
        inside = q > 0
        np.maximum(top[r0:r1, c0:c1], np.where(inside, zc + half, 0.0), out=top[r0:r1, c0:c1])
        np.minimum(bottom[r0:r1, c0:c1], np.where(inside, zc - half, np.inf), out=bottom[r0:r1, c0:c1])

    # trunk: superelliptic cross-sections (x, z) per level, resting on the couch
    knots_v = [L["c7"] - 0.01 * H, L["shoulder"], L["nipple"], L["t12"] + 0.03 * H, L["iliac_crest"] + 0.03 * H,
               L["hip"], L["hip"] + 0.045 * H]
    half_w = [0.045 * H + 0.3 * fat, B["shoulder"] + 0.004 * H + 0.4 * fat, B["chest"] + 0.012 * H + 0.7 * fat,
              B["waist"] + 0.012 * H + 1.2 * fat, B["pelvis"] + 0.018 * H + 1.1 * fat,
              B["pelvis"] + 0.02 * H + 1.0 * fat, 0.05 * H + 0.5 * fat]
    depth = [0.55 * D, 0.8 * D, 1.02 * D, D, 1.0 * D, 0.95 * D, 0.75 * D]
    expo = [2.0, 2.6, 2.4, 2.2, 2.5, 2.4, 2.0]
    for r in range(rows):
        vpix = _patient_v(g, g.xmid, ys[r])
        if not knots_v[0] <= vpix <= knots_v[-1]:
            continue
        a = float(np.interp(vpix, knots_v, half_w))
        dd = float(np.interp(vpix, knots_v, depth))
        n = float(np.interp(vpix, knots_v, expo))
        xc = g.xy(0.0, vpix)[0]
        q = np.clip(1.0 - np.abs((xs - xc) / a) ** n, 0.0, None) ** (1.0 / n)
        half = 0.5 * dd * q
        inside = q > 0
        np.maximum(top[r], np.where(inside, 0.5 * dd + half, 0.0), out=top[r])
        np.minimum(bottom[r], np.where(inside, 0.5 * dd - half, np.inf), out=bottom[r])
    hc, ha, hb, hcz = g.head
    add_tube((hc[0], hc[1] - 0.75 * hb), (hc[0], hc[1] + 0.45 * hb), ha + 7.0, ha + 5.0, hc[2], hc[2], hcz + 7.0,
             hcz + 5.0)
    add_tube(g.xy(0.0, L["chin"] - 0.02 * H), g.xy(0.0, L["c7"]), 0.034 * H + 0.3 * fat, 0.04 * H + 0.3 * fat,
             0.045 * H, 0.3 * D, 0.04 * H, 0.3 * D)
    for side in (-1, 1):
        sh, el, wr, tip = g.arm_parts[side]
        add_tube(sh, el, 0.028 * H + 0.25 * fat, 0.022 * H + 0.2 * fat, sh[2], el[2], 0.026 * H + 0.25 * fat,
                 0.022 * H + 0.2 * fat)
        add_tube(el, wr, 0.021 * H + 0.15 * fat, 0.014 * H, el[2], wr[2], 0.02 * H + 0.15 * fat, 0.012 * H)
        add_tube(wr, tip, 0.017 * H, 0.012 * H, wr[2], wr[2], 0.011 * H, 0.008 * H)
        _, knee, ankle, tars = g.leg_parts[side]
        thigh = (g.xy(side * (0.05 * H + 0.4 * fat), L["hip"] + 0.03 * H))
        add_tube(thigh, knee[:2], 0.05 * H + 0.6 * fat, 0.032 * H + 0.3 * fat, 0.055 * H + 0.5 * fat,
                 0.055 * H + 0.2 * fat, 0.055 * H + 0.5 * fat, 0.05 * H + 0.2 * fat)
        add_tube(knee[:2], ankle[:2], 0.032 * H + 0.3 * fat, 0.02 * H, 0.05 * H + 0.2 * fat, 0.035 * H,
                 0.048 * H + 0.2 * fat, 0.03 * H)
        add_tube(ankle[:2], _add(tars, (0.0, 0.05 * H, 0.0))[:2], 0.022 * H, 0.02 * H, 0.04 * H, 0.06 * H,
                 0.035 * H, 0.025 * H)
    bottom = np.where(np.isfinite(bottom), np.maximum(bottom, 0.0), 0.0).astype(np.float32)
    lungs = []
    for side in (-1, 1):
        c = g.P(side * 0.45 * B["chest"], L["shoulder"] + 0.07 * H, 0.5 * D)
        lungs.append((c, (0.55 * B["chest"], 0.075 * H, 0.36 * D)))
    # breasts and a pannus add anterior tissue
    if g.patient.sex == "F" or g.fat > 25.0:
        extra = float(g.rng.uniform(15.0, 70.0)) + 0.6 * fat if g.patient.sex == "F" else 0.6 * fat
        for side in (-1, 1):
            cx, cy = g.xy(side * (0.06 * H + 0.3 * fat), L["nipple"] + 0.02 * H)
            a, b = 0.05 * H + 0.4 * fat, 0.04 * H + 0.3 * fat
            q = np.clip(1.0 - ((xs[None, :] - cx) / a) ** 2 - ((ys[:, None] - cy) / b) ** 2, 0.0, None)
            top += (extra * np.sqrt(q) * (top > 0)).astype(np.float32)
    return top, bottom, lungs


def sample_voxel_anatomy(rng: np.random.Generator, matrix: tuple[int, int] = (1024, 256),
                         patient_id: str = "PHANTOM") -> VoxelAnatomy:
    """Draw a patient and build the voxel anatomy on a ``matrix`` grid."""
    rows, cols = matrix
    spacing = float(rng.uniform(1.9, 2.8)) * 1024.0 / rows
    patient = sample_patient(rng, patient_id)
    # large matrices are rendered at about 2 mm and interpolated: the system blur is wider
    factor = 2 if rows > 1024 and rows % 2 == 0 and cols % 2 == 0 else 1
    g = _Graph(rng, patient, (rows // factor, cols // factor), spacing * factor)
    gains_by_region = _build_skeleton(g)
    _limbs(g, gains_by_region)
    _organs(g)
    top, bottom, lungs = _body_surfaces(g)
    _relative_depths(g, top, bottom)
    age = patient.age
    gains = {
        "axial": 1.0, "appendicular": float(np.clip(rng.normal(1.0, 0.12) - 0.004 * max(age - 50, 0), 0.6, 1.4)),
        "joint": 1.0, "face": float(rng.lognormal(0.0, 0.2)),
        "kidney": float(rng.lognormal(math.log(0.9), 0.5)), "bladder": float(rng.lognormal(math.log(1.8), 0.7)),
        "blood": 0.0, "organ": 0.0,
    }
    return VoxelAnatomy(
        patient=patient, matrix=(rows, cols), pixel_spacing_mm=spacing, solids=g.solids, z_top=top, z_bottom=bottom,
        lungs=lungs, bone_sites=g.sites, joints=g.joints, injection_sites=g.injection, landmarks=g.landmarks,
        gains=gains, soft_to_bone=float(np.exp(rng.uniform(math.log(1 / 15.0), math.log(1 / 5.0)))),
        mu_soft_per_mm=float(rng.uniform(0.012, 0.0155)), couch_transmission=float(rng.uniform(0.85, 0.96)),
        reference_gains=dict(gains), grid_factor=factor,
    )


def _depth_at(top: np.ndarray, bottom: np.ndarray, s: float, x: float, y: float, z: float) -> float:
    rows, cols = top.shape
    r = min(max(int(y / s), 0), rows - 1)
    c = min(max(int(x / s), 0), cols - 1)
    t, b = float(top[r, c]), float(bottom[r, c])
    if t - b < 10.0:
        return 0.5
    return float(np.clip((t - z) / (t - b), 0.0, 1.0))


def _relative_depths(g: _Graph, top: np.ndarray, bottom: np.ndarray) -> None:
    """Registries carry absolute heights until the skin is known; make them relative depths."""
    s = g.s
    for site in g.sites:
        site.depths = [_depth_at(top, bottom, s, x, y, z) for (x, y), z in zip(site.points, site.depths)]
    for j in g.joints:
        j.depth = _depth_at(top, bottom, s, j.centre[0], j.centre[1], j.depth)


# ------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------


class _Volume:
    """Attenuation grids (coarse) and depth-group accumulators for both detectors."""

    def __init__(self, anatomy: VoxelAnatomy, n_groups: int = 6):
        self.a = anatomy
        rows, cols = anatomy.z_top.shape
        self.shape = (rows, cols)
        self.s = anatomy.pixel_spacing_mm * anatomy.grid_factor
        self.f = 2  # coarse grid: 2 x 2 pixels per cell
        top, bottom = anatomy.z_top, anatomy.z_bottom
        self.zmax = float(top.max()) + 5.0
        nz = int(math.ceil(self.zmax / _DZ_COARSE_MM)) + 1
        rc, cc = (rows + 1) // 2, (cols + 1) // 2
        pad_r, pad_c = rc * 2 - rows, cc * 2 - cols
        t2 = np.pad(top, ((0, pad_r), (0, pad_c))).reshape(rc, 2, cc, 2).max(axis=(1, 3))
        b2 = np.pad(bottom, ((0, pad_r), (0, pad_c))).reshape(rc, 2, cc, 2).min(axis=(1, 3))
        zc = (np.arange(nz, dtype=np.float32) + 0.5) * _DZ_COARSE_MM
        inside = (zc[None, None, :] <= t2[..., None]) & (zc[None, None, :] >= b2[..., None]) & (t2[..., None] > 0)
        mu = inside.astype(np.float32) * anatomy.mu_soft_per_mm
        ys = (np.arange(rc, dtype=np.float32) + 0.5) * self.s * 2
        xs = (np.arange(cc, dtype=np.float32) + 0.5) * self.s * 2
        for (cx, cy, cz), (ax, ay, az) in anatomy.lungs:
            r0, r1 = max(int((cy - ay) / (2 * self.s)), 0), min(int((cy + ay) / (2 * self.s)) + 1, rc)
            c0, c1 = max(int((cx - ax) / (2 * self.s)), 0), min(int((cx + ax) / (2 * self.s)) + 1, cc)
            if r0 >= r1 or c0 >= c1:
                continue
            q = (((xs[None, c0:c1, None] - cx) / ax) ** 2 + ((ys[r0:r1, None, None] - cy) / ay) ** 2
                 + ((zc[None, None, :] - cz) / az) ** 2)
            mu[r0:r1, c0:c1] *= np.where(q <= 1.0, 0.3, 1.0).astype(np.float32)
        path_from_top = np.cumsum(mu[..., ::-1], axis=2)[..., ::-1] * _DZ_COARSE_MM  # to the anterior side
        path_from_bottom = np.cumsum(mu, axis=2) * _DZ_COARSE_MM
        self.att_ant = np.exp(-path_from_top).astype(np.float32)
        self.att_post = (np.exp(-path_from_bottom) * anatomy.couch_transmission).astype(np.float32)
        self.inside = inside
        self.nz = nz
        self.edges = np.linspace(0.0, self.zmax, n_groups + 1)
        self.ant = [np.zeros((rows, cols), np.float32) for _ in range(n_groups)]
        self.post = [np.zeros((rows, cols), np.float32) for _ in range(n_groups)]

    def group(self, z: float, anterior: bool) -> int:
        """Depth group by distance from that view's detector."""
        d = (self.zmax - z) if anterior else z
        return min(max(int(d / self.zmax * len(self.ant)), 0), len(self.ant) - 1)

    def add(self, solid: Solid, gain: float) -> None:
        amp = solid.concentration * gain
        if amp == 0.0:
            return
        s = self.s
        rows, cols = self.shape
        if solid.kind == "tube":
            a, b = np.array(solid.p0, np.float32), np.array(solid.p1, np.float32)
            r0x, r0z, r1x, r1z = solid.radii
            rx, rz = max(r0x, r1x), max(r0z, r1z)
            lo = np.minimum(a, b) - np.array([rx, rx, rz]) - 1.0
            hi = np.maximum(a, b) + np.array([rx, rx, rz]) + 1.0
        else:
            c = np.array(solid.p0, np.float32)
            ax, ay, az = solid.radii
            ext = max(ax, ay)
            lo = c - np.array([ext, ext, az]) - 1.0
            hi = c + np.array([ext, ext, az]) + 1.0
        c0, c1 = max(int(lo[0] / s), 0), min(int(hi[0] / s) + 1, cols)
        r0, r1 = max(int(lo[1] / s), 0), min(int(hi[1] / s) + 1, rows)
        z0 = max(lo[2], 0.0)
        nz = int(math.ceil((hi[2] - z0) / _DZ_MM))
        if c0 >= c1 or r0 >= r1 or nz <= 0:
            return
        X = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * s)[None, :, None]
        Y = ((np.arange(r0, r1, dtype=np.float32) + 0.5) * s)[:, None, None]
        Z = (z0 + (np.arange(nz, dtype=np.float32) + 0.5) * _DZ_MM)[None, None, :]
        if solid.kind == "tube":
            d = b - a
            l2 = float(d @ d) or 1.0
            t = np.clip(((X - a[0]) * d[0] + (Y - a[1]) * d[1] + (Z - a[2]) * d[2]) / l2, 0.0, 1.0)
            ex, ey, ez = X - a[0] - t * d[0], Y - a[1] - t * d[1], Z - a[2] - t * d[2]
            # cross-section frame: depth (z) and the in-plane perpendicular
            radx = r0x + t * (r1x - r0x)
            radz = r0z + t * (r1z - r0z)
            inplane = np.sqrt(ex * ex + ey * ey)
            q = (inplane / radx) ** solid.exponent + (np.abs(ez) / radz) ** solid.exponent
        else:
            ca, sa = math.cos(solid.angle), math.sin(solid.angle)
            u = (X - c[0]) * ca + (Y - c[1]) * sa
            w = -(X - c[0]) * sa + (Y - c[1]) * ca
            q = (np.abs(u) / ax) ** solid.exponent + (np.abs(w) / ay) ** solid.exponent + \
                (np.abs(Z - c[2]) / az) ** solid.exponent
        if solid.soft_edge:
            occ = np.clip(1.0 - q, 0.0, None) ** 1.5
        else:
            occ = np.clip((1.0 - q) * 6.0, 0.0, 1.0)  # partial-volume edge
            if solid.shell > 0.0:
                occ = occ - np.clip((solid.shell ** solid.exponent - q) * 6.0, 0.0, 1.0)
        if not np.any(occ > 0):
            return
        # attenuation from the coarse grid at each sample
        ri = np.minimum(np.arange(r0, r1) // 2, self.att_ant.shape[0] - 1)[:, None, None]
        ci = np.minimum(np.arange(c0, c1) // 2, self.att_ant.shape[1] - 1)[None, :, None]
        zi = np.clip((Z / _DZ_COARSE_MM).astype(np.int64), 0, self.nz - 1)
        w_ant = (occ * self.att_ant[ri, ci, zi]).sum(axis=2) * (amp * _DZ_MM)
        w_post = (occ * self.att_post[ri, ci, zi]).sum(axis=2) * (amp * _DZ_MM)
        zc = float(solid.p0[2] + solid.p1[2]) / 2
        self.ant[self.group(zc, True)][r0:r1, c0:c1] += w_ant
        self.post[self.group(zc, False)][r0:r1, c0:c1] += w_post

    def add_soft(self, concentration: float) -> None:
        """Uniform soft-tissue activity, integrated on the coarse grid per depth group."""
        rows, cols = self.shape
        zc = (np.arange(self.nz) + 0.5) * _DZ_COARSE_MM
        for anterior, att, groups in ((True, self.att_ant, self.ant), (False, self.att_post, self.post)):
            weighted = self.inside * att
            for k in range(len(groups)):
                dist = (self.zmax - zc) if anterior else zc
                sel = (dist >= self.edges[k]) & (dist < self.edges[k + 1])
                if not sel.any():
                    continue
                layer = weighted[..., sel].sum(axis=2) * (_DZ_COARSE_MM * concentration)
                fine = np.repeat(np.repeat(layer, 2, axis=0), 2, axis=1)[:rows, :cols]
                groups[k] += ndimage.uniform_filter(fine, 2)

    def bone_and_soft_at(self, x: float, y: float) -> tuple[float, float]:
        """Posterior-view bone signal (accumulated so far) and unit soft-tissue signal at a point."""
        rows, cols = self.shape
        r = min(max(int(y / self.s), 1), rows - 2)
        c = min(max(int(x / self.s), 1), cols - 2)
        bone = float(sum(layer[r - 1: r + 2, c - 1: c + 2].mean() for layer in self.post))
        cell = (min(r // 2, self.inside.shape[0] - 1), min(c // 2, self.inside.shape[1] - 1))
        soft = float((self.inside[cell] * self.att_post[cell]).sum() * _DZ_COARSE_MM)
        return bone, soft


def _lesion_solid(lesion: Lesion, anatomy: VoxelAnatomy) -> Solid:
    s = anatomy.pixel_spacing_mm
    x, y = (lesion.col + 0.5) * s, (lesion.row + 0.5) * s
    rows, cols = anatomy.z_top.shape
    grid = s * anatomy.grid_factor
    r, c = min(max(int(y / grid), 0), rows - 1), min(max(int(x / grid), 0), cols - 1)
    top, bottom = float(anatomy.z_top[r, c]), float(anatomy.z_bottom[r, c])
    z = top - lesion.depth * (top - bottom) if top > bottom else 40.0
    a = lesion.radius_mm
    b = a / max(lesion.elongation, 1.0)
    cz = b if lesion.thickness_mm is None else min(b, lesion.thickness_mm / 2)
    soft = lesion.kind == "injection" and "extravasation" in lesion.site
    return Solid("blob", (x, y, z), (x, y, z), (a, b, max(cz, 1.5)), lesion.relative_uptake - lesion.host_uptake,
                 "lesion", 2.0, 0.0, -math.radians(lesion.orientation_deg), soft)


def render_voxel_views(anatomy: VoxelAnatomy, lesions: list[Lesion],
                       acquisition: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Expected anterior and posterior images (relative units), scatter included.

    Sets ``anatomy.soft_tissue_ratio`` so that the image has the anatomy's soft tissue to bone
    ratio (soft tissue over the lumbar spine at L3, posterior view, before blur).
    """
    vol = _Volume(anatomy)
    gains = anatomy.gains
    for solid in anatomy.solids:
        if solid.group not in ("blood", "organ"):
            vol.add(solid, gains.get(solid.group, 1.0))
    bone, unit_soft = vol.bone_and_soft_at(*anatomy.landmarks["L3"])
    ref = anatomy.reference_gains.get("axial", 1.0) / max(gains.get("axial", 1.0), 1e-6)
    soft = anatomy.soft_to_bone * bone * ref / max(unit_soft, 1e-6) * gains.get("soft", 1.0)
    anatomy.soft_tissue_ratio = soft
    for solid in anatomy.solids:
        if solid.group in ("blood", "organ"):
            vol.add(solid, gains.get(solid.group, 0.0) * soft)
    lesion_gain = gains.get("lesion", 1.0)
    for lesion in lesions:
        vol.add(_lesion_solid(lesion, anatomy), lesion_gain)
    vol.add_soft(soft)
    s = vol.s
    intrinsic = acquisition.intrinsic_fwhm_mm
    # collimator FWHM linear in distance, equal to the study's FWHM at 10 cm
    geo10 = math.sqrt(max(acquisition.fwhm_10cm_mm ** 2 - intrinsic ** 2, 1.0))
    geo0 = 0.25 * geo10

    def sigma(distance: float) -> float:
        geo = geo0 + (geo10 - geo0) * distance / 100.0
        return math.hypot(intrinsic, geo) / 2.3548 / s

    out = []
    thickness = np.maximum(anatomy.z_top - anatomy.z_bottom, 0.0)
    for groups, gap in ((vol.ant, acquisition.gap_mm), (vol.post, 12.0)):
        img = np.zeros(vol.shape, np.float32)
        for k, layer in enumerate(groups):
            if not layer.any():
                continue
            centre = 0.5 * (vol.edges[k] + vol.edges[k + 1]) + gap
            img += ndimage.gaussian_filter(layer, sigma(centre), truncate=3.0, mode="constant")
        # scatter: a short- and a long-range component, stronger through thicker tissue
        short = ndimage.gaussian_filter(img, 12.0 / s, truncate=2.5)
        broad = ndimage.zoom(ndimage.gaussian_filter(img[::4, ::4], 55.0 / (4 * s), truncate=2.5), 4, order=1)
        broad = np.pad(broad, ((0, max(img.shape[0] - broad.shape[0], 0)), (0, max(img.shape[1] - broad.shape[1], 0))))
        broad = broad[: img.shape[0], : img.shape[1]]
        strength = acquisition.scatter_fraction * np.clip(thickness / 200.0, 0.3, 1.8)
        strength = ndimage.gaussian_filter(strength, 20.0 / s)
        img = img + strength * (0.5 * short + 0.5 * broad)
        if anatomy.grid_factor > 1:
            img = ndimage.zoom(img, anatomy.grid_factor, order=1, grid_mode=True, mode="nearest")
            img = img[: anatomy.matrix[0], : anatomy.matrix[1]] / anatomy.grid_factor ** 2
        out.append(np.maximum(img, 0.0).astype(np.float32))
    ant, post = out
    return ant, post[:, ::-1].copy()
