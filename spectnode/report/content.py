"""Codes and fixed text of spectnode's reports.

Standard codes are used where DICOM or SNOMED CT has one with the meaning
spectnode needs; the rest live in spectnode's private coding scheme
:data:`PRIVATE_SCHEME` (``99SPECTNODE``), which every SR declares in its
CodingSchemeIdentificationSequence (0008,0110).

Class codes (the TID 1501 finding type of each class's group):

==================  ==========================================  =====================================
class               code                                        used by schemes
==================  ==========================================  =====================================
normal              SCT 17621005 "Normal"                       dspic4
metastatic          SCT 94222008 "Bony metastasis"              dspic4
metastasis          SCT 94222008 "Bony metastasis"              binary
arthritic           SCT 3723001 "Arthritis"                     dspic4
both                99SPECTNODE BONEMET-ARTHR                   dspic4
no_metastasis       99SPECTNODE NOBONEMET                       lung3, binary
adenocarcinoma      99SPECTNODE BONEMET-ADENO                   lung3
non_adenocarcinoma  99SPECTNODE BONEMET-NONADENO                lung3
==================  ==========================================  =====================================

A class name not in this table (a user-trained scheme) gets a private code
whose value is derived from the name (see :func:`class_code`).

SCT 17621005 and 94222008 are the codes and meanings of pydicom's DICOM code
dictionary (CID 6347 for bony metastasis); SCT 3723001 is SNOMED CT's
"Arthritis (disorder)". "No bone metastasis" is a negated finding, which a
single pre-coordinated SNOMED concept does not express, and the lung-cancer
subclasses mean "bone metastasis of lung adenocarcinoma / of another
histology", for which no standard code exists; hence the private codes.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "ASSESSMENT",
    "CERTAINTY_OF_FINDING",
    "MOST_PROBABLE_CLASS",
    "NOT_ASSESSABLE",
    "PERCENT",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "PRIVATE_SCHEME_RESPONSIBLE_ORGANIZATION",
    "PROCEDURE_REPORTED",
    "QUALITATIVE_EVALUATIONS",
    "REASON_CATEGORY",
    "REASON_NOT_ASSESSABLE",
    "RESEARCH_USE_STATEMENT",
    "SECOND_MOST_PROBABLE_CLASS",
    "SOURCE_IMAGE_FOR_PROCESSING",
    "class_code",
    "reason_category_code",
    "research_use_statement",
]

#: Coding Scheme Designator of spectnode's private codes ("99" prefix: local scheme).
PRIVATE_SCHEME: Final = "99SPECTNODE"
#: Coding Scheme Name declared for :data:`PRIVATE_SCHEME`.
PRIVATE_SCHEME_NAME: Final = "spectnode private codes"
#: Coding Scheme Responsible Organization declared for :data:`PRIVATE_SCHEME`.
PRIVATE_SCHEME_RESPONSIBLE_ORGANIZATION: Final = "spectnode project"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# ------------------------------------------------------------------ concept names

#: DCM 111012 "Certainty of Finding" (CID 6048): each class's probability, in percent.
CERTAINTY_OF_FINDING: Final = codes.DCM.CertaintyOfFinding
#: UCUM "%": the unit of :data:`CERTAINTY_OF_FINDING`.
PERCENT: Final = codes.UCUM.Percent
#: TID 1500 procedure reported. No DICOM dictionary code names a planar
#: bone scan, so the general SCT 371572003 "Nuclear medicine procedure"
#: (CID 6028) is used (CID 100 is extensible).
PROCEDURE_REPORTED: Final = codes.SCT.NuclearMedicineProcedure
#: TID 1500 row 12: the report-level container of qualitative evaluations.
QUALITATIVE_EVALUATIONS: Final = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Concept name of the class with the highest probability (value: a class code).
MOST_PROBABLE_CLASS: Final = _private("TOPCLASS", "Most probable class")
#: Concept name of the class with the second highest probability (dspic4 only).
SECOND_MOST_PROBABLE_CLASS: Final = _private("SECONDCLASS", "Second most probable class")
#: A container of qualitative evaluations per model (several models read a study).
MODEL_RESULT: Final = _private("MODELRESULT", "Result of one model")
#: DCM 111001 "Algorithm Name" and DCM 111003 "Algorithm Version": which model a container holds.
ALGORITHM_NAME: Final = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION: Final = Code("111003", "DCM", "Algorithm Version")
#: Concept name of a model's distance from its training data, and of its flag (value: a TEXT).
DOMAIN_FIT: Final = _private("DOMAINFIT", "Distance from the model's training data")
DOMAIN_FLAG: Final = _private("DOMAINFLAG", "Training domain")
#: Concept name of the certainty that an inferred view is the view it was taken for (TEXT).
VIEW_INFERENCE: Final = _private("VIEWINFERRED", "View inferred from the image")
#: Concept name of the model card's research-use statement (a TEXT item).
RESEARCH_USE_STATEMENT: Final = _private("RUO", "Research use statement")
#: Concept name of the overall assessment of a study (value: :data:`NOT_ASSESSABLE`).
ASSESSMENT: Final = _private("ASSESSMENT", "Assessment")
#: Value of :data:`ASSESSMENT`, and finding type of a not-assessable study's group.
NOT_ASSESSABLE: Final = _private("NOTASSESSABLE", "Study not assessable by the classifier")
#: Concept name of the coded reason category (value: :func:`reason_category_code`).
REASON_CATEGORY: Final = _private("REASONCATEGORY", "Reason category")
#: Concept name of the human-readable reason a study is not assessable (TEXT).
REASON_NOT_ASSESSABLE: Final = _private("REASON", "Reason not assessable")
#: Purpose of reference of a secondary capture's SourceImageSequence item.
SOURCE_IMAGE_FOR_PROCESSING: Final = Code(
    "121322", "DCM", "Source image for image processing operation"
)

# ------------------------------------------------------------------- class codes

_CLASS_CODES: Final[dict[str, Code]] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "metastatic": Code("94222008", "SCT", "Bony metastasis"),
    "metastasis": Code("94222008", "SCT", "Bony metastasis"),
    "arthritic": Code("3723001", "SCT", "Arthritis"),
    "both": _private("BONEMET-ARTHR", "Bony metastasis and arthritis"),
    "no_metastasis": _private("NOBONEMET", "No bony metastasis"),
    "adenocarcinoma": _private("BONEMET-ADENO", "Bony metastasis of lung adenocarcinoma"),
    "non_adenocarcinoma": _private(
        "BONEMET-NONADENO", "Bony metastasis of non-adenocarcinoma lung cancer"
    ),
}

_SH_MAX = 16  # CodeValue is SH: at most 16 characters


def class_code(class_name: str) -> CodedConcept:
    """The code of a model class, used as its finding type and as a result value.

    Known classes (see the module table) get their standard or private code. Any
    other name gets a private code: the name upper-cased with runs of other
    characters than letters and digits turned into ``-``; a name longer than 16
    characters becomes its first 11 characters, ``-`` and 4 hex digits of its
    SHA-1, so that distinct names keep distinct codes. The code meaning is the
    class name itself.

    Raises:
        ValueError: if ``class_name`` is empty.
    """
    if not class_name or not class_name.strip():
        raise ValueError("a class name must be a non-empty string")
    code = _CLASS_CODES.get(class_name)
    if code is None:
        value = re.sub(r"[^A-Z0-9]+", "-", class_name.strip().upper()).strip("-") or "CLASS"
        if len(value) > _SH_MAX:
            digest = hashlib.sha1(class_name.encode("utf-8")).hexdigest()[:4].upper()
            value = f"{value[:11]}-{digest}"
        code = _private(value, class_name.strip()[:64])
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


_REASON_CATEGORIES: Final[dict[str, Code]] = {
    "wrong_modality": _private("NA-MODALITY", "No nuclear medicine image in the study"),
    "not_whole_body": _private("NA-NOTWB", "No whole-body planar scan in the study"),
    "missing_views": _private("NA-VIEWS", "Anterior or posterior view not identified"),
    "unreadable": _private("NA-UNREADABLE", "Image data could not be read"),
    "unusable_geometry": _private("NA-GEOMETRY", "Image geometry not usable"),
    "empty_image": _private("NA-EMPTY", "Image without counts"),
    "not_bone_scan": _private("NA-NOTBONE", "Image is not a whole-body bone scan"),
    "early_phase": _private("NA-EARLY", "Early (flow or blood-pool) phase, not a delayed bone scan"),
}


def reason_category_code(reason_code: str | None) -> CodedConcept | None:
    """The coded category of a :class:`~spectnode.imaging.views.NotAssessable` code.

    Returns None for ``None`` or a code this module does not know.
    """
    code = _REASON_CATEGORIES.get(reason_code or "")
    if code is None:
        return None
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


# -------------------------------------------------------------------------- text

_RESEARCH_USE_ONLY: Final = "Research use only. Not for clinical use."
_SYNTHETIC_DATA: Final = "Trained on synthetic (phantom) bone scans, not on patient data."


def research_use_statement(intended_use: str, trained_on_synthetic_data: bool) -> str:
    """The research-use statement a report carries, from a model card's intended use.

    The card's text is kept as written. If it does not say "research use only"
    and "not for clinical use", :data:`_RESEARCH_USE_ONLY` is put before it; if
    the model was trained on synthetic data and the text does not say
    "synthetic", a sentence saying so is added after it. So every report says
    both, whatever a hand-edited card holds.
    """
    text = " ".join(intended_use.split())
    lowered = text.lower()
    if "research use only" not in lowered or "not for clinical use" not in lowered:
        text = f"{_RESEARCH_USE_ONLY} {text}".strip()
    if trained_on_synthetic_data and "synthetic" not in lowered:
        text = f"{text} {_SYNTHETIC_DATA}"
    return text
