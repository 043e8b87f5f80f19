"""What ``spectnode status`` shows: the studies by state and the outbox, built in one place.

:func:`status_report` reads the job store into the dict that ``status
--json`` prints; :func:`format_status` renders that dict (and the outbox
items) as text for a person. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from spectnode.node.datadir import DataDir
from spectnode.store import (
    ERROR,
    ITEM_STATES,
    NOT_ASSESSABLE,
    STATES,
    UNDELIVERED_STATES,
    JobStore,
    OutboxItem,
    StudyRecord,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from spectnode.config import Config

__all__ = ["format_outbox_status", "format_status", "format_study_audit", "read_status", "status_report", "study_audit"]

# `status` lists at most this many finished (dispatched) studies, newest first.
_MAX_FINISHED_SHOWN: Final = 20


def _study_json(study: StudyRecord, outputs: Sequence[Any], dead_items: Sequence[OutboxItem]) -> dict[str, Any]:
    result = study.result
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
        "outcome": result.outcome if result else None,
        # The first model's class, for a one-line summary; every model's result is in "models".
        "label": result.label if result else None,
        "second_label": result.primary.second_label if result and result.primary else None,
        "probabilities": result.probabilities if result else None,
        "views": result.views if result else None,
        "inferred_views": result.inferred_views if result else None,
        "models": [m.to_json() for m in result.models] if result else [],
        "skipped_models": dict(result.skipped_models) if result else {},
        "outputs": [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid, "path": str(o.path)} for o in outputs],
        # Dead outbox items of the study's current result: why it is not delivered.
        "dispatch_failed": [{"item": i.id, "destination": i.destination, "kind": i.kind,
                             "reason": i.last_error} for i in dead_items],
    }


def _item_json(item: OutboxItem) -> dict[str, Any]:
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


def read_status(cfg: Config) -> tuple[dict[str, Any], list[OutboxItem]]:
    """The status report (:func:`status_report`), and the outbox items not yet delivered (for the text).

    Raises:
        StoreError: If the job store cannot be read.
    """
    db = DataDir(cfg.storage.data_dir).database
    report: dict[str, Any] = {
        "data_dir": str(cfg.storage.data_dir),
        "job_store": str(db),
        "counts": dict.fromkeys(STATES, 0),
        "studies": [],
        "outbox": {"counts": dict.fromkeys(ITEM_STATES, 0), "items": [], "dead_letters": []},
    }
    if not db.exists():
        return report, []
    with JobStore(db) as store:
        outbox = store.outbox
        waiting = outbox.list_items(UNDELIVERED_STATES)
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
    return report, sorted(waiting + dead, key=lambda item: item.id)


def status_report(cfg: Config) -> dict[str, Any]:
    """Everything ``spectnode status --json`` prints, as a dict.

    Keys: ``data_dir``, ``job_store`` (path), ``counts`` (studies per state),
    ``studies`` (one object per study, oldest first; ``dispatch_failed``
    lists the dead outbox items of its current result), ``outbox`` with
    ``counts`` per item state, ``items`` (pending or being sent) and
    ``dead_letters`` (given up on; each item is in one list only).

    Raises:
        StoreError: If the job store cannot be read.
    """
    return read_status(cfg)[0]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _study_line(study: dict[str, Any], now: float) -> list[str]:
    if study["models"] and study["state"] not in (ERROR,):
        several = len(study["models"]) > 1
        what = "; ".join((f"{m['model']}: " if several else "")
                         + f"{m['label']} ({m['probabilities'].get(m['label'], 0.0):.2f})"
                         + (" OUTSIDE TRAINING DOMAIN" if m.get("outside_domain") else "")
                         for m in study["models"])
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


def format_status(report: Mapping[str, Any], items: Sequence[OutboxItem], cfg: Config,
                  now: float | None = None) -> str:
    """The text of ``spectnode status``: the studies (errors first), then the outbox."""
    now = time.time() if now is None else now
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



def _relative_time(seconds: float) -> str:
    if seconds <= 0:
        return "due now"
    if seconds < 120:
        return f"in {seconds:.0f} s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


def format_outbox_status(
    items: Sequence[OutboxItem],
    *,
    now: float | None = None,
    max_attempts: int | None = None,
    show_delivered: bool = False,
    counts: Mapping[str, int] | None = None,
) -> str:
    """Text for ``spectnode status``: a summary line, then one block per undelivered item.

    Example::

        outbox: 1 pending (1 retrying), 0 sending, 4 delivered, 1 dead
        ID  STATE     DESTINATION  KIND  ATTEMPTS  NEXT TRY  STUDY
        7   retrying  pacs         sr    2/8       in 35 s   1.2.826.0.1.3680043.8.498.1
            connection refused by 127.0.0.1:4242 (nothing listens there)
        9   dead      pacs         sc    8/8       -         1.2.826.0.1.3680043.8.498.2
            gave up after 8 attempts: association rejected by ...
        dead items can be sent again with: spectnode retry ID | STUDY_UID | --all

    Superseded items (results of an older generation of their study, never
    to be sent) are counted when there are any, not listed.

    Args:
        items: Items to show, e.g. ``outbox.list_items()``.
        now: Epoch seconds for "next try" (default: the current time).
        max_attempts: Shown as the denominator of ATTEMPTS when given.
        show_delivered: List delivered items too, not only count them.
        counts: Items per state for the summary line (``Outbox.counts()``),
            when ``items`` are not all the items (e.g. undelivered ones only);
            by default ``items`` are counted.
    """
    now = time.time() if now is None else now
    if counts is None:
        counts = dict.fromkeys(ITEM_STATES, 0)
        for item in items:
            counts[item.state] = counts.get(item.state, 0) + 1
    retrying = sum(1 for item in items if item.retrying)
    lines = [
        f"outbox: {counts.get('pending', 0)} pending ({retrying} retrying), {counts.get('sending', 0)} sending, "
        + (f"{counts['awaiting_commitment']} awaiting commitment, " if counts.get("awaiting_commitment") else "")
        + f"{counts.get('delivered', 0)} delivered, {counts.get('dead', 0)} dead"
        + (f", {counts['superseded']} superseded" if counts.get("superseded") else "")
    ]
    shown = [item for item in items
             if item.state != "superseded" and (show_delivered or item.state != "delivered")]
    if not shown:
        return lines[0]

    def state_of(item: OutboxItem) -> str:
        return "retrying" if item.retrying else item.state

    def next_try(item: OutboxItem) -> str:
        return _relative_time(item.next_attempt_at - now) if item.state == "pending" else "-"

    def attempts(item: OutboxItem) -> str:
        return f"{item.attempts}/{max_attempts}" if max_attempts else str(item.attempts)

    header = ("ID", "STATE", "DESTINATION", "KIND", "ATTEMPTS", "NEXT TRY", "STUDY")
    rows = [
        (str(i.id), state_of(i), i.destination, i.kind, attempts(i), next_try(i), i.study_uid) for i in shown
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header) - 1)]

    def render(row: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1]

    lines.append(render(header))
    indent = " " * (widths[0] + 2)
    for item, row in zip(shown, rows):
        lines.append(render(row))
        if item.last_error and item.state != "delivered":
            lines.append(indent + item.last_error)
    if any(item.state == "dead" for item in shown):
        lines.append("dead items can be sent again with: spectnode retry ID | STUDY_UID | --all")
    return "\n".join(lines)


# ------------------------------------------------------------ one study's audit trail


def study_audit(store: JobStore, study_uid: str) -> dict[str, Any] | None:
    """The audit trail of one study (``spectnode status STUDY_UID``), or None if the store never saw it.

    Keys: ``study`` (state, generation, reason, result, ``purged_at``), ``received`` (every
    C-STORE answered for it: time, calling AE title, address and port, called AE title, SOP
    Instance UID, status and what the node did), ``history`` (each stage's outcome, in order,
    with its time and the seconds since the previous step), ``outputs`` (the SR and SC made)
    and ``deliveries`` (each outbox item: destination, state, attempts, when it was queued and
    delivered, and the destination's acknowledgement or the last error).
    """
    study = store.study(study_uid)
    if study is None:
        return None
    events = store.events(study_uid)
    history = []
    previous = study.first_received
    for at, state, message in events:
        history.append({"at": at, "state": state, "message": message, "seconds": round(at - previous, 3)})
        previous = at
    result = study.result
    return {
        "study": {"study_uid": study.study_uid, "state": study.state, "generation": study.generation,
                  "reason": study.reason, "outcome": result.outcome if result else None,
                  "label": result.label if result else None, "purged_at": study.purged_at},
        "received": [{"at": r.at, "calling_ae": r.calling_ae, "address": r.peer_address, "port": r.peer_port,
                      "called_ae": r.called_ae, "sop_instance_uid": r.sop_instance_uid, "status": r.status,
                      "outcome": r.outcome} for r in store.receipts(study_uid)],
        "history": history,
        "outputs": [{"kind": o.kind, "generation": o.generation, "sop_instance_uid": o.sop_instance_uid,
                     "path": str(o.path), "current": o.is_current}
                    for o in store.outputs(study_uid, current_only=False)],
        "deliveries": [{"item": i.id, "generation": i.generation, "destination": i.destination, "kind": i.kind,
                        "state": i.state, "attempts": i.attempts, "queued_at": i.created_at,
                        "delivered_at": i.delivered_at, "acknowledgement": i.acknowledgement,
                        "last_error": i.last_error} for i in store.outbox.list_items(study_uid=study_uid)],
    }


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}"


def format_study_audit(audit: Mapping[str, Any]) -> str:
    """The text of ``spectnode status STUDY_UID``; every value from the network is escaped onto one line."""
    from spectnode.node.logs import escape_control_characters as esc

    study = audit["study"]
    lines = [f"study {esc(study['study_uid'])}: {study['state']} (generation {study['generation']})"
             + (f", {study['label']}" if study["label"] else "")
             + (f"; {esc(study['reason'])}" if study["reason"] else "")]
    if study["purged_at"] is not None:
        lines.append(f"files removed by the retention policy at {_when(study['purged_at'])}")
    lines.append("received:")
    for r in audit["received"]:
        lines.append(f"  {_when(r['at'])}  from {esc(r['calling_ae'] or '?')}@{r['address']}:{r['port']} "
                     f"(to {esc(r['called_ae'] or '?')})  {esc(r['sop_instance_uid'] or '?')}  "
                     f"status 0x{r['status']:04X}: {esc(r['outcome'])}")
    lines.append("stages:")
    for h in audit["history"]:
        lines.append(f"  {_when(h['at'])}  +{h['seconds']:.3f} s  {h['state']}: {esc(h['message'])}")
    if audit["outputs"]:
        lines.append("outputs:")
        for o in audit["outputs"]:
            lines.append(f"  {o['kind']} {o['sop_instance_uid']} (generation {o['generation']}"
                         f"{', current' if o['current'] else ''}) {o['path']}")
    lines.append("deliveries:")
    for d in audit["deliveries"]:
        answer = d["acknowledgement"] if d["state"] == "delivered" else (d["last_error"] or "")
        lines.append(f"  item {d['item']}: {d['kind']} to {d['destination']}: {d['state']} after "
                     f"{d['attempts']} failed attempt(s); queued {_when(d['queued_at'])}, delivered "
                     f"{_when(d['delivered_at'])}" + (f"; {esc(answer)}" if answer else ""))
    if not audit["deliveries"]:
        lines.append("  none")
    return "\n".join(lines)
