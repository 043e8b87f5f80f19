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
import time
from pathlib import Path
from typing import Any, TextIO

from spectnode.config import Config
from spectnode.node.worker import Node, node_paths
from spectnode.store import ERROR, NOT_ASSESSABLE, STATES, JobStore, StoreError, StudyRecord

__all__ = ["serve", "status", "retry", "demo", "status_report"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_log = logging.getLogger("spectnode.node")

# `status` lists at most this many finished (dispatched) studies, newest first.
_MAX_FINISHED_SHOWN = 20


def _verify_bundle(cfg: Config, out: TextIO) -> bool:
    from spectnode.bundle import BundleError, verify_bundle
    from spectnode.classify import DEFAULT_BUNDLE

    path = cfg.model.bundle or DEFAULT_BUNDLE
    try:
        verify_bundle(path)
    except BundleError as exc:
        where = "model.bundle" if cfg.model.bundle else "the shipped default model (model.bundle: null)"
        print(f"spectnode: {where}: {exc}", file=out)
        return False
    return True


def serve(cfg: Config) -> int:
    """Run the node until SIGTERM or SIGINT (``spectnode serve``).

    Logs go where ``cfg.logging`` says. The model bundle is verified before
    anything listens (exit 2 if it does not verify); a port that cannot be
    bound or a job store (or its outbox table) that cannot be opened exits 1
    with the reason on stderr (and in the log). On SIGTERM/SIGINT the
    listener stops, each stage finishes its current step, and the exit code
    is 0; anything unfinished resumes at the next start.
    """
    from spectnode import RESEARCH_USE_NOTICE
    from spectnode.node.logs import configure_logging

    configure_logging(cfg.logging)
    if not _verify_bundle(cfg, sys.stderr):
        return EXIT_USAGE
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        _log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    node = Node(cfg)
    try:
        try:
            node.start()
        except (OSError, StoreError, sqlite3.Error) as exc:
            _log.error("cannot start: %s", exc)
            if cfg.logging.file is not None:  # the log file is not where a person starting it looks
                print(f"spectnode serve: cannot start: {exc}", file=sys.stderr)
            node.stop(timeout=5)
            return EXIT_FAILURE
        _log.info("spectnode node %s ready on %s:%d, data in %s. %s", cfg.node.ae_title, cfg.node.bind_address,
                  node.port, cfg.storage.data_dir, RESEARCH_USE_NOTICE)
        while not stop.wait(1.0):
            pass
        node.stop()
        _log.info("stopped")
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------- status


def _study_json(study: StudyRecord, outputs: list[Any], dead_items: list[Any]) -> dict[str, Any]:
    result = study.result or {}
    return {
        "study_uid": study.study_uid,
        "state": study.state,
        "generation": study.generation,
        "reason": study.reason,
        "error_stage": study.error_stage,
        "report_pending": study.report_pending,
        "calling_ae": study.calling_ae,
        "peer_address": study.peer_address,
        "instances": study.instance_count,
        "first_received": study.first_received,
        "last_received": study.last_received,
        "updated_at": study.updated_at,
        "completed_by": study.completed_by,
        "outcome": result.get("outcome"),
        "label": result.get("label"),
        "second_label": result.get("second_label"),
        "probabilities": result.get("probabilities"),
        "views": result.get("views"),
        "outputs": [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid, "path": str(o.path)} for o in outputs],
        # Dead outbox items of the study's current result: why it is not delivered.
        "dispatch_failed": [{"item": i.id, "destination": i.destination, "kind": i.kind,
                             "reason": i.last_error} for i in dead_items],
    }


def _item_json(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "study_uid": item.study_uid,
        "generation": item.generation,
        "destination": item.destination,
        "kind": item.kind,
        "state": item.state,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at,
        "last_error": item.last_error,
        "files": [str(p) for p in item.files],
    }


def _read_status(cfg: Config) -> tuple[dict[str, Any], list[Any]]:
    """The status report, and the outbox items not yet delivered (for the text)."""
    from spectnode.dispatch import ITEM_STATES, Outbox

    db = node_paths(cfg.storage.data_dir)["db"]
    report: dict[str, Any] = {
        "data_dir": str(cfg.storage.data_dir),
        "job_store": str(db),
        "counts": dict.fromkeys(STATES, 0),
        "studies": [],
        "outbox": {"counts": dict.fromkeys(ITEM_STATES, 0), "items": [], "dead_letters": []},
    }
    if not db.exists():
        return report, []
    store = JobStore(db)
    try:
        outbox = Outbox(db)
    except StoreError:
        store.close()
        raise
    try:
        waiting = outbox.list_items(["pending", "sending"])
        dead = outbox.dead_letters()
        dead_by_result: dict[tuple[str, int], list[Any]] = {}
        for item in dead:
            dead_by_result.setdefault((item.study_uid, item.generation), []).append(item)
        report["counts"] = store.counts_by_state()
        report["studies"] = [_study_json(s, store.outputs(s.study_uid),
                                         dead_by_result.get((s.study_uid, s.generation), []))
                             for s in store.studies()]
        report["outbox"] = {
            "counts": outbox.counts(),
            "items": [_item_json(i) for i in waiting],
            "dead_letters": [_item_json(i) for i in dead],
        }
    finally:
        outbox.close()
        store.close()
    return report, sorted(waiting + dead, key=lambda item: item.id)


def status_report(cfg: Config) -> dict[str, Any]:
    """Everything ``spectnode status --json`` prints, as a dict.

    Keys: ``data_dir``, ``job_store`` (path), ``counts`` (studies per state),
    ``studies`` (one object per study, oldest first; ``dispatch_failed``
    lists the dead outbox items of its current result), ``outbox`` with
    ``counts`` per item state, ``items`` (pending or being sent) and
    ``dead_letters`` (given up on; each item is in one list only).

    Raises:
        StoreError: If the job store or its outbox table cannot be read.
    """
    return _read_status(cfg)[0]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _study_line(study: dict[str, Any], now: float) -> list[str]:
    if study["label"] and study["state"] not in (ERROR,):
        probs = study["probabilities"] or {}
        what = f"{study['label']} ({probs.get(study['label'], 0.0):.2f})"
    elif study["state"] == "received":
        what = f"{study['instances']} object(s), waiting for both views"
    else:
        what = ""
    if study["reason"]:
        what = (what + "; " if what else "") + study["reason"]
    if study["state"] == ERROR and study["error_stage"]:
        what += f" [retry returns it to {study['error_stage']}]"
    if study["state"] == NOT_ASSESSABLE and study["report_pending"]:
        what += " [SR pending]"
    for failed in study.get("dispatch_failed") or []:
        what = (what + "; " if what else "") + (f"dispatch failed: {failed['kind']} to {failed['destination']}: "
                                                f"{failed['reason']} [outbox item {failed['item']}]")
    return [study["state"], _age(now - study["updated_at"]), study["calling_ae"] or "-", study["study_uid"], what]


def _format_status(report: dict[str, Any], items: list[Any], cfg: Config) -> str:
    from spectnode.dispatch import format_outbox_status

    now = time.time()
    counts = report["counts"]
    lines = [f"job store: {report['job_store']}"]
    lines.append("studies: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    order = {state: i for i, state in enumerate((ERROR, *[s for s in STATES if s != ERROR]))}
    studies = sorted(report["studies"], key=lambda s: (order[s["state"]], -s["updated_at"]))
    finished = [s for s in studies if s["state"] == "dispatched"]
    shown = [s for s in studies if s["state"] != "dispatched"] + finished[:_MAX_FINISHED_SHOWN]
    if shown:
        rows = [["STATE", "UPDATED", "CALLING AE", "STUDY", "RESULT / REASON"]] + [_study_line(s, now) for s in shown]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for row in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row[:4], widths)) + "  " + row[4])
    if len(finished) > _MAX_FINISHED_SHOWN:
        lines.append(f"... and {len(finished) - _MAX_FINISHED_SHOWN} more dispatched studies (see --json)")
    if counts.get(ERROR):
        lines.append("studies in error can be processed again with: spectnode retry STUDY_UID (or --all)")
    lines.append(format_outbox_status(items, now=now, max_attempts=cfg.dispatch.max_attempts,
                                      counts=report["outbox"]["counts"]))
    return "\n".join(lines)


def status(cfg: Config, json: bool = False) -> int:
    """Print studies by state and the outbox, dead letters with their reasons
    (``spectnode status [--json]``). Works while the node runs."""
    try:
        report, items = _read_status(cfg)
    except StoreError as exc:
        print(f"spectnode status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if json:
        print(jsonlib.dumps(report, indent=1))
        return EXIT_OK
    if not Path(report["job_store"]).exists():
        print(f"no job store at {report['job_store']}: no node has run with data directory {report['data_dir']}")
        return EXIT_OK
    print(_format_status(report, items, cfg))
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
    from spectnode.dispatch import Outbox

    db = node_paths(cfg.storage.data_dir)["db"]
    if not db.exists():
        print(f"spectnode retry: no job store at {db}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        store = JobStore(db)
    except StoreError as exc:
        print(f"spectnode retry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        outbox = Outbox(db)
    except StoreError as exc:
        store.close()
        print(f"spectnode retry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
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
        outbox.close()
        store.close()


# ------------------------------------------------------------------------- demo


def demo(workdir: Path | None = None, *, bundle: Path | None = None, timeout_s: float = 300.0) -> int:
    """Run the demonstration (``spectnode demo``); see :func:`spectnode.node.demo.run_demo`."""
    from spectnode.node.demo import run_demo

    return run_demo(workdir, bundle=bundle, timeout_s=timeout_s)

