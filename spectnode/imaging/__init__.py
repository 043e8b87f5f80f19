"""Reading whole-body bone-scan views from DICOM, and the papers' preprocessing.

* :mod:`spectnode.imaging.views`: find the anterior/posterior views of a study
  in any DICOM layout (:func:`read_study_views`, :func:`load_study_views`), or
  say precisely why the study is not assessable.
* :mod:`spectnode.imaging.view_labels`: the rules for reading ANT/POST text.
* :mod:`spectnode.imaging.view_inference`: anterior vs posterior from the image, with a certainty.
* :mod:`spectnode.imaging.guards`: early-phase and not-a-bone-scan checks run before any model.
* :mod:`spectnode.imaging.safe_text`: which header texts a reason may quote (no patient data).
* :mod:`spectnode.imaging.preprocess`: min-max normalisation, resampling,
  inRAC view aggregation, augmentation and the network input.
"""

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
from spectnode.imaging.view_labels import view_from_label
from spectnode.imaging.views import (
    ANTERIOR,
    POSTERIOR,
    REASON_CODES,
    NotAssessable,
    StudyViews,
    ViewImage,
    group_by_study,
    load_study_views,
    read_study_views,
)

__all__ = [
    "ANTERIOR",
    "POSTERIOR",
    "REASON_CODES",
    "NETWORK_INPUT_SHAPE",
    "AugmentationParams",
    "BodyBounds",
    "NotAssessable",
    "StudyViews",
    "ViewImage",
    "aggregate_views",
    "align_to_bounds",
    "apply_augmentation",
    "augment",
    "find_body_bounds",
    "group_by_study",
    "load_study_views",
    "minmax_normalize",
    "bone_window_normalize",
    "normalize",
    "prepare_aggregate",
    "prepare_view",
    "read_study_views",
    "resample_to",
    "sample_augmentation",
    "view_from_label",
]
