"""Reading a study's spooled objects the way each stage needs them.

The assemble stage reads NM headers only, the classify stage NM objects with
their pixel data deferred, the report stage the headers of everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import pydicom

from spectnode.imaging.safe_text import MODALITY_TERMS, term

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from spectnode.store import JobStore

__all__ = ["DEFER_SIZE", "read_spooled_study"]

#: Values longer than this are read from a spooled file only when used (pixel data).
DEFER_SIZE: Final = "64 KB"


def read_spooled_study(
    store: JobStore, study_uid: str, *, nm_only: bool = False, pixel_data: bool = False
) -> tuple[list[Dataset], list[str]]:
    """A study's spooled objects, in the order received, and why any could not be read.

    Args:
        store: The job store that lists the study's spooled files and their Modality.
        study_uid: The study.
        nm_only: Read only objects with Modality NM, the only ones that can
            hold a view.
        pixel_data: Read NM objects with their pixel data deferred (loaded and
            decoded only when used, for the frames that hold a view). Otherwise,
            and for other objects always, only the header is read (up to the
            pixel data), which is all that completion checks and reports need.

    Returns:
        ``(datasets, problems)``: one message per file that could not be read,
        naming it by its position among the study's received objects (free of
        patient data: no UID, no path, no parser message).
    """
    datasets: list[Dataset] = []
    problems: list[str] = []
    rows = store.instances(study_uid)
    for position, row in enumerate(rows, start=1):
        modality = str(row["modality"] or "").strip()
        is_nm = modality.upper() == "NM"
        if nm_only and not is_nm:
            continue
        path = Path(row["path"])
        try:
            if pixel_data and is_nm:
                datasets.append(pydicom.dcmread(path, defer_size=DEFER_SIZE))
            else:
                datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - a spooled file that no longer reads is reported, not fatal
            # Named by position, not by its file (named by its SOP Instance UID); the parser's
            # message may quote header values, so only its class is kept.
            shown = term(modality, None, MODALITY_TERMS) if modality else "no Modality"
            problems.append(f"received object {position} of {len(rows)} ({shown}) cannot be read as DICOM "
                            f"({type(exc).__name__})")
    return datasets, problems
