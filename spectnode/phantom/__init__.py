"""Synthetic whole-body bone scans ("phantom") for training and testing spectnode's models.

:func:`synthesize_scan` draws one anterior + posterior study of a given label; see
:mod:`spectnode.phantom.synth` for the orientation convention and the physics.
"""

from .anatomy import PhantomPatient
from .findings import Lesion
from .synth import LABELS, PhantomScan, synthesize_scan

__all__ = ["LABELS", "Lesion", "PhantomPatient", "PhantomScan", "synthesize_scan"]
