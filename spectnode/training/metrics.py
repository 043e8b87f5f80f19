"""Evaluation metrics for multi-class scan classifiers, and their plots.

The metrics are those both papers report (dSPIC Tables 5-9, Classifier-inRAC
Tables 5-10): accuracy, precision, recall (= sensitivity), specificity, F1,
one-vs-rest ROC AUC and the confusion matrix. They are computed with numpy only
and agree with scikit-learn (which the tests use as the reference):

* predictions are ``argmax(probabilities, axis=1)`` (first index on ties, as
  :func:`numpy.argmax`);
* precision, recall and F1 per class are those of
  ``sklearn.metrics.precision_recall_fscore_support(y_true, y_pred,
  labels=range(k), zero_division=0)``: a ratio whose denominator is zero is
  reported as ``0.0``. Their ``macro`` value is the unweighted mean over **all**
  ``k`` classes, including classes absent from ``y_true`` (as sklearn's
  ``average="macro"`` with ``labels=range(k)``);
* specificity of class ``c`` is ``TN / (TN + FP)`` one-vs-rest, ``0.0`` when
  there are no negatives; macro is the mean over all classes;
* ROC AUC of class ``c`` is one-vs-rest on column ``c`` of ``probabilities``,
  computed by the Mann-Whitney rank form with average ranks for tied scores,
  which equals the trapezoid area under the full ROC curve that
  ``sklearn.metrics.roc_auc_score`` integrates. When ``y_true`` has no
  sample of ``c`` (or only samples of ``c``) the AUC is undefined: it is
  reported as ``None`` (JSON ``null``) and left out of the macro mean (sklearn
  returns NaN for the whole macro value in that case). The macro AUC is
  ``None`` when no class has a defined AUC.

Plots are drawn with Pillow (matplotlib is not a dependency of spectnode).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "compute_metrics",
    "roc_curves",
    "write_evaluation_plots",
    "format_metrics_table",
]

_PER_CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #


def _validated_inputs(
    y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check shapes and ranges; return ``(labels, scores, class_names)``."""
    class_names = [str(c) for c in classes]
    if len(class_names) < 2:
        raise ValueError(f"need at least 2 classes, got {class_names!r}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique, got {class_names!r}")
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("y_true is empty: no samples to evaluate")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.bool_) or np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError("y_true must hold integer class indices")
    scores = np.asarray(probabilities, dtype=np.float64)
    k = len(class_names)
    if scores.shape != (labels.size, k):
        raise ValueError(
            f"probabilities must have shape (n, k) = ({labels.size}, {k}), "
            f"got {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("probabilities contain NaN or infinite values")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"y_true holds class indices outside 0..{k - 1}: "
            f"{sorted(set(labels[(labels < 0) | (labels >= k)].tolist()))}"
        )
    return labels.astype(np.int64), scores, class_names


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio that is 0.0 where the denominator is 0 (zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    group_starts_mask = np.empty(ordered.size, dtype=bool)
    group_starts_mask[0] = True
    group_starts_mask[1:] = ordered[1:] != ordered[:-1]
    group_index = np.cumsum(group_starts_mask) - 1
    starts = np.flatnonzero(group_starts_mask)
    ends = np.append(starts[1:], ordered.size)  # exclusive
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1..end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = group_rank[group_index]
    return ranks


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for ``is_positive``; ``None`` if one side is empty."""
    n_positive = int(is_positive.sum())
    n_negative = int(is_positive.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        return None
    ranks = _average_ranks(scores)
    # Mann-Whitney U of the positives, normalised: the probability that a random
    # positive outscores a random negative, ties counting one half.
    u_statistic = ranks[is_positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def compute_metrics(
    y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Compute the papers' evaluation metrics for a multi-class classifier.

    Args:
        y_true: True class index of each sample, in ``0 .. len(classes) - 1``.
        probabilities: Array of shape ``(n, k)``: the classifier's score
            (softmax probability) of each class for each sample. Predictions
            are the argmax of each row.
        classes: Class names in column order of ``probabilities``.

    Returns:
        A JSON-serialisable dict with keys

        * ``accuracy`` (float),
        * ``precision``, ``recall``, ``specificity``, ``f1``, ``auc``: each
          ``{"macro": float | None, "per_class": {class_name: float | None}}``
          (only AUC can be ``None``, see the module docstring),
        * ``confusion``: ``k`` lists of ``k`` ints, rows = true class,
          columns = predicted class, in the order of ``classes``,
        * ``classes``: the class names,
        * ``n``: the number of samples,
        * ``support``: ``{class_name: number of true samples}``.

    Raises:
        ValueError: if the inputs are empty, have inconsistent shapes, hold
            class indices out of range or non-finite scores.
    """
    labels, scores, class_names = _validated_inputs(y_true, probabilities, classes)
    k = len(class_names)
    n = labels.size
    predicted = np.argmax(scores, axis=1)

    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)

    true_positive = np.diag(confusion).astype(np.float64)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    true_negative = n - true_positive - false_positive - false_negative

    precision = _safe_ratio(true_positive, true_positive + false_positive)
    recall = _safe_ratio(true_positive, true_positive + false_negative)
    specificity = _safe_ratio(true_negative, true_negative + false_positive)
    # sklearn's form: 2TP / (2TP + FP + FN), which is 0 whenever TP is 0.
    f1 = _safe_ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    auc = [_binary_auc(labels == c, scores[:, c]) for c in range(k)]

    def summary(values: Sequence[float | None]) -> dict[str, Any]:
        defined = [float(v) for v in values if v is not None]
        return {
            "macro": float(np.mean(defined)) if defined else None,
            "per_class": {
                name: (None if v is None else float(v))
                for name, v in zip(class_names, values)
            },
        }

    return {
        "accuracy": float(true_positive.sum() / n),
        "precision": summary(precision.tolist()),
        "recall": summary(recall.tolist()),
        "specificity": summary(specificity.tolist()),
        "f1": summary(f1.tolist()),
        "auc": summary(auc),
        "confusion": confusion.tolist(),
        "classes": list(class_names),
        "n": int(n),
        "support": {name: int(s) for name, s in zip(class_names, confusion.sum(axis=1))},
    }


def roc_curves(
    y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve of every class whose AUC is defined.

    Each curve is ``(fpr, tpr, thresholds)`` exactly as
    ``sklearn.metrics.roc_curve(y_true == c, probabilities[:, c],
    drop_intermediate=False)``: one point per distinct score, in decreasing
    threshold order, starting at ``(0, 0)`` with threshold ``inf``.

    Classes with no positive or no negative sample in ``y_true`` have no
    defined curve and are left out of the result.
    """
    labels, scores, class_names = _validated_inputs(y_true, probabilities, classes)
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for c, name in enumerate(class_names):
        is_positive = labels == c
        n_positive = int(is_positive.sum())
        n_negative = int(labels.size - n_positive)
        if n_positive == 0 or n_negative == 0:
            continue
        order = np.argsort(scores[:, c], kind="mergesort")[::-1]
        ordered_scores = scores[order, c]
        # Last index of each run of equal scores: one ROC point per threshold.
        run_ends = np.append(np.flatnonzero(np.diff(ordered_scores)), ordered_scores.size - 1)
        true_positives = np.cumsum(is_positive[order])[run_ends]
        false_positives = run_ends + 1 - true_positives
        fpr = np.concatenate(([0.0], false_positives / n_negative))
        tpr = np.concatenate(([0.0], true_positives / n_positive))
        thresholds = np.concatenate(([np.inf], ordered_scores[run_ends]))
        curves[name] = (fpr, tpr, thresholds)
    return curves


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Render a :func:`compute_metrics` result as a plain-text table.

    One row per class (support, precision, recall, specificity, F1, AUC), a
    macro row, then the confusion matrix with row-normalised percentages.
    """
    class_names = list(metrics["classes"])
    support = metrics.get("support") or {
        name: int(sum(row)) for name, row in zip(class_names, metrics["confusion"])
    }
    n = metrics.get("n", sum(support.values()))

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    name_width = max(12, *(len(name) for name in class_names)) + 2
    headers = ("support", "precision", "recall", "specificity", "f1", "auc")
    lines = [
        f"n = {n}   accuracy = {metrics['accuracy']:.4f}   "
        f"macro AUC = {fmt(metrics['auc']['macro'])}",
        "class".ljust(name_width) + "".join(h.rjust(12) for h in headers),
    ]
    for name in class_names:
        cells = [str(support[name])] + [
            fmt(metrics[key]["per_class"][name]) for key in _PER_CLASS_METRICS
        ]
        lines.append(name.ljust(name_width) + "".join(c.rjust(12) for c in cells))
    macro_cells = [""] + [fmt(metrics[key]["macro"]) for key in _PER_CLASS_METRICS]
    lines.append("macro".ljust(name_width) + "".join(c.rjust(12) for c in macro_cells))

    column_width = max(12, *(len(name) + 2 for name in class_names))
    lines += [
        "",
        "confusion matrix (rows = true class, columns = predicted class; count (row %))",
        "".ljust(name_width) + "".join(name.rjust(column_width) for name in class_names),
    ]
    for name, row in zip(class_names, metrics["confusion"]):
        total = sum(row)
        cells = [
            f"{count} ({100.0 * count / total:.1f}%)" if total else str(count) for count in row
        ]
        lines.append(name.ljust(name_width) + "".join(c.rjust(column_width) for c in cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Plots (Pillow)
# --------------------------------------------------------------------------- #

# Drawn at _SUPERSAMPLE times the final size, then downsampled: Pillow draws
# lines and text without anti-aliasing otherwise.
_SUPERSAMPLE = 3

# Colour-blind-friendly categorical palette (Okabe-Ito), then matplotlib's tab10.
_CURVE_COLOURS = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (240, 228, 66),
    (0, 0, 0),
    (148, 103, 189),
    (140, 86, 75),
]

# Sequential white-to-blue ramp (matplotlib's "Blues" at 0, .25, .5, .75, 1).
_BLUES = [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from the system if present, else Pillow's bundled default font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    candidates = [name, f"/usr/share/fonts/truetype/dejavu/{name}"]
    for candidate in candidates:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _draw_text_centred(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font: Any, fill: Any
) -> None:
    draw.text(centre, text, font=font, fill=fill, anchor="mm")


def _paste_vertical_text(
    image: Image.Image, centre: tuple[float, float], text: str, font: Any, fill: Any
) -> None:
    """Draw ``text`` rotated 90 degrees counter-clockwise, centred on ``centre``."""
    probe = ImageDraw.Draw(image)
    width, height = _text_size(probe, text, font)
    pad = max(4, height // 3)
    label = Image.new("RGBA", (width + 2 * pad, height + 2 * pad), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(
        (label.width / 2, label.height / 2), text, font=font, fill=fill, anchor="mm"
    )
    rotated = label.rotate(90, expand=True)
    image.paste(
        rotated,
        (int(centre[0] - rotated.width / 2), int(centre[1] - rotated.height / 2)),
        rotated,
    )


def _dashed_line(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    end: tuple[float, float],
    dash: float,
    fill: Any,
    width: int,
) -> None:
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    steps = max(1, int(length // dash))
    for i in range(0, steps, 2):
        a, b = i / steps, min(1.0, (i + 1) / steps)
        draw.line(
            [
                (start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1])),
                (start[0] + b * (end[0] - start[0]), start[1] + b * (end[1] - start[1])),
            ],
            fill=fill,
            width=width,
        )


def _blues(fraction: float) -> tuple[int, int, int]:
    """Colour of ``fraction`` in [0, 1] on the white-to-blue ramp."""
    fraction = min(1.0, max(0.0, fraction))
    position = fraction * (len(_BLUES) - 1)
    i = min(int(position), len(_BLUES) - 2)
    t = position - i
    return tuple(round(a + t * (b - a)) for a, b in zip(_BLUES[i], _BLUES[i + 1]))  # type: ignore[return-value]


def _finish(canvas: Image.Image, path: Path) -> Path:
    final = canvas.resize(
        (canvas.width // _SUPERSAMPLE, canvas.height // _SUPERSAMPLE), Image.Resampling.LANCZOS
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    final.save(path, format="PNG", optimize=True)
    return path


def _write_roc_png(
    metrics: Mapping[str, Any],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: Path,
) -> Path:
    s = _SUPERSAMPLE
    width, height = 780 * s, 780 * s
    left, top, size = 110 * s, 70 * s, 620 * s
    right, bottom = left + size, top + size
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = _font(22 * s, bold=True), _font(18 * s)
    tick_font, legend_font = _font(15 * s), _font(15 * s)

    def to_xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * size, bottom - tpr * size

    macro_auc = metrics["auc"]["macro"]
    title = "ROC, one class vs rest"
    if macro_auc is not None:
        title += f"  (macro AUC = {macro_auc:.3f})"
    _draw_text_centred(draw, (width / 2, 34 * s), title, title_font, "black")

    for tick in np.linspace(0.0, 1.0, 6):
        x, y = to_xy(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225), width=s)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225), width=s)
        draw.line([(x, bottom), (x, bottom + 7 * s)], fill="black", width=s)
        draw.line([(left - 7 * s, y), (left, y)], fill="black", width=s)
        draw.text((x, bottom + 10 * s), f"{tick:.1f}", font=tick_font, fill="black", anchor="mt")
        draw.text((left - 11 * s, y), f"{tick:.1f}", font=tick_font, fill="black", anchor="rm")
    draw.text(
        ((left + right) / 2, bottom + 38 * s),
        "False positive rate (1 - specificity)",
        font=label_font,
        fill="black",
        anchor="mt",
    )
    _paste_vertical_text(
        canvas, (left - 75 * s, (top + bottom) / 2), "True positive rate (sensitivity)",
        label_font, "black",
    )

    chance_colour = (128, 128, 128)
    _dashed_line(draw, to_xy(0, 0), to_xy(1, 1), 10 * s, chance_colour, 2 * s)

    legend: list[tuple[str, tuple[int, int, int], bool]] = []
    for index, name in enumerate(class_names):
        colour = _CURVE_COLOURS[index % len(_CURVE_COLOURS)]
        if name in curves:
            fpr, tpr, _ = curves[name]
            draw.line([to_xy(f, t) for f, t in zip(fpr, tpr)], fill=colour, width=3 * s, joint="curve")
            legend.append((f"{name} (AUC = {metrics['auc']['per_class'][name]:.3f})", colour, False))
        else:
            legend.append((f"{name} (AUC undefined: class absent or alone)", colour, True))
    legend.append(("chance (AUC = 0.500)", chance_colour, True))

    draw.rectangle([left, top, right, bottom], outline="black", width=2 * s)

    # Legend in the lower right, where ROC curves rarely run.
    line_height = 24 * s
    text_width = max(_text_size(draw, text, legend_font)[0] for text, _, _ in legend)
    box_width = text_width + 58 * s
    box_height = line_height * len(legend) + 14 * s
    box_left = right - box_width - 12 * s
    box_top = bottom - box_height - 12 * s
    draw.rectangle(
        [box_left, box_top, box_left + box_width, box_top + box_height],
        fill="white",
        outline=(160, 160, 160),
        width=s,
    )
    for row, (text, colour, dashed) in enumerate(legend):
        y = box_top + 7 * s + line_height * row + line_height / 2
        start, end = (box_left + 10 * s, y), (box_left + 42 * s, y)
        if dashed:
            _dashed_line(draw, start, end, 6 * s, colour, 3 * s if colour != chance_colour else 2 * s)
        else:
            draw.line([start, end], fill=colour, width=3 * s)
        draw.text((box_left + 50 * s, y), text, font=legend_font, fill="black", anchor="lm")
    return _finish(canvas, path)


def _write_confusion_png(metrics: Mapping[str, Any], path: Path) -> Path:
    s = _SUPERSAMPLE
    class_names = list(metrics["classes"])
    confusion = np.asarray(metrics["confusion"], dtype=np.int64)
    k = len(class_names)
    row_totals = confusion.sum(axis=1)

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_font, label_font = _font(22 * s, bold=True), _font(18 * s)
    name_font, count_font, percent_font = _font(16 * s), _font(20 * s, bold=True), _font(15 * s)
    longest_name = max(_text_size(probe, name, name_font)[0] for name in class_names)

    cell_width = max(130 * s, longest_name + 24 * s)
    cell_height = 84 * s
    left = 60 * s + longest_name + 24 * s  # rotated axis label, then row names
    top = 70 * s
    grid_right, grid_bottom = left + k * cell_width, top + k * cell_height
    width = max(grid_right + 40 * s, 520 * s)
    height = grid_bottom + 90 * s

    canvas = Image.new("RGB", (int(width), int(height)), "white")
    draw = ImageDraw.Draw(canvas)
    title = f"Confusion matrix (n = {int(confusion.sum())}, accuracy = {metrics['accuracy']:.3f})"
    if _text_size(draw, title, title_font)[0] > width - 20 * s:
        title = f"Confusion matrix (accuracy {metrics['accuracy']:.3f})"
    _draw_text_centred(draw, (width / 2, 34 * s), title, title_font, "black")

    for row in range(k):
        for column in range(k):
            count = int(confusion[row, column])
            fraction = count / row_totals[row] if row_totals[row] else 0.0
            x0, y0 = left + column * cell_width, top + row * cell_height
            fill = _blues(fraction)
            draw.rectangle([x0, y0, x0 + cell_width, y0 + cell_height], fill=fill)
            ink = "white" if fraction > 0.5 else "black"
            centre_x = x0 + cell_width / 2
            draw.text((centre_x, y0 + cell_height * 0.38), str(count), font=count_font, fill=ink, anchor="mm")
            percent = f"{100.0 * fraction:.1f}%" if row_totals[row] else "(no samples)"
            draw.text((centre_x, y0 + cell_height * 0.72), percent, font=percent_font, fill=ink, anchor="mm")
    for i in range(k + 1):
        draw.line([(left + i * cell_width, top), (left + i * cell_width, grid_bottom)], fill=(120, 120, 120), width=s)
        draw.line([(left, top + i * cell_height), (grid_right, top + i * cell_height)], fill=(120, 120, 120), width=s)

    for i, name in enumerate(class_names):
        draw.text(
            (left - 10 * s, top + (i + 0.5) * cell_height), name, font=name_font, fill="black", anchor="rm"
        )
        draw.text(
            (left + (i + 0.5) * cell_width, grid_bottom + 10 * s), name, font=name_font, fill="black", anchor="mt"
        )
    draw.text(
        ((left + grid_right) / 2, grid_bottom + 44 * s),
        "Predicted class",
        font=label_font,
        fill="black",
        anchor="mt",
    )
    _paste_vertical_text(canvas, (30 * s, (top + grid_bottom) / 2), "True class", label_font, "black")
    draw.text(
        (width / 2, height - 12 * s),
        "cells: count and percentage of the true class (row)",
        font=_font(13 * s),
        fill=(90, 90, 90),
        anchor="mb",
    )
    return _finish(canvas, path)


def write_evaluation_plots(
    metrics: Mapping[str, Any],
    y_true: Sequence[int],
    probabilities: np.ndarray,
    classes: Sequence[str],
    out_dir: str | Path,
) -> list[Path]:
    """Write ``roc.png`` and ``confusion.png`` into ``out_dir``.

    ``roc.png`` has one one-vs-rest ROC curve per class (AUC in the legend) and
    the chance diagonal; ``confusion.png`` is the confusion matrix with class
    names, counts and row-normalised percentages, shaded by the percentage.

    Args:
        metrics: The result of :func:`compute_metrics` for the same data.
        y_true: True class indices.
        probabilities: Scores of shape ``(n, k)``.
        classes: Class names in column order.
        out_dir: Folder to write into (created if missing).

    Returns:
        The paths written: ``[out_dir / "roc.png", out_dir / "confusion.png"]``.
    """
    out_dir = Path(out_dir)
    class_names = [str(c) for c in classes]
    if list(metrics["classes"]) != class_names:
        raise ValueError(
            f"metrics are for classes {metrics['classes']!r}, not {class_names!r}"
        )
    curves = roc_curves(y_true, probabilities, class_names)
    return [
        _write_roc_png(metrics, curves, class_names, out_dir / "roc.png"),
        _write_confusion_png(metrics, out_dir / "confusion.png"),
    ]
