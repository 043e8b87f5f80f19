"""The running node: the receive, assemble, process and dispatch stages wired together.

Data flows one way::

    StorageSCP --spool + store--> Assembler --complete--> classify --> report --outbox--> dispatch

Each stage runs in its own thread and shares nothing with the others but the
job store (and the outbox tables in the same SQLite file). A stage learns of
work by looking at the store: a wake-up event only shortens the wait. So a
node that is killed at any moment resumes every unfinished study where it
stopped when it starts again:

* ``received``: the assembler checks it again (and the idle timeout runs on);
* ``complete``: it is classified;
* ``classified``, or ``not_assessable`` with its SR pending: it is reported;
* ``reported``: the outbox goes on delivering (an item that was being sent is
  due again at start-up) and the study becomes ``dispatched`` when every item
  is delivered.

An exception in the classify or report stage puts the study in ``error``
with the message (``spectnode status`` shows it, ``spectnode retry`` resumes
it); it is never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from spectnode.assemble import Assembler
from spectnode.config import Config
from spectnode.node.stages import classify_study, enqueue_for_destinations, report_study
from spectnode.net.server import policy_from_config
from spectnode.receive import StorageSCP
from spectnode.store import (
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    END_STATES,
    NOT_ASSESSABLE,
    REPORTED,
    JobStore,
    StudyRecord,
)

__all__ = ["Node", "node_paths"]

_log = logging.getLogger("spectnode.node")

#: Longest a stage sleeps before looking at the store again (work queued by
#: ``spectnode retry`` in another process is seen within this time).
POLL_SECONDS: Final = 0.5


def node_paths(data_dir: Path) -> dict[str, Path]:
    """The node's files under ``storage.data_dir``.

    ``db`` (job store and outbox), ``spool`` (received objects), ``work``
    (heatmaps between classify and report), ``results`` (SR/SC per study).
    """
    data_dir = Path(data_dir)
    return {
        "db": data_dir / "spectnode.sqlite",
        "spool": data_dir / "spool",
        "work": data_dir / "work",
        "results": data_dir / "results",
    }


class _Stage(threading.Thread):
    """A loop that runs ``step`` until stopped, sleeping ``POLL_SECONDS`` or until woken."""

    def __init__(self, name: str, step: Callable[[], bool], stopping: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.step = step
        self.stopping = stopping
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                busy = self.step()
            except Exception:  # noqa: BLE001 - a stage loop must survive anything and try again
                _log.exception("%s stage: unexpected error; retrying in %g s", self.name, POLL_SECONDS)
                busy = False
            if not busy:
                self.wake.wait(POLL_SECONDS)


class Node:
    """A spectnode DICOM node.

    Args:
        cfg: The validated configuration.
        bundle: Model bundle to use instead of ``cfg.model.bundle`` (None:
            the configured one, or the shipped default).
        port: Listening port instead of ``cfg.node.port`` (0: a free port;
            see :attr:`port` after :meth:`start`).
        classifier_loader: Loads the classifier from a bundle path (tests and
            tools may pass their own; default ``StudyClassifier.from_bundle``).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        bundle: Path | None = None,
        port: int | None = None,
        classifier_loader: Callable[[Path | None], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.paths = node_paths(cfg.storage.data_dir)
        self.bundle = bundle if bundle is not None else cfg.model.bundle
        self._port = cfg.node.port if port is None else port
        self._classifier_loader = classifier_loader
        self._classifier: Any = None
        self._algorithm: Any = None
        self._preload_tried = False
        self._stopping = threading.Event()
        self._stages: list[_Stage] = []
        self.store: JobStore | None = None
        self.outbox: Any = None
        self.scp: StorageSCP | None = None
        self.assembler: Assembler | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the store, resume unfinished work and start listening.

        Raises:
            spectnode.store.StoreError: If the job store (or its outbox
                table) cannot be opened.
            OSError: If the port cannot be bound.
        """
        from spectnode.dispatch import Outbox

        for name in ("spool", "work", "results"):
            self.paths[name].mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.paths["db"])
        dispatch = self.cfg.dispatch
        self.outbox = Outbox(self.paths["db"], max_attempts=dispatch.max_attempts,
                             base_delay_s=dispatch.retry_base_seconds, max_delay_s=dispatch.retry_max_seconds)
        results = self.paths["results"].resolve()
        for name, dest in self._destinations().items():
            if dest.type == "folder" and dest.path is not None and Path(dest.path).resolve() == results:
                _log.warning("folder destination %r is the results folder %s itself: delivering to it copies "
                             "each file onto itself; point it at another folder", name, results)
        resumed = self.outbox.recover_interrupted()
        unfinished = {state: n for state, n in self.store.counts_by_state().items() if n and state not in END_STATES}
        if unfinished or resumed:
            _log.info("resuming unfinished work: %s%s",
                      ", ".join(f"{n} {state}" for state, n in unfinished.items()) or "no studies",
                      f"; {resumed} outbox item(s) interrupted while sending" if resumed else "")
        self.assembler = Assembler(self.store, self.cfg.completion.timeout_seconds)
        assemble = _Stage("assemble", self._assemble_step, self._stopping)
        process = _Stage("process", self._process_step, self._stopping)
        dispatch_stage = _Stage("dispatch", self._dispatch_step, self._stopping)
        self._stages = [assemble, process, dispatch_stage]
        self._wake_process = process.wake
        self._wake_dispatch = dispatch_stage.wake
        node = self.cfg.node
        self.scp = StorageSCP(
            self.store, self.paths["spool"], ae_title=node.ae_title, bind_address=node.bind_address,
            port=self._port, allowed_calling_ae_titles=node.allowed_calling_ae_titles,
            on_stored=lambda _study: assemble.wake.set(),
            policy=policy_from_config(node), max_object_bytes=node.max_object_bytes,
        )
        for stage in self._stages:
            stage.start()
        self.scp.start()

    @property
    def port(self) -> int:
        """The port the SCP listens on."""
        return self.scp.port if self.scp is not None else self._port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let each stage finish its current step, close the store."""
        if self.scp is not None:
            self.scp.stop()
        self._stopping.set()
        for stage in self._stages:
            stage.wake.set()
        deadline = time.monotonic() + timeout
        busy = []
        for stage in self._stages:
            stage.join(max(0.0, deadline - time.monotonic()))
            if stage.is_alive():
                busy.append(stage.name)
        if busy:
            # Their threads still use the store's and the outbox's connections:
            # closing those under them would fail their step half-way. They are
            # daemon threads, so they end with the process; SQLite rolls back a
            # transaction they leave open, and their studies resume at the next start.
            _log.warning("%s stage(s) still busy at shutdown; their connections are left open and their "
                         "studies resume at the next start", ", ".join(busy))
            return
        if self.outbox is not None:
            self.outbox.close()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------- stages

    def _assemble_step(self) -> bool:
        assert self.assembler is not None
        if self.assembler.run_once():
            self._wake_process.set()
        return False

    def _load_classifier(self) -> Any:
        if self._classifier is None:
            from spectnode.report import AlgorithmInfo

            loader = self._classifier_loader
            if loader is None:
                from spectnode.classify import StudyClassifier

                loader = StudyClassifier.from_bundle
            started = time.monotonic()
            classifier = loader(self.bundle)
            self._algorithm = AlgorithmInfo.from_card(classifier.card)
            self._classifier = classifier
            _log.info("model %s %s (%s) loaded in %.1f s", classifier.card.name, classifier.card.version,
                      classifier.card.architecture, time.monotonic() - started)
        return self._classifier

    def _fail(self, study: StudyRecord, stage: str, exc: BaseException) -> None:
        assert self.store is not None
        message = f"{stage} failed: {type(exc).__name__}: {exc}"
        _log.error("study %s from %s: %s\n%s", study.study_uid, study.calling_ae, message,
                   "".join(traceback.format_exception(exc)).rstrip(),
                   extra={"study_uid": study.study_uid, "calling_ae": study.calling_ae})
        self.store.fail(study.study_uid, study.generation, study.state, message)

    def _process_step(self) -> bool:
        """Report one classified study, else classify one complete study; True if it did.

        Reporting goes first so that each study's result leaves as soon as it
        is known instead of after every queued study has been classified.
        """
        assert self.store is not None
        if not self._preload_tried:
            # Load the model before the first study needs it (TensorFlow takes seconds
            # to start); a failure is logged here and reported on each study.
            self._preload_tried = True
            try:
                self._load_classifier()
            except Exception as exc:  # noqa: BLE001 - the studies will carry the error
                _log.error("the model cannot be loaded from %s: %s: %s", self.bundle or "the shipped default bundle",
                           type(exc).__name__, exc)
        to_report = self.store.studies([CLASSIFIED]) + [
            s for s in self.store.studies([NOT_ASSESSABLE]) if s.report_pending
        ]
        if to_report:
            study = to_report[0]
            try:
                self._load_classifier()
                enqueue = enqueue_for_destinations(self.outbox, self.cfg.destinations)
                report_study(self.store, study, self._algorithm, self.paths["work"], self.paths["results"], enqueue)
            except Exception as exc:  # noqa: BLE001 - recorded as the study's visible error
                self._fail(study, "report", exc)
            self._wake_dispatch.set()
            return True
        to_classify = self.store.studies([COMPLETE])
        if to_classify:
            study = to_classify[0]
            try:
                classify_study(self.store, study, self._load_classifier(), self.paths["work"],
                               self.cfg.report.not_assessable_sr)
            except Exception as exc:  # noqa: BLE001 - recorded as the study's visible error
                self._fail(study, "classify", exc)
            return True
        return False

    def _destinations(self) -> dict[str, Any]:
        from spectnode.dispatch import destinations_by_name

        return destinations_by_name(self.cfg)

    def _current_generation(self, study_uid: str) -> int | None:
        assert self.store is not None
        study = self.store.study(study_uid)
        return study.generation if study is not None else None

    def _dispatch_step(self) -> bool:
        assert self.store is not None
        tried = self.outbox.deliver_due(self._destinations(), self.cfg.node.ae_title,
                                        current_generation=self._current_generation)
        for study in self.store.studies([REPORTED]):
            if self.outbox.study_delivered(study.study_uid, study.generation):
                if self.store.advance(study.study_uid, study.generation, REPORTED, DISPATCHED,
                                      "every output delivered"):
                    _log.info("study %s from %s: dispatched to every destination", study.study_uid,
                              study.calling_ae, extra={"study_uid": study.study_uid, "calling_ae": study.calling_ae})
        return bool(tried)

    # ----------------------------------------------------------------- helpers

    def wait_until_settled(self, study_uids: list[str], timeout: float) -> dict[str, StudyRecord]:
        """Wait until every study is in an end state (and any SR of a
        not-assessable study is queued); returns their records.

        Raises:
            TimeoutError: With the states reached, if ``timeout`` passes first.
        """
        assert self.store is not None
        deadline = time.monotonic() + timeout
        while True:
            records = {uid: self.store.study(uid) for uid in study_uids}
            if all(r is not None and r.state in END_STATES and not r.report_pending for r in records.values()):
                return records  # type: ignore[return-value]
            if time.monotonic() > deadline:
                states = {uid: (r.state if r else "not received") for uid, r in records.items()}
                raise TimeoutError(f"studies not finished after {timeout:g} s: {states}")
            time.sleep(0.2)

