"""What ``spectnode serve``, ``status``, ``retry`` and ``demo`` do.

Each function takes already-validated arguments, prints for a person (or
JSON), and returns the process exit code: 0 success, 1 runtime failure,
2 bad configuration (e.g. a model bundle that does not verify).
"""

from __future__ import annotations

import json as jsonlib
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from spectnode.node.datadir import DataDir, DataDirInUse
from spectnode.node.status import format_status, read_status
from spectnode.store import ERROR, JobStore, StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spectnode.config import Config

__all__ = ["serve", "status", "purge", "retry", "demo"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_log = logging.getLogger("spectnode.node")


def _verify_bundles(cfg: Config, out: TextIO) -> bool:
    from spectnode.bundle import BundleError, verify_bundle
    from spectnode.classify import bundle_paths

    for i, path in enumerate(bundle_paths(cfg.model.bundles)):
        try:
            verify_bundle(path)
        except BundleError as exc:
            where = f"model.bundles[{i}]" if cfg.model.bundles else "a shipped default model (model.bundles: null)"
            print(f"spectnode: {where}: {exc}", file=out)
            return False
    return True


def serve(cfg: Config) -> int:
    """Run the node until SIGTERM or SIGINT (``spectnode serve``).

    Logs go where ``cfg.logging`` says. The model bundle is verified before
    anything listens (exit 2 if it does not verify); a port that cannot be
    bound, a job store (or its outbox table) that cannot be opened, or a data
    directory that another spectnode process runs the pipeline on (its lock,
    :meth:`~spectnode.node.datadir.DataDir.lock`, held for as long as the node
    runs) exits 1 with the reason on stderr (and in the log). On SIGTERM/SIGINT the
    listener stops accepting at once, associations in flight may finish
    within ``node.shutdown_grace_seconds`` (then they are aborted), each stage
    finishes its current step, and the exit code is 0; anything unfinished
    resumes at the next start.
    """
    from spectnode import RESEARCH_USE_NOTICE
    from spectnode.node.logs import configure_logging
    from spectnode.node.worker import Node

    configure_logging(cfg.logging)
    if not _verify_bundles(cfg, sys.stderr):
        return EXIT_USAGE
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        _log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    def cannot_start(exc: Exception) -> int:
        _log.error("cannot start: %s", exc)
        if cfg.logging.file is not None:  # the log file is not where a person starting it looks
            print(f"spectnode serve: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    try:
        lock = DataDir(cfg.storage.data_dir).lock("serve")
    except (DataDirInUse, OSError) as exc:
        return cannot_start(exc)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    node = Node(cfg)
    try:
        try:
            node.start()
        except (OSError, StoreError, sqlite3.Error) as exc:
            node.stop(timeout=5)
            return cannot_start(exc)
        _log.info("spectnode node %s ready on %s:%d, data in %s. %s", cfg.node.ae_title, cfg.node.bind_address,
                  node.port, cfg.storage.data_dir, RESEARCH_USE_NOTICE)
        while not stop.wait(1.0):
            pass
        node.stop(grace_seconds=cfg.node.shutdown_grace_seconds)
        _log.info("stopped")
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()


def status(cfg: Config, json: bool = False, study_uid: str | None = None) -> int:
    """Print studies by state and the outbox, dead letters with their reasons
    (``spectnode status [--json]``), or one study's audit trail (``spectnode status STUDY_UID``:
    :func:`spectnode.node.status.study_audit`; exit 1 if the store does not know it).
    Works while the node runs."""
    if study_uid is not None:
        return _study_status(cfg, study_uid.strip(), json)
    try:
        report, items = read_status(cfg)
    except StoreError as exc:
        print(f"spectnode status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if json:
        print(jsonlib.dumps(report, indent=1))
        return EXIT_OK
    if not Path(report["job_store"]).exists():
        print(f"no job store at {report['job_store']}: no node has run with data directory {report['data_dir']}")
        return EXIT_OK
    print(format_status(report, items, cfg))
    return EXIT_OK


def _study_status(cfg: Config, study_uid: str, json: bool) -> int:
    from spectnode.node.status import format_study_audit, study_audit

    db = DataDir(cfg.storage.data_dir).database
    if not db.exists():
        print(f"spectnode status: no job store at {db}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with JobStore(db) as store:
            audit = study_audit(store, study_uid)
    except StoreError as exc:
        print(f"spectnode status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if audit is None:
        print(f"spectnode status: the job store has no study {study_uid}", file=sys.stderr)
        return EXIT_FAILURE
    print(jsonlib.dumps(audit, indent=1) if json else format_study_audit(audit))
    return EXIT_OK


def purge(cfg: Config, dry_run: bool = False, json: bool = False) -> int:
    """Apply the retention policy once (``spectnode purge [--dry-run]``); see :mod:`spectnode.node.retention`."""
    from spectnode.node.retention import RetentionPolicy

    data_dir = DataDir(cfg.storage.data_dir)
    if not data_dir.database.exists():
        print(f"spectnode purge: no job store at {data_dir.database}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with JobStore(data_dir.database) as store:
            plan = RetentionPolicy(store, data_dir, cfg.retention.keep_seconds, cfg.retention.max_bytes).run(dry_run)
    except (StoreError, sqlite3.Error, OSError) as exc:
        print(f"spectnode purge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if json:
        print(jsonlib.dumps({"dry_run": plan.dry_run, "usage_before": plan.usage_before,
                             "usage_after": plan.usage_after,
                             "studies": [vars(s) for s in plan.studies]}, indent=1))
        return EXIT_OK
    verb = "would remove" if dry_run else "removed"
    for entry in plan.studies:
        print(f"{verb} {entry.study_uid}: {entry.bytes} bytes ({entry.why})")
    print(f"{verb} the files of {len(plan.studies)} finished stud{'y' if len(plan.studies) == 1 else 'ies'}; "
          f"spool, work and results: {plan.usage_before} bytes before, {plan.usage_after} "
          f"{'estimated ' if dry_run else ''}after")
    return EXIT_OK


# ------------------------------------------------------------------------ retry


def retry(cfg: Config, item_or_study: str | None) -> int:
    """Re-queue failed work (``spectnode retry [ID | STUDY_UID | --all]``).

    Args:
        item_or_study: An outbox item id (digits only): that item is sent
            again. A StudyInstanceUID: the study, if in ``error``, returns to
            the stage that failed, and its dead or waiting outbox items are
            due now. None (``--all``): every study in ``error`` and every dead
            or waiting item.

    Returns:
        0 if something was re-queued (or, for ``--all``, if there was nothing
        to do), 1 if the id or study has nothing to retry.
    """
    db = DataDir(cfg.storage.data_dir).database
    if not db.exists():
        print(f"spectnode retry: no job store at {db}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        store = JobStore(db)
    except StoreError as exc:
        print(f"spectnode retry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    outbox = store.outbox
    try:
        if item_or_study is None:
            studies = [s.study_uid for s in store.studies([ERROR]) if store.retry_study(s.study_uid)]
            items = outbox.retry()
            print(f"re-queued {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} in error and "
                  f"{items} outbox item(s)")
            return EXIT_OK
        target = item_or_study.strip()
        if target.isdigit():
            item = outbox.get(int(target))
            if item is None:
                print(f"spectnode retry: there is no outbox item {target}", file=sys.stderr)
                return EXIT_FAILURE
            if outbox.retry(item_id=int(target)):
                print(f"outbox item {target} ({item.kind} of {item.study_uid} to {item.destination}) is due now")
                return EXIT_OK
            print(f"spectnode retry: outbox item {target} is {item.state}, not dead or waiting; nothing to do",
                  file=sys.stderr)
            return EXIT_FAILURE
        study = store.study(target)
        if study is None:
            print(f"spectnode retry: no study {target} (and not an outbox item id)", file=sys.stderr)
            return EXIT_FAILURE
        stage = store.retry_study(target)
        items = outbox.retry(study_uid=target)
        if stage is None and not items:
            print(f"spectnode retry: study {target} is {study.state} and has no dead or waiting outbox item; "
                  "nothing to do", file=sys.stderr)
            return EXIT_FAILURE
        done = []
        if stage is not None:
            done.append(f"returned to {stage}")
        if items:
            done.append(f"{items} outbox item(s) due now")
        print(f"study {target}: {', '.join(done)}")
        return EXIT_OK
    finally:
        store.close()


# ------------------------------------------------------------------------- demo


def demo(workdir: Path | None = None, *, bundles: Sequence[Path] | None = None, timeout_s: float = 300.0) -> int:
    """Run the demonstration (``spectnode demo``); see :func:`spectnode.node.demo.run_demo`."""
    from spectnode.node.demo import run_demo

    return run_demo(workdir, bundles=bundles, timeout_s=timeout_s)

