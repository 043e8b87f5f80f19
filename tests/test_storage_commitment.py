"""Storage Commitment per DICOM destination: delivered only once the PACS confirms it by N-EVENT-REPORT.

The peers are real: Orthanc on loopback (its storage commitment SCP answers on
an association of its own, to the AE title it finds in ``DicomModalities``),
a pynetdicom SCP that reports what a test tells it to (failures, nothing, on
the same association, later), the node's own receive stage listening for the
reports, and at the end a whole ``spectnode serve`` process.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from spectnode.config import ConfigError, DestinationConfig, parse_config
from spectnode.dispatch import CommitmentReport, DispatchError
from spectnode.dispatch.commitment import sop_references
from spectnode.node.datadir import DataDir
from spectnode.node.stages.dispatch import DispatchStage, RetryPolicy, record_commitment_report
from spectnode.node.stages.receive import ReceiveStage
from spectnode.peer import Peer
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import DISPATCHED, MIGRATIONS, JobStore

from nodetools import (
    FakeClock,
    NodeProcess,
    free_port,
    run_spectnode,
    storescu,
    tiny_bundle,
    wait_for,
    write_config,
    write_minimal_sr,
)
from orthanc import OrthancServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

NODE_AE = "SPECTNODE"
TIMEOUT_S = 30.0


def write_sr(path: Path) -> Path:
    """A minimal Comprehensive SR of a study of its own (what the node returns, reduced to what a PACS files by)."""
    return write_minimal_sr(path, generate_uid(), "COMMIT", "Commitment^Test")


def commitment_destination(name: str, ae_title: str, port: int, timeout_s: float = 60.0) -> DestinationConfig:
    return DestinationConfig(name=name, type="dicom", ae_title=ae_title, host="127.0.0.1", port=port,
                             storage_commitment=True, commitment_timeout_seconds=timeout_s)


class Node:
    """The receive and dispatch stages of a node in this process, on one job store, the SCP on a free port."""

    def __init__(self, root: Path, clock: Callable[[], float] | None = None, port: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(root / "jobs.sqlite", **({"clock": clock} if clock is not None else {}))
        self.receive = ReceiveStage(self.store, DataDir(root), ae_title=NODE_AE, port=port)
        self.receive.start()
        self.dispatch = DispatchStage(self.store, DataDir(root), {}, NODE_AE,
                                      policy=RetryPolicy(max_attempts=5, base_delay_s=10, max_delay_s=10), timeout=10)

    def send_to(self, destination: DestinationConfig) -> Node:
        """Make ``destination`` the dispatch stage's only one (known once the peer is up)."""
        self.dispatch.destinations = {destination.name: destination}
        return self

    @property
    def port(self) -> int:
        return self.receive.port

    def queue(self, files: list[Path]) -> int:
        (name,) = self.dispatch.destinations
        return self.store.outbox.enqueue(str(pydicom.dcmread(files[0]).StudyInstanceUID), name, "sr", files)

    def close(self) -> None:
        self.receive.stop()
        self.store.close()


@pytest.fixture()
def sr(tmp_path: Path) -> Path:
    return write_sr(tmp_path / "results" / "sr.dcm")


def sop_instance(path: Path) -> str:
    return str(pydicom.dcmread(path).SOPInstanceUID)


def commitment_jobs(pacs: OrthancServer) -> list[dict[str, Any]]:
    """Orthanc's storage commitment SCP jobs: one per N-ACTION it took, with its transaction UID and outcome."""
    return [job for job in pacs.get_json("/jobs?expand") if job["Type"] == "StorageCommitmentScp"]


# --------------------------------------------------------------------------- Orthanc


def test_orthanc_confirms_on_an_association_of_its_own_and_only_then_the_item_is_delivered(
        tmp_path: Path, sr: Path) -> None:
    node = Node(tmp_path / "node")
    with OrthancServer(tmp_path / "pacs", ae_title="PACS",
                       modalities={"spectnode": (NODE_AE, "127.0.0.1", node.port)}) as pacs:
        node.send_to(commitment_destination("pacs", "PACS", pacs.dicom_port))
        try:
            item_id = node.queue([sr])
            (tried,) = node.dispatch.deliver_due()
            assert tried.state in ("awaiting_commitment", "delivered")
            item = wait_for(lambda: (i := node.store.outbox.get(item_id)) and i.state == "delivered" and i,
                            TIMEOUT_S, "the N-EVENT-REPORT from Orthanc")
            (job,) = commitment_jobs(pacs)
            uid = job["Content"]["TransactionUid"]
            assert job["State"] == "Success" and job["Content"]["RemoteAet"] == NODE_AE
            assert item.acknowledgement == (
                f"1 file(s) stored by C-STORE and committed: N-EVENT-REPORT event type 1 from PACS@127.0.0.1 on an "
                f"association of its own, transaction {uid}")
            assert item.commitment_uid is None and item.attempts == 0
            assert sop_instance(sr) in pacs.sop_instance_uids()
        finally:
            node.close()


def test_an_orthanc_whose_report_never_comes_times_out_and_the_item_is_sent_again(tmp_path: Path, sr: Path) -> None:
    clock = FakeClock()
    node = Node(tmp_path / "node", clock)
    nobody = free_port()  # Orthanc knows this node's AE title, at a port where nothing listens
    with OrthancServer(tmp_path / "pacs", ae_title="PACS", modalities={"spectnode": (NODE_AE, "127.0.0.1", nobody)}
                       ) as pacs:
        node.send_to(commitment_destination("pacs", "PACS", pacs.dicom_port, 120))
        try:
            item_id = node.queue([sr])
            node.dispatch.step()
            first = node.store.outbox.get(item_id)
            assert first.state == "awaiting_commitment" and first.commitment_deadline == clock.now + 120
            wait_for(lambda: [j for j in commitment_jobs(pacs) if j["State"] == "Failure"], TIMEOUT_S,
                     "Orthanc failing to reach the node")
            clock.advance(119)
            node.dispatch.step()
            assert node.store.outbox.get(item_id).state == "awaiting_commitment"  # not yet overdue
            clock.advance(1)
            node.dispatch.step()
            retried = node.store.outbox.get(item_id)
            assert (retried.state, retried.attempts) == ("pending", 1)
            assert retried.last_error == (f"no storage commitment report (N-EVENT-REPORT) for transaction "
                                          f"{first.commitment_uid} within 120 s")
            assert retried.next_attempt_at == clock.now + 10  # the dispatch backoff
            clock.advance(10)
            node.dispatch.step()
            second = node.store.outbox.get(item_id)
            assert second.state == "awaiting_commitment" and second.commitment_uid != first.commitment_uid
            wait_for(lambda: len(commitment_jobs(pacs)) == 2, TIMEOUT_S, "the second N-ACTION at Orthanc")
            assert {j["Content"]["TransactionUid"] for j in commitment_jobs(pacs)} == {
                first.commitment_uid, second.commitment_uid}
        finally:
            node.close()


def test_an_orthanc_that_does_not_know_the_node_refuses_the_request_and_the_item_is_retried(
        tmp_path: Path, sr: Path) -> None:
    node = Node(tmp_path / "node")
    with OrthancServer(tmp_path / "pacs", ae_title="PACS") as pacs:
        node.send_to(commitment_destination("pacs", "PACS", pacs.dicom_port))
        # Orthanc ends the association within a second; a loaded machine must not turn that into a timeout.
        node.dispatch.timeout = 60.0
        try:
            item_id = node.queue([sr])
            node.dispatch.step()
            item = node.store.outbox.get(item_id)
            assert (item.state, item.attempts, item.commitment_uid) == ("pending", 1, None)
            assert item.last_error == (f"PACS@127.0.0.1:{pacs.dicom_port} ended the association when asked for "
                                       "storage commitment (N-ACTION); the peer may not know this node's AE title")
            assert sop_instance(sr) in pacs.sop_instance_uids()  # stored, but not committed
            assert commitment_jobs(pacs) == []
        finally:
            node.close()


# --------------------------------------------------------------------------- a PACS that reports on request


class CommitmentSCP:
    """A pynetdicom storage and storage commitment SCP whose report the test chooses.

    ``mode``: ``"new"`` reports on an association it opens to the node (as Orthanc
    does), ``"same"`` on the association of the request, ``"hold"`` only when
    :meth:`report` is called, ``"never"`` not at all, ``"late"`` on an association
    of its own before it answers the N-ACTION, which it does only once
    :attr:`answer_action` is set, ``"invalid"`` answers the N-ACTION without a
    Status (a broken PACS) and reports nothing. ``failure`` reports every object
    failed with that Failure Reason (event type 2).
    """

    def __init__(self, node_port: int, mode: str, failure: int | None = None) -> None:
        self.node_port, self.mode, self.failure = node_port, mode, failure
        self.port = free_port()
        self.stored: list[str] = []
        self.requests: list[Dataset] = []
        self.answers: list[int] = []
        #: Set when an association of the node's to this SCP is released.
        self.released = threading.Event()
        self.answer_action = threading.Event()
        self._pending: list[threading.Thread] = []
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action),
            (evt.EVT_DIMSE_SENT, self._on_sent), (evt.EVT_RELEASED, lambda event: self.released.set())])

    def destination(self, timeout_s: float = 60.0) -> DestinationConfig:
        return commitment_destination("fake", "FAKEPACS", self.port, timeout_s)

    def _on_store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, None]:
        self.requests.append(event.action_information)
        if self.mode == "late":
            self._start(self.report)
            self.answer_action.wait(TIMEOUT_S)
        elif self.mode == "invalid":
            send = event.assoc.dimse.send_msg

            def without_status(primitive: Any, context_id: int) -> None:
                primitive.Status = None  # then the encoded response has no (0000,0900)
                send(primitive, context_id)

            event.assoc.dimse.send_msg = without_status
        return 0x0000, None

    def _on_sent(self, event: Any) -> None:
        if type(event.message).__name__ != "N_ACTION_RSP":
            return
        if self.mode == "same":
            # From another thread: this one must go on to read the node's answer.
            self._start(lambda: self._send(event.assoc))
        elif self.mode == "new":
            self._start(self.report)

    def _start(self, work: Callable[[], None]) -> None:
        thread = threading.Thread(target=work, daemon=True)
        self._pending.append(thread)
        thread.start()

    def event_information(self) -> tuple[int, Dataset]:
        request = self.requests[-1]
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        refs = []
        for item in request.ReferencedSOPSequence:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (item.ReferencedSOPClassUID,
                                                                       item.ReferencedSOPInstanceUID)
            if self.failure is not None:
                ref.FailureReason = self.failure
            refs.append(ref)
        if self.failure is None:
            info.ReferencedSOPSequence = refs
            return 1, info
        info.FailedSOPSequence = refs
        return 2, info

    def _send(self, assoc: Any) -> None:
        event_type, info = self.event_information()
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        self.answers.append(int(status.Status) if status else -1)

    def report(self) -> None:
        """Send the report of the last request on a new association to the node, in the SCP role."""
        ae = AE(ae_title="FAKEPACS")
        ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title=NODE_AE,
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        assert assoc.is_established, "the node refused the report's association"
        try:
            self._send(assoc)
        finally:
            assoc.release()

    def close(self) -> None:
        for thread in self._pending:
            thread.join(TIMEOUT_S)
        self.server.shutdown()


@pytest.fixture()
def scp_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[CommitmentSCP, Node, FakeClock]]:
    mode, failure = request.param
    clock = FakeClock()
    node = Node(tmp_path / "node", clock)
    scp = CommitmentSCP(node.port, mode, failure)
    node.send_to(scp.destination())
    yield scp, node, clock
    scp.close()
    node.close()


@pytest.mark.parametrize("scp_node", [("new", 0x0112)], indirect=True)
def test_a_report_of_failures_sends_the_item_again(scp_node: tuple[CommitmentSCP, Node, FakeClock],
                                                   sr: Path) -> None:
    scp, node, clock = scp_node
    item_id = node.queue([sr])
    node.dispatch.deliver_due()
    wait_for(lambda: scp.answers, TIMEOUT_S, "the failure report")
    assert scp.answers == [0x0000]  # the node took the report
    first = node.store.outbox.get(item_id)
    assert first.state == "awaiting_commitment" and first.commitment_failure is not None
    assert node.dispatch.settle_commitments() == 1
    failed = node.store.outbox.get(item_id)
    assert (failed.state, failed.attempts) == ("pending", 1)
    uid = scp.requests[0].TransactionUID
    assert failed.last_error == (f"storage commitment not confirmed for 1 of 1 object(s) (N-EVENT-REPORT event type "
                                 f"2, transaction {uid}): object 1 of 1 failed: 0x0112 (no such object "
                                 "instance) (from FAKEPACS@127.0.0.1)")
    assert sop_instance(sr) not in failed.last_error  # shown by spectnode status: no SOP Instance UID
    clock.advance(10)
    node.dispatch.step()  # sent again, and refused again
    assert scp.stored == [sop_instance(sr)] * 2
    assert len({str(r.TransactionUID) for r in scp.requests}) == 2
    assert node.store.outbox.get(item_id).state in ("awaiting_commitment", "pending")


@pytest.mark.parametrize("scp_node", [("same", None)], indirect=True)
def test_a_report_on_the_association_of_the_request_delivers_the_item(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path) -> None:
    scp, node, _clock = scp_node
    item_id = node.queue([sr])
    (item,) = node.dispatch.deliver_due()
    wait_for(lambda: scp.answers, TIMEOUT_S, "the fake PACS to read the answer to its report")
    assert scp.answers == [0x0000]
    assert item.state == "delivered"
    assert item.acknowledgement == (
        f"1 file(s) stored by C-STORE and committed: N-EVENT-REPORT event type 1 from FAKEPACS@127.0.0.1 on the "
        f"association of the request, transaction {scp.requests[0].TransactionUID}")
    assert node.store.outbox.get(item_id).state == "delivered"


class SlowRecord(logging.Handler):
    """Holds up the node's report handler where it logs the item delivered, after the record is committed:
    until the node releases the association (what it did, before the response was out), or 0.5 s."""

    def __init__(self, released: threading.Event) -> None:
        super().__init__(logging.INFO)
        self.released = released

    def emit(self, record: logging.LogRecord) -> None:
        if "delivered" in record.getMessage():
            self.released.wait(0.5)


@pytest.mark.parametrize("scp_node", [("same", None)], indirect=True)
def test_the_association_of_the_request_is_released_only_after_the_answer_to_its_report(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path, caplog: pytest.LogCaptureFixture) -> None:
    scp, node, _clock = scp_node
    caplog.set_level(logging.INFO, logger="spectnode.dispatch")
    slow = SlowRecord(scp.released)
    logging.getLogger("spectnode.dispatch").addHandler(slow)
    try:
        item_id = node.queue([sr])
        node.dispatch.deliver_due()
    finally:
        logging.getLogger("spectnode.dispatch").removeHandler(slow)
    wait_for(lambda: scp.answers, TIMEOUT_S, "the fake PACS to read the answer to its report")
    assert scp.answers == [0x0000]  # not -1: the answer came before the release
    assert node.store.outbox.get(item_id).state == "delivered"


@pytest.mark.parametrize("scp_node", [("late", None)], indirect=True)
def test_a_report_that_delivers_the_item_while_its_n_action_response_is_overdue_is_not_undone(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path, caplog: pytest.LogCaptureFixture) -> None:
    scp, node, _clock = scp_node
    caplog.set_level(logging.INFO, logger="spectnode.dispatch")
    node.dispatch.timeout = 5.0  # how long the node waits for the N-ACTION response
    item_id = node.queue([sr])
    try:
        node.dispatch.deliver_due()  # the report is taken; then the N-ACTION response times out
    finally:
        scp.answer_action.set()
    assert scp.answers == [0x0000]
    item = node.store.outbox.get(item_id)
    assert (item.state, item.attempts, item.last_error) == ("delivered", 0, None)
    assert "committed: N-EVENT-REPORT event type 1 from FAKEPACS@127.0.0.1 on an association of its own" in (
        item.acknowledgement)
    assert any(f"the attempt failed (no N-ACTION response from FAKEPACS@127.0.0.1:{scp.port} within 5 s to the "
               "storage commitment request), but the item is delivered meanwhile" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("scp_node", [("invalid", None)], indirect=True)
def test_an_n_action_response_without_status_is_told_from_a_peer_that_ended_or_never_answered(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path) -> None:
    scp, node, _clock = scp_node
    node.dispatch.timeout = 60.0  # the answer comes at once; a timeout would take a minute
    item_id = node.queue([sr])
    node.dispatch.step()
    item = node.store.outbox.get(item_id)
    assert (item.state, item.attempts, item.commitment_uid) == ("pending", 1, None)
    assert item.last_error == (f"FAKEPACS@127.0.0.1:{scp.port} answered the storage commitment request with an "
                               "N-ACTION response that cannot be read (it lacks Status); the association was aborted")
    assert scp.stored == [sop_instance(sr)] and len(scp.requests) == 1


@pytest.mark.parametrize("scp_node", [("never", None)], indirect=True)
def test_a_pacs_that_takes_the_request_and_never_reports_times_out(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path) -> None:
    scp, node, clock = scp_node
    item_id = node.queue([sr])
    node.dispatch.step()
    assert node.store.outbox.get(item_id).state == "awaiting_commitment"
    clock.advance(60)
    node.dispatch.step()
    item = node.store.outbox.get(item_id)
    assert (item.state, item.attempts) == ("pending", 1)
    assert item.last_error.startswith("no storage commitment report (N-EVENT-REPORT) for transaction")
    assert scp.stored == [sop_instance(sr)] and len(scp.requests) == 1


@pytest.mark.parametrize("scp_node", [("hold", None)], indirect=True)
def test_a_restart_while_awaiting_commitment_keeps_the_transaction_and_sends_nothing_twice(
        scp_node: tuple[CommitmentSCP, Node, FakeClock], sr: Path, tmp_path: Path) -> None:
    scp, node, clock = scp_node
    item_id = node.queue([sr])
    node.dispatch.step()
    before = node.store.outbox.get(item_id)
    assert before.state == "awaiting_commitment"
    port = node.port
    node.close()  # the node stops with the report still to come
    restarted = Node(tmp_path / "node", clock, port=port).send_to(scp.destination())
    try:
        assert restarted.store.outbox.recover_interrupted() == 0
        after = restarted.store.outbox.get(item_id)
        assert (after.state, after.commitment_uid, after.commitment_deadline, after.commitment_references) == (
            "awaiting_commitment", before.commitment_uid, before.commitment_deadline, before.commitment_references)
        restarted.dispatch.step()  # nothing is due: the item waits for its report
        assert scp.stored == [sop_instance(sr)] and len(scp.requests) == 1
        scp.report()
        assert scp.answers == [0x0000]
        done = restarted.store.outbox.get(item_id)
        assert done.state == "delivered" and before.commitment_uid in done.acknowledgement
        clock.advance(3600)
        restarted.dispatch.step()
        assert scp.stored == [sop_instance(sr)] and len(scp.requests) == 1
    finally:
        restarted.close()


def test_a_crash_between_request_and_its_record_sends_the_item_again_and_ignores_the_late_report(
        tmp_path: Path, sr: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite") as store:
        outbox = store.outbox
        item_id = outbox.enqueue("1.2.3", "pacs", "sr", [sr])
        assert outbox.claim(item_id)
        refs = [(ComprehensiveSRStorage, sop_instance(sr))]
        assert outbox.begin_commitment(item_id, "2.25.1", refs)
        # The process dies after the N-ACTION, before await_commitment; at start-up:
        assert outbox.recover_interrupted() == 1
        item = outbox.get(item_id)
        assert (item.state, item.commitment_uid) == ("pending", None)
        late = CommitmentReport("2.25.1", 1, tuple(refs), ())
        assert record_commitment_report(outbox, late, Peer("PACS", "127.0.0.1", 1), 0.0) == 0x0000
        assert outbox.get(item_id).state == "pending"


def test_reasons_name_objects_and_result_files_by_position_never_by_uid_or_path(tmp_path: Path, sr: Path) -> None:
    refs = [(ComprehensiveSRStorage, f"1.2.826.0.1.3680043.{n}") for n in (1, 2, 3)]
    report = CommitmentReport("2.25.9", 2, (refs[0],), ((*refs[1], 0x0112),))
    assert report.problem(refs) == (
        "storage commitment not confirmed for 2 of 3 object(s) (N-EVENT-REPORT event type 2, transaction 2.25.9): "
        "object 2 of 3 failed: 0x0112 (no such object instance); object 3 of 3 is not in the report")
    assert report.problem(refs[:1]) is None
    named = tmp_path / f"SR_{refs[2][1]}.dcm"  # result files are named by their SOP Instance UID
    with pytest.raises(DispatchError) as missing:
        sop_references([sr, named])
    assert (missing.value.reason, missing.value.retryable) == ("result file 2 of 2 of the item does not exist", False)
    named.write_bytes(b"not DICOM")
    with pytest.raises(DispatchError) as unreadable:
        sop_references([named, sr])
    assert unreadable.value.reason == "result file 1 of 2 of the item cannot be read as DICOM (InvalidDicomError)"


# --------------------------------------------------------------------------- the node's SCP and bad reports


def send_report(port: int, event_type: int, info: Dataset) -> int:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE,
                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        return int(status.Status)
    finally:
        assoc.release()


def test_malformed_reports_get_their_status_and_unknown_transactions_change_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    try:
        info = Dataset()
        info.TransactionUID = "2.25.42"
        assert send_report(node.port, 3, info) == 0x0113  # no such event type
        reference = Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = ComprehensiveSRStorage, "1.2.3"
        no_transaction = Dataset()
        no_transaction.ReferencedSOPSequence = [reference]
        assert send_report(node.port, 1, no_transaction) == 0x0115  # invalid argument value
        no_instance = Dataset()
        no_instance.TransactionUID = "2.25.42"
        no_instance.ReferencedSOPSequence = [Dataset()]
        no_instance.ReferencedSOPSequence[0].ReferencedSOPClassUID = ComprehensiveSRStorage
        assert send_report(node.port, 1, no_instance) == 0x0115
        assert send_report(node.port, 1, info) == 0x0000  # nobody awaits it: taken, and ignored
        assert node.store.outbox.counts()["delivered"] == 0
    finally:
        node.close()


# --------------------------------------------------------------------------- configuration


@pytest.fixture()
def base(tmp_path: Path) -> dict[str, Any]:
    return {"storage": {"data_dir": str(tmp_path / "data")}, "node": {"allowed_calling_ae_titles": ["CAMERA", "PACS"]}}


def pacs_entry(**extra: Any) -> dict[str, Any]:
    return {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242, **extra}


def test_storage_commitment_is_off_by_default_and_validated(base: dict[str, Any], tmp_path: Path) -> None:
    cfg = parse_config({**base, "destinations": [pacs_entry()]}, "node.yaml")
    assert (cfg.destinations[0].storage_commitment, cfg.destinations[0].commitment_timeout_seconds) == (False, 600)
    cfg = parse_config({**base, "destinations": [pacs_entry(storage_commitment=True, commitment_timeout_seconds=30),
                                                 {"name": "back", "type": "sender", "port": 104,
                                                  "storage_commitment": True}]}, "node.yaml")
    assert [(d.storage_commitment, d.commitment_timeout_seconds) for d in cfg.destinations] == [(True, 30), (True, 600)]
    cases = [
        (pacs_entry(commitment_timeout_seconds=30), "destinations[0].commitment_timeout_seconds",
         "applies only with storage_commitment: true"),
        (pacs_entry(storage_commitment=True, commitment_timeout_seconds=0),
         "destinations[0].commitment_timeout_seconds", "must be greater than 0"),
        (pacs_entry(storage_commitment="yes"), "destinations[0].storage_commitment", ""),
        ({"name": "local", "type": "folder", "path": str(tmp_path / "out"), "storage_commitment": True},
         "destinations[0].storage_commitment", "applies only to a dicom or sender destination"),
        (pacs_entry(ae_title="OTHERPACS", storage_commitment=True), "destinations[0].storage_commitment",
         "needs the peer ('OTHERPACS') in node.allowed_calling_ae_titles"),
    ]
    for entry, key, problem in cases:
        with pytest.raises(ConfigError) as error:
            parse_config({**base, "destinations": [entry]}, "node.yaml")
        assert error.value.key == key and problem in error.value.problem, (entry, error.value)


# --------------------------------------------------------------------------- migration


def test_a_version_3_outbox_gains_commitment_with_its_rows_and_id_sequence(tmp_path: Path, sr: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for migration in MIGRATIONS[:3]:
            migration.apply(conn)
        conn.execute("INSERT INTO store_meta VALUES ('schema_version', '3')")
        for n, state in enumerate(("delivered", "pending", "dead")):
            conn.execute("INSERT INTO outbox_items (study_uid, generation, destination, kind, files_json, files_key, "
                         "state, attempts, next_attempt_at, created_at, updated_at, acknowledgement) "
                         "VALUES ('1.1', 1, 'pacs', 'sr', ?, ?, ?, 0, 5, 5, 5, ?)",
                         (json.dumps([f"/r/{n}.dcm"]), f"k{n}", state, "ok" if state == "delivered" else None))
        conn.execute("DELETE FROM outbox_items WHERE id = 3")  # the id sequence stays at 3
    with JobStore(db) as store:
        assert [(i.id, i.state, i.acknowledgement) for i in store.outbox.list_items()] == [
            (1, "delivered", "ok"), (2, "pending", None)]
        new = store.outbox.enqueue("1.1", "pacs", "sr", [sr])
        assert new == 4
        assert store.outbox.claim(new) and store.outbox.begin_commitment(new, "2.25.7", [("1.2", "3.4")])
        assert store.outbox.await_commitment(new, "2.25.7", deadline=99.0)
    with JobStore(db) as store:
        item = store.outbox.get(new)
        assert (item.state, item.commitment_uid, item.commitment_references, item.commitment_deadline) == (
            "awaiting_commitment", "2.25.7", (("1.2", "3.4"),), 99.0)
        assert store.outbox.counts()["awaiting_commitment"] == 1


# --------------------------------------------------------------------------- the whole node


def test_a_node_delivers_its_results_to_orthanc_only_once_committed(tmp_path: Path,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    with OrthancServer(tmp_path / "pacs", ae_title="PACS", modalities={"spectnode": (NODE_AE, "127.0.0.1", port)}
                       ) as pacs:
        config = write_config(tmp_path / "spectnode.yaml", {
            "node": {"ae_title": NODE_AE, "port": port, "allowed_calling_ae_titles": ["CAMERA", "PACS"]},
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": [{"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": pacs.dicom_port, "outputs": ["sr", "sc"], "storage_commitment": True,
                              "commitment_timeout_seconds": 120}],
            "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
            "completion": {"timeout_seconds": 3},
            "logging": {"file": str(tmp_path / "node.log")},
        })
        (record,) = generate_phantoms(tmp_path / "phantoms", n=1, seed=3)
        node = NodeProcess(config, port, tmp_path / "stdout.log").start()
        try:
            assert storescu(port, record.files).returncode == 0
            with JobStore(tmp_path / "data" / "spectnode.sqlite") as store:
                wait_for(lambda: (s := store.study(record.study_uid)) and s.state == DISPATCHED, 180,
                         "the study to be dispatched")
                items = store.outbox.list_items(study_uid=record.study_uid)
            assert items and {i.state for i in items} == {"delivered"} and {i.kind for i in items} == {"sr", "sc"}
            jobs = commitment_jobs(pacs)
            assert {j["State"] for j in jobs} == {"Success"} and len(jobs) == len(items)
            uids = {j["Content"]["TransactionUid"] for j in jobs}
            assert {i.acknowledgement.rsplit("transaction ", 1)[1] for i in items} == uids
            status = run_spectnode("status", "--config", str(config), record.study_uid)
            assert status.returncode == 0, status.stderr
            lines = [line for line in status.stdout.splitlines() if "to pacs: delivered" in line]
            assert len(lines) == len(items)
            assert all("committed: N-EVENT-REPORT event type 1 from PACS@127.0.0.1" in line for line in lines)
        finally:
            assert node.stop() == 0, node.log_text()[-2000:]
