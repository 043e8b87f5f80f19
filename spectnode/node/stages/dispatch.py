"""Stage 5, dispatch: the outbox's items to their destinations; ``reported`` -> ``dispatched``.

The outbox (:class:`spectnode.store.Outbox`) is only the durable queue; the
delivery policy is here:

* **retry with exponential backoff**: after the n-th failed attempt an item
  waits ``min(base * 2^(n-1), max)`` seconds (:class:`RetryPolicy`); after
  ``max_attempts`` failures, or at once for a failure that trying again
  cannot cure (a missing file, a peer that takes no such object, a
  destination no longer configured), it is a dead letter until ``spectnode
  retry``;
* **unreachable destinations**: when a destination cannot be reached at all
  (connection refused, timed out, association rejected), the other due
  items for it in the same pass are not tried: they fail with the same
  reason and back off together; and until that backoff is over, items that
  become due for it meanwhile are left alone, not even claimed, so one
  unreachable destination does not hold up the others pass after pass. An
  item an operator retried is tried at once;
* **parallel sends**: up to ``parallel_sends`` items are on their way at
  once, each on its own association (a PACS answers a C-STORE only once it
  has stored the object). A destination that rejects an association "for
  now" (A-ASSOCIATE-RJ transient: its limit of associations) while others
  of ours are open, or just after one was delivered, is sent one fewer at
  once, at least one, and one more again after :data:`RAISE_LIMIT_AFTER`
  deliveries in a row; the item goes back with no attempt counted;
* **superseded results**: an item of an older generation of its study than
  the store's current one is superseded, never sent;
* **storage commitment** (``storage_commitment: true`` on a ``dicom`` or
  ``sender`` destination): after the C-STOREs the stage asks the peer to
  commit the item's objects (N-ACTION, a fresh Transaction UID, recorded on
  the item before it goes out) and the item is ``awaiting_commitment``; it
  is delivered only when the peer's N-EVENT-REPORT confirms every object
  (:func:`record_commitment_report`, on the association of the request or,
  through the receive stage, on one the peer opens). A report that fails
  any object, or none within ``commitment_timeout_seconds``, counts as a
  failed attempt: the item is sent again under the same backoff and limit;
* a study whose current generation has every item delivered becomes
  ``dispatched``.

Sending is :func:`spectnode.dispatch.send_files` (a library that knows
nothing of the store), or another function with its signature.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from pydicom.uid import generate_uid

from spectnode.dispatch.commitment import STATUS_SUCCESS, CommitmentReport, CommitmentRequest, sop_references
from spectnode.dispatch.senders import DispatchError, send_files
from spectnode.errors import exception_name
from spectnode.node.datadir import DataDir
from spectnode.node.diskspace import DiskSpace, is_disk_full, unguarded
from spectnode.node.stages import study_log_extra
from spectnode.store import DEFAULT_CLAIM_TIMEOUT_S, DISPATCHED, REPORTED, JobStore, Outbox, OutboxItem

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from spectnode.config import DestinationConfig
    from spectnode.node.datadir import DataDir
    from spectnode.peer import Peer

__all__ = ["SAME_ASSOCIATION_REPORT_SECONDS", "DispatchStage", "RetryPolicy", "SendFunction",
           "record_commitment_report"]

_log = logging.getLogger("spectnode.dispatch")

#: A transient association rejection of a request made this soon after a delivery of ours to the
#: peer is taken for the peer still counting it; such an item goes back, due again after
#: BUSY_RETRY_SECONDS. Measured to when we asked, not to when the answer was read: on a loaded
#: machine the answer can be read seconds after the peer decided.
BUSY_GRACE_SECONDS: Final = 2.0
BUSY_RETRY_SECONDS: Final = 1.0
#: Rejections for now of one item in a row taken for ours; the next counts as an attempt, so that a
#: peer busy with other callers, while ours keep getting through, cannot keep an item from ever
#: becoming a dead letter.
BUSY_EXCUSES_PER_ATTEMPT: Final = 5
#: Whether a rejection for now was ours (see :meth:`DispatchStage._fewer_at_once`).
BusyVerdict = Literal["ours", "ours too often", "not ours"]
#: Deliveries in a row after which a destination sent fewer at once may take one more again.
RAISE_LIMIT_AFTER: Final = 20

#: After a Storage Commitment request, the association stays open this long for a report on
#: it (PS3.4 J.3.3 allows it there); a peer that reports later opens an association of its own.
SAME_ASSOCIATION_REPORT_SECONDS: Final = 1.0


class SendFunction(Protocol):
    """Delivers files to one destination now, or raises :class:`~spectnode.dispatch.DispatchError`.

    ``commitment`` is passed only for a destination with ``storage_commitment``
    (so a function without the parameter serves every other destination).
    """

    def __call__(self, destination: DestinationConfig, files: Sequence[Path], *, calling_ae_title: str,
                 sender: Peer | None = None, timeout: float = 30,
                 commitment: CommitmentRequest | None = None) -> object: ...


def record_commitment_report(outbox: Outbox, report: CommitmentReport, peer: Peer, now: float, *,
                             same_association: bool = False) -> int:
    """Apply one storage commitment report to the outbox item it answers; returns the status to answer.

    Every object of the item committed: the item is delivered, with the
    report as its acknowledgement. Otherwise the failure is recorded on the
    item, and the dispatch stage sends it again (:meth:`DispatchStage.settle_commitments`).
    A report for a transaction no item awaits (one that timed out and was sent
    again, or never this node's) changes nothing and is answered Success too:
    refusing it would only make the peer send it again.
    """
    who = {"calling_ae": peer.ae_title}
    uid = report.transaction_uid
    item = outbox.committing(uid)
    if item is None or item.commitment_uid is None:
        _log.warning("storage commitment report from %s@%s for transaction %s, which no outbox item awaits "
                     "(it timed out and was sent again, or is not this node's): ignored", peer.ae_title,
                     peer.address, uid, extra=who)
        return STATUS_SUCCESS
    problem = report.problem(item.commitment_references)
    where = "on the association of the request" if same_association else "on an association of its own"
    extra = {**who, "study_uid": item.study_uid}
    if problem is None:
        acknowledgement = (f"{len(item.files)} file(s) stored by C-STORE and committed: N-EVENT-REPORT event type "
                           f"{report.event_type} from {peer.ae_title}@{peer.address} {where}, transaction {uid}")
        if outbox.commitment_confirmed(item.id, uid, acknowledgement, now=now):
            _log.info("outbox item %d delivered: %s of %s to %s (%s)", item.id, item.kind, item.study_uid,
                      item.destination, acknowledgement, extra=extra)
    elif outbox.commitment_refused(item.id, uid, f"{problem} (from {peer.ae_title}@{peer.address})", now=now):
        _log.warning("outbox item %d (%s to %s): %s; it is sent again", item.id, item.kind, item.destination,
                     problem, extra=extra)
    return STATUS_SUCCESS


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when it is given up.

    Attributes:
        max_attempts: Failed attempts after which an item is a dead letter
            (``dispatch.max_attempts``).
        base_delay_s: Wait after the first failure; it doubles with every
            further failure (``dispatch.retry_base_seconds``) ...
        max_delay_s: ... up to this cap (``dispatch.retry_max_seconds``).
        claim_timeout_s: An item left in ``sending`` this long (its worker
            died mid-send while the node kept running) is due again.
    """

    max_attempts: int = 8
    base_delay_s: float = 5.0
    max_delay_s: float = 600.0
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError(f"need 0 <= base_delay_s <= max_delay_s, got {self.base_delay_s}, {self.max_delay_s}")
        if self.claim_timeout_s <= 0:
            raise ValueError(f"claim_timeout_s must be positive, got {self.claim_timeout_s}")

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure: ``min(base · 2^(attempts-1), max)``."""
        return float(min(self.base_delay_s * 2 ** max(attempts - 1, 0), self.max_delay_s))


def _acknowledgement(dest: DestinationConfig, item: OutboxItem) -> str:
    """What the destination answered for a delivered item, for the audit trail.

    :func:`~spectnode.dispatch.send_files` returns only when every file was
    taken: each C-STORE answered Success (or a Warning), or each copy written and fsynced.
    """
    count = f"{len(item.files)} file(s)"
    if dest.type == "folder":
        return f"{count} written and fsynced to {dest.path}"
    if dest.type == "sender" and item.sender is not None:
        peer = f"{dest.ae_title or item.sender.ae_title}@{item.sender.address}:{dest.port}"
    else:
        peer = f"{dest.ae_title}@{dest.host}:{dest.port}"
    return f"{count} acknowledged by {peer} with C-STORE status Success or Warning"


class DispatchStage:
    """Delivers due outbox items and marks fully delivered studies ``dispatched``.

    Args:
        store: The job store (and its outbox).
        data_dir: The data directory (outputs are found through the store).
        destinations: Destinations by name (:func:`spectnode.dispatch.destinations_by_name`);
            an item whose destination is missing is dead-lettered.
        calling_ae_title: This node's AE title.
        policy: Retries and backoff.
        send: Delivers one item's files (default :func:`spectnode.dispatch.send_files`).
        timeout: Network timeout passed to ``send``.
        disk: The data directory's free space: a folder delivery that fails for
            want of space is tried again without counting as an attempt.
        on_delivered: Called with the destination and the item after each
            delivery (the audit trail); exceptions in it are logged only.
        parallel_sends: Items on their way at once, each in a thread and on
            an association of its own (``dispatch.parallel_sends``).
        stopping: Once set (the node stops), a pass claims no more items; the
            ones on their way are finished.

    The stage's clock is the job store's (``store.clock``).
    """

    name = "dispatch"

    def __init__(
        self,
        store: JobStore,
        data_dir: DataDir,
        destinations: Mapping[str, DestinationConfig],
        calling_ae_title: str,
        *,
        policy: RetryPolicy | None = None,
        send: SendFunction = send_files,
        timeout: float = 30.0,
        disk: DiskSpace | None = None,
        on_delivered: Callable[[DestinationConfig, OutboxItem], None] | None = None,
        parallel_sends: int = 1,
        stopping: threading.Event | None = None,
    ) -> None:
        self.stopping = stopping
        if parallel_sends < 1:
            raise ValueError(f"parallel_sends must be at least 1, not {parallel_sends}")
        self.parallel_sends = parallel_sends
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._in_flight: Counter[str] = Counter()  # items on their way, by destination
        # Destinations that rejected an association "for now" while others of ours were open
        # (a PACS or modality that takes only so many at once), and how many they took.
        self._most_at_once: dict[str, int] = {}
        self._took_in_a_row: Counter[str] = Counter()
        self._last_done: dict[str, float] = {}  # monotonic time of the destination's last delivery
        self._excused: Counter[int] = Counter()  # item id -> rejections for now in a row not counted
        self.disk = disk if disk is not None else unguarded(data_dir.root)
        self.on_delivered = on_delivered
        self.store = store
        self.outbox = store.outbox
        self.data_dir = data_dir
        self.destinations = dict(destinations)
        self.calling_ae_title = calling_ae_title
        self.policy = policy or RetryPolicy()
        self.send = send
        self.timeout = timeout
        self.clock = store.clock
        # Destinations found unreachable, and until when their items are left alone.
        self._unreachable_until: dict[str, float] = {}

    def step(self) -> bool:
        """One delivery pass, the storage commitments refused or overdue, then the studies finished;
        True if any item was tried or sent back."""
        tried = self.deliver_due()
        settled = self.settle_commitments()
        self.finish_delivered()
        return bool(tried or settled)

    # ------------------------------------------------------------------ policy

    def _current_generation(self, study_uid: str) -> int | None:
        study = self.store.study(study_uid)
        return study.generation if study is not None else None

    def supersede_outdated(self) -> int:
        """Supersede every pending or dead item whose study has a later generation now; returns how many."""
        superseded = 0
        currents: dict[str, int | None] = {}
        now = self.clock()
        for item in self.outbox.list_items(["pending", "dead"]):
            if item.study_uid not in currents:
                currents[item.study_uid] = self._current_generation(item.study_uid)
            current = currents[item.study_uid]
            if current is not None and item.generation < current:
                superseded += self._supersede(item, current, now)
        return superseded

    def _supersede(self, item: OutboxItem, current: int, now: float) -> bool:
        moved = self.outbox.supersede(item.id, current, now=now)
        if moved:
            _log.info("outbox item %d (%s of %s, generation %d, to %s) not sent: the study is at generation %d now",
                      item.id, item.kind, item.study_uid, item.generation, item.destination, current)
        return moved

    def _record_failure(self, item: OutboxItem, reason: str, retryable: bool) -> None:
        attempts = item.attempts + 1
        now = self.clock()
        if not retryable:
            if self.outbox.dead(item.id, attempts, f"not retryable: {reason}", now=now):
                _log.error("outbox item %d (%s to %s) dead: %s", item.id, item.kind, item.destination, reason)
            else:
                self._settled_meanwhile(item, reason)
            return
        if attempts >= self.policy.max_attempts:
            if self.outbox.dead(item.id, attempts, f"gave up after {attempts} attempts: {reason}", now=now):
                _log.error("outbox item %d (%s to %s) dead after %d attempts: %s",
                           item.id, item.kind, item.destination, attempts, reason)
            else:
                self._settled_meanwhile(item, reason)
            return
        delay = self.policy.backoff_delay(attempts)
        if self.outbox.failed(item.id, attempts, now + delay, reason, now=now):
            _log.warning("outbox item %d (%s to %s) attempt %d/%d failed, next in %g s: %s",
                         item.id, item.kind, item.destination, attempts, self.policy.max_attempts, delay, reason)
        else:
            self._settled_meanwhile(item, reason)

    def _settled_meanwhile(self, item: OutboxItem, reason: str) -> None:
        """A failed attempt of an item that is no longer ``sending`` changes nothing: say why."""
        current = self.outbox.get(item.id)
        _log.info("outbox item %d (%s to %s): the attempt failed (%s), but the item is %s meanwhile (a storage "
                  "commitment report, or another worker); left as it is", item.id, item.kind, item.destination,
                  reason, current.state if current is not None else "gone")

    def _deliver(self, item: OutboxItem, unreachable: dict[str, str]) -> None:
        """Send one claimed item and record what happened."""
        excused = False
        try:
            excused = self._send_and_record(item, unreachable)
        finally:
            if not excused:  # any other outcome ends the item's run of rejections taken for ours
                with self._lock:
                    self._excused.pop(item.id, None)

    def _send_and_record(self, item: OutboxItem, unreachable: dict[str, str]) -> bool:
        """:meth:`_deliver`; True if the item was rejected for now and that was taken for ours."""
        dest = self.destinations.get(item.destination)
        if dest is None:
            known = ", ".join(sorted(self.destinations)) or "none"
            reason = f"destination {item.destination!r} is not in the configuration (configured: {known})"
            _log.error("outbox item %d dead: %s", item.id, reason)
            if not self.outbox.dead(item.id, item.attempts, reason, now=self.clock()):
                self._settled_meanwhile(item, reason)
            return False
        with self._lock:
            known_unreachable = unreachable.get(item.destination)
        if known_unreachable is not None:
            self._record_failure(item, known_unreachable, retryable=True)
            return False
        commitment = None
        asked_at = time.monotonic()  # unless the sender tells when it asked for the association
        try:
            if dest.storage_commitment:
                commitment = self._begin_commitment(item)
                asked_at = time.monotonic()
                self.send(dest, item.files, calling_ae_title=self.calling_ae_title, sender=item.sender,
                          timeout=self.timeout, commitment=commitment)
            else:
                self.send(dest, item.files, calling_ae_title=self.calling_ae_title, sender=item.sender,
                          timeout=self.timeout)
        except DispatchError as exc:
            if exc.rejected_for_now:
                verdict = self._fewer_at_once(item, exc.reason, exc.asked_at if exc.asked_at is not None else asked_at)
                if verdict == "ours":
                    return True
                if verdict == "ours too often":  # ours get through: only this item's attempt counts
                    self._record_failure(item, exc.reason, exc.retryable)
                    return False
            if is_disk_full(exc):  # a full disk is no fault of the item: not an attempt towards a dead letter
                self.disk.write_failed(self.name, exc, item.study_uid)
                if not self.outbox.failed(item.id, item.attempts, self.clock() + self.disk.retry_seconds,
                                          f"waiting for disk space: {exc.reason}", now=self.clock()):
                    self._settled_meanwhile(item, exc.reason)
                return False
            self._record_failure(item, exc.reason, exc.retryable)
            retry_at = (self.outbox.get(item.id) or item).next_attempt_at
            with self._lock:
                if exc.peer_unreachable:
                    unreachable[item.destination] = exc.reason
                    self._unreachable_until[item.destination] = retry_at
                elif item.destination not in unreachable:  # a sender's refusal meanwhile stands
                    self._unreachable_until.pop(item.destination, None)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the stage; keep the item retrying
            _log.exception("outbox item %d: unexpected error while sending", item.id)
            self._record_failure(item, f"unexpected error: {exception_name(exc)}", retryable=True)
        else:
            if commitment is not None:
                self._await_commitment(item, dest, commitment)
            else:
                acknowledgement = _acknowledgement(dest, item)
                if self.outbox.delivered(item.id, now=self.clock(), acknowledgement=acknowledgement):
                    _log.info("outbox item %d delivered: %s of %s to %s (%s)", item.id, item.kind, item.study_uid,
                              item.destination, acknowledgement)
                else:  # taken over by another worker after the claim timeout
                    _log.info("outbox item %d (%s of %s to %s): sent (%s), but no longer this worker's to record",
                              item.id, item.kind, item.study_uid, item.destination, acknowledgement)
            self.disk.write_succeeded(self.name)
            self._took_one(item.destination)
            with self._lock:  # it took this one: the destination is reachable again
                unreachable.pop(item.destination, None)
                self._unreachable_until.pop(item.destination, None)
            if self.on_delivered is not None:
                try:
                    self.on_delivered(dest, item)
                except Exception:  # noqa: BLE001 - delivered is delivered; the audit is best effort
                    _log.exception("outbox item %d: on_delivered callback failed", item.id)
        return False

    # ------------------------------------------------------------------ storage commitment

    def _begin_commitment(self, item: OutboxItem) -> CommitmentRequest:
        """A fresh storage commitment transaction for a claimed item, committed to the store before it is used.

        Raises:
            DispatchError: (not retryable) if a file of the item cannot be read.
        """
        references = sop_references(item.files)
        uid = generate_uid(prefix=None)  # 2.25.<UUID>: unique without a registered root
        self.outbox.begin_commitment(item.id, uid, references, now=self.clock())

        def settled() -> bool:
            current = self.outbox.get(item.id)
            return (current is None or current.state != "sending" or current.commitment_uid != uid
                    or current.commitment_failure is not None)

        def on_report(report: CommitmentReport, peer: Peer) -> int:
            return record_commitment_report(self.outbox, report, peer, self.clock(), same_association=True)

        return CommitmentRequest(uid, references, on_report=on_report, settled=settled,
                                 wait_seconds=min(SAME_ASSOCIATION_REPORT_SECONDS, self.timeout))

    def _await_commitment(self, item: OutboxItem, dest: DestinationConfig, commitment: CommitmentRequest) -> None:
        """The peer stored the files and took the request: the item waits for the report (unless it came)."""
        now = self.clock()
        deadline = now + dest.commitment_timeout_seconds
        if self.outbox.await_commitment(item.id, commitment.transaction_uid, deadline, now=now):
            _log.info("outbox item %d: %s of %s stored at %s; awaiting its storage commitment (transaction %s) "
                      "for up to %g s", item.id, item.kind, item.study_uid, item.destination,
                      commitment.transaction_uid, dest.commitment_timeout_seconds)

    def settle_commitments(self) -> int:
        """Send again every item whose storage commitment was refused or is overdue; returns how many.

        Each counts as a failed attempt under the retry policy.
        """
        now = self.clock()
        settled = 0
        for item in self.outbox.list_items(["awaiting_commitment"]):
            uid = item.commitment_uid
            overdue = item.commitment_deadline is not None and item.commitment_deadline <= now
            if uid is None or (item.commitment_failure is None and not overdue):
                continue
            if not self.outbox.end_commitment(item.id, uid, now=now):
                continue  # its report came meanwhile
            dest = self.destinations.get(item.destination)
            waited = f" within {dest.commitment_timeout_seconds:g} s" if dest is not None else ""
            reason = item.commitment_failure or (
                f"no storage commitment report (N-EVENT-REPORT) for transaction {uid}{waited}")
            self._record_failure(item, reason, retryable=True)
            settled += 1
        return settled

    def deliver_due(self) -> list[OutboxItem]:
        """Try every due item once and return the items tried, in their new state.

        Each item is claimed first (:meth:`spectnode.store.Outbox.claim`), so
        concurrent workers (threads or processes) never send one item twice.
        Up to ``parallel_sends`` items are on their way at once (fewer to a
        destination that rejected an association for now while others were
        open); an item is claimed only when a sender is free for it. An error
        of the store ends the pass once the items on their way are done, and
        is raised.
        """
        self.supersede_outdated()
        self._forget_settled_excuses()
        unreachable: dict[str, str] = {}
        claimed: list[OutboxItem] = []
        senders: list[threading.Thread] = []
        errors: list[BaseException] = []

        def deliver(item: OutboxItem) -> None:
            try:
                self._deliver(item, unreachable)
            except BaseException as exc:  # noqa: BLE001 - raised by the pass, after the others
                errors.append(exc)
            finally:
                self._release(item.destination)

        try:
            for item in self.outbox.due(self.clock(), claim_timeout_s=self.policy.claim_timeout_s):
                with self._slot_freed:
                    while not self._stopped() and sum(self._in_flight.values()) >= self.parallel_sends:
                        self._slot_freed.wait(0.5)
                    if self._stopped():
                        break
                    if self._in_flight[item.destination] >= self._limit(item.destination):
                        continue  # its destination takes no more at once: the next pass, not a wait here
                    self._in_flight[item.destination] += 1
                if errors:
                    self._release(item.destination)
                    break
                try:
                    mine = self._claim_to_send(item, unreachable, self.clock())
                except BaseException:
                    self._release(item.destination)
                    raise
                if not mine:
                    self._release(item.destination)
                    continue
                claimed.append(item)
                if self.parallel_sends == 1:
                    deliver(item)
                    continue
                sender = threading.Thread(target=deliver, args=(item,), name=f"dispatch-item-{item.id}", daemon=True)
                try:
                    sender.start()
                except RuntimeError:  # no thread to be had
                    self._release(item.destination)
                    self.outbox.failed(item.id, item.attempts, self.clock(), "not sent: no thread to send it",
                                       now=self.clock())
                    raise
                senders.append(sender)
        finally:
            for sender in senders:
                sender.join()
        if errors:
            raise errors[0]
        return [updated for item in claimed if (updated := self.outbox.get(item.id)) is not None]

    def _forget_settled_excuses(self) -> None:
        """Drop the counts of rejections for now of items settled meanwhile (another worker, superseded)."""
        with self._lock:
            counted = list(self._excused)
        for item_id in counted:
            current = self.outbox.get(item_id)
            if current is None or current.state != "pending":
                with self._lock:
                    self._excused.pop(item_id, None)

    def _stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def _limit(self, destination: str) -> int:
        """How many items ``destination`` may have on their way at once (called holding the lock)."""
        return self._most_at_once.get(destination, self.parallel_sends)

    def _release(self, destination: str) -> None:
        with self._slot_freed:
            self._in_flight[destination] -= 1
            self._slot_freed.notify_all()

    def _took_one(self, destination: str) -> None:
        """A delivery went through: after :data:`RAISE_LIMIT_AFTER` in a row, allow one more at once again."""
        with self._lock:
            self._last_done[destination] = time.monotonic()
            if destination not in self._most_at_once:
                return
            self._took_in_a_row[destination] += 1
            if self._took_in_a_row[destination] >= RAISE_LIMIT_AFTER:
                self._took_in_a_row[destination] = 0
                self._most_at_once[destination] += 1
                if self._most_at_once[destination] >= self.parallel_sends:
                    del self._most_at_once[destination]

    def _fewer_at_once(self, item: OutboxItem, reason: str, asked_at: float) -> BusyVerdict:
        """After a rejection "for now" of the association asked for at ``asked_at`` (monotonic): if
        other items of ours for the destination were on their way, or one had been delivered less
        than :data:`BUSY_GRACE_SECONDS` before we asked or while we waited for the answer (a peer counts
        an association until it has torn it down), the peer is at its limit of associations. It is
        sent one fewer at once from now on (at least one), and this item goes back, due in
        :data:`BUSY_RETRY_SECONDS`, with no attempt counted: ``"ours"``. After
        :data:`BUSY_EXCUSES_PER_ATTEMPT` such rejections of the item in a row, ``"ours too often"``:
        the item's attempt counts, but the destination is not taken for unreachable. ``"not ours"``:
        an ordinary failed attempt. (Each process keeps its own count: bounded all the same.)"""
        with self._lock:
            others = self._in_flight[item.destination] - 1
            just_done = self._last_done.get(item.destination, -math.inf) > asked_at - BUSY_GRACE_SECONDS
            if others < 1 and not just_done:
                return "not ours"
            if self._excused[item.id] >= BUSY_EXCUSES_PER_ATTEMPT:
                return "ours too often"
            self._excused[item.id] += 1
            limit = self._most_at_once[item.destination] = max(1, self._limit(item.destination) - 1)
            self._took_in_a_row[item.destination] = 0
        _log.warning("destination %s rejected an association for now with %d other(s) of ours open or just "
                     "closed: sending it at most %d at once (%s)", item.destination, max(others, 0), limit, reason)
        now = self.clock()
        if not self.outbox.failed(item.id, item.attempts, now + BUSY_RETRY_SECONDS,
                                  f"sent again, fewer at once: {reason}", now=now):
            self._settled_meanwhile(item, reason)  # its count goes at the next pass
        return "ours"

    def _claim_to_send(self, item: OutboxItem, unreachable: Mapping[str, str], now: float) -> bool:
        """Claim a due item for sending now; False if it is not to be sent in this pass."""
        with self._lock:
            backing_off = (item.destination not in unreachable
                           and self._unreachable_until.get(item.destination, now) > now)
        if backing_off and not item.retry_requested:
            return False  # its destination is backing off (an operator's retry is tried at once)
        current = self._current_generation(item.study_uid)
        if current is not None and item.generation < current:
            self._supersede(item, current, now)
            return False
        return self.outbox.claim(item.id, now, claim_timeout_s=self.policy.claim_timeout_s)

    def finish_delivered(self) -> int:
        """Move every ``reported`` study whose current outputs are all delivered to ``dispatched``."""
        finished = 0
        for study in self.store.studies([REPORTED]):
            if self.outbox.study_delivered(study.study_uid, study.generation) and self.store.advance(
                    study.study_uid, study.generation, REPORTED, DISPATCHED, "every output delivered"):
                finished += 1
                _log.info("study %s from %s: dispatched to every destination", study.study_uid,
                          study.calling_ae, extra=study_log_extra(study))
        return finished
