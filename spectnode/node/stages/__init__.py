"""The node's five stages, one module each; data flows one way through them::

    receive ──► assemble ──► classify ──► report ──► dispatch
    (SCP, spool)  (complete?)  (views, model)  (SR, SC)   (outbox)

Every stage is a class built from the job store, the data directory and its
typed collaborators, with one :meth:`Stage.step` that does one unit of work
and says whether it did any. The job store is the only state they share: a
stage finds its work by a study's state, and moves the study on with a
transition that is conditional on the state and the study's generation, so a
stage whose study was re-opened meanwhile drops its work. Each stage can be
stopped and restarted alone, and resumes where the store says.

The receive stage is the exception in form only: pynetdicom drives it (one
thread per association), so it has ``start``/``stop`` instead of ``step``.

:mod:`spectnode.node.worker` only wires threads to these steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from spectnode.errors import exception_name
from spectnode.node.diskspace import DiskSpace, is_disk_full

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from spectnode.store import JobStore, StudyRecord

__all__ = ["Stage", "StageError", "record_failure", "study_log_extra", "work_on_oldest"]


class StageError(RuntimeError):
    """A stage's failure whose message names no patient data (objects by position, no UID, path or
    parser message): the study's reason keeps it (:func:`record_failure`)."""


class Stage(Protocol):
    """What the worker runs: a named step that does at most one unit of work."""

    #: Name of the stage (the thread and the log name it).
    name: str

    def step(self) -> bool:
        """Do one unit of work; True if there was any (the worker then steps again at once)."""
        ...


def study_log_extra(study: StudyRecord) -> dict[str, str | None]:
    """The structured-log fields of a study."""
    return {"study_uid": study.study_uid, "calling_ae": study.calling_ae}


def record_failure(store: JobStore, log: logging.Logger, study: StudyRecord, stage: str,
                   exc: BaseException, disk: DiskSpace) -> bool:
    """Put a study whose stage raised into the visible ``error`` state, with its reason and a logged traceback.

    The reason (stored, shown by ``spectnode status``) is a :class:`StageError`'s
    message; of any other exception only its class (:func:`spectnode.errors.exception_name`),
    since its message may quote a header value or a path named by a SOP
    Instance UID. The traceback is logged with the messages only where
    ``logging.patient_data`` allows (:mod:`spectnode.node.logs`).

    A write that failed for want of space (:func:`~spectnode.node.diskspace.is_disk_full`)
    is not a failure of the study: it stays where it is, and ``disk`` makes the
    stage wait and try again by itself.

    Returns:
        True if the study went to ``error``; False if the stage waits for disk space.
    """
    if is_disk_full(exc):
        disk.write_failed(stage, exc, study.study_uid)
        return False
    message = f"{stage} failed: " + (str(exc) if isinstance(exc, StageError)
                                     else f"{exception_name(exc)}; the node's log has its traceback")
    log.error("study %s from %s: %s", study.study_uid, study.calling_ae, message, exc_info=exc,
              extra=study_log_extra(study))
    store.fail(study.study_uid, study.generation, study.state, message)
    return True


def work_on_oldest(store: JobStore, log: logging.Logger, disk: DiskSpace, stage: str,
                   pending: Callable[[], list[StudyRecord]], work: Callable[[StudyRecord], object]) -> bool:
    """The step of a per-study stage: ``work`` on the oldest of its ``pending`` studies.

    Nothing is done while the stage waits for disk space; a failure is the
    study's visible error, or makes the stage wait when the disk is full
    (:func:`record_failure`).

    Returns:
        True if a study was worked on (the worker steps again at once).
    """
    if disk.should_wait(stage):
        return False
    studies = pending()
    if not studies:
        return False
    try:
        work(studies[0])
    except Exception as exc:  # noqa: BLE001 - recorded as the study's visible error
        return record_failure(store, log, studies[0], stage, exc, disk)
    disk.write_succeeded(stage)
    return True
