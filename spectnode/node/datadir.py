"""The layout of the node's data directory (``storage.data_dir``), in one place.

::

    <data_dir>/
      spectnode.sqlite           the job store (studies, objects, outputs, outbox)
      spectnode.lock             locked by the one process that runs the pipeline (DataDir.lock)
      spool/<study>/<sop>.<sha256>.dcm
                                 every received object, as received, named by its content
      work/<study>/gen<N>.npz    views and heatmaps between the classify and report stages
      results/<study>/           the SR and secondary captures made for a study, and result.json

Every stage and command asks a :class:`DataDir` for paths instead of
building them. A spooled object's name holds the SHA-256 of its bytes: a
changed copy of an object (same SOP Instance UID, other bytes) goes to a new
file, and the file the job store records is never overwritten; the versions it
replaced stay until the retention policy removes the study's files, or the node's
next start (:func:`spectnode.node.retention.remove_unrecorded_files`).

UIDs that are not safe as file names (they could hold ``/`` or ``..``) are
replaced by a hash of themselves (:func:`spectnode.fsutil.safe_file_name`),
the same way everywhere.

One process at a time runs the pipeline on a data directory: ``spectnode
serve``, or a ``backfill`` (``classify --send``) that runs the stages itself.
It holds an exclusive ``flock`` on ``spectnode.lock`` for as long as it runs
(the kernel drops it when the process ends, however it ends), and writes into
the file what it is and its process id, so a second one is refused with the
name of the first, and a backfill knows that a ``serve`` is there to hand its
studies to (:meth:`DataDir.lock`). Commands that only read or queue
(``status``, ``retry``, ``purge``) need no lock: the job store serialises them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spectnode.fsutil import safe_file_name

__all__ = ["DataDir", "DataDirInUse", "DataDirLock", "LockHolder", "RESULT_SUMMARY"]

#: Name of the per-study summary written next to the result files.
RESULT_SUMMARY: Final = "result.json"

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
#: How long a process refused the lock waits for its holder to say who it is (it writes that right
#: after taking the lock).
_HOLDER_WAIT_S: Final = 2.0


@dataclass(frozen=True)
class LockHolder:
    """The process that holds a data directory's lock.

    Attributes:
        command: What it runs: ``serve``, ``backfill`` or ``classify --send``.
        pid: Its process id.
    """

    command: str
    pid: int

    def __str__(self) -> str:
        return f"spectnode {self.command} (pid {self.pid})"


class DataDirInUse(Exception):
    """Another process runs the pipeline on this data directory.

    Attributes:
        lock_file: The data directory's lock file.
        holder: The process that holds it (None if it did not say who it is in time).
    """

    def __init__(self, lock_file: Path, holder: LockHolder | None) -> None:
        self.lock_file = lock_file
        self.holder = holder
        super().__init__(f"the data directory {lock_file.parent} is in use by "
                         f"{holder if holder is not None else 'another spectnode process'} (lock {lock_file}); "
                         "one process at a time runs the pipeline on a data directory")


class DataDirLock:
    """A held lock on a data directory (:meth:`DataDir.lock`); released by :meth:`release`, a ``with``
    block's end, or the end of the process."""

    def __init__(self, fd: int, holder: LockHolder) -> None:
        self._fd: int | None = fd
        self.holder = holder

    def release(self) -> None:
        """Let go of the lock (a second call does nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no name of a process that no longer holds it
            os.close(fd)  # closing the only descriptor of the open file drops its flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> LockHolder | None:
    """Who holds the lock of the open lock file ``fd``, as its holder wrote it (None if unreadable)."""
    try:
        fields = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        holder = LockHolder(str(fields["command"]), int(fields["pid"]))
        os.kill(holder.pid, 0)  # a process that ended left its name: the new holder has not written yet
    except PermissionError:
        pass  # it runs, as another user
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return holder


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

    @property
    def lock_file(self) -> Path:
        """The file whose lock the process that runs the pipeline holds."""
        return self.root / "spectnode.lock"

    def lock(self, command: str) -> DataDirLock:
        """Take the data directory's lock for ``command`` (``serve``, ``backfill``, ``classify --send``),
        without waiting; the folder is created if missing.

        Raises:
            DataDirInUse: If another process (or another lock of this one) holds it; it names the holder.
            OSError: If the lock file cannot be opened (a read-only or missing file system).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + _HOLDER_WAIT_S
            while (holder := _read_holder(fd)) is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the holder has just taken the lock and writes its name next
            os.close(fd)
            raise DataDirInUse(self.lock_file, holder) from None
        except BaseException:
            os.close(fd)
            raise
        holder = LockHolder(command, os.getpid())
        with contextlib.suppress(OSError):  # who holds it is for the message of a refused one only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"command": holder.command, "pid": holder.pid}).encode("utf-8"), 0)
        return DataDirLock(fd, holder)

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
