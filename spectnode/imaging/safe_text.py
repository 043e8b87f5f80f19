"""Texts from a dataset that may appear in a reason, a log line or an SR.

A not-assessable reason goes to the log, to ``spectnode status`` and into the
SR written back to PACS, so it must hold no patient data. Reasons therefore
name the attributes they looked at by tag and keyword, and never quote a value,
with one exception: short view and description texts (ImageID,
SeriesDescription, a view code's meaning, ImageType terms) that a reader needs
to see what the node saw. :func:`quotable` decides whether such a text may be
quoted; private elements are never quoted (GE Millennium exports keep a
patient's name in (0009,1040) even when PatientName is de-identified), and a
text that shares a word with a name-like private value is not quoted either.

An object is named by its position among the study's objects and its
SeriesNumber and InstanceNumber (:func:`object_name`), never by its SOP
Instance UID or the path of its file: a UID identifies the patient's image
wherever it is stored, and spooled files are named by it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from spectnode.imaging.view_labels import fold_text

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

__all__ = ["IMAGE_TYPE_TERMS", "MAX_QUOTED_LENGTH", "MODALITY_TERMS", "WITHHELD", "attribute_name", "code_value",
           "instance_numbers", "object_name", "quotable", "quote", "term"]

#: Longer texts are never quoted: a description a reader needs is short.
MAX_QUOTED_LENGTH: Final = 40
#: What a reason shows instead of a text that may not be quoted.
WITHHELD: Final = "(text withheld)"

#: Modality defined terms (PS3.3 C.7.3.1.1.1): a value from the standard's list is never patient data,
#: even when a patient's name happens to hold the same letters ("Ct^Only").
MODALITY_TERMS: Final = frozenset({
    "AR", "AS", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DOC", "DX", "ECG", "EPS", "ES",
    "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM",
    "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP", "RF",
    "RG", "RTDOSE", "RTIMAGE", "RTPLAN", "RTRECORD", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN",
    "TEXTUREMAP", "TG", "US", "VA", "XA", "XC",
})
#: Image Type terms of the NM and general image modules (PS3.3 C.7.6.1.1.2, C.8.4.8.1.2).
IMAGE_TYPE_TERMS: Final = frozenset({
    "ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY", "STATIC", "DYNAMIC", "GATED", "WHOLE BODY", "TOMO", "GATED TOMO",
    "RECON TOMO", "RECON GATED TOMO", "EMISSION", "TRANSMISSION", "RECON", "LOCALIZER", "AXIAL",
})

# Attributes whose values identify a person even without the PN VR.
_IDENTIFYING_KEYWORDS: Final = (
    "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber", "StudyID",
    "InstitutionName", "StationName", "DeviceSerialNumber", "PatientAddress",
)
# "Name,Given" (GE's Patient Object Name style) and "Name^Given" are names.
_NAME_PATTERN: Final = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}\s*,\s*[A-Za-z\u00c0-\u024f]{2,}")
# A run of 6+ digits is an identifier or a date, not a description.
_LONG_NUMBER: Final = re.compile(r"\d{6,}")
_PRINTABLE: Final = re.compile(r"^[\x20-\x7e\u00a0-\u024f]*$")
# A concept identifier of a standard scheme (SCTID: 6-18 digits; DCM codes are shorter).
_CONCEPT_ID: Final = re.compile(r"^[0-9]{1,18}$")
# SeriesNumber and InstanceNumber are shown only when this small (a longer run of digits is withheld, as above).
_MAX_SHOWN_NUMBER: Final = 99999


def attribute_name(tag: BaseTag | int, keyword: str = "") -> str:
    """``"(0008,103E) SeriesDescription"``: how a reason names an attribute."""
    tag = BaseTag(tag)
    shown = f"({tag.group:04X},{tag.element:04X})"
    return f"{shown} {keyword}" if keyword else shown


def _number(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if 0 <= number <= _MAX_SHOWN_NUMBER else None


def instance_numbers(series_number: object, instance_number: object) -> list[str]:
    """``["SeriesNumber 5", "InstanceNumber 1"]``: the numbers a PACS viewer shows, each only if a small integer."""
    return [f"{keyword} {number}" for keyword, value in (("SeriesNumber", series_number),
                                                          ("InstanceNumber", instance_number))
            if (number := _number(value)) is not None]


def object_name(ds: Dataset, position: int | None = None, count: int | None = None) -> str:
    """How a reason names an NM object: ``"NM object 2 of 3 (SeriesNumber 5, InstanceNumber 1)"``.

    ``position`` (1-based) and ``count`` place it among the study's NM objects
    in the order received; SeriesNumber (0020,0011) and InstanceNumber
    (0020,0013) are what a PACS viewer shows. Its UIDs are never used.
    """
    name = "NM object" if position is None else f"NM object {position} of {count}"
    numbers = instance_numbers(ds.get("SeriesNumber", ""), ds.get("InstanceNumber", ""))
    return f"{name} ({', '.join(numbers)})" if numbers else name


def _private_text(element: DataElement) -> str:
    """The text of a private element (a UN element read from an Implicit VR file too); "" if none."""
    value = element.value
    if isinstance(value, bytes):
        value = value.rstrip(b"\x00 ").decode("latin-1")
    if isinstance(value, str | PersonName):
        return str(value)
    if isinstance(value, list | MultiValue) and all(isinstance(v, str | PersonName) for v in value):
        return "\\".join(str(v) for v in value)
    return ""


def _name_like_private_values(ds: Dataset) -> list[str]:
    """The parts of private values that look like a person's name (``^``, ``Surname,Given``, VR PN).

    Cameras keep names in private elements that no de-identification touches
    (GE (0009,xx40) Patient Object Name); a quoted text must not repeat them.
    """
    found: list[str] = []
    for element in ds.iterall():
        if not element.tag.is_private or element.tag.element < 0x1000:  # creators (gggg,0010-00FF) name vendors
            continue
        text = _private_text(element)
        if element.VR == "PN" or "^" in text:
            found.append(text)
        else:
            found += [match.group() for match in _NAME_PATTERN.finditer(text)]
    return found


def _identifying_words(ds: Dataset | None) -> set[str]:
    """Folded words of every PN value, identifying attribute and name-like private value of ``ds`` (all levels)."""
    words: set[str] = set()
    if ds is None:
        return words

    def add(value: object) -> None:
        for part in re.split(r"[\^=,\s]+", fold_text(str(value))):
            if len(part) >= 2:
                words.add(part)

    for element in ds.iterall():
        if element.VR == "PN" and element.value:
            for value in element.value if element.VM > 1 else [element.value]:
                add(value)
    for text in _name_like_private_values(ds):
        add(text)
    for keyword in _IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value:
            add(value)
    return words


def quotable(text: str, ds: Dataset | None = None) -> bool:
    """Whether ``text`` (a short standard description) may be quoted in a reason.

    It may not when it is longer than :data:`MAX_QUOTED_LENGTH`, holds a ``^``
    (PN component separator), looks like ``Surname,Given``, holds a run of six
    or more digits, has control characters, or contains a word of any PN value
    or identifying attribute (PatientID, AccessionNumber, ...) of ``ds``, or
    of a private value of ``ds`` that looks like a name.
    """
    if not text or len(text) > MAX_QUOTED_LENGTH or "^" in text or "=" in text:
        return False
    if not _PRINTABLE.match(text) or _NAME_PATTERN.search(text) or _LONG_NUMBER.search(text):
        return False
    return not _shares_identifying_word(text, ds)


def _shares_identifying_word(text: str, ds: Dataset | None) -> bool:
    folded = fold_text(text)
    words = set(re.split(r"[^A-Z0-9]+", folded))
    return any(word in words or len(word) >= 4 and word in folded for word in _identifying_words(ds))


def code_value(value: str, ds: Dataset | None = None, standard_scheme: bool = False) -> str:
    """A code's CodeValue as a reason shows it: quoted by :func:`quote`, except that a code of a
    standard scheme (SCT, DCM, ...) whose value is all digits is shown although it is a long
    number (SCT 399321004 is a concept, not an identifier), unless it repeats an identifying
    value of ``ds``."""
    value = str(value).strip()
    if standard_scheme and _CONCEPT_ID.match(value) and not _shares_identifying_word(value, ds):
        return repr(value)
    return quote(value, ds)


def quote(text: str, ds: Dataset | None = None) -> str:
    """``'text'`` if :func:`quotable`, else :data:`WITHHELD`."""
    text = str(text).strip()
    return repr(text) if quotable(text, ds) else WITHHELD


def term(text: str, ds: Dataset | None = None, defined_terms: frozenset[str] = frozenset()) -> str:
    """A coded-string term (Modality, ImageType value) as is if it is one of the standard's
    ``defined_terms`` or :func:`quotable`, else :data:`WITHHELD`."""
    text = str(text).strip()
    return text if text.upper() in defined_terms or quotable(text, ds) else WITHHELD
