"""A full disk pauses the pipeline; it does not fail it.

Two mechanisms, one object (:class:`DiskSpace`, shared by the stages of a node):

* a **free-space floor** (``storage.min_free_bytes``): the receive stage
  refuses an object (0xA700) that would leave less than the floor free, and
  the stages (assemble, classify, report) do not start work below it,
  so the disk is never filled by the node's own spool;
* **write failures that space can cure** (:func:`is_disk_full`: ENOSPC,
  EDQUOT, EROFS, and SQLite's "database or disk is full" and
  "readonly database"): the stage leaves the study where it is (never in
  ``error``), logs once that it waits, and tries again every
  ``storage.disk_retry_seconds`` by itself; once the write succeeds it logs
  that it resumed. Any other exception still puts the study in ``error``,
  EFBIG (file too large) included: it is a limit on one file (the process's
  ``RLIMIT_FSIZE``, the file system's largest file), which no waiting cures,
  and retrying the study would hold up every study behind it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from spectnode.errors import exception_name

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DISK_FULL_ERRNOS", "DiskSpace", "is_disk_full", "unguarded"]

_log = logging.getLogger("spectnode.disk")

#: OS errors a write can fail with that more space, a larger quota or a remount cures (for every study alike).
DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# SQLite primary result codes (sqlite3.h): SQLITE_READONLY, SQLITE_FULL.
_SQLITE_DISK_CODES: Final = frozenset({8, 13})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write that failed for want of space.

    True for an ``OSError`` with one of :data:`DISK_FULL_ERRNOS` and for the
    SQLite errors "database or disk is full" and "attempt to write a readonly
    database", also when wrapped by another exception (``__cause__`` or
    ``__context__``).
    """
    return _disk_full_cause(exc) is not None


def _disk_full_cause(exc: BaseException | None) -> BaseException | None:
    """The exception of ``exc``'s chain that says a write failed for want of space (see :func:`is_disk_full`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _SQLITE_DISK_CODES:
                return exc
            text = str(exc).lower()
            if "disk is full" in text or "readonly database" in text:
                return exc
        exc = exc.__cause__ or exc.__context__
    return None


class DiskSpace:
    """The data directory's free space, its floor, and which stages wait for space.

    Args:
        path: A path on the file system to watch (the data directory).
        min_free_bytes: The floor (``storage.min_free_bytes``).
        retry_seconds: How long a stage waits after a failed write (``storage.disk_retry_seconds``).
        clock: Monotonic seconds (tests may pass another).
    """

    def __init__(self, path: Path, min_free_bytes: int, retry_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.min_free_bytes = int(min_free_bytes)
        self.retry_seconds = float(retry_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        # stage -> monotonic time before which it does not try again
        self._waiting: dict[str, float] = {}
        self._below_floor = False

    def free_bytes(self) -> int | None:
        """Bytes free for an unprivileged writer on the file system of :attr:`path` (None if it cannot be read)."""
        try:
            return int(shutil.disk_usage(self.path).free)
        except OSError:
            return None

    def below_floor(self, incoming_bytes: int = 0) -> bool:
        """True if writing ``incoming_bytes`` more would leave less than the floor free.

        The state without an incoming object (the stages' check) is logged when it changes.
        """
        free = self.free_bytes()
        low = free is not None and free - incoming_bytes < self.min_free_bytes
        if incoming_bytes:
            return low
        with self._lock:
            changed, self._below_floor = low != self._below_floor, low
        if changed and low:
            _log.warning("free space on %s is %d bytes, below storage.min_free_bytes (%d): new objects are "
                         "refused (0xA700) and the stages that write wait", self.path, free, self.min_free_bytes)
        elif changed:
            _log.info("free space on %s is %d bytes again, above storage.min_free_bytes; going on", self.path, free)
        return low

    def should_wait(self, stage: str) -> bool:
        """True while ``stage`` must not start work that writes: below the floor, or soon after a failed write."""
        with self._lock:
            until = self._waiting.get(stage)
        if until is not None and self._clock() < until:
            return True
        return self.below_floor()

    def write_failed(self, stage: str, exc: BaseException, study_uid: str | None = None) -> None:
        """Record that ``stage`` could not write for want of space: it waits, then tries again by itself."""
        with self._lock:
            first = stage not in self._waiting
            self._waiting[stage] = self._clock() + self.retry_seconds
        if first:
            # Named by its class and errno and the data directory's area: its message names the file (spooled
            # files are named by their SOP Instance UID).
            cause = _disk_full_cause(exc) or exc
            _log.warning("%s stage cannot write (%s%s)%s; it waits for space and tries again every %g s; nothing "
                         "is failed or lost", stage, exception_name(cause), self._area(cause),
                         f" while working on study {study_uid}" if study_uid else "", self.retry_seconds,
                         extra={"study_uid": study_uid} if study_uid else None)

    def _area(self, exc: BaseException) -> str:
        """``" in spool"``: the top folder of the data directory a failed write went to, if known."""
        if isinstance(exc, sqlite3.Error):
            return " in the job store"
        filename = getattr(exc, "filename", None)
        if not isinstance(exc, OSError) or not filename:
            return ""
        try:
            parts = Path(os.fsdecode(filename)).resolve().relative_to(self.path.resolve()).parts
        except (ValueError, OSError):
            return " outside the data directory"
        return f" in {parts[0]}" if parts else ""

    def write_succeeded(self, stage: str) -> None:
        """Record that ``stage`` did its work: if it was waiting for space, it has resumed."""
        with self._lock:
            was_waiting = self._waiting.pop(stage, None) is not None
        if was_waiting:
            _log.info("%s stage can write again; resumed", stage)

    def waiting_stages(self) -> list[str]:
        """Stages whose last write failed for want of space (for ``/healthz``)."""
        with self._lock:
            return sorted(self._waiting)


def unguarded(path: Path = Path(".")) -> DiskSpace:
    """A :class:`DiskSpace` with no floor that still pauses a stage after a failed write."""
    return DiskSpace(path, 0)
