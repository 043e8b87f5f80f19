"""Secondary captures: each view with its heatmap and the result burned in.

A burned-in RGB Secondary Capture is what every PACS viewer shows, unlike
presentation states or 1-bit overlay planes. Each capture holds:

* the view as a nuclear-medicine reader sees it: inverted grey scale (dark
  uptake on white), windowed from 0 to the :data:`WINDOW_PERCENTILE`-th
  percentile of the counted pixels, so that the bladder and hot lesions
  saturate instead of washing out the skeleton (at the 99th percentile the
  bladder of a typical scan sets the window and the skeleton fades to a pale
  grey); upscaled by nearest neighbour to about 2048 rows so the text fits;
* the class-activation heatmap (LayerCAM) of the most probable class as a semi-transparent
  yellow-to-red colour wash where it exceeds :data:`HEATMAP_THRESHOLD`;
* side markers (R / L) at the top corners;
* a panel on the right with "RESEARCH USE ONLY - NOT FOR CLINICAL USE", the
  view, the most probable (and second) class, every class's probability as a
  bar, the heatmap's colour scale, and the model's name and version.

The image is not shown mirrored: the anterior view is seen facing the patient
(PatientOrientation L\\F), the posterior view from behind (R\\F), as
:mod:`spectnode.imaging.views` returns them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from spectnode import __version__
from spectnode.report import content
from spectnode.report._sources import (
    check_same_study,
    find_source,
    header_with_study_defaults,
    referenced_frame_number,
)
from spectnode.report.algorithm import DEFAULT_MANUFACTURER, AlgorithmInfo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spectnode.classify import StudyResult
    from spectnode.imaging.views import StudyViews, ViewImage

#: A font Pillow can draw with (FreeType when available, its bitmap font otherwise).
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

__all__ = [
    "HEATMAP_THRESHOLD",
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_NUMBER",
    "WINDOW_PERCENTILE",
    "build_overlay_captures",
    "render_overlay",
]

#: SeriesNumber of spectnode's secondary-capture series.
SC_SERIES_NUMBER = 991
#: SeriesDescription of spectnode's secondary-capture series.
SC_SERIES_DESCRIPTION = "spectnode overlay"
#: Percentile of the counted (non-zero) pixels shown black.
WINDOW_PERCENTILE = 98.0
#: Heatmap values at or below this are not drawn (the maps are scaled to [0, 1]).
HEATMAP_THRESHOLD = 0.2

_TARGET_ROWS = 2048  # a 1024-row scan is shown twice as large
_MAX_SCALE = 4
_MAX_ALPHA = 0.55  # the scan stays visible under the strongest colour
_ALPHA_RAMP = 0.15  # heatmap range over which the colour fades in above the threshold
_LOW_COLOUR = np.array([255.0, 215.0, 0.0])  # yellow at the threshold
_HIGH_COLOUR = np.array([215.0, 0.0, 0.0])  # red at 1.0
_WARNING_RED = (190, 0, 0)
_TEXT = (0, 0, 0)
_MUTED = (90, 90, 90)
_PANEL_BACKGROUND = (245, 245, 245)
_BAR_COLOUR = (60, 90, 160)
_TOP_BAR_COLOUR = (200, 40, 20)
# Which side of the patient each top corner shows, per view (see module docstring).
_SIDE_MARKERS = {"anterior": ("R", "L"), "posterior": ("L", "R")}
_PATIENT_ORIENTATION = {"anterior": ("L", "F"), "posterior": ("R", "F")}
_VIEW_DESCRIPTIONS = {
    "anterior": "seen from the front; patient's right on the left",
    "posterior": "seen from behind; patient's left on the left",
}


def build_overlay_captures(
    source_datasets: Sequence[Dataset],
    views: StudyViews,
    result: StudyResult,
    algorithms: Sequence[AlgorithmInfo],
    *,
    series_instance_uid: str | None = None,
    series_number: int = SC_SERIES_NUMBER,
    first_instance_number: int = 1,
) -> list[hd.sc.SCImage]:
    """One RGB secondary capture per view of a classified study.

    Each capture shows every model's result; its heatmap is that of the first
    model (in ``result.models`` order) with a heatmap of the view, and the
    capture names that model.

    Args:
        source_datasets: The study's instances as received (pixel data not
            needed); each view's source must be among them. Patient and study
            attributes are copied from it (missing type 2 ones written empty).
        views: The views the result was computed from.
        result: A classified result; its heatmaps are drawn where present.
        algorithms: The model of each of ``result.models``, in the same order.
        series_instance_uid: The captures' series; a new UID when None.
        series_number: SeriesNumber of that series.
        first_instance_number: InstanceNumber of the first capture; the next
            view gets the next number.

    Returns:
        The captures, anterior first, in one new series of the source study.
        Each references its source instance (and frame) in
        SourceImageSequence.

    Raises:
        ValueError: if ``result`` is not classified, or belongs to another
            study, or a view's source is missing.
    """
    if result.outcome != "classified":
        raise ValueError(f"result of study {result.study_uid} is {result.outcome!r}: nothing to overlay")
    if result.study_uid != views.study_uid:
        raise ValueError(f"result is of study {result.study_uid}, views of study {views.study_uid}")
    check_same_study(source_datasets, result.study_uid)
    if len(algorithms) != len(result.models) or not algorithms:
        raise ValueError(f"{len(result.models)} model result(s) but {len(algorithms)} algorithm(s)")

    series_instance_uid = series_instance_uid or generate_uid()
    view_names = list(result.views) or list(views.available_views)
    captures: list[hd.sc.SCImage] = []
    for number, name in enumerate(view_names, start=first_instance_number):
        image = getattr(views, name, None)
        if image is None:
            raise ValueError(f"the result names view {name!r}, which the study views lack")
        source = find_source(source_datasets, image.source_sop_instance_uid)
        shown = heatmap_model(result, name)
        model, algorithm = result.models[shown], algorithms[shown]
        pixels = render_overlay(image, result, algorithms, shown)
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header_with_study_defaults(source),
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=number,
            manufacturer=DEFAULT_MANUFACTURER,
            patient_orientation=_PATIENT_ORIENTATION[name],
            contributing_equipment=[a.contributing_equipment() for a in algorithms],
            series_description=SC_SERIES_DESCRIPTION,
            manufacturer_model_name="spectnode",
            software_versions=__version__,
            transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian: any viewer reads it
        )
        capture.ConversionType = "WSD"  # workstation: drawn by software, not digitised
        capture.BurnedInAnnotation = "YES"
        # Without BodyPartExamined dciodvfy asks for Laterality (type 2C).
        capture.BodyPartExamined = "WHOLEBODY"
        capture.SourceImageSequence = DicomSequence([_source_image_item(source, image)])
        heatmap_note = (
            f"LayerCAM heatmap of class {model.label} by {algorithm.name} {algorithm.version} above "
            f"{HEATMAP_THRESHOLD:g}" if name in model.heatmaps else "no heatmap"
        )
        names = ", ".join(f"{a.name} {a.version}" for a in algorithms)
        capture.DerivationDescription = (
            f"{name.capitalize()} view, inverted grey scale windowed at the "
            f"{WINDOW_PERCENTILE:g}th percentile of counted pixels, "
            f"{heatmap_note}, results of {names} burned in"
        )[:1024]
        capture.ImageComments = algorithm.research_use_statement[:10240]
        captures.append(capture)
    return captures


def heatmap_model(result: StudyResult, view: str) -> int:
    """Index of the model whose heatmap a view's capture shows: the first with a heatmap
    of the view, else the first that read the view, else the first."""
    for index, model in enumerate(result.models):
        if view in model.heatmaps:
            return index
    return next((i for i, model in enumerate(result.models) if view in model.views), 0)


def render_overlay(view: ViewImage, result: StudyResult, algorithms: Sequence[AlgorithmInfo],
                   shown: int = 0) -> np.ndarray:
    """The RGB pixels of one view's capture, shape (rows, columns, 3), uint8.

    The capture shows model ``shown``'s heatmap and result in full and the
    other models' results below it. ``result.models[shown].heatmaps[view.view]``,
    where present, must have the view's shape.
    """
    rows, cols = view.pixels.shape
    scale = int(np.clip(round(_TARGET_ROWS / rows), 1, _MAX_SCALE))
    # Nearest-neighbour upscaling; float32 and the colour only where there is any: a
    # capture is millions of pixels, and this is most of the report stage's time.
    grey = np.repeat(np.repeat(_inverted_grey(view.pixels).astype(np.float32), scale, axis=0), scale, axis=1)
    rgb = np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)

    heatmap = result.models[shown].heatmaps.get(view.view)
    if heatmap is not None:
        heatmap = np.asarray(heatmap, dtype=np.float32)
        if heatmap.shape != (rows, cols):
            raise ValueError(f"the {view.view} heatmap is {heatmap.shape}, the view {(rows, cols)}")
        large = np.asarray(
            Image.fromarray(np.clip(heatmap, 0.0, 1.0).astype(np.float32)).resize(
                (cols * scale, rows * scale), Image.Resampling.BILINEAR
            )
        )
        coloured = large > HEATMAP_THRESHOLD  # the colour's weight is 0 at and below the threshold
        blended = _blend_heatmap(grey[coloured][:, None], large[coloured])
        rgb[coloured] = np.clip(blended, 0, 255).round().astype(np.uint8)
    scan = Image.fromarray(rgb)

    height = scan.height
    unit = max(12, round(height / 64))  # font size: 32 px on a 2048-row capture
    panel_width = max(scan.width, 19 * unit)
    canvas = Image.new("RGB", (scan.width + panel_width, height), _PANEL_BACKGROUND)
    canvas.paste(scan, (0, 0))
    draw = ImageDraw.Draw(canvas)
    _draw_side_markers(draw, view.view, scan.width, unit)
    _draw_panel(draw, scan.width, panel_width, height, unit, view.view, heatmap is not None, result, algorithms,
                shown)
    return np.asarray(canvas, dtype=np.uint8)


# ----------------------------------------------------------------------------- pixels


def _inverted_grey(pixels: np.ndarray) -> np.ndarray:
    """Dark uptake on white: 0 counts white, the window percentile and above black."""
    values = np.asarray(pixels, dtype=np.float64)
    counted = values[values > 0]
    upper = float(np.percentile(counted, WINDOW_PERCENTILE)) if counted.size else 1.0
    scaled = np.clip(values / max(upper, np.finfo(np.float64).tiny), 0.0, 1.0)
    return 255.0 - 255.0 * scaled


def _blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Yellow-to-red colour over pixels ``rgb`` (n, 3 or 1) by their ``heatmap`` values (n,)."""
    above = np.clip((heatmap - HEATMAP_THRESHOLD) / (1.0 - HEATMAP_THRESHOLD), 0.0, 1.0)
    alpha = _MAX_ALPHA * np.clip((heatmap - HEATMAP_THRESHOLD) / _ALPHA_RAMP, 0.0, 1.0)
    colour = _LOW_COLOUR + above[:, None] * (_HIGH_COLOUR - _LOW_COLOUR)
    return (1.0 - alpha[:, None]) * rgb + alpha[:, None] * colour


# ------------------------------------------------------------------------------- text


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> Font:
    """DejaVu Sans where installed, else Pillow's built-in scalable font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _display_name(class_name: str) -> str:
    return class_name.replace("_", " ")


def _draw_side_markers(draw: ImageDraw.ImageDraw, view: str, width: int, unit: int) -> None:
    left, right = _SIDE_MARKERS.get(view, ("", ""))
    font = _font(round(1.2 * unit), bold=True)
    margin = unit // 2
    for text, anchor, x in ((left, "la", margin), (right, "ra", width - margin)):
        if text:
            box = draw.textbbox((x, margin), text, font=font, anchor=anchor)
            draw.rectangle(
                (box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=(255, 255, 255), outline=_TEXT, width=2
            )
            draw.text((x, margin), text, font=font, fill=_TEXT, anchor=anchor)


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    x0: int,
    width: int,
    height: int,
    unit: int,
    view: str,
    has_heatmap: bool,
    result: StudyResult,
    algorithms: Sequence[AlgorithmInfo],
    shown: int,
) -> None:
    model, algorithm = result.models[shown], algorithms[shown]
    margin = unit
    x = x0 + margin
    inner = width - 2 * margin
    regular, bold = _font(unit), _font(unit, bold=True)
    small = _font(round(0.8 * unit))
    big = _font(round(1.4 * unit), bold=True)
    y = margin
    draw.line((x0, 0, x0, height), fill=(160, 160, 160), width=2)

    # Research-use warning first, in a red box: it must not be missed.
    box_height = round(3.2 * unit)
    draw.rectangle((x, y, x + inner, y + box_height), outline=_WARNING_RED, width=max(3, unit // 8))
    draw.text((x + inner // 2, y + box_height // 2 - round(0.6 * unit)), "RESEARCH USE ONLY",
              font=bold, fill=_WARNING_RED, anchor="mm")
    draw.text((x + inner // 2, y + box_height // 2 + round(0.6 * unit)), "NOT FOR CLINICAL USE",
              font=bold, fill=_WARNING_RED, anchor="mm")
    y += box_height + margin

    draw.text((x, y), f"{view.upper()} VIEW", font=big, fill=_TEXT)
    y += round(1.7 * unit)
    y = _wrapped(draw, x, y, _VIEW_DESCRIPTIONS.get(view, ""), small, _MUTED, inner)
    y += margin

    draw.text((x, y), "Most probable class", font=regular, fill=_MUTED)
    y += round(1.3 * unit)
    top = model.label
    y = _wrapped(draw, x, y, f"{_display_name(top)}  {100 * model.probabilities.get(top, 0.0):.1f} %",
                 big, _TOP_BAR_COLOUR, inner)
    y += round(0.3 * unit)
    if model.second_label is not None:
        draw.text((x, y), "Second most probable", font=regular, fill=_MUTED)
        y += round(1.3 * unit)
        second = model.second_label
        y = _wrapped(draw, x, y, f"{_display_name(second)}  {100 * model.probabilities.get(second, 0.0):.1f} %",
                     bold, _TEXT, inner)
        y += round(0.3 * unit)
    y += margin // 2

    draw.text((x, y), "Class probabilities", font=regular, fill=_MUTED)
    y += round(1.4 * unit)
    for class_name in algorithm.classes:
        probability = float(model.probabilities.get(class_name, 0.0))
        percent = f"{100 * probability:.1f} %"
        room = inner - draw.textlength(percent, font=regular) - unit // 2
        draw.text((x, y), _truncated(draw, _display_name(class_name), regular, room), font=regular, fill=_TEXT)
        draw.text((x + inner, y), percent, font=regular, fill=_TEXT, anchor="ra")
        y += round(1.25 * unit)
        bar_height = round(0.45 * unit)
        draw.rectangle((x, y, x + inner, y + bar_height), outline=(170, 170, 170), width=1)
        fill = _TOP_BAR_COLOUR if class_name == model.label else _BAR_COLOUR
        draw.rectangle((x, y, x + round(inner * min(max(probability, 0.0), 1.0)), y + bar_height), fill=fill)
        y += bar_height + round(0.6 * unit)
    y += margin // 2

    if has_heatmap:
        y = _wrapped(draw, x, y, f"Heatmap: LayerCAM of '{_display_name(top)}'", regular, _MUTED, inner)
        ramp = np.linspace(0.0, 1.0, inner)
        colours = _LOW_COLOUR[None, :] + ramp[:, None] * (_HIGH_COLOUR - _LOW_COLOUR)[None, :]
        for i, colour in enumerate(colours):
            draw.line((x + i, y, x + i, y + round(0.6 * unit)), fill=tuple(int(c) for c in colour))
        y += round(0.7 * unit)
        draw.text((x, y), "low", font=small, fill=_MUTED)
        draw.text((x + inner, y), "high", font=small, fill=_MUTED, anchor="ra")
        y += round(1.1 * unit)
        y = _wrapped(draw, x, y, f"shown where above {100 * HEATMAP_THRESHOLD:g} % of its maximum; it shows "
                     "where the network looked, not a lesion outline", small, _MUTED, inner)
    else:
        y = _wrapped(draw, x, y, "No heatmap was computed for this result.", small, _MUTED, inner)
    y += margin

    draw.text((x, y), "Model (result and heatmap above)", font=regular, fill=_MUTED)
    y += round(1.3 * unit)
    y = _wrapped(draw, x, y, f"{algorithm.name} {algorithm.version}", bold, _TEXT, inner)
    if model.outside_domain:
        y = _wrapped(draw, x, y, "Outside the model's training domain", bold, _WARNING_RED, inner)
    for other, other_algorithm in zip(result.models, algorithms):
        if other is model:
            continue
        y += margin // 2
        y = _wrapped(draw, x, y, f"{other_algorithm.name} {other_algorithm.version}", regular, _MUTED, inner)
        y = _wrapped(draw, x, y, f"{_display_name(other.label)}  {100 * other.probabilities.get(other.label, 0):.1f} %"
                     + ("  (outside training domain)" if other.outside_domain else ""), bold, _TEXT, inner)
    if view in result.inferred_views:
        y += margin // 2
        y = _wrapped(draw, x, y, f"View inferred from the image (certainty {result.view_certainty.get(view, 0):.2f})",
                     small, _WARNING_RED, inner)

    # Footer: the full statement where it fits, always the short warning last.
    footer = "RESEARCH USE ONLY - NOT FOR CLINICAL USE."
    if algorithm.trained_on_synthetic_data:
        footer = "Trained on synthetic (phantom) scans only. " + footer
    footer_font = _font(round(0.8 * unit), bold=True)
    footer_lines = _wrap_lines(draw, footer, footer_font, inner)
    _wrapped(draw, x, height - margin - len(footer_lines) * _line_height(footer_font), footer,
             footer_font, _WARNING_RED, inner)


def _wrapped(
    draw: ImageDraw.ImageDraw, x: int, y: int, text: str, font: Font, fill: tuple[int, int, int], width: int
) -> int:
    """Draw ``text`` wrapped to ``width`` pixels; return the y below it."""
    for line in _wrap_lines(draw, text, font, width):
        draw.text((x, y), line, font=font, fill=fill)
        y += _line_height(font)
    return y


def _wrap_lines(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels in ``font``."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while draw.textlength(word, font=font) > width and len(word) > 1:
            # A word wider than the panel (a long model name): break it.
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def _truncated(draw: ImageDraw.ImageDraw, text: str, font: Font, width: float) -> str:
    """``text``, shortened with an ellipsis if it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


def _line_height(font: Font) -> int:
    return round(1.25 * getattr(font, "size", 12))


# ------------------------------------------------------------------------- references


def _source_image_item(source: Dataset, image: ViewImage) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    frame_number = referenced_frame_number(source, image.frame_number)
    if frame_number is not None:
        item.ReferencedFrameNumber = frame_number
    purpose = content.SOURCE_IMAGE_FOR_PROCESSING
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        purpose.value, purpose.scheme_designator, purpose.meaning
    )
    item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    return item
