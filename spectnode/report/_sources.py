"""Source datasets of a report: lookup, de-duplication and study attributes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Maximum value lengths (PS3.5 Table 6.2-1) of the VRs among those attributes, PN aside.
_MAX_LENGTH = {"LO": 64, "SH": 16, "CS": 16, "DA": 8, "TM": 14}

# Type 2 patient/study attributes that highdicom copies from the first
# evidence dataset and that real scans often lack (field guide, section 2).
_TYPE2_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def unique_by_sop_instance(datasets: Iterable[Dataset]) -> list[Dataset]:
    """The datasets with distinct SOPInstanceUIDs, first occurrence kept, in order.

    A node can receive the same instance twice; evidence lists it once.
    """
    seen: set[str] = set()
    unique: list[Dataset] = []
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid:
            raise ValueError("a source dataset has no SOPInstanceUID")
        if uid not in seen:
            seen.add(uid)
            unique.append(ds)
    return unique


def find_source(source_datasets: Sequence[Dataset], sop_instance_uid: str) -> Dataset:
    """The source dataset with ``sop_instance_uid``.

    Raises:
        ValueError: if none of ``source_datasets`` has that SOPInstanceUID.
    """
    for ds in source_datasets:
        if str(ds.get("SOPInstanceUID", "")) == sop_instance_uid:
            return ds
    raise ValueError(
        f"the view's source instance {sop_instance_uid} is not among the "
        f"{len(source_datasets)} source dataset(s) given"
    )


def _one_valid_value(value: Any, vr: str) -> str:
    """``value`` as one text value that its VR allows: what highdicom will copy into an output.

    Real and hostile sources hold values no encoder accepts: several values
    (``A\\B\\C\\D``) in a single-valued attribute, bytes of a value sent as UN
    (a PatientName over 64 KiB cannot be PN in explicit VR), names longer than
    PN's 64 characters per component group, control characters. The output keeps
    the first value, decoded, cut to its VR's length, without control characters.
    """
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    if isinstance(value, bytes):  # sent as UN: its character set is anyone's guess
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
        value = value.split("\\", 1)[0]
    text = "".join(c for c in str(value) if c.isprintable()).strip()
    if vr == "PN":
        return "=".join(group[:64] for group in text.split("=")[:3])
    return text[:_MAX_LENGTH.get(vr, 64)]


def header_with_study_defaults(ds: Dataset) -> Dataset:
    """A header-only view of ``ds`` whose type 2 patient and study attributes are present and valid.

    Missing ones are empty; present ones are made single, decoded and of a
    valid length (:func:`_one_valid_value`), and the header's character set is
    UTF-8: the values are text already (pydicom decoded them with the
    source's character set, or its default for one it does not know, such as
    ``ISO_IR 999``), so the outputs can always be written. Pixel data
    (group 7FE0) is left out, and ``ds`` itself is not modified.
    """
    header = Dataset()
    # Iterate over tags, not elements: touching a deferred Pixel Data element
    # would read it from the file just to leave it out.
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields its elements, not its tags
        if tag.group != 0x7FE0:
            header.add(ds[tag])
    for keyword in _TYPE2_STUDY_ATTRIBUTES:
        vr = dictionary_VR(keyword)
        try:
            value = header[keyword].value if keyword in header else None
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert is as good as none
            value = None
        if keyword in header:
            del header[keyword]
        setattr(header, keyword, "" if value is None else _one_valid_value(value, vr))
    header.SpecificCharacterSet = "ISO_IR 192"
    return header


def referenced_frame_number(ds: Dataset, frame_number: int | None) -> int | None:
    """The frame to reference in ``ds``, or None when the whole object is meant.

    A frame is only referenced in an object of more than one frame; a
    one-frame NM object (NumberOfFrames 1) is referenced as a whole, like a
    single-frame image.
    """
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frame_number is None or frames <= 1:
        return None
    if not 1 <= frame_number <= frames:
        raise ValueError(f"frame {frame_number} is outside instance {ds.SOPInstanceUID} of {frames} frames")
    return frame_number


def check_same_study(source_datasets: Sequence[Dataset], study_uid: str) -> None:
    """Raise ValueError unless every dataset belongs to study ``study_uid``."""
    if not source_datasets:
        raise ValueError("at least one source dataset of the study is needed")
    others = sorted(
        {str(ds.get("StudyInstanceUID", "")) for ds in source_datasets} - {study_uid}
    )
    if others:
        raise ValueError(
            f"source datasets belong to other studies than {study_uid}: {', '.join(others)}"
        )
