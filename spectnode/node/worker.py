"""The running node: one thread per stage, wired around the job store.

Data flows one way::

    receive --spool + store--> assemble --complete--> classify --> report --outbox--> dispatch

The stages are :mod:`spectnode.node.stages`; this module only wires them to
threads. Each thread runs its stage's ``step()`` until it finds no work, then
sleeps until woken or for :data:`POLL_SECONDS`; a stage that did work wakes
the next one. A stage learns of work by looking at the store (a wake-up only
shortens the wait), so a node that is killed at any moment resumes every
unfinished study where it stopped when it starts again:

* ``received``: the assemble stage checks it again (and the idle timeout runs on);
* ``complete``: it is classified;
* ``classified``, or ``not_assessable`` with its SR pending: it is reported;
* ``reported``: the outbox goes on delivering (an item that was being sent is
  due again at start-up) and the study becomes ``dispatched`` when every item
  is delivered.

An exception in a stage's work on a study puts the study in ``error`` with
the message (``spectnode status`` shows it, ``spectnode retry`` resumes it);
it is never dropped. A write that fails for want of disk space is not such an
exception: the stage waits and tries again by itself
(:mod:`spectnode.node.diskspace`).

Besides the stages, the node runs the retention policy every
``retention.interval_seconds`` (:mod:`spectnode.node.retention`), when
``metrics.enabled`` the ``/metrics`` and ``/healthz`` endpoint
(:mod:`spectnode.node.metrics`), and when ``audit.enabled`` the DICOM audit
messages to syslog (:mod:`spectnode.audit`): application start and stop,
refused associations, studies received and results sent.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from spectnode.errors import exception_name
from spectnode.net.server import policy_from_config
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, is_disk_full
from spectnode.node.model import ClassifierLoader, NodeModels
from spectnode.node.retention import RetentionPolicy, remove_unrecorded_files, run_periodically
from spectnode.node.stages.assemble import AssembleStage
from spectnode.node.stages.classify import ClassifyStage
from spectnode.node.stages.dispatch import DispatchStage, RetryPolicy
from spectnode.node.stages.receive import ReceiveStage
from spectnode.node.stages.report import ReportStage
from spectnode.store import END_STATES, JobStore, StudyRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from spectnode.audit import NodeAudit
    from spectnode.config import Config
    from spectnode.node.metrics import MetricsServer, NodeMetrics
    from spectnode.node.stages import Stage

__all__ = ["POLL_SECONDS", "Node", "StageThread"]

_log = logging.getLogger("spectnode.node")

#: Longest a stage sleeps before looking at the store again (work queued by
#: ``spectnode retry`` in another process is seen within this time).
POLL_SECONDS: Final = 0.5


class StageThread(threading.Thread):
    """Runs a stage's ``step`` until stopped, sleeping ``POLL_SECONDS`` or until woken.

    Args:
        stage: The stage.
        stopping: Set to end the loop (after the current step).
        wake_next: Called after a step that did work (wakes the next stage).
        prepare: Called once in the thread before the first step.
        disk: Told of a step that raised for want of disk space (logged once, not as a traceback).
        observe: Called with the stage's name and the seconds of each step that did work (metrics).
    """

    def __init__(self, stage: Stage, stopping: threading.Event, wake_next: Callable[[], None] | None = None,
                 prepare: Callable[[], None] | None = None, disk: DiskSpace | None = None,
                 observe: Callable[[str, float], None] | None = None) -> None:
        super().__init__(name=stage.name, daemon=True)
        self.stage = stage
        self.stopping = stopping
        self.wake = threading.Event()
        self._wake_next = wake_next
        self._prepare = prepare
        self._disk = disk
        self._observe = observe
        #: True while the last step raised (``/healthz`` reports the stage as failing).
        self.failing = False

    def run(self) -> None:
        if self._prepare is not None:
            self._prepare()
        while not self.stopping.is_set():
            self.wake.clear()
            started = time.monotonic()
            try:
                busy = self.stage.step()
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - a stage loop must survive anything and try again
                if self._disk is not None and is_disk_full(exc):
                    self._disk.write_failed(self.name, exc)
                else:
                    _log.exception("%s stage: unexpected error; retrying in %g s", self.name, POLL_SECONDS)
                    self.failing = True
                busy = False
            if busy and self._observe is not None:
                self._observe(self.name, time.monotonic() - started)
            if busy and self._wake_next is not None:
                self._wake_next()
            if not busy:
                self.wake.wait(POLL_SECONDS)


class Node:
    """A spectnode DICOM node.

    Args:
        cfg: The validated configuration.
        bundles: Model bundles to use instead of ``cfg.model.bundles`` (None:
            the configured ones, or the shipped defaults).
        port: Listening port instead of ``cfg.node.port`` (0: a free port;
            see :attr:`port` after :meth:`start`).
        classifier_loader: Loads the classifier from a bundle path (tests and
            tools may pass their own; default ``StudyClassifier.from_bundle``).
        listen: Start the receive stage's listener; False runs the pipeline
            on objects stored by other means (``spectnode backfill`` by C-GET,
            ``classify --send``) through :attr:`receive`'s
            :meth:`~spectnode.node.stages.receive.ReceiveStage.handle_store`.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        bundles: Sequence[Path] | None = None,
        port: int | None = None,
        classifier_loader: ClassifierLoader | None = None,
        listen: bool = True,
    ) -> None:
        self.cfg = cfg
        self.data_dir = DataDir(cfg.storage.data_dir)
        self.models = NodeModels(bundles if bundles is not None else cfg.model.bundles, classifier_loader)
        self._port = cfg.node.port if port is None else port
        self._listen = listen
        self._stopping = threading.Event()
        self._stages: list[StageThread] = []
        self.store: JobStore | None = None
        self.receive: ReceiveStage | None = None
        self.disk = DiskSpace(self.data_dir.root, cfg.storage.min_free_bytes, cfg.storage.disk_retry_seconds)
        self.metrics: NodeMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self._retention: threading.Thread | None = None
        self.audit: NodeAudit | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the store, resume unfinished work and start listening.

        Raises:
            spectnode.store.StoreError: If the job store cannot be opened.
            OSError: If the port cannot be bound (or the audit's TLS files cannot be loaded).
        """
        from spectnode.audit import NodeAudit
        from spectnode.dispatch import destinations_by_name

        cfg = self.cfg
        self.audit = NodeAudit.from_config(cfg.audit, cfg.node.ae_title, cfg.logging.patient_data)
        self.data_dir.create()
        store = self.store = JobStore(self.data_dir.database)
        destinations = destinations_by_name(cfg)
        results = self.data_dir.results.resolve()
        for name, dest in destinations.items():
            if dest.type == "folder" and dest.path is not None and Path(dest.path).resolve() == results:
                _log.warning("folder destination %r is the results folder %s itself: delivering to it copies "
                             "each file onto itself; point it at another folder", name, results)
        try:
            remove_unrecorded_files(store, self.data_dir)  # before anything is received
        except Exception as exc:  # noqa: BLE001 - housekeeping must not keep the node from starting
            _log.warning("start-up: unrecorded files not looked for (%s)", exception_name(exc))
        resumed = store.outbox.recover_interrupted()
        unfinished = {state: n for state, n in store.counts_by_state().items() if n and state not in END_STATES}
        if unfinished or resumed:
            _log.info("resuming unfinished work: %s%s",
                      ", ".join(f"{n} {state}" for state, n in unfinished.items()) or "no studies",
                      f"; {resumed} outbox item(s) interrupted while sending" if resumed else "")
        policy = RetryPolicy(max_attempts=cfg.dispatch.max_attempts, base_delay_s=cfg.dispatch.retry_base_seconds,
                             max_delay_s=cfg.dispatch.retry_max_seconds)
        disk = self.disk
        observe = None
        if cfg.metrics.enabled:
            from spectnode.node.metrics import NodeMetrics

            self.metrics = NodeMetrics(store, disk, cfg.metrics.outbox_stuck_seconds,
                                       lambda: [t.name for t in self._stages if t.failing], store.clock,
                                       audit=self.audit.sender if self.audit is not None else None)
            observe = self.metrics.observe_stage
        audit = self.audit
        dispatch = StageThread(DispatchStage(store, self.data_dir, destinations, cfg.node.ae_title, policy=policy,
                                             parallel_sends=cfg.dispatch.parallel_sends, stopping=self._stopping,
                                             disk=disk, on_delivered=audit.instances_sent if audit else None),
                               self._stopping, disk=disk, observe=observe)
        report = StageThread(ReportStage(store, self.data_dir, self.models.algorithms, cfg.destinations, disk=disk),
                             self._stopping, wake_next=dispatch.wake.set, disk=disk, observe=observe)
        classify = StageThread(ClassifyStage(store, self.data_dir, self.models.classifiers,
                                             cfg.report.not_assessable_sr, disk=disk,
                                             log_patient_data=cfg.logging.patient_data),
                               self._stopping, wake_next=report.wake.set, prepare=self.models.preload, disk=disk,
                               observe=observe)
        assemble = StageThread(AssembleStage(store, self.data_dir, cfg.completion.timeout_seconds, disk=disk),
                               self._stopping, wake_next=classify.wake.set, disk=disk, observe=observe)
        self._stages = [assemble, classify, report, dispatch]
        node = cfg.node
        self.receive = ReceiveStage(
            store, self.data_dir, ae_title=node.ae_title, bind_address=node.bind_address,
            port=self._port, allowed_calling_ae_titles=node.allowed_calling_ae_titles,
            on_stored=lambda _study: assemble.wake.set(),
            policy=policy_from_config(node), max_object_bytes=node.max_object_bytes, disk=disk,
            on_answer=self.metrics.answered if self.metrics is not None else None,
            on_refused=self.metrics.refused_association if self.metrics is not None else None,
            log_patient_data=cfg.logging.patient_data, audit=audit,
        )
        retention = RetentionPolicy(store, self.data_dir, cfg.retention.keep_seconds, cfg.retention.max_bytes)
        self._retention = threading.Thread(
            target=run_periodically, name="retention", daemon=True,
            args=(retention, cfg.retention.interval_seconds, self._stopping.wait))
        for thread in self._stages:
            thread.start()
        self._retention.start()
        if self.metrics is not None:
            from spectnode.node.metrics import MetricsServer

            self.metrics_server = MetricsServer(self.metrics, cfg.metrics.bind_address, cfg.metrics.port)
            self.metrics_server.start()
        if audit is not None:  # before the listener, so that no refusal is reported before the start
            audit.application_started()
        if self._listen:
            self.receive.start()
        else:
            self.data_dir.spool.mkdir(parents=True, exist_ok=True)

    @property
    def port(self) -> int:
        """The port the SCP listens on."""
        return self.receive.port if self.receive is not None else self._port

    def stop(self, timeout: float = 30.0, grace_seconds: float = 0.0) -> None:
        """Stop listening (associations in flight may finish within ``grace_seconds``), let each stage
        finish its current step, close the store."""
        if self.receive is not None:
            self.receive.stop(grace_seconds)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._stopping.set()
        for thread in self._stages:
            thread.wake.set()
        deadline = time.monotonic() + timeout
        busy = []
        threads: list[threading.Thread] = [*self._stages, *([self._retention] if self._retention else [])]
        for running in threads:
            running.join(max(0.0, deadline - time.monotonic()))
            if running.is_alive():
                busy.append(running.name)
        if busy:
            # Their threads still use the store's connections: closing those
            # under them would fail their step half-way. They are daemon
            # threads, so they end with the process; SQLite rolls back a
            # transaction they leave open, and their studies resume at the next start.
            _log.warning("%s stage(s) still busy at shutdown; their connections are left open and their "
                         "studies resume at the next start", ", ".join(busy))
        if self.audit is not None:
            self.audit.application_stopped()
        if busy:
            return
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
            settled = {uid: r for uid, r in records.items()
                       if r is not None and r.state in END_STATES and not r.report_pending}
            if len(settled) == len(records):
                return settled
            if time.monotonic() > deadline:
                states = {uid: (r.state if r else "not received") for uid, r in records.items()}
                raise TimeoutError(f"studies not finished after {timeout:g} s: {states}")
            time.sleep(0.2)
