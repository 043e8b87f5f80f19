"""The batch loop of ``spectnode backfill`` and ``spectnode classify DIR --send``.

One run:

1. **finds** its studies: NM studies of a PACS by C-FIND (study level, then
   series level), or the studies of the DICOM files in a folder;
2. **skips** each study that already has a current result: in the job store
   (ended, with an SR of this model's name and version, or no SR at all), or,
   for a PACS, a spectnode SR of this model in the study itself (C-FIND of
   its SR instances' ContributingEquipmentSequence). A study the job store
   has in progress is only waited for; one still ``received`` (a run killed
   mid-retrieve) is retrieved again, and the objects it already has are
   stored once;
3. **retrieves** the planar whole-body NM series of every other study by
   C-GET or C-MOVE (:mod:`spectnode.backfill.retrieve`), politely
   (:mod:`spectnode.backfill.polite`), into the job store through the
   receive stage, and completes it at once (nothing more will come);
4. **waits** until every study it started has settled: ended in the job
   store, its outputs delivered (or dead-lettered), and reports each one.

The pipeline that processes them is the running ``spectnode serve`` of the
same data directory if one holds its lock (:meth:`spectnode.node.datadir.DataDir.lock`);
otherwise the run takes the lock and starts the node's stages in-process
(:class:`spectnode.node.worker.Node`, listening only for C-MOVE or for the
reports of a destination with Storage Commitment) until the end. What
decides is the lock, never the network: a serve that does not
answer C-ECHO is still the one that runs the pipeline, and another node that
answers on the port is not. A data directory locked by another backfill (or
``classify --send``) is refused: two pipelines on one job store would process
each study twice. Either way the studies go through the same stages, job
store and destinations as pushed ones.

Every step is idempotent (SOP Instance UIDs of the inputs are stored once,
and the report stage derives the SR's UID from the study, its generation and
the model), so a run killed at any point and started again finishes the
same studies with no duplicate SR anywhere.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import pydicom

from spectnode.backfill.polite import Backoff, RateLimiter, TimeWindow
from spectnode.backfill.query import PacsClient, PacsRefused, PacsUnavailable, SeriesHit
from spectnode.backfill.retrieve import retrieve_series
from spectnode.errors import exception_name
from spectnode.node.datadir import DataDir, DataDirInUse, DataDirLock
from spectnode.node.stages.assemble import complete_now
from spectnode.node.stages.receive import STATUS_SUCCESS, ReceiveStage
from spectnode.peer import Peer
from spectnode.store import (
    DISPATCHED,
    END_STATES,
    ERROR,
    NOT_ASSESSABLE,
    RECEIVED,
    REPORTED,
    UNDELIVERED_STATES,
    JobStore,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from spectnode.backfill.progress import Progress, Summary
    from spectnode.config import Config, PacsConfig
    from spectnode.node.model import ClassifierLoader
    from spectnode.node.worker import Node
    from spectnode.report import AlgorithmInfo

__all__ = ["BackfillOptions", "Pipeline", "PipelineError", "run_backfill", "run_folder"]

_log = logging.getLogger("spectnode.backfill")

#: How often the run looks at the job store for studies that have settled.
POLL_SECONDS: Final = 0.5
#: Reason of an NM study without a series that can hold a planar whole-body view.
NO_WHOLE_BODY_SERIES: Final = "no planar whole-body NM series in the PACS (only tomographic, dynamic or gated)"
#: The peer recorded for studies read from files (no association brought them).
FILES_PEER: Final = Peer(ae_title="(files)", address="", port=0)


@dataclass(frozen=True)
class BackfillOptions:
    """What ``spectnode backfill`` selects and does."""

    #: Study dates (YYYYMMDD), inclusive; None: open.
    since: str | None = None
    until: str | None = None
    patient_id: str | None = None
    accession: str | None = None
    #: Retrieve at most this many studies in this run (skipped ones do not count).
    limit: int | None = None
    #: Only list what would be done.
    dry_run: bool = False


def algorithm_of(cfg: Config, bundles: Sequence[Path] | None) -> AlgorithmInfo:
    """The identification the first configured model writes into its SRs (from its card; no model is loaded).

    Every SR the node writes lists each of its models in ContributingEquipment,
    so an SR that names the first model at its version is one of this
    configuration's results.
    """
    from spectnode.bundle import read_card
    from spectnode.classify import bundle_paths
    from spectnode.report import AlgorithmInfo

    return AlgorithmInfo.from_card(read_card(bundle_paths(bundles or cfg.model.bundles)[0]))


def _same_algorithm(found: tuple[str, str, str, str], algorithm: AlgorithmInfo) -> bool:
    manufacturer, model, version, device_uid = found
    return (manufacturer == algorithm.manufacturer and model == algorithm.name and version == algorithm.version
            and (not device_uid or device_uid == algorithm.device_uid))


class PipelineError(RuntimeError):
    """The run cannot start the node's stages in-process."""


class Pipeline:
    """Where a run's studies are processed: the running ``spectnode serve``, or the stages in-process.

    The in-process node listens on ``node.port`` when objects arrive by
    C-MOVE, and also when a destination has ``storage_commitment``: a PACS may
    send its N-EVENT-REPORT on an association of its own (Orthanc always
    does), to the node's AE title at that port. Holding the lock, the run is
    the only pipeline of the data directory, so no serve of it listens there.

    Args:
        cfg: The configuration (the same job store and destinations either way).
        listen: Whether objects arrive by C-MOVE (the in-process node must listen).
        command: What the run is, for the lock (``backfill``, ``classify --send``).
        bundles, classifier_loader: For the in-process node (see :class:`~spectnode.node.worker.Node`).

    Raises:
        DataDirInUse: If another backfill or ``classify --send`` runs the pipeline on the data directory.
        PipelineError: If the in-process node cannot start for an OSError (its port is taken ...).
    """

    def __init__(self, cfg: Config, *, listen: bool, command: str = "backfill",
                 bundles: Sequence[Path] | None = None, classifier_loader: ClassifierLoader | None = None) -> None:
        self.node: Node | None = None
        self._lock: DataDirLock | None = None
        data_dir = DataDir(cfg.storage.data_dir)
        try:
            self._lock = data_dir.lock(command)
        except DataDirInUse as busy:
            if busy.holder is None or busy.holder.command != "serve":
                raise
        #: True when a running ``spectnode serve`` (the lock's holder) processes the studies.
        self.serving = self._lock is None
        if self.serving:
            data_dir.create()
            self.store = JobStore(data_dir.database)
            # Not started: only its store handler is used (C-GET, files), the node's own pipeline does the rest.
            from spectnode.node.diskspace import DiskSpace

            self.receive = ReceiveStage(self.store, data_dir, ae_title=cfg.node.ae_title,
                                        max_object_bytes=cfg.node.max_object_bytes,
                                        disk=DiskSpace(data_dir.root, cfg.storage.min_free_bytes,
                                                       cfg.storage.disk_retry_seconds),
                                        log_patient_data=cfg.logging.patient_data)
        else:
            from spectnode.node.worker import Node

            committing = ", ".join(repr(dest.name) for dest in cfg.destinations if dest.storage_commitment)
            why = [*(["objects arrive by C-MOVE"] if listen else []),
                   *([f"the storage commitment reports for {committing} may come on associations of their own"]
                     if committing else [])]
            try:
                self.node = Node(cfg, bundles=bundles, classifier_loader=classifier_loader, listen=bool(why))
                try:
                    self.node.start()
                except OSError as exc:
                    self.node.stop(timeout=5)
                    listening = (f"; it listens on {cfg.node.bind_address}:{cfg.node.port}, as this {command} must "
                                 f"({' and '.join(why)}): does another program hold that port?" if why else "")
                    raise PipelineError(f"cannot start the pipeline in-process ({exception_name(exc)}){listening}"
                                        ) from exc
                except BaseException:
                    self.node.stop(timeout=5)
                    raise
            except BaseException:
                self.close_lock()
                raise
            assert self.node.store is not None and self.node.receive is not None
            self.store = self.node.store
            self.receive = self.node.receive

    def close(self) -> None:
        """Stop the in-process stages (their unfinished work resumes at the next start) and let go of the
        data directory, or close the store."""
        try:
            if self.node is not None:
                self.node.stop()
            else:
                self.store.close()
        finally:
            self.close_lock()

    def close_lock(self) -> None:
        """Let go of the data directory's lock, if this run holds it."""
        if self._lock is not None:
            self._lock.release()


class _Run:
    """One run's shared state: the pipeline, progress, the studies waited for."""

    def __init__(self, pipeline: Pipeline, progress: Progress, algorithm: AlgorithmInfo) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.progress = progress
        self.algorithm = algorithm
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._waiting: set[str] = set()

    # ------------------------------------------------------------- job store

    def store_verdict(self, study_uid: str) -> str:
        """What the job store says of a study: ``new``, ``resume`` (retrieve again),
        ``active`` (being processed: wait), ``done`` (skip) or ``stale`` (a result of another model)."""
        study = self.store.study(study_uid)
        if study is None:
            return "new"
        if study.state == RECEIVED:
            return "resume"
        if study.state not in END_STATES or study.report_pending:
            return "active"
        if study.state == ERROR:
            return "active"  # reported as failed with its message when it is tracked
        for output in self.store.outputs(study_uid):
            if output.kind != "sr":
                continue
            try:
                sr = pydicom.dcmread(output.path, stop_before_pixels=True,
                                     specific_tags=["ContributingEquipmentSequence"])
            except (OSError, pydicom.errors.InvalidDicomError):
                return "stale"
            found = [tuple(str(item.get(k, "") or "").strip() for k in
                           ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceUID"))
                     for item in sr.get("ContributingEquipmentSequence") or []]
            if not any(_same_algorithm(f, self.algorithm) for f in found):  # type: ignore[arg-type]
                return "stale"
        return "done"

    def track(self, study_uid: str) -> None:
        """Wait for a study in the job store to settle, and report it then."""
        with self._lock:
            self._waiting.add(study_uid)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def poll(self) -> None:
        """Report every tracked study that has settled since the last poll."""
        with self._lock:
            waiting = sorted(self._waiting)
        outbox = self.store.outbox
        for uid in waiting:
            study = self.store.study(uid)
            if study is None or study.report_pending:
                continue
            if outbox.list_items(UNDELIVERED_STATES, study_uid=uid, generation=study.generation):
                continue
            dead = outbox.list_items(["dead"], study_uid=uid, generation=study.generation)
            # A study with a dead letter stays ``reported`` (until spectnode retry): it has settled too.
            if study.state not in END_STATES and not (study.state == REPORTED and dead):
                continue
            with self._lock:
                self._waiting.discard(uid)
            if study.state == ERROR:
                self.progress.failed(uid, (study.reason or "error")[:160])
            elif dead:
                names = ", ".join(sorted({item.destination for item in dead}))
                self.progress.failed(uid, f"results not delivered to {names} (dead letter; spectnode retry)")
            elif study.state == NOT_ASSESSABLE:
                self.progress.not_assessable(uid, (study.reason or "not assessable")[:160])
            elif study.state == DISPATCHED and study.result is not None and study.result.classified:
                self.progress.classified(uid, study.result.label)
            else:
                self.progress.not_assessable(uid, (study.reason or "no result")[:160])

    def begin(self, study_uid: str, verdict: str, dry_run: bool) -> bool:
        """Handle the job store's verdict; True if the study must be retrieved (or stored) now."""
        if verdict == "done":
            if dry_run:
                self.progress.planned(study_uid, "skip: current result in the job store", 0)
            self.progress.skipped(study_uid, "job store")
            return False
        if verdict == "stale":
            self.progress.failed(study_uid, "the job store holds a result of another model version; re-classifying "
                                            "a finished study is not supported")
            return False
        if verdict == "active":
            if dry_run:
                self.progress.planned(study_uid, "wait: in progress in the job store", 0)
                return False
            self.track(study_uid)
            return False
        return True

    def stored(self, study_uid: str, objects: int, source: str) -> None:
        """A study's objects are all in the job store: complete it now and wait for it."""
        if self.store.study(study_uid) is None:
            self.progress.failed(study_uid, f"{source} sent no objects")
            return
        complete_now(self.store, study_uid, f"every object {source} holds is stored")
        self.progress.retrieved(study_uid, objects)
        self.track(study_uid)

    def wait_all(self, futures: list[Future[None]]) -> None:
        """Poll until every retrieve is done and every tracked study has settled."""
        while True:
            self.poll()
            if all(f.done() for f in futures) and self.waiting == 0:
                for future in futures:
                    future.result()  # a bug in a worker must not pass unseen
                return
            time.sleep(POLL_SECONDS)


class _PacsWork:
    """The PACS side of a backfill: finders and retrieves with the politeness rules."""

    def __init__(self, run: _Run, pacs: PacsConfig, calling_ae_title: str, *, clock: Callable[[], float],
                 sleep: Callable[[float], None], now: Callable[[], datetime]) -> None:
        self.run = run
        self.pacs = pacs
        self.client = PacsClient(pacs, calling_ae_title)
        self.backoff = Backoff(pacs.retry_base_seconds, pacs.retry_max_seconds, clock, sleep)
        self.limiter = RateLimiter(pacs.studies_per_minute, clock, sleep)
        self.window = TimeWindow.parse(pacs.window)
        self._sleep = sleep
        self._now = now
        self._window_lock = threading.Lock()

    def call(self, work: Callable[[], Any], what: str, attempts: int | None = None) -> Any:
        """``work()``, waiting out an unavailable PACS with the shared backoff (forever, or ``attempts`` times).

        Raises:
            PacsRefused: As ``work`` does.
            PacsUnavailable: After ``attempts`` failures, if given.
        """
        failures = 0
        while True:
            self.backoff.wait(self.run.stopping)
            if self.run.stopping.is_set():
                raise PacsUnavailable("the run is stopping")
            try:
                result = work()
            except PacsUnavailable as exc:
                failures += 1
                pause = self.backoff.failure()
                if attempts is not None and failures >= attempts:
                    raise
                self.run.progress.note(f"PACS {self.pacs.name} unavailable ({what}): {exc}; trying again in "
                                       f"{pause:.0f} s", pause_seconds=pause)
                continue
            self.backoff.success()
            return result

    def wait_for_window(self) -> None:
        """Sleep until the time window is open (one worker reports the pause)."""
        if self.window is None:
            return
        with self._window_lock:
            left = self.window.seconds_until_open(self._now())
            if left > 0:
                self.run.progress.note(f"outside the time window {self.window}: pausing {left / 60:.0f} min",
                                       pause_seconds=round(left))
            while left > 0 and not self.run.stopping.is_set():
                self._sleep(min(left, 30.0))
                left = self.window.seconds_until_open(self._now())

    def plan(self, study_uid: str) -> tuple[str, list[str]]:
        """(``retrieve`` | ``pacs`` (current SR there) | ``none`` (no whole-body series), series to retrieve)."""
        client = self.client
        series: list[SeriesHit] = self.call(lambda: client.find_series(study_uid), "series query")
        for hit in series:
            if hit.modality == "SR":
                found = self.call(functools.partial(client.sr_algorithms, study_uid, hit), "SR query")
                if any(_same_algorithm(f, self.run.algorithm) for f in found):
                    return "pacs", []
        whole_body = [hit.series_uid for hit in series if hit.modality == "NM" and
                      self.call(functools.partial(client.is_whole_body_series, study_uid, hit), "image type query")]
        return ("retrieve", whole_body) if whole_body else ("none", [])

    def retrieve(self, study_uid: str, series_uids: list[str]) -> None:
        """Retrieve a study's series, politely, with retries; then hand it to the pipeline."""
        run = self.run
        handler = run.pipeline.receive.handle_store if self.pacs.retrieve == "get" else None
        refusals = 0
        while not run.stopping.is_set():
            self.wait_for_window()
            self.limiter.acquire()
            try:
                outcome = self.call(lambda: retrieve_series(self.client, study_uid, series_uids,
                                                            store_handler=handler), "retrieve")
            except PacsRefused as exc:
                refusals += 1
                pause = self.backoff.failure()
                if refusals >= self.pacs.max_attempts:
                    run.progress.failed(study_uid, f"retrieve failed {refusals} times: {exc}")
                    return
                run.progress.note(f"PACS {self.pacs.name}: {exc}; trying again in {pause:.0f} s",
                                  pause_seconds=pause)
                continue
            except PacsUnavailable:
                return  # stopping
            run.stored(study_uid, outcome.completed, f"PACS {self.pacs.name}")
            return


def _run_pool(run: _Run, workers: int, items: Any, submit_work: Callable[[Any], Callable[[], None] | None]) -> None:
    """Plan each item in turn (``submit_work`` returns the work, or None) and run at most ``workers`` at once."""
    slots = threading.Semaphore(workers)
    futures: list[Future[None]] = []

    def guarded(work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool:
        try:
            for item in items:
                work = submit_work(item)
                if work is None:
                    continue
                while not slots.acquire(timeout=POLL_SECONDS):
                    run.poll()
                futures.append(pool.submit(guarded, work))
            run.wait_all(futures)
        except BaseException:
            run.stopping.set()
            raise


def run_backfill(cfg: Config, pacs_name: str, options: BackfillOptions, progress: Progress, *,
                 bundles: Sequence[Path] | None = None, classifier_loader: ClassifierLoader | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], datetime] = datetime.now) -> Summary:
    """``spectnode backfill``: find, skip, retrieve and classify the NM studies of one PACS.

    Raises:
        KeyError: If no ``pacs`` entry has that name.
        PacsRefused, PacsUnavailable: If the studies cannot be found at all.
        DataDirInUse: If another backfill or ``classify --send`` runs the pipeline on the data directory.
        PipelineError: If the in-process node cannot start (its port is taken ...).
    """
    pacs = {p.name: p for p in cfg.pacs}[pacs_name]
    algorithm = algorithm_of(cfg, bundles)
    client = PacsClient(pacs, cfg.node.ae_title)
    progress.start(f"backfill from {pacs.name}")
    pipeline: Pipeline | _ReadOnly
    if options.dry_run:
        pipeline = _ReadOnly(cfg)
    else:
        pipeline = Pipeline(cfg, listen=pacs.retrieve == "move", bundles=bundles,
                            classifier_loader=classifier_loader)
    try:
        run = _Run(pipeline, progress, algorithm)  # type: ignore[arg-type]
        work = _PacsWork(run, pacs, cfg.node.ae_title, clock=clock, sleep=sleep, now=now)
        studies = work.call(lambda: client.find_studies(since=options.since, until=options.until,
                                                        patient_id=options.patient_id, accession=options.accession),
                            "study query", attempts=pacs.max_attempts)
        progress.found(len(studies))
        planned = 0

        def submit(hit: Any) -> Callable[[], None] | None:
            nonlocal planned
            uid = hit.study_uid
            if options.limit is not None and planned >= options.limit:
                return None
            if not run.begin(uid, run.store_verdict(uid), options.dry_run):
                return None
            try:
                action, series = work.plan(uid)
            except PacsRefused as exc:
                progress.failed(uid, str(exc))
                return None
            if action == "pacs":
                if options.dry_run:
                    progress.planned(uid, "skip: current spectnode SR in the PACS", 0)
                progress.skipped(uid, "PACS")
                return None
            if action == "none":
                if options.dry_run:
                    progress.planned(uid, f"not assessable: {NO_WHOLE_BODY_SERIES}", 0)
                progress.not_assessable(uid, NO_WHOLE_BODY_SERIES)
                return None
            planned += 1
            if options.dry_run:
                progress.planned(uid, f"retrieve by C-{pacs.retrieve.upper()} and classify", len(series))
                return None
            return lambda: work.retrieve(uid, series)

        _run_pool(run, pacs.max_parallel_retrieves, studies, submit)
        if options.limit is not None:
            progress.set_total(progress.summary.finished)
    finally:
        pipeline.close()
    return progress.finish()


class _ReadOnly:
    """The pipeline of a dry run: the job store, read only; nothing is stored or processed."""

    def __init__(self, cfg: Config) -> None:
        data_dir = DataDir(cfg.storage.data_dir)
        data_dir.create()
        self.store = JobStore(data_dir.database)
        self.receive = None

    def close(self) -> None:
        self.store.close()


def group_files_by_study(paths: list[Path]) -> tuple[dict[str, list[tuple[Path, str]]], int]:
    """DICOM files by StudyInstanceUID, with their transfer syntax; and how many files are not DICOM files."""
    studies: dict[str, list[tuple[Path, str]]] = {}
    unreadable = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            syntax = str(ds.file_meta.TransferSyntaxUID)
            uid = str(ds.StudyInstanceUID).strip()
        except Exception:  # noqa: BLE001 - anything that is not a DICOM file with a study is counted, not fatal
            unreadable += 1
            continue
        studies.setdefault(uid, []).append((path, syntax))
    return studies, unreadable


def run_folder(cfg: Config, paths: list[Path], progress: Progress, *, bundles: Sequence[Path] | None = None,
               classifier_loader: ClassifierLoader | None = None) -> Summary:
    """``spectnode classify DIR --send``: the studies of files on disk through the same batch path.

    Raises:
        DataDirInUse: If another backfill or ``classify --send`` runs the pipeline on the data directory.
        PipelineError: If the in-process node cannot start (its port is taken ...).
    """
    algorithm = algorithm_of(cfg, bundles)
    studies, unreadable = group_files_by_study(paths)
    progress.start(f"classify {len(paths)} file(s)")
    if unreadable:
        progress.note(f"{unreadable} file(s) are not DICOM files with a StudyInstanceUID; left out",
                      files=unreadable)
    pipeline = Pipeline(cfg, listen=False, command="classify --send", bundles=bundles,
                        classifier_loader=classifier_loader)
    try:
        run = _Run(pipeline, progress, algorithm)
        progress.found(len(studies))

        def submit(uid: str) -> Callable[[], None] | None:
            if not run.begin(uid, run.store_verdict(uid), False):
                return None

            def work() -> None:
                failures = []
                for path, syntax in studies[uid]:
                    status = pipeline.receive.store_object(path.read_bytes(), syntax, FILES_PEER)
                    if status != STATUS_SUCCESS:
                        failures.append(f"0x{status:04X}")
                if failures:
                    progress.note(f"{len(failures)} file(s) of a study were refused ({', '.join(failures)})",
                                  study_uid=uid)
                run.stored(uid, len(studies[uid]) - len(failures), "the folder")

            return work

        _run_pool(run, 1, sorted(studies), submit)
    finally:
        pipeline.close()
    return progress.finish()
