"""The report stage: DICOM objects that carry a study's result back to PACS.

Takes what the classify stage produced (a :class:`~spectnode.classify.StudyResult`,
the study's :class:`~spectnode.imaging.views.StudyViews` and its source
datasets) and returns pydicom datasets; it knows nothing about networking,
job storage or dispatch.

* :func:`build_result_sr` / :func:`build_not_assessable_sr`: a Comprehensive
  3D SR (TID 1500) in the original study, with a Certainty of Finding per
  class, the most probable class(es), the algorithm's identification and the
  model's research-use statement.
* :func:`build_overlay_captures`: one RGB secondary capture per view, the scan
  with the class-activation heatmap (LayerCAM) and the result burned in.

Typical use::

    from spectnode.report import AlgorithmInfo, build_result_sr, build_overlay_captures

    algorithm = AlgorithmInfo.from_card(classifier.card)
    result = classifier.classify(views, explain=True)
    sr = build_result_sr(datasets, views, result, [algorithm])
    captures = build_overlay_captures(datasets, views, result, [algorithm])
    sr.save_as("result.dcm", enforce_file_format=True)
"""

from spectnode.report.algorithm import DEFAULT_MANUFACTURER, AlgorithmInfo
from spectnode.report.sc import (
    HEATMAP_THRESHOLD,
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    WINDOW_PERCENTILE,
    build_overlay_captures,
    render_overlay,
)
from spectnode.report.sr import (
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    build_not_assessable_sr,
    build_result_sr,
    certainty_percent,
)

__all__ = [
    "DEFAULT_MANUFACTURER",
    "HEATMAP_THRESHOLD",
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_NUMBER",
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "WINDOW_PERCENTILE",
    "AlgorithmInfo",
    "build_not_assessable_sr",
    "build_overlay_captures",
    "build_result_sr",
    "certainty_percent",
    "render_overlay",
]
