"""The layout of the node's data directory (``storage.data_dir``), in one place.

::

    <data_dir>/
      spectnode.sqlite           the job store (studies, objects, outputs, outbox)
      spool/<study>/<sop>.<sha256>.dcm
                                 every received object, as received, named by its content
      work/<study>/gen<N>.npz    views and heatmaps between the classify and report stages
      results/<study>/           the SR and secondary captures made for a study, and result.json

Every stage and command asks a :class:`DataDir` for paths instead of
building them. A spooled object's name holds the SHA-256 of its bytes: a
changed copy of an object (same SOP Instance UID, other bytes) goes to a new
file, and the file the job store records is never overwritten; the versions it
replaced stay until the retention policy removes the study's files.

UIDs that are not safe as file names (they could hold ``/`` or ``..``) are
replaced by a hash of themselves (:func:`spectnode.fsutil.safe_file_name`),
the same way everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spectnode.fsutil import safe_file_name

__all__ = ["DataDir", "RESULT_SUMMARY"]

#: Name of the per-study summary written next to the result files.
RESULT_SUMMARY: Final = "result.json"

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DataDir:
    """The node's files under one data directory.

    Args:
        root: ``storage.data_dir``.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def database(self) -> Path:
        """The job store's SQLite file."""
        return self.root / "spectnode.sqlite"

    @property
    def spool(self) -> Path:
        """Root of the received objects."""
        return self.root / "spool"

    @property
    def work(self) -> Path:
        """Root of the classify stage's views and heatmaps."""
        return self.root / "work"

    @property
    def results(self) -> Path:
        """Root of the SR and SC files made per study."""
        return self.root / "results"

    def create(self) -> None:
        """Create the folders (the database is created by the job store)."""
        for folder in (self.spool, self.work, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    def spool_folder(self, study_uid: str) -> Path:
        """The received objects of one study: ``spool/<study>/``."""
        return self.spool / safe_file_name(study_uid)

    def spooled_object(self, study_uid: str, sop_instance_uid: str, sha256: str) -> Path:
        """Where a received object whose bytes have the SHA-256 ``sha256`` (hex) is spooled:
        ``spool/<study>/<sop>.<sha256>.dcm``.

        Raises:
            ValueError: If ``sha256`` is not 64 lower-case hex digits.
        """
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 in hex: {sha256!r}")
        return self.spool_folder(study_uid) / f"{safe_file_name(sop_instance_uid)}.{sha256}.dcm"

    def spooled_versions(self, study_uid: str, sop_instance_uid: str) -> list[Path]:
        """Every spooled file of one object: each version received (:meth:`spooled_object`), and the
        ``<sop>.dcm`` of the releases that named spooled objects without their content."""
        name = safe_file_name(sop_instance_uid)
        folder = self.spool_folder(study_uid)
        versions = [path for path in folder.glob(f"{name}.*.dcm")
                    if _SHA256_HEX.fullmatch(path.name[len(name) + 1:-len(".dcm")])]
        legacy = folder / f"{name}.dcm"
        return sorted(versions + ([legacy] if legacy.is_file() else []))

    def work_file(self, study_uid: str, generation: int) -> Path:
        """The views and heatmaps of one generation of a study: ``work/<study>/gen<N>.npz``."""
        return self.work / safe_file_name(study_uid) / f"gen{generation}.npz"

    def results_folder(self, study_uid: str) -> Path:
        """Where a study's SR and SC files go: ``results/<study>/``."""
        return self.results / safe_file_name(study_uid)

    def result_summary(self, study_uid: str) -> Path:
        """The JSON summary of a study's current result: ``results/<study>/result.json``."""
        return self.results_folder(study_uid) / RESULT_SUMMARY
