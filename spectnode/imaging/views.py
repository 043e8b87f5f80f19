"""Find the anterior and posterior whole-body views of a bone-scan study.

A planar whole-body bone scan arrives in many DICOM layouts (see
``shared/notes/field-guide.md``): one multi-frame NM object whose frames are
mapped to detectors by DetectorVector (0054,0020), possibly with several energy
windows; two single-frame instances in one series or in two series, whose view
shows only as text; Secondary Capture objects that are really NM whole-body
scans; compressed transfer syntaxes. :func:`read_study_views` turns any of
them into a :class:`StudyViews`, or into a :class:`NotAssessable` that says
precisely why not. It never guesses: a view that the headers do not name is
not used.

Orientation convention of every returned array
----------------------------------------------
``ViewImage.pixels`` is float32, shape (rows, cols), head at row 0.

* ANTERIOR is shown as seen *facing* the patient: the patient's right is on
  the image's left (PatientOrientation ``L\\F``).
* POSTERIOR is shown as cameras store it, seen *from behind*: the patient's
  left is on the image's left (PatientOrientation ``R\\F``).

So ``posterior[:, ::-1]`` overlays the anterior (same side of the patient on
the same side of the image), which is what view aggregation relies on.

How the orientation is established:

* PatientOrientation (0020,0020) present: its first value is the patient
  direction along a row (left to right), its second the direction down a
  column; the first letter of each value is used (the dominant axis). If the
  row value runs along H/F and the column value along L/R the image is stored
  sideways and is transposed. A column direction of ``H`` (feet at the top) is
  flipped vertically. A row direction that disagrees with the view's
  convention (``R`` for an anterior, ``L`` for a posterior) is flipped
  horizontally. An object that holds *both* views in its frames has only one
  PatientOrientation, which cannot describe two opposite projections, so only
  its H/F part (and transposition) is applied there; the L/R part is ignored.
  A value whose first letter is A or P (an axis a planar projection cannot
  have) makes the geometry unusable.
* PatientOrientation absent or empty: the image is taken as cameras store it,
  head up, anterior facing the patient and posterior seen from behind. No
  flip is made.
* ImageOrientationPatient in DetectorInformationSequence items is not used:
  planar exports often leave it empty, and PatientOrientation says the same.

How views are identified (first rule that applies, per object):

1. DetectorInformationSequence (0054,0022) items with ViewCodeSequence
   (0054,0220): SCT 399321004 (legacy SRT G-5215) = anterior, SCT 399001007
   (SRT G-5216) = posterior. Frames are mapped to items through DetectorVector,
   whatever their order. An object with one detector item and no DetectorVector
   maps every frame to that item. With EnergyWindowVector (0054,0010) and
   several windows, ONE window is used (windows are never summed, since a
   scatter window would add scatter): the window whose EnergyWindowRangeSequence
   contains the Tc-99m photopeak (140.5 keV) if exactly one does, otherwise the
   lowest-numbered window. Exactly one frame must then remain per view.
2. A single-frame object without view codes: a top-level ViewCodeSequence,
   then the text of ImageID (0054,0400), then GE Genie private elements
   (creator ``GEMS_GENIE_1``: Dataset Name (0011,xx12), Dataset Object Name
   (0011,xx10), Series Object Name (0009,xx20), then any other text element of
   that creator in groups 0009/0011, including UN elements of Implicit VR
   files that hold printable text), then SeriesDescription (0008,103E). Text
   is read by :func:`spectnode.imaging.view_labels.view_from_label`; the first
   source that names exactly one view decides.
3. A multi-frame object without view codes cannot say which frame is which: it
   yields no view.

Which objects are considered: only Modality ``NM``, whatever the SOP class (a
Secondary Capture with Modality NM and ImageType ...\\WHOLE BODY\\... is
accepted). An NM object counts as whole-body when its ImageType contains
``WHOLE BODY`` or, failing that, when its matrix is whole-body-like (long side
at least twice the short side and at least 256 pixels). Other objects of the
study (CT of a SPECT/CT, SR, presentation states) are ignored. If two distinct
objects or frames name the same view, the study is not assessable (ambiguous),
except that the same SOP instance received twice counts once. Once a view is
identified, any problem with it (undecodable pixels, unusable geometry, an
empty frame) makes the whole study not assessable rather than silently
dropping that view.

Reasons hold no patient data (:mod:`spectnode.imaging.safe_text`): an object is
named by its position and its SeriesNumber and InstanceNumber ("NM object 2
of 3 (SeriesNumber 5, InstanceNumber 1)"), never by a UID or a path; a
decoder's message, which may quote header values, is kept out of the reason
(in :attr:`NotAssessable.detail`, for a log that may hold patient data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

import numpy as np
import pydicom
from pydicom.datadict import private_dictionary_description
from pydicom.pixels import apply_modality_lut
from pydicom.tag import BaseTag, Tag

from spectnode.imaging.safe_text import (
    IMAGE_TYPE_TERMS,
    MODALITY_TERMS,
    WITHHELD,
    attribute_name,
    code_value,
    object_name,
    quote,
    term,
)
from spectnode.imaging.view_inference import infer_view
from spectnode.imaging.view_labels import ANTERIOR, POSTERIOR, ViewName, view_from_label

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Iterator, Sequence
    from pathlib import Path

    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

__all__ = [
    "ANTERIOR",
    "POSTERIOR",
    "ANTERIOR_VIEW_CODES",
    "POSTERIOR_VIEW_CODES",
    "MIN_VIEW_ROWS",
    "MIN_VIEW_COLUMNS",
    "TC99M_PHOTOPEAK_KEV",
    "REASON_CODES",
    "PhaseText",
    "ViewImage",
    "StudyViews",
    "NotAssessable",
    "iter_study_views",
    "group_by_study",
    "object_names",
    "read_study_views",
    "load_study_views",
]

_log = logging.getLogger(__name__)

#: (CodingSchemeDesignator, CodeValue) pairs of CID 26 meaning anterior.
ANTERIOR_VIEW_CODES: Final = frozenset({("SCT", "399321004"), ("SRT", "G-5215")})
#: (CodingSchemeDesignator, CodeValue) pairs of CID 26 meaning posterior.
POSTERIOR_VIEW_CODES: Final = frozenset({("SCT", "399001007"), ("SRT", "G-5216")})

#: A usable whole-body view has at least this many rows (head to feet) ...
MIN_VIEW_ROWS: Final = 256
#: ... and at least this many columns, and rows >= 2 * columns.
MIN_VIEW_COLUMNS: Final = 64
#: Tc-99m photopeak, used to pick the photopeak among several energy windows.
TC99M_PHOTOPEAK_KEV: Final = 140.5

# Reason codes of NotAssessable, in the order a study passes the checks.
WRONG_MODALITY: Final = "wrong_modality"
NOT_WHOLE_BODY: Final = "not_whole_body"
MISSING_VIEWS: Final = "missing_views"
UNREADABLE: Final = "unreadable"
UNUSABLE_GEOMETRY: Final = "unusable_geometry"
EMPTY_IMAGE: Final = "empty_image"
#: Set by :mod:`spectnode.imaging.guards`: the pixels are not a whole-body bone scan.
NOT_BONE_SCAN: Final = "not_bone_scan"
#: Set by :mod:`spectnode.imaging.guards`: a flow or blood-pool (early) image, not the delayed phase.
EARLY_PHASE: Final = "early_phase"
#: Every NotAssessable.code value.
REASON_CODES: Final = frozenset(
    {WRONG_MODALITY, NOT_WHOLE_BODY, MISSING_VIEWS, UNUSABLE_GEOMETRY, EMPTY_IMAGE, UNREADABLE,
     NOT_BONE_SCAN, EARLY_PHASE}
)
# When several objects of a study fail, the one that got furthest explains best.
_STAGE: Final = {
    WRONG_MODALITY: 0,
    NOT_WHOLE_BODY: 1,
    MISSING_VIEWS: 2,
    UNREADABLE: 3,
    UNUSABLE_GEOMETRY: 4,
    EMPTY_IMAGE: 5,
}

_GE_GENIE_CREATOR: Final = "GEMS_GENIE_1"
# (group, element offset) of GE Genie private elements that name the dataset,
# most specific first (pydicom's private dictionary gives their meanings).
_GE_NAMED_ELEMENTS: Final = ((0x0011, 0x12), (0x0011, 0x10), (0x0009, 0x20))
_TEXT_VRS: Final = frozenset({"LO", "SH", "LT", "ST", "UT", "CS"})
# ImageType terms of NM acquisitions that are never a planar whole-body scan
# (PS3.3 C.8.4.7.1.1: value 3 of NM ImageType; RECON appears in value 3 and 4).
_NM_NOT_PLANAR_TERMS: Final = frozenset({"TOMO", "GATED", "DYNAMIC", "RECON", "GATED TOMO", "RECON TOMO",
                                         "RECON GATED TOMO", "TOMO TRANSMISSION"})
#: A scanned field shorter than this (long side x pixel spacing) cannot hold a whole body:
#: whole-body scans cover 1.5-2.3 m; a static spot view covers at most about 0.6 m.
MIN_WHOLE_BODY_FIELD_MM: Final = 1000.0
# Schemes whose view codes are known by value; a meaning of theirs is never read as text
# (SCT "antero-posterior" is not "posterior"). Every other scheme (private 99xxx, local L)
# is read by its CodeMeaning.
_STANDARD_SCHEMES: Final = frozenset({"SCT", "SRT", "SNM3", "DCM", "LN", "UMLS"})


class PhaseText(NamedTuple):
    """A text that may name the acquisition phase, as the guards read it and a reason shows it."""

    #: The attribute, by tag and keyword: ``"(0008,103E) SeriesDescription"``.
    attribute: str
    #: The raw value, for reading only: it may hold patient data.
    text: str
    #: What a reason may show of it: the quoted text, or ``(text withheld)``
    #: (:func:`~spectnode.imaging.safe_text.quote`, decided with the whole dataset at hand).
    shown: str


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare pixels yourself
class ViewImage:
    """One whole-body view, oriented by the module's convention.

    Attributes:
        view: ``"anterior"`` or ``"posterior"``.
        pixels: float32 array (rows, cols), head at row 0; anterior seen facing
            the patient, posterior seen from behind. Values are the stored
            counts after the modality LUT (RescaleSlope/Intercept), if any.
        pixel_spacing_mm: (row spacing, column spacing) in mm from
            PixelSpacing, in the returned orientation; ``None`` if absent.
        source_sop_instance_uid: SOPInstanceUID of the object it came from.
        source_sop_class_uid: SOPClassUID of that object.
        frame_number: 1-based frame number in a multi-frame source (any object
            with NumberOfFrames); ``None`` for a single-frame source.
        view_inferred: True when no header named the view and it was inferred
            from the image (:mod:`spectnode.imaging.view_inference`).
        view_certainty: How sure the view is, in [0, 1]: 1.0 when a header
            names it, the inference's certainty otherwise.
        view_evidence: What named the view, free of patient data.
        image_type: ImageType (0008,0008) values, upper case.
        descriptions: The texts that may name the acquisition phase
            (:class:`PhaseText`): SeriesDescription, ImageID, ProtocolName and
            the view code meanings. A reason shows their ``shown`` form only.
    """

    view: ViewName
    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    source_sop_instance_uid: str
    source_sop_class_uid: str
    frame_number: int | None
    view_inferred: bool = False
    view_certainty: float = 1.0
    view_evidence: str = ""
    image_type: tuple[str, ...] = ()
    descriptions: tuple[PhaseText, ...] = ()


@dataclass(frozen=True, eq=False)
class StudyViews:
    """The views found in one study; at least one of them is present."""

    study_uid: str
    anterior: ViewImage | None
    posterior: ViewImage | None

    def __post_init__(self) -> None:
        if self.anterior is None and self.posterior is None:
            raise ValueError("StudyViews needs at least one view")

    @property
    def available_views(self) -> tuple[ViewName, ...]:
        """Names of the views present, anterior first."""
        return tuple(
            image.view for image in (self.anterior, self.posterior) if image is not None
        )


@dataclass(frozen=True)
class NotAssessable:
    """A study (or file) that cannot be classified, and why.

    Attributes:
        study_uid: StudyInstanceUID, or ``""`` when it could not be read.
        reason: Precise, human-readable explanation naming what was found;
            free of patient data (it goes to logs, ``spectnode status`` and SRs).
        code: Short machine code, one of :data:`REASON_CODES`.
        detail: What a decoder or parser said, word for word; it may quote
            header values, so it is only for a log that may hold patient data
            (``logging.patient_data``). Empty when there is nothing more.
    """

    study_uid: str
    reason: str
    code: str
    detail: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.code not in REASON_CODES:
            raise ValueError(f"unknown reason code {self.code!r}")


@dataclass
class _Rejection:
    code: str
    reason: str
    #: A single-frame whole-body object whose view no header names: the view may be inferred.
    unnamed: Dataset | None = None
    #: See :attr:`NotAssessable.detail`.
    detail: str = ""


@dataclass
class _Candidate:
    """A frame of an object that names a view; pixels are decoded later."""

    view: ViewName
    dataset: Dataset
    frame_index: int | None  # 0-based index into NumberOfFrames, None = single-frame
    object_views: frozenset[str] = field(default_factory=frozenset)
    evidence: str = ""
    #: How reasons name the object (:func:`~spectnode.imaging.safe_text.object_name`).
    name: str = "NM object"

    @property
    def key(self) -> tuple[str, int | None]:
        return (str(self.dataset.get("SOPInstanceUID", id(self.dataset))), self.frame_index)

    def describe(self) -> str:
        frame = "" if self.frame_index is None else f"frame {self.frame_index + 1} of "
        return f"{frame}{self.name} (view: {self.evidence})"


# ----------------------------------------------------------------------------- helpers


def _as_list(value: object) -> list:
    """A DICOM value of any multiplicity as a list (VM 1 gives a bare value)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def _text(ds: Dataset, keyword: str) -> str:
    return "\\".join(str(v) for v in _as_list(ds.get(keyword))).strip()


def _image_type(ds: Dataset) -> list[str]:
    return [str(v).strip().upper() for v in _as_list(ds.get("ImageType"))]


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _matrix(ds: Dataset) -> tuple[int, int]:
    return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)


def _is_whole_body_like(rows: int, cols: int) -> bool:
    long_side, short_side = max(rows, cols), min(rows, cols)
    return short_side > 0 and long_side >= 2 * short_side and long_side >= MIN_VIEW_ROWS


def _view_of_code_sequence(sequence: object, ds: Dataset) -> tuple[ViewName | None, str]:
    """View named by a ViewCodeSequence, and a PHI-free description of its code(s).

    Standard codes are read by value. A code of any other scheme (Siemens'
    private ``99NMG``, a local ``L`` code) is read by its CodeMeaning as text
    (``"R VENTRAL L FRUEH"`` is anterior), under the rules of
    :func:`~spectnode.imaging.view_labels.view_from_label`.
    """
    items = _as_list(sequence)
    names = []
    for item in items:
        scheme = str(item.get("CodingSchemeDesignator", "")).strip()
        value = str(item.get("CodeValue", "")).strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        standard = scheme.upper() in _STANDARD_SCHEMES
        names.append(f"{quote(scheme, ds)} {code_value(value, ds, standard)} {quote(meaning, ds)}")
        if (scheme, value) in ANTERIOR_VIEW_CODES:
            return ANTERIOR, names[-1]
        if (scheme, value) in POSTERIOR_VIEW_CODES:
            return POSTERIOR, names[-1]
        if scheme.upper() not in _STANDARD_SCHEMES:
            view = view_from_label(meaning)
            if view is not None:
                return view, f"{names[-1]} (CodeMeaning of a non-standard scheme)"
    return None, "; ".join(names) if names else "empty ViewCodeSequence"


def _code_meanings(ds: Dataset) -> list[tuple[str, str]]:
    """``("ViewCodeSequence CodeMeaning", text)`` of every view code of ``ds``."""
    sequences = [ds.get("ViewCodeSequence")]
    sequences += [item.get("ViewCodeSequence") for item in _as_list(ds.get("DetectorInformationSequence"))]
    return [
        ("(0008,0104) CodeMeaning of ViewCodeSequence", str(item.get("CodeMeaning", "")))
        for sequence in sequences for item in _as_list(sequence) if item.get("CodeMeaning")
    ]


def phase_descriptions(ds: Dataset) -> tuple[PhaseText, ...]:
    """The texts of ``ds`` that may name the acquisition phase."""
    texts = [
        (attribute_name(Tag(keyword), keyword), _text(ds, keyword))
        for keyword in ("SeriesDescription", "ImageID", "ProtocolName")
    ]
    return tuple(PhaseText(name, text, quote(text, ds)) for name, text in texts + _code_meanings(ds) if text)


def _element_text(element: DataElement) -> str | None:
    """Text of a string element; also of a UN element that holds printable text.

    Private elements read from Implicit VR files have VR UN unless pydicom's
    private dictionary knows them; their value is then raw bytes.
    """
    if element.VR in _TEXT_VRS:
        return "\\".join(str(v) for v in _as_list(element.value)) or None
    if element.VR == "UN" and isinstance(element.value, bytes) and element.value:
        text = element.value.rstrip(b"\x00 ").decode("latin-1")
        return text if text and text.isprintable() else None
    return None


def _ge_private_labels(ds: Dataset) -> list[tuple[str, str]]:
    """(tag and name, text) of GE Genie private elements, most specific first.

    The text is for reading only: it may hold a patient's name (0009,1040).
    """
    tags: list[BaseTag] = []
    for group, offset in _GE_NAMED_ELEMENTS:
        try:
            tags.append(ds.private_block(group, _GE_GENIE_CREATOR).get_tag(offset))
        except KeyError:
            continue
    for group in (0x0009, 0x0011):
        try:
            block = ds.private_block(group, _GE_GENIE_CREATOR)
        except KeyError:
            continue
        tags += [block.get_tag(offset) for offset in range(0x100) if block.get_tag(offset) not in tags]
    labels: list[tuple[str, str]] = []
    for tag in tags:
        if tag not in ds:
            continue
        text = _element_text(ds[tag])
        if text:
            try:
                name = private_dictionary_description(tag, _GE_GENIE_CREATOR)
            except KeyError:
                name = "unknown"
            labels.append((f"GE private {attribute_name(tag)} {name}", text))
    return labels


def _text_view(ds: Dataset) -> tuple[ViewName | None, str]:
    """View of a single-frame object from its text fields (rule 2), with PHI-free evidence.

    Evidence quotes standard texts only through :func:`quote`; a private
    element is named by tag and never quoted.
    """
    view, description = _view_of_code_sequence(ds.get("ViewCodeSequence"), ds)
    if view is not None:
        return view, f"ViewCodeSequence {description}"
    sources: list[tuple[str, str, bool]] = [(attribute_name(Tag("ImageID"), "ImageID"), _text(ds, "ImageID"), True)]
    sources += [(name, text, False) for name, text in _ge_private_labels(ds)]
    sources.append((attribute_name(Tag("SeriesDescription"), "SeriesDescription"),
                    _text(ds, "SeriesDescription"), True))

    def shown(name: str, text: str, standard: bool) -> str:
        return f"{name} {quote(text, ds) if standard else WITHHELD}"

    for name, text, standard in sources:
        view = view_from_label(text)
        if view is not None:
            return view, shown(name, text, standard)
    listing = ", ".join(shown(*source) for source in sources if source[1]) or "no label text at all"
    return None, listing


def _energy_window_ranges(ds: Dataset, window: int) -> list[tuple[float, float]]:
    items = _as_list(ds.get("EnergyWindowInformationSequence"))
    if not 1 <= window <= len(items):
        return []
    ranges = []
    for item in _as_list(items[window - 1].get("EnergyWindowRangeSequence")):
        try:
            ranges.append((float(item.EnergyWindowLowerLimit), float(item.EnergyWindowUpperLimit)))
        except (AttributeError, TypeError, ValueError):
            continue
    return ranges


def _choose_energy_window(ds: Dataset, windows: Iterable[int]) -> int:
    """The photopeak window if exactly one contains 140.5 keV, else the lowest number."""
    windows = sorted(set(windows))
    photopeak = [
        w
        for w in windows
        if any(low <= TC99M_PHOTOPEAK_KEV <= high for low, high in _energy_window_ranges(ds, w))
    ]
    return photopeak[0] if len(photopeak) == 1 else windows[0]


# ------------------------------------------------------------- per-object identification


def _field_length_mm(ds: Dataset) -> float | None:
    """Length of the scanned field along its long side, from PixelSpacing; None if unknown."""
    rows, cols = _matrix(ds)
    spacing = _pixel_spacing(ds, transposed=False)
    if spacing is None or min(spacing) <= 0:
        return None
    return max(rows * spacing[0], cols * spacing[1])


def _whole_body_rejection(ds: Dataset, name: str) -> _Rejection | None:
    """Header rule: is ``ds`` a planar whole-body acquisition at all?

    ImageType naming a tomographic, gated, dynamic or reconstructed
    acquisition refuses it, whatever its matrix. ``WHOLE BODY`` accepts it. A
    ``STATIC`` image, or one without either term, is accepted only when its
    matrix is whole-body-like and, where PixelSpacing says, its field is at
    least :data:`MIN_WHOLE_BODY_FIELD_MM` long.
    """
    image_type = [value.replace("_", " ") for value in _image_type(ds)]
    rows, cols = _matrix(ds)
    shown_type = "\\".join(term(value, ds, IMAGE_TYPE_TERMS) for value in image_type) or "(absent)"
    field_mm = _field_length_mm(ds)
    found = (
        f"the image is not a whole-body bone scan: {name} has (0008,0008) ImageType {shown_type}, "
        f"matrix {cols}x{rows} (columns x rows)"
        + ("" if field_mm is None else f", a field {field_mm:.0f} mm long ((0028,0030) PixelSpacing)")
        + f", {_number_of_frames(ds)} frame(s)"
    )
    not_planar = sorted(set(image_type) & _NM_NOT_PLANAR_TERMS)
    if not_planar:
        return _Rejection(NOT_WHOLE_BODY, f"{found}: a {'/'.join(not_planar)} acquisition, not a planar scan")
    if any(value in ("WHOLE BODY", "WHOLEBODY") for value in image_type):
        return None
    if _is_whole_body_like(rows, cols) and (field_mm is None or field_mm >= MIN_WHOLE_BODY_FIELD_MM):
        return None
    return _Rejection(
        NOT_WHOLE_BODY,
        f"{found}; a whole-body field is at least twice as long as wide and "
        f"{MIN_WHOLE_BODY_FIELD_MM:.0f} mm long",
    )


def _coded_candidates(ds: Dataset, detectors: list[Dataset], name: str) -> list[_Candidate] | _Rejection:
    """Rule 1: frames mapped through DetectorVector to coded detector views."""
    n_frames = _number_of_frames(ds)
    detector_views = [_view_of_code_sequence(item.get("ViewCodeSequence"), ds) for item in detectors]
    if "DetectorVector" in ds:
        detector_vector = [int(v) for v in _as_list(ds.DetectorVector)]
    elif len(detectors) == 1:
        detector_vector = [1] * n_frames
    else:
        return _Rejection(
            MISSING_VIEWS,
            f"{name} has {n_frames} frame(s) and {len(detectors)} detectors "
            "but no (0054,0020) DetectorVector to tell which frame is which view",
        )
    if len(detector_vector) != n_frames or any(not 1 <= d <= len(detectors) for d in detector_vector):
        return _Rejection(
            UNUSABLE_GEOMETRY,
            f"{name}: (0054,0020) DetectorVector {detector_vector} does not fit {n_frames} frame(s) "
            f"and {len(detectors)} DetectorInformationSequence item(s)",
        )
    if "EnergyWindowVector" in ds:
        window_vector = [int(v) for v in _as_list(ds.EnergyWindowVector)]
        if len(window_vector) != n_frames:
            return _Rejection(
                UNUSABLE_GEOMETRY,
                f"{name}: (0054,0010) EnergyWindowVector has {len(window_vector)} values for {n_frames} frame(s)",
            )
    else:
        window_vector = [1] * n_frames
    view_frames = [
        i for i, detector in enumerate(detector_vector) if detector_views[detector - 1][0] is not None
    ]
    if not view_frames:
        codes = "; ".join(description for _, description in detector_views)
        return _Rejection(
            MISSING_VIEWS,
            f"{name}: the (0054,0220) ViewCodeSequence codes of its detectors ({codes}) name no anterior "
            "or posterior projection",
        )
    window = _choose_energy_window(ds, (window_vector[i] for i in view_frames))
    by_view: dict[str, list[int]] = {}
    for i in view_frames:
        if window_vector[i] == window:
            by_view.setdefault(detector_views[detector_vector[i] - 1][0], []).append(i)  # type: ignore[arg-type]
    for view, frames in by_view.items():
        if len(frames) > 1:
            return _Rejection(
                MISSING_VIEWS,
                f"{name} is ambiguous: frames {[f + 1 for f in frames]} are all {view} "
                f"in energy window {window}; no rule says which one to use",
            )
    object_views = frozenset(by_view)
    return [
        _Candidate(
            view=view,  # type: ignore[arg-type]
            dataset=ds,
            frame_index=frames[0],
            object_views=object_views,
            evidence=(
                f"DetectorVector -> detector {detector_vector[frames[0]]} "
                f"{detector_views[detector_vector[frames[0]] - 1][1]}, energy window {window}"
            ),
            name=name,
        )
        for view, frames in sorted(by_view.items())
    ]


def object_view_candidates(ds: Dataset, name: str | None = None) -> list[_Candidate] | _Rejection:
    """Identify the views held by one NM object (headers only, no pixel decoding).

    ``name`` is how reasons name the object (:func:`object_names`; default: by
    its SeriesNumber and InstanceNumber alone).
    """
    name = name or object_name(ds)
    rejection = _whole_body_rejection(ds, name)
    if rejection is not None:
        return rejection
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return _Rejection(
            UNREADABLE,
            f"{name} has colour pixel data (SamplesPerPixel {samples}, "
            f"{term(str(ds.get('PhotometricInterpretation', '?')), ds)}): a rendered picture, not counts",
        )
    # An empty ViewCodeSequence (written as type 2 by some exports) says nothing.
    coded_detectors = [
        item for item in _as_list(ds.get("DetectorInformationSequence")) if _as_list(item.get("ViewCodeSequence"))
    ]
    if coded_detectors:
        return _coded_candidates(ds, _as_list(ds.DetectorInformationSequence), name)
    n_frames = _number_of_frames(ds)
    if n_frames > 1:
        return _Rejection(
            MISSING_VIEWS,
            f"{name} has {n_frames} frames but no (0054,0220) ViewCodeSequence in (0054,0022) "
            "DetectorInformationSequence, so no frame can be assigned a view",
        )
    view, evidence = _text_view(ds)
    if view is None:
        return _Rejection(
            MISSING_VIEWS,
            f"{name}: no view code and no unambiguous ANT/POST label ({evidence})",
            unnamed=ds,
        )
    frame_index = 0 if "NumberOfFrames" in ds else None
    return [_Candidate(view, ds, frame_index, frozenset({view}), evidence, name)]


# ---------------------------------------------------------------- pixels and orientation


def _decode_frames(ds: Dataset, name: str) -> np.ndarray | _Rejection:
    """All frames as float32 (frames, rows, cols) after the modality LUT."""
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
        pixels = apply_modality_lut(pixels, ds)
    except Exception as exc:  # any decoder failure means the same thing here
        # A transfer syntax is shown by its name in pydicom's dictionary; an unknown UID is not shown.
        syntax_name = str(transfer_syntax.name) if transfer_syntax is not None else ""
        syntax = f" ({syntax_name})" if syntax_name and syntax_name != str(transfer_syntax) else ""
        return _Rejection(UNREADABLE, f"the (7FE0,0010) PixelData of {name}{syntax} cannot be decoded "
                                      f"({type(exc).__name__} from the decoder)", detail=f"{type(exc).__name__}: {exc}")
    rows, cols = _matrix(ds)
    if pixels.size != _number_of_frames(ds) * rows * cols:
        return _Rejection(
            UNREADABLE,
            f"the (7FE0,0010) PixelData of {name} does not hold {_number_of_frames(ds)} frame(s) of {rows}x{cols}",
        )
    return np.asarray(pixels, dtype=np.float32).reshape((-1, rows, cols))


def _patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    values = [str(v).strip().upper() for v in _as_list(ds.get("PatientOrientation"))]
    if len(values) != 2 or not values[0] or not values[1]:
        return None
    return values[0], values[1]


def _orient(
    pixels: np.ndarray, candidate: _Candidate
) -> tuple[np.ndarray, bool] | _Rejection:
    """Apply the module's orientation rules; returns (pixels, transposed)."""
    orientation = _patient_orientation(candidate.dataset)
    if orientation is None:
        return pixels, False
    row_direction, column_direction = orientation[0][0], orientation[1][0]
    transposed = False
    if row_direction in "HF" and column_direction in "LR":
        pixels = pixels.T
        row_direction, column_direction = column_direction, row_direction
        transposed = True
    if row_direction not in "LR" or column_direction not in "HF":
        shown = "\\".join(term(value, candidate.dataset) for value in orientation)
        return _Rejection(
            UNUSABLE_GEOMETRY,
            f"{candidate.name}: (0020,0020) PatientOrientation "
            f"{shown} is not a planar anterior/posterior projection "
            "(needs one L/R and one H/F direction)",
        )
    if column_direction == "H":
        pixels = pixels[::-1, :]
    if len(candidate.object_views) == 1:
        expected = "L" if candidate.view == ANTERIOR else "R"
        if row_direction != expected:
            pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels), transposed


def _pixel_spacing(ds: Dataset, transposed: bool) -> tuple[float, float] | None:
    values = _as_list(ds.get("PixelSpacing"))
    if len(values) != 2:
        return None
    try:
        row_spacing, col_spacing = float(values[0]), float(values[1])
    except (TypeError, ValueError):
        return None
    return (col_spacing, row_spacing) if transposed else (row_spacing, col_spacing)


def _geometry_rejection(pixels: np.ndarray, candidate: _Candidate) -> _Rejection | None:
    rows, cols = pixels.shape
    problems = []
    if rows < 2 * cols:
        problems.append(f"rows < 2 x columns ({rows} < 2 x {cols}), not a whole-body strip")
    if rows < MIN_VIEW_ROWS or cols < MIN_VIEW_COLUMNS:
        problems.append(f"too small (needs at least {MIN_VIEW_COLUMNS}x{MIN_VIEW_ROWS})")
    if not problems:
        return None
    return _Rejection(
        UNUSABLE_GEOMETRY,
        f"{candidate.view} view {candidate.describe()}: {cols}x{rows} (columns x rows, head up) is "
        + "; ".join(problems),
    )


def _empty_rejection(pixels: np.ndarray, candidate: _Candidate) -> _Rejection | None:
    if not np.all(np.isfinite(pixels)):
        return _Rejection(EMPTY_IMAGE, f"{candidate.view} view {candidate.describe()} holds NaN/inf values")
    low, high = float(pixels.min()), float(pixels.max())
    if high > low:
        return None
    what = "all zero" if high == 0 else f"constant ({high:g})"
    return _Rejection(EMPTY_IMAGE, f"{candidate.view} view {candidate.describe()} is {what}")


def _view_image(candidate: _Candidate, frame: np.ndarray, inferred_certainty: float | None = None
                ) -> ViewImage | _Rejection:
    """Orient and check one frame of a candidate; its ViewImage or why not."""
    oriented = _orient(frame, candidate)
    if isinstance(oriented, _Rejection):
        return oriented
    pixels, transposed = oriented
    for check in (_geometry_rejection, _empty_rejection):
        problem = check(pixels, candidate)
        if problem is not None:
            return problem
    ds = candidate.dataset
    return ViewImage(
        view=candidate.view,
        pixels=pixels.astype(np.float32, copy=False),
        pixel_spacing_mm=_pixel_spacing(ds, transposed),
        source_sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        source_sop_class_uid=str(ds.get("SOPClassUID", "")),
        frame_number=None if candidate.frame_index is None else candidate.frame_index + 1,
        view_inferred=inferred_certainty is not None,
        view_certainty=1.0 if inferred_certainty is None else inferred_certainty,
        view_evidence=candidate.evidence,
        image_type=tuple(_image_type(ds)),
        descriptions=phase_descriptions(ds),
    )


def _inferred_single_view(study_uid: str, ds: Dataset, name: str, rejections: list[_Rejection]
                          ) -> StudyViews | NotAssessable:
    """The one whole-body object of a study that no header names: infer its view from the image.

    The image is taken head up as PatientOrientation says (H/F only: the L/R
    part cannot be read without knowing the view), inferred, then oriented as
    the inferred view.
    """
    frames = _decode_frames(ds, name)
    if isinstance(frames, _Rejection):
        return _not_assessable(study_uid, [frames])
    frame_index = 0 if "NumberOfFrames" in ds else None
    head_up = _orient(frames[0], _Candidate(ANTERIOR, ds, frame_index, frozenset(), name=name))
    if isinstance(head_up, _Rejection):
        return _not_assessable(study_uid, [head_up])
    pixels, transposed = head_up
    inferred = infer_view(pixels, _pixel_spacing(ds, transposed))
    if inferred is None:
        return _not_assessable(study_uid, rejections)
    candidate = _Candidate(inferred.view, ds, frame_index, frozenset({inferred.view}),
                           "no view named in the headers; " + inferred.describe(), name)
    image = _view_image(candidate, frames[0], inferred.certainty)
    if isinstance(image, _Rejection):
        return _not_assessable(study_uid, [image])
    _log.debug("study %s: %s view %s", study_uid, inferred.view, candidate.describe())
    return StudyViews(study_uid=study_uid, anterior=image if inferred.view == ANTERIOR else None,
                      posterior=image if inferred.view == POSTERIOR else None)


# ----------------------------------------------------------------------------- public API


def group_by_study(datasets: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    """Group datasets by StudyInstanceUID, keeping their order.

    Datasets without a StudyInstanceUID are grouped under ``""``.
    """
    studies: dict[str, list[Dataset]] = {}
    for ds in datasets:
        studies.setdefault(_study_key(ds), []).append(ds)
    return studies


def _study_key(ds: Dataset) -> str:
    """What groups a dataset into its study: its StudyInstanceUID, ``""`` without one."""
    return str(ds.get("StudyInstanceUID", "") or "").strip()


def object_names(datasets: Sequence[Dataset]) -> list[str]:
    """How reasons name each of a study's NM objects, in the order given: ``"NM object 2 of 3
    (SeriesNumber 5, InstanceNumber 1)"`` (:func:`~spectnode.imaging.safe_text.object_name`)."""
    return [object_name(ds, i, len(datasets)) for i, ds in enumerate(datasets, start=1)]


def _not_assessable(study_uid: str, rejections: list[_Rejection]) -> NotAssessable:
    """Explain a failure by the object that got furthest, mentioning the others."""
    worst = max(rejections, key=lambda r: _STAGE[r.code])
    others = [r.reason for r in rejections if r is not worst and r.reason != worst.reason]
    reason = worst.reason if not others else f"{worst.reason}; also: {'; '.join(others)}"
    detail = "; ".join(r.detail for r in rejections if r.detail)
    return NotAssessable(study_uid=study_uid, reason=reason, code=worst.code, detail=detail)


def read_study_views(datasets: Sequence[Dataset]) -> StudyViews | NotAssessable:
    """Find the anterior and posterior views among the objects of one study.

    See the module docstring for which objects count, how views are named and
    how the pixels are oriented.

    Args:
        datasets: All objects received for one study (same StudyInstanceUID),
            with pixel data. Non-NM objects are ignored.

    Returns:
        A :class:`StudyViews` with one or both views, or a
        :class:`NotAssessable` whose ``code`` is one of ``wrong_modality``,
        ``not_whole_body``, ``missing_views``, ``unusable_geometry``,
        ``empty_image`` or ``unreadable`` and whose ``reason`` names what was
        found.

    Raises:
        ValueError: If ``datasets`` is empty or mixes studies.
    """
    if not datasets:
        raise ValueError("read_study_views needs at least one dataset")
    study_uids = set(group_by_study(datasets))
    if len(study_uids) > 1:
        raise ValueError(f"datasets belong to {len(study_uids)} studies; group them with group_by_study")
    study_uid = study_uids.pop()
    if not study_uid:
        return NotAssessable("", "objects carry no StudyInstanceUID (0020,000D)", UNREADABLE)

    nm_objects = [ds for ds in datasets if str(ds.get("Modality", "")).strip().upper() == "NM"]
    if not nm_objects:
        found = sorted({term(str(ds.get("Modality", "")), ds, MODALITY_TERMS) if ds.get("Modality") else "(no Modality)"
                        for ds in datasets})
        return NotAssessable(
            study_uid,
            f"no NM object in the study: found Modality {', '.join(found)} "
            f"in {len(datasets)} object(s); a bone scan has Modality NM",
            WRONG_MODALITY,
        )

    rejections: list[_Rejection] = []
    candidates: dict[str, dict[tuple[str, int | None], _Candidate]] = {ANTERIOR: {}, POSTERIOR: {}}
    names = {id(ds): name for ds, name in zip(nm_objects, object_names(nm_objects))}
    for ds in nm_objects:
        outcome = object_view_candidates(ds, names[id(ds)])
        if isinstance(outcome, _Rejection):
            rejections.append(outcome)
            continue
        for candidate in outcome:
            candidates[candidate.view].setdefault(candidate.key, candidate)

    for view, same_view in candidates.items():
        if len(same_view) > 1:
            listing = "; ".join(c.describe() for c in same_view.values())
            return NotAssessable(
                study_uid,
                f"ambiguous: {len(same_view)} different objects/frames are {view} views ({listing})",
                MISSING_VIEWS,
            )
    chosen = [next(iter(same_view.values())) for same_view in candidates.values() if same_view]
    if not chosen:
        unnamed = {str(r.unnamed.get("SOPInstanceUID", id(r.unnamed))): r.unnamed
                   for r in rejections if r.unnamed is not None}
        if len(unnamed) != 1:
            return _not_assessable(study_uid, rejections)
        only = next(iter(unnamed.values()))
        return _inferred_single_view(study_uid, only, names[id(only)], rejections)

    decoded: dict[int, np.ndarray] = {}
    images: dict[str, ViewImage] = {}
    for candidate in chosen:
        frames = decoded.get(id(candidate.dataset))
        if frames is None:
            decoding = _decode_frames(candidate.dataset, candidate.name)
            if isinstance(decoding, _Rejection):
                return _not_assessable(study_uid, [decoding])
            frames = decoded[id(candidate.dataset)] = decoding
        image = _view_image(candidate, frames[candidate.frame_index or 0])
        if isinstance(image, _Rejection):
            return _not_assessable(study_uid, [image])
        _log.debug("study %s: %s view from %s", study_uid, candidate.view, candidate.describe())
        images[candidate.view] = image

    anterior, posterior = images.get(ANTERIOR), images.get(POSTERIOR)
    if anterior is not None and posterior is not None and anterior.pixels.shape != posterior.pixels.shape:
        return NotAssessable(
            study_uid,
            f"views differ in size: anterior {anterior.pixels.shape[1]}x{anterior.pixels.shape[0]}, "
            f"posterior {posterior.pixels.shape[1]}x{posterior.pixels.shape[0]} (columns x rows)",
            UNUSABLE_GEOMETRY,
        )
    return StudyViews(study_uid=study_uid, anterior=anterior, posterior=posterior)


def load_study_views(paths: Sequence[str | Path]) -> dict[str, StudyViews | NotAssessable]:
    """Read DICOM files, group them by study and find each study's views.

    Args:
        paths: DICOM files (Part 10, or raw datasets pydicom can read).

    Returns:
        One entry per study, keyed by StudyInstanceUID, in the order studies
        are first seen. A file that cannot be parsed at all gets its own
        :class:`NotAssessable` (code ``unreadable``, empty ``study_uid``) keyed
        by its path as given; its reason names the path (the caller's own
        file, for the caller to find) and the parser's exception class, its
        detail what the parser said.  :func:`iter_study_views` gives the same
        entries one study at a time.
    """
    return dict(iter_study_views(paths))


def _unreadable(path: str | Path, exc: Exception) -> NotAssessable:
    return NotAssessable(study_uid="", reason=f"{path}: cannot be read as DICOM ({type(exc).__name__})",
                         code=UNREADABLE, detail=f"{type(exc).__name__}: {exc}")


def iter_study_views(paths: Sequence[str | Path], studies: Container[str] | None = None
                     ) -> Iterator[tuple[str, StudyViews | NotAssessable]]:
    """The entries of :func:`load_study_views`, one study at a time.

    The files are first grouped by their headers alone; then each study's files are read
    whole, its views found, and the files let go before the next study is read.  So a
    folder of thousands of studies (training, ``spectnode classify``) never holds more than
    one study's pixel data in memory beside what the caller keeps.  With ``studies``, only
    those Study Instance UIDs are read whole and given (files that cannot be read at all are
    still reported).
    """
    by_study: dict[str, list[str | Path]] = {}
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception as exc:  # corrupt or non-DICOM files fail in many ways
            yield str(path), _unreadable(path, exc)
            continue
        by_study.setdefault(_study_key(header), []).append(path)
    for study_uid, members in by_study.items():
        if studies is not None and study_uid not in studies:
            continue
        datasets: list[Dataset] = []
        for path in members:
            try:
                datasets.append(pydicom.dcmread(path))
            except Exception as exc:  # the header read, the rest did not
                yield str(path), _unreadable(path, exc)
        if not datasets:
            continue
        if study_uid:
            yield study_uid, read_study_views(datasets)
            continue
        # Without a study UID the files cannot be paired; report each one.
        for ds in datasets:
            name = str(getattr(ds, "filename", "") or "?")
            yield name, NotAssessable("", f"{name}: no StudyInstanceUID (0020,000D)", UNREADABLE)
