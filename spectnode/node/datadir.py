"""The layout of the node's data directory (``storage.data_dir``), in one place.

::

    <data_dir>/
      spectnode.sqlite           the job store (studies, objects, outputs, outbox)
      spool/<study>/<sop>.dcm    every received object, as received
      work/<study>/gen<N>.npz    views and heatmaps between the classify and report stages
      results/<study>/           the SR and secondary captures made for a study, and result.json

Every stage and command asks a :class:`DataDir` for paths instead of
building them. UIDs that are not safe as file names (they could hold ``/`` or
``..``) are replaced by a hash of themselves
(:func:`spectnode.fsutil.safe_file_name`), the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spectnode.fsutil import safe_file_name

__all__ = ["DataDir", "RESULT_SUMMARY"]

#: Name of the per-study summary written next to the result files.
RESULT_SUMMARY: Final = "result.json"


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

    def spooled_object(self, study_uid: str, sop_instance_uid: str) -> Path:
        """Where a received object is spooled: ``spool/<study>/<sop>.dcm``."""
        return self.spool / safe_file_name(study_uid) / f"{safe_file_name(sop_instance_uid)}.dcm"

    def work_file(self, study_uid: str, generation: int) -> Path:
        """The views and heatmaps of one generation of a study: ``work/<study>/gen<N>.npz``."""
        return self.work / safe_file_name(study_uid) / f"gen{generation}.npz"

    def results_folder(self, study_uid: str) -> Path:
        """Where a study's SR and SC files go: ``results/<study>/``."""
        return self.results / safe_file_name(study_uid)

    def result_summary(self, study_uid: str) -> Path:
        """The JSON summary of a study's current result: ``results/<study>/result.json``."""
        return self.results_folder(study_uid) / RESULT_SUMMARY
