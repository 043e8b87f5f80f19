"""A flow/blood-pool (early-phase) whole-body image built from the phantom's anatomy and physics.

The phantom (spectnode/phantom) renders the delayed phase only. An early image differs in its
tracer distribution, not its physics: a few minutes after injection most activity is still in the
blood, so the heart, great vessels, liver, kidneys and the soft tissue are bright and the skeleton
is faint. This module keeps the phantom's patient and projector and changes the distribution.
"""

from __future__ import annotations

import numpy as np

from spectnode.phantom.anatomy import sample_anatomy
from spectnode.phantom.render import Primitive
from spectnode.phantom.synth import render_expected_views

BONE_GROUPS = ("bone", "axial", "appendicular", "face", "joint", "growth", "patella")


def blood_pool_views(seed: int, matrix: tuple[int, int] = (1024, 256), counts: float = 1.5e6
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """(anterior, posterior, pixel spacing) of a blood-pool image: Poisson counts, uint16."""
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, matrix)
    for group in BONE_GROUPS:
        anatomy.gains[group] = 0.12  # bone uptake has barely begun
    anatomy.gains["kidney"] = 2.5
    anatomy.gains["bladder"] = 0.3
    anatomy.gains["blood"] = 1.0
    anatomy.soft_tissue_ratio *= 6.0
    t1, l3 = np.array(anatomy.landmarks["T1"]), np.array(anatomy.landmarks["L3"])
    heart = t1 + 0.45 * (l3 - t1) + np.array([25.0, 0.0])  # patient's left is image right (anterior)
    liver = t1 + 0.75 * (l3 - t1) + np.array([-60.0, 0.0])
    anatomy.primitives += [
        Primitive("ellipse", (tuple(heart),), (55.0, 65.0), (0.35,), 60.0, group="blood", profile="soft"),
        Primitive("ellipse", (tuple(liver),), (80.0, 55.0), (0.5,), 30.0, group="blood", profile="soft"),
        Primitive("capsule", (tuple(t1 + [10.0, 60.0]), tuple(l3 + [5.0, 40.0])), (9.0, 8.0), (0.55, 0.55),
                  12.0, group="blood"),
    ]
    ant, post = render_expected_views(anatomy, [])
    views = []
    for image in (ant, post):
        expected = image / image.sum() * counts + 0.05
        views.append(np.minimum(rng.poisson(expected), 65535).astype(np.uint16))
    return views[0], views[1], anatomy.pixel_spacing_mm
