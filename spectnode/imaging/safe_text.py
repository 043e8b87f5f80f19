"""Texts from a dataset that may appear in a reason, a log line or an SR.

A not-assessable reason goes to the log, to ``spectnode status`` and into the
SR written back to PACS, so it must hold no patient data. Reasons therefore
name the attributes they looked at by tag and keyword, and never quote a value,
with one exception: short view and description texts (ImageID,
SeriesDescription, a view code's meaning, ImageType terms) that a reader needs
to see what the node saw. :func:`quotable` decides whether such a text may be
quoted; private elements are never quoted (GE Millennium exports keep a
patient's name in (0009,1040) even when PatientName is de-identified).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from pydicom.tag import BaseTag

from spectnode.imaging.view_labels import fold_text

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["IMAGE_TYPE_TERMS", "MAX_QUOTED_LENGTH", "MODALITY_TERMS", "WITHHELD", "attribute_name", "quotable",
           "quote", "term"]

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


def attribute_name(tag: BaseTag | int, keyword: str = "") -> str:
    """``"(0008,103E) SeriesDescription"``: how a reason names an attribute."""
    tag = BaseTag(tag)
    shown = f"({tag.group:04X},{tag.element:04X})"
    return f"{shown} {keyword}" if keyword else shown


def _identifying_words(ds: Dataset | None) -> set[str]:
    """Folded words of every PN value and identifying attribute of ``ds`` (all levels)."""
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
    or identifying attribute (PatientID, AccessionNumber, ...) of ``ds``.
    """
    if not text or len(text) > MAX_QUOTED_LENGTH or "^" in text or "=" in text:
        return False
    if not _PRINTABLE.match(text) or _NAME_PATTERN.search(text) or _LONG_NUMBER.search(text):
        return False
    folded = fold_text(text)
    words = set(re.split(r"[^A-Z0-9]+", folded))
    return all(not (word in words or len(word) >= 4 and word in folded) for word in _identifying_words(ds))


def quote(text: str, ds: Dataset | None = None) -> str:
    """``'text'`` if :func:`quotable`, else :data:`WITHHELD`."""
    text = str(text).strip()
    return repr(text) if quotable(text, ds) else WITHHELD


def term(text: str, ds: Dataset | None = None, defined_terms: frozenset[str] = frozenset()) -> str:
    """A coded-string term (Modality, ImageType value) as is if it is one of the standard's
    ``defined_terms`` or :func:`quotable`, else :data:`WITHHELD`."""
    text = str(text).strip()
    return text if text.upper() in defined_terms or quotable(text, ds) else WITHHELD
