"""Dispatch: send_files to real peers (Orthanc, a pynetdicom SCP, folders) and the durable outbox."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import NuclearMedicineImageStorage

from spectnode.config import DestinationConfig
from spectnode.dispatch import DispatchError, copy_to_folder, send_files
from spectnode.node.datadir import DataDir
from spectnode.node.stages.dispatch import (
    BUSY_EXCUSES_PER_ATTEMPT,
    RAISE_LIMIT_AFTER,
    DispatchStage,
    RetryPolicy,
    SendFunction,
)
from spectnode.node.status import format_outbox_status
from spectnode.peer import Peer
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import COMPLETE, RECEIVED, InstanceRecord, JobStore

from nodetools import FakeClock, write_minimal_sr
from orthanc import UNCOMPRESSED_ONLY, OrthancServer, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NODE_AE = "SPECTNODE"


def dispatcher(root: Path, destinations: dict[str, DestinationConfig], *, clock: Callable[[], float] = time.time,
               send: SendFunction = send_files, parallel_sends: int = 1, **policy: float) -> DispatchStage:
    """A dispatch stage on the job store in ``root`` (its queue: ``stage.outbox``)."""
    store = JobStore(root / "jobs.sqlite", clock=clock)
    return DispatchStage(store, DataDir(root), destinations, NODE_AE, policy=RetryPolicy(**policy),  # type: ignore[arg-type]
                         send=send, timeout=5, parallel_sends=parallel_sends)


def at_generation(store: JobStore, study_uid: str, generation: int) -> None:
    """Bring a study to ``generation`` the way the node does: each new NM object re-opens it."""
    for n in range(generation):
        if n:
            store.advance(study_uid, n, RECEIVED, COMPLETE, "complete")
        store.record_instance(InstanceRecord(study_uid, f"{study_uid}.{n}", "1.2", "1.2.840.10008.5.1.4.1.1.20", "NM",
                                             "1.2.840.10008.1.2.1", Path(f"/spool/{n}.dcm"), f"{n:064d}", 1),
                              Peer("CAMERA", "127.0.0.1", 1))


# --------------------------------------------------------------------------- fixtures


def write_sr_like(path: Path, evidence: Path) -> Path:
    """A minimal Comprehensive SR in the evidence's study, as the node would return."""
    source = pydicom.dcmread(evidence, stop_before_pixels=True)
    return write_minimal_sr(path, source.StudyInstanceUID, source.PatientID, str(source.get("PatientName", "")))


def study_files(root: Path, index: int, layout: str = "split-instances") -> tuple[str, list[Path]]:
    """(StudyInstanceUID, [NM files..., SR]) of one synthetic study."""
    (record,) = generate_phantoms(root / f"study{index}", 1, seed=100 + index, layout=layout)
    sr = write_sr_like(root / f"study{index}" / "sr.dcm", record.files[0])
    return record.study_uid, [*record.files, sr]


def sop_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def dicom_destination(name: str, pacs: OrthancServer, ae_title: str | None = None) -> DestinationConfig:
    return DestinationConfig(name=name, type="dicom", ae_title=ae_title or pacs.ae_title, host=pacs.host,
                             port=pacs.dicom_port)


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def study_a(files_root: Path) -> tuple[str, list[Path]]:
    return study_files(files_root, 0)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("pacs"), ae_title="PACS") as server:
        yield server


class StatusSCP:
    """A real pynetdicom storage SCP answering every C-STORE with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.port = free_port()
        self.peers: list[Peer] = []
        self.received: list[str] = []
        ae = AE(ae_title="STATUSSCP")
        ae.add_supported_context(NuclearMedicineImageStorage, [ExplicitVRLittleEndian])
        ae.add_supported_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        self.peers.append(Peer.from_association(event.assoc))
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def destination(self) -> DestinationConfig:
        return DestinationConfig(name="scp", type="dicom", ae_title="STATUSSCP", host="127.0.0.1", port=self.port)


@pytest.fixture()
def status_scp(request: pytest.FixtureRequest) -> Iterator[StatusSCP]:
    scp = StatusSCP(request.param)
    yield scp
    scp.server.shutdown()


# --------------------------------------------------------------------------- send_files


def test_send_files_stores_every_instance_in_orthanc(pacs: OrthancServer, study_a: tuple[str, list[Path]]) -> None:
    study_uid, files = study_a
    send_files(dicom_destination("pacs", pacs), files, calling_ae_title=NODE_AE)
    assert sop_uids(files) <= pacs.sop_instance_uids()
    stored = {pacs.instance_tags(i)["SOPInstanceUID"]: i for i in pacs.instances_of_study(study_uid)}
    assert set(stored) == sop_uids(files)
    original = pydicom.dcmread(files[0])
    np.testing.assert_array_equal(pacs.instance_dataset(stored[original.SOPInstanceUID]).pixel_array,
                                  original.pixel_array)
    # Sending again is harmless: Orthanc keeps one copy of each instance.
    send_files(dicom_destination("pacs", pacs), files, calling_ae_title=NODE_AE)
    assert len(pacs.instances_of_study(study_uid)) == len(files)


def test_compressed_file_keeps_its_syntax_or_is_decompressed_for_an_uncompressed_peer(
    tmp_path: Path, pacs: OrthancServer
) -> None:
    (record,) = generate_phantoms(tmp_path / "rle", 1, seed=7, layout="rle")
    original = pydicom.dcmread(record.files[0])
    assert original.file_meta.TransferSyntaxUID == RLELossless

    send_files(dicom_destination("pacs", pacs), record.files, calling_ae_title=NODE_AE)
    (kept,) = pacs.instances_of_study(record.study_uid)
    assert pacs.instance_dataset(kept).file_meta.TransferSyntaxUID == RLELossless

    with OrthancServer(tmp_path / "plain", ae_title="PLAIN", accepted_transfer_syntaxes=UNCOMPRESSED_ONLY) as plain:
        send_files(dicom_destination("plain", plain), record.files, calling_ae_title=NODE_AE)
        (decoded,) = plain.instances()
        stored = plain.instance_dataset(decoded)
    assert stored.file_meta.TransferSyntaxUID in UNCOMPRESSED_ONLY
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(stored.pixel_array, original.pixel_array)


def test_sender_destination_returns_results_to_the_calling_peer(
    pacs: OrthancServer, study_a: tuple[str, list[Path]]
) -> None:
    # type "sender" is the proposed config addition; the port is the peer's listening port.
    back = DestinationConfig(name="back", type="sender", port=pacs.dicom_port)  # type: ignore[arg-type]
    study_uid, files = study_a
    send_files(back, files[-1:], calling_ae_title=NODE_AE, sender=Peer(ae_title="PACS", address="127.0.0.1", port=0))
    assert sop_uids(files[-1:]) <= pacs.sop_instance_uids()

    with pytest.raises(DispatchError) as info:
        send_files(back, files, calling_ae_title=NODE_AE, sender=None)
    assert not info.value.retryable
    assert "no sender was recorded" in info.value.reason


def test_folder_destination_writes_atomically_per_study(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    study_uid, files = study_a
    folder = tmp_path / "out"
    dest = DestinationConfig(name="local", type="folder", path=folder)
    send_files(dest, files, calling_ae_title=NODE_AE)
    send_files(dest, files, calling_ae_title=NODE_AE)  # idempotent: same names, same bytes

    written = sorted((folder / study_uid).iterdir())
    assert len(written) == len(files)
    assert not [p for p in written if p.name.startswith(".")]  # no temporary files left
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in written}
    for source in files:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert by_uid[uid].read_bytes() == source.read_bytes()
    assert {p.name.split("_")[0] for p in written} == {"NM", "SR"}

    with pytest.raises(DispatchError) as info:
        copy_to_folder([tmp_path / "missing.dcm"], folder)
    assert not info.value.retryable and "does not exist" in info.value.reason


def test_a_file_too_large_for_the_folder_is_retryable_and_leaves_no_partial_file(
        tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    """EFBIG for real: the copy runs in a process whose file-size limit (RLIMIT_FSIZE) is below the files' size."""
    study_uid, files = study_a
    folder = tmp_path / "out"
    limit = min(p.stat().st_size for p in files) // 2
    script = (
        "import json, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from spectnode.dispatch import DispatchError, copy_to_folder\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as under a quota\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "try:\n"
        "    copy_to_folder([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]))\n"
        "except DispatchError as exc:\n"
        "    print(json.dumps({'retryable': exc.retryable, 'reason': exc.reason}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(folder), *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout)
    assert outcome["retryable"] is True
    assert "EFBIG" in outcome["reason"] and "cannot write" in outcome["reason"]
    assert list((folder / study_uid).iterdir()) == []  # neither the file nor its temporary copy is left


def test_connection_refused_is_reported(study_a: tuple[str, list[Path]]) -> None:
    port = free_port()
    dest = DestinationConfig(name="down", type="dicom", ae_title="NOBODY", host="127.0.0.1", port=port)
    with pytest.raises(DispatchError) as info:
        send_files(dest, study_a[1], calling_ae_title=NODE_AE, timeout=5)
    assert info.value.reason == f"connection refused by 127.0.0.1:{port} (nothing listens there)"
    assert info.value.retryable and info.value.peer_unreachable


def test_association_rejected_for_wrong_called_ae_title(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    with (OrthancServer(tmp_path / "strict", ae_title="STRICT", check_called_aet=True) as strict,
          pytest.raises(DispatchError) as info):
        send_files(dicom_destination("strict", strict, ae_title="WRONGAE"), study_a[1],
                   calling_ae_title=NODE_AE, timeout=5)
    assert info.value.reason.startswith(f"association rejected by WRONGAE@127.0.0.1:{strict.dicom_port}: ")
    assert "Called AE title not recognised" in info.value.reason
    assert info.value.peer_unreachable


def test_silent_peer_times_out(study_a: tuple[str, list[Path]]) -> None:
    # A TCP listener that never answers the A-ASSOCIATE-RQ: a hung PACS.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        dest = DestinationConfig(name="hung", type="dicom", ae_title="HUNG", host="127.0.0.1", port=port)
        raised: list[BaseException] = []

        def send() -> None:
            try:
                send_files(dest, study_a[1], calling_ae_title=NODE_AE, timeout=1)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                raised.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(120)  # only a sender that never gives up gets here with the thread alive
        assert not sender.is_alive(), "send_files kept waiting for a peer that never answers"
    (error,) = raised
    assert isinstance(error, DispatchError)
    assert error.reason == f"no answer to the association request from HUNG@127.0.0.1:{port} within 1 s"


def test_a_peer_that_aborts_the_association_request_is_told_from_one_that_never_answers(
        study_a: tuple[str, list[Path]]) -> None:
    # A listener that reads the A-ASSOCIATE-RQ and answers with an A-ABORT PDU (PS3.8 9.3.8): the
    # sender must say the peer aborted, not that it timed out (test_silent_peer_times_out: the other case).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def abort_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT, source: service user
                conn.recv(1)  # until the sender closes

        peer = threading.Thread(target=abort_once, daemon=True)
        peer.start()
        dest = DestinationConfig(name="aborts", type="dicom", ae_title="ABORTS", host="127.0.0.1", port=port)
        with pytest.raises(DispatchError) as info:
            send_files(dest, study_a[1], calling_ae_title=NODE_AE, timeout=30)
        peer.join(30)
    assert info.value.reason == f"association with ABORTS@127.0.0.1:{port} aborted during negotiation"
    assert info.value.peer_unreachable


@pytest.mark.parametrize("status_scp", [0xA700], indirect=True)
def test_cstore_failure_status_is_reported_with_code_and_meaning(
    status_scp: StatusSCP, study_a: tuple[str, list[Path]]
) -> None:
    with pytest.raises(DispatchError) as info:
        send_files(status_scp.destination(), study_a[1], calling_ae_title=NODE_AE)
    assert "C-STORE status 0xA700 (Refused: Out of Resources)" in info.value.reason
    assert info.value.retryable and not info.value.peer_unreachable
    assert len(status_scp.received) == 1  # stops at the first refused file


@pytest.mark.parametrize("status_scp", [0xB000], indirect=True)
def test_cstore_warning_status_counts_as_delivered(
    status_scp: StatusSCP, study_a: tuple[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    send_files(status_scp.destination(), study_a[1], calling_ae_title=NODE_AE)
    assert set(status_scp.received) == sop_uids(study_a[1])
    assert "0xB000 (Coercion of Data Elements)" in caplog.text
    # The SCP saw this node's AE title and loopback address: what a "sender" destination returns to.
    peer = status_scp.peers[0]
    assert (peer.ae_title, peer.address, peer.called_ae_title) == (NODE_AE, "127.0.0.1", "STATUSSCP")


@pytest.mark.parametrize("status_scp", [0x0000], indirect=True)
def test_sop_class_the_peer_does_not_support_is_reported(
    tmp_path: Path, status_scp: StatusSCP, study_a: tuple[str, list[Path]]
) -> None:
    # The SCP supports NM and Comprehensive SR only; make an Enhanced SR copy it must refuse.
    enhanced = pydicom.dcmread(study_a[1][-1])
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedSRStorage
    enhanced.SOPInstanceUID = enhanced.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    enhanced.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)

    with pytest.raises(DispatchError) as only_unsupported:
        send_files(status_scp.destination(), [tmp_path / "enhanced.dcm"], calling_ae_title=NODE_AE)
    assert only_unsupported.value.reason == (
        f"STATUSSCP@127.0.0.1:{status_scp.port} accepted the association but none of the proposed "
        "presentation contexts"
    )
    # The peer is up and says it takes no such object: permanent, and no reason to hold back other items.
    assert not only_unsupported.value.retryable and not only_unsupported.value.peer_unreachable
    with pytest.raises(DispatchError) as mixed:
        send_files(status_scp.destination(), [*study_a[1], tmp_path / "enhanced.dcm"], calling_ae_title=NODE_AE)
    assert "accepted no presentation context for Enhanced SR Storage" in mixed.value.reason
    assert not mixed.value.retryable
    assert set(status_scp.received) == sop_uids(study_a[1])  # the supported files went through

    # In the outbox such an item is dead at the first attempt, with the reason.
    stage = dispatcher(tmp_path, {"scp": status_scp.destination()}, max_attempts=8)
    item_id = stage.outbox.enqueue(study_a[0], "scp", "sr", [tmp_path / "enhanced.dcm"])
    (dead,) = stage.deliver_due()
    assert (dead.id, dead.state, dead.attempts) == (item_id, "dead", 1)
    assert dead.last_error == f"not retryable: {only_unsupported.value.reason}"


# --------------------------------------------------------------------------- outbox


def refused_destination() -> DestinationConfig:
    return DestinationConfig(name="pacs", type="dicom", ae_title="PACS", host="127.0.0.1", port=free_port())


def test_outbox_backs_off_exponentially_then_dead_letters(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    clock = FakeClock()
    dest = refused_destination()
    stage = dispatcher(tmp_path, {"pacs": dest}, clock=clock, max_attempts=4, base_delay_s=5, max_delay_s=12)
    outbox = stage.outbox
    item_id = outbox.enqueue(study_a[0], "pacs", "sr", study_a[1][-1:])
    start = clock.now

    schedule = []
    for _ in range(3):
        (tried,) = stage.deliver_due()
        assert tried.id == item_id and tried.state == "pending" and tried.retrying
        assert "connection refused" in (tried.last_error or "")
        schedule.append(tried.next_attempt_at - clock.now)
        clock.advance(schedule[-1] - 0.5)
        assert stage.deliver_due() == []  # not due yet
        clock.advance(0.5)
    assert schedule == [5, 10, 12]  # 5 · 2^(n-1), capped at 12
    assert clock.now - start == 27

    (dead,) = stage.deliver_due()
    assert dead.state == "dead" and dead.attempts == 4
    assert dead.last_error is not None and dead.last_error.startswith("gave up after 4 attempts: connection refused")
    assert outbox.dead_letters() == [dead]
    assert not outbox.study_delivered(study_a[0], 1)
    clock.advance(10_000)
    assert outbox.due() == []


def test_outbox_retry_moves_dead_items_back(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    clock = FakeClock()
    dest = refused_destination()
    stage = dispatcher(tmp_path, {"pacs": dest}, clock=clock, max_attempts=1)
    outbox = stage.outbox
    ids = [outbox.enqueue(f"1.2.3.{i}", "pacs", "sr", study_a[1][-1:]) for i in range(3)]
    stage.deliver_due()
    assert [i.id for i in outbox.dead_letters()] == ids

    clock.advance(60)
    assert outbox.retry(item_id=ids[0]) == 1
    assert outbox.retry(study_uid="1.2.3.1") == 1
    assert outbox.retry(item_id=ids[0]) == 0  # already pending, never tried since
    assert [i.id for i in outbox.dead_letters()] == [ids[2]]
    due = outbox.due()
    assert [i.id for i in due] == ids[:2]
    assert all(i.attempts == 0 and i.next_attempt_at == clock.now for i in due)
    assert due[0].last_error is not None and due[0].last_error.startswith("retry requested after: ")
    assert outbox.retry() == 1  # the last dead one
    assert outbox.dead_letters() == []


def test_outbox_survives_restart_and_interrupted_send(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    db = tmp_path / "jobs.sqlite"
    folder = tmp_path / "out"
    dest = {"local": DestinationConfig(name="local", type="folder", path=folder)}

    def dies_mid_send(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process is killed while sending

    first = dispatcher(tmp_path, dest, send=dies_mid_send)
    ids = [first.outbox.enqueue(study_a[0], "local", kind, study_a[1]) for kind in ("sr", "sc")]
    assert first.outbox.enqueue(study_a[0], "local", "sr", list(reversed(study_a[1]))) == ids[0]  # idempotent

    with pytest.raises(KeyboardInterrupt):
        first.deliver_due()
    first.store.close()

    stage = dispatcher(tmp_path, dest)
    second = stage.outbox
    assert [(i.id, i.state) for i in second.list_items()] == [(ids[0], "sending"), (ids[1], "pending")]
    assert second.recover_interrupted() == 1
    assert [i.state for i in second.list_items(study_uid=study_a[0])] == ["pending", "pending"]
    delivered = stage.deliver_due()
    assert [(i.id, i.state) for i in delivered] == [(ids[0], "delivered"), (ids[1], "delivered")]
    assert second.study_delivered(study_a[0], 1)
    assert len(list((folder / study_a[0]).iterdir())) == len(study_a[1])

    # The table lives in the job store's database, in WAL mode.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM outbox_items WHERE state = 'delivered'").fetchone()[0] == 2


def test_outbox_dead_letters_unknown_destination_and_missing_file(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    stage = dispatcher(tmp_path, {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")})
    gone = stage.outbox.enqueue(study_a[0], "old-pacs", "sr", study_a[1])
    missing = stage.outbox.enqueue(study_a[0], "local", "sc", [tmp_path / "deleted.dcm"])
    tried = {i.id: i for i in stage.deliver_due()}
    assert tried[gone].state == "dead"
    assert tried[gone].last_error == "destination 'old-pacs' is not in the configuration (configured: local)"
    assert tried[missing].state == "dead" and tried[missing].attempts == 1
    assert tried[missing].last_error == "not retryable: result file 1 of 1 does not exist"


def test_outbox_tries_an_unreachable_destination_once_per_pass(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    calls: list[str] = []

    def counting_send(destination: DestinationConfig, files: list[Path], **kwargs: object) -> None:
        calls.append(destination.name)
        send_files(destination, files, **kwargs)  # type: ignore[arg-type]

    stage = dispatcher(tmp_path, {"pacs": refused_destination()}, send=counting_send)
    for i in range(3):
        stage.outbox.enqueue(f"1.2.3.{i}", "pacs", "sr", study_a[1][-1:])
    tried = stage.deliver_due()
    assert calls == ["pacs"]
    assert [(i.state, i.attempts) for i in tried] == [("pending", 1)] * 3
    assert len({i.last_error for i in tried}) == 1


def test_outbox_sends_parallel_sends_items_at_once_and_never_more(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, send=lambda *a, **k: None, parallel_sends=3)
    ids = [stage.outbox.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:]) for i in range(7)]
    lock = threading.Lock()
    in_flight, most, sent = 0, 0, Counter[int]()
    three_at_once = threading.Barrier(3)  # the first three sends wait for each other: all three are on their way

    def slow_send(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            first_three = sum(sent.values()) + in_flight <= 3
        if first_three:
            three_at_once.wait(120)  # a generous deadline only a hang reaches (BrokenBarrierError)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
            sent[threading.get_ident()] += 1

    stage.send = slow_send
    tried = stage.deliver_due()
    assert most == 3
    assert sorted(i.id for i in tried) == sorted(ids)
    assert [i.state for i in stage.outbox.list_items()] == ["delivered"] * len(ids)
    assert sum(sent.values()) == len(ids)


def test_parallel_sends_try_an_unreachable_destination_at_most_once_per_sender_per_pass(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def counting_send(destination: DestinationConfig, files: list[Path], **kwargs: object) -> None:
        with lock:
            calls.append(destination.name)
        send_files(destination, files, **kwargs)  # type: ignore[arg-type]

    stage = dispatcher(tmp_path, {"pacs": refused_destination()}, send=counting_send, parallel_sends=3)
    for i in range(8):
        stage.outbox.enqueue(f"1.2.3.{i}", "pacs", "sr", study_a[1][-1:])
    tried = stage.deliver_due()
    assert 1 <= len(calls) <= 3  # only the items already on their way when the first refusal came back
    assert [(i.state, i.attempts) for i in tried] == [("pending", 1)] * 8
    stage.outbox.enqueue("1.2.3.9", "pacs", "sr", study_a[1][-1:])  # due now, but its destination backs off
    assert stage.deliver_due() == [] and len(calls) <= 3


def test_a_peer_that_takes_two_associations_gets_every_item_sent_fewer_at_once(
    tmp_path: Path, study_a: tuple[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    # A modality or small PACS that takes two associations at once rejects a third "for now"
    # (A-ASSOCIATE-RJ transient, local limit exceeded): no attempt is counted for that, and the
    # stage sends that destination fewer at once from then on.
    port = free_port()
    ae = AE(ae_title="LIMITED")
    ae.maximum_associations = 2
    ae.add_supported_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian])

    def slow_store(event: evt.Event) -> int:
        time.sleep(0.3)  # the peer writes the object to its disk before it answers
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)])
    try:
        dest = DestinationConfig(name="limited", type="dicom", ae_title="LIMITED", host="127.0.0.1", port=port)
        stage = dispatcher(tmp_path, {"limited": dest}, parallel_sends=4)
        ids = [stage.outbox.enqueue(f"1.2.3.{i}", "limited", "sr", study_a[1][-1:]) for i in range(12)]
        deadline = time.monotonic() + 60  # items put back are due again a second later
        while time.monotonic() < deadline and any(i.state != "delivered" for i in stage.outbox.list_items()):
            if not stage.deliver_due():
                time.sleep(0.1)
        items = stage.outbox.list_items()
        assert sorted(i.id for i in items if i.state == "delivered") == sorted(ids)
        assert all(i.attempts == 0 for i in items)  # a rejection for now at our own concurrency is no attempt
        assert stage._most_at_once["limited"] <= 2
        assert "rejected an association for now" in caplog.text
    finally:
        server.shutdown()


@pytest.mark.parametrize(("sender_asked", "attempts"), [("at once, the answer read late", 0),
                                                      ("after reading the files", 1)])
def test_a_rejection_for_now_counts_from_when_the_association_was_asked_for(
    tmp_path: Path, study_a: tuple[str, list[Path]], monkeypatch: pytest.MonkeyPatch, sender_asked: str,
    attempts: int
) -> None:
    # The peer decides when it is asked. On a loaded machine its A-ASSOCIATE-RJ, decided while it
    # still counted our last association, can be read long after: not an attempt. A sender that
    # first spent longer than the grace reading the files asked a peer no longer counting ours.
    monkeypatch.setattr("spectnode.node.stages.dispatch.BUSY_GRACE_SECONDS", 1.0)
    sends = 0

    def deliver_then_reject(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        nonlocal sends
        sends += 1
        if sends == 2:
            time.sleep(2.0)  # past the grace: waiting for the answer, or reading the files
            raise DispatchError("association rejected (transient): local limit exceeded", peer_unreachable=True,
                                rejected_for_now=True,
                                asked_at=time.monotonic() if sender_asked == "after reading the files" else None)

    dest = {"pacs": DestinationConfig(name="pacs", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, send=deliver_then_reject)
    for i in range(2):
        stage.outbox.enqueue(f"1.2.3.{i}", "pacs", "sr", study_a[1][-1:])
    first, second = stage.deliver_due()
    assert (first.state, first.attempts) == ("delivered", 0)
    assert (second.state, second.attempts) == ("pending", attempts)
    assert ("fewer at once" in (second.last_error or "")) == (not attempts)


def test_a_rejection_for_now_with_nothing_of_ours_open_is_an_attempt(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    # A peer busy with other callers and nothing of ours delivered: each rejection counts, and
    # the item ends as a dead letter like any other that never gets through.

    def always_busy(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        raise DispatchError("association rejected (transient): temporary congestion", rejected_for_now=True)

    clock = FakeClock(1000.0)
    dest = {"pacs": DestinationConfig(name="pacs", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, clock=clock, send=always_busy, parallel_sends=2, max_attempts=3)
    item_id = stage.outbox.enqueue("1.2.3.1", "pacs", "sr", study_a[1][-1:])
    for _ in range(3):
        stage.deliver_due()
        clock.advance(3600)
    item = stage.outbox.get(item_id)
    assert item is not None and (item.state, item.attempts) == ("dead", 3)
    assert "pacs" not in stage._most_at_once  # not taken for a limit of ours


def test_an_item_always_rejected_for_now_while_others_get_through_ends_a_dead_letter(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    # Each rejection follows a delivery of ours, so each could be the peer still counting it; but
    # a peer busy with other callers must not keep one item retrying for ever with no attempt.
    stuck_file = study_a[1][0]

    def reject_one(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        if tuple(files) == (stuck_file,):  # flagged as the real sender flags an A-ASSOCIATE-RJ
            raise DispatchError("association rejected (transient): local limit exceeded", peer_unreachable=True,
                                rejected_for_now=True, asked_at=time.monotonic())

    clock = FakeClock(1000.0)
    dest = {"pacs": DestinationConfig(name="pacs", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, clock=clock, send=reject_one, max_attempts=2, base_delay_s=1, max_delay_s=1)
    stage.outbox.enqueue("1.2.3.0", "pacs", "sr", study_a[1][-1:])  # delivered first in the first pass
    stuck = stage.outbox.enqueue("1.2.3.stuck", "pacs", "sr", [stuck_file])
    seen = []
    for i in range(2 * (BUSY_EXCUSES_PER_ATTEMPT + 1)):
        stage.deliver_due()
        item = stage.outbox.get(stuck)
        assert item is not None
        seen.append((item.state, item.attempts, "fewer at once" in (item.last_error or "")))
        clock.advance(10)
        stage.outbox.enqueue(f"1.2.3.{i + 1}", "pacs", "sr", study_a[1][-1:])  # due after the stuck one
    excused = [("pending", 0, True)] * BUSY_EXCUSES_PER_ATTEMPT
    assert seen == [*excused, ("pending", 1, False), *[("pending", 1, True)] * BUSY_EXCUSES_PER_ATTEMPT,
                    ("dead", 2, False)]
    stage.deliver_due()
    others = [i for i in stage.outbox.list_items() if i.id != stuck]
    assert [(i.state, i.attempts) for i in others] == [("delivered", 0)] * len(others)  # never taken for unreachable
    assert not stage._excused


def test_a_peer_at_its_limit_rejects_for_now_and_the_sender_says_when_it_asked(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    port = free_port()
    ae = AE(ae_title="ONEATATIME")
    ae.maximum_associations = 1
    ae.add_supported_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", port), block=False)
    holder = AE(ae_title="OTHER")
    holder.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    held = holder.associate("127.0.0.1", port, ae_title="ONEATATIME")
    try:
        assert held.is_established
        dest = DestinationConfig(name="one", type="dicom", ae_title="ONEATATIME", host="127.0.0.1", port=port)
        before = time.monotonic()
        with pytest.raises(DispatchError) as caught:
            send_files(dest, study_a[1][-1:], calling_ae_title=NODE_AE, timeout=5)
        assert caught.value.rejected_for_now and caught.value.peer_unreachable
        assert caught.value.asked_at is not None and before <= caught.value.asked_at <= time.monotonic()
    finally:
        held.release()
        server.shutdown()


def test_an_error_of_the_store_in_a_sender_is_raised_by_the_pass(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, send=lambda *a, **k: None, parallel_sends=3)
    for i in range(5):
        stage.outbox.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:])

    def broken_delivered(*args: object, **kwargs: object) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    stage.outbox.delivered = broken_delivered  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        stage.deliver_due()
    assert not [t for t in threading.enumerate() if t.name.startswith("dispatch-item-")]  # none left running


def test_a_stopping_node_claims_no_more_items_in_a_pass(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stopping = threading.Event()

    def send_then_stop(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        stopping.set()  # SIGTERM while the first item is on its way

    store = JobStore(tmp_path / "jobs.sqlite")
    stage = DispatchStage(store, DataDir(tmp_path), dest, NODE_AE, send=send_then_stop, stopping=stopping)
    for i in range(4):
        stage.outbox.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:])
    tried = stage.deliver_due()
    assert [i.state for i in tried] == ["delivered"]  # the one on its way is finished
    assert [(i.state, i.attempts) for i in stage.outbox.list_items()][1:] == [("pending", 0)] * 3


def test_a_node_stopping_while_the_senders_are_busy_claims_nothing_more(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stopping, release = threading.Event(), threading.Event()
    sent: list[int] = []
    lock = threading.Lock()

    def held_send(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        with lock:
            sent.append(1)
        release.wait(120)

    store = JobStore(tmp_path / "jobs.sqlite")
    stage = DispatchStage(store, DataDir(tmp_path), dest, NODE_AE, send=held_send, parallel_sends=2,
                          stopping=stopping)
    for i in range(5):
        stage.outbox.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:])
    passing = threading.Thread(target=stage.deliver_due)
    passing.start()
    deadline = time.monotonic() + 60
    while len(sent) < 2 and time.monotonic() < deadline:  # both senders busy; the pass waits for room
        time.sleep(0.01)
    stopping.set()
    release.set()
    passing.join(60)
    assert not passing.is_alive() and len(sent) == 2
    assert sorted(i.state for i in stage.outbox.list_items()) == ["delivered"] * 2 + ["pending"] * 3


def test_a_destination_sent_fewer_at_once_holds_up_no_other(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    dests = {name: DestinationConfig(name=name, type="folder", path=tmp_path / name) for name in ("slow", "fast")}
    slow_busy, order = threading.Event(), []
    lock = threading.Lock()

    def send(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        if destination.name == "slow":
            slow_busy.wait(5)  # until the fast one's items are through (or 5 s: the old head-of-line wait)
        with lock:
            order.append(destination.name)
        if destination.name == "fast" and order.count("fast") == 3:
            slow_busy.set()

    stage = dispatcher(tmp_path, dests, send=send, parallel_sends=3)
    stage._most_at_once["slow"] = 1  # as after the peer rejected associations for now
    for i, name in enumerate(["slow", "slow", "fast", "fast", "fast"]):
        stage.outbox.enqueue(f"1.2.3.{i}", name, "sr", study_a[1][-1:])
    started = time.monotonic()
    while stage.deliver_due():
        pass
    assert order[:3] == ["fast"] * 3 and order.count("slow") == 2
    assert time.monotonic() - started < 4  # the fast items did not wait behind the slow destination


def test_a_destination_sent_fewer_at_once_takes_more_again_after_deliveries(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dest, send=lambda *a, **k: None, parallel_sends=3)
    stage._most_at_once["local"] = 1
    for i in range(RAISE_LIMIT_AFTER):
        stage.outbox.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:])
    while stage.deliver_due():
        pass
    assert stage._most_at_once["local"] == 2


def test_outbox_concurrent_workers_send_each_item_once(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    db = tmp_path / "jobs.sqlite"
    dest = {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    setup = JobStore(db).outbox
    ids = [setup.enqueue(f"1.2.3.{i}", "local", "sr", study_a[1][-1:]) for i in range(24)]
    sent: Counter[tuple[Path, ...]] = Counter()
    lock = threading.Lock()
    # The first three sends wait until all three are on their way at once: the three workers have
    # each claimed an item and the rest of the queue is still open to all of them.
    all_sending = threading.Barrier(3)
    started = 0

    on_shared, most_on_shared = 0, 0

    def slow_send(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        nonlocal started, on_shared, most_on_shared
        shared_stage = threading.current_thread().name.startswith("dispatch-item-")  # the second stage sends inline
        with lock:
            started += 1
            first_three = started <= 3
            if shared_stage:
                on_shared += 1
                most_on_shared = max(most_on_shared, on_shared)
        if first_three:
            all_sending.wait(120)  # a generous deadline only a hang reaches (BrokenBarrierError)
        with lock:
            sent[files] += 1
            if shared_stage:
                on_shared -= 1

    # Two threads on one stage (its parallel_sends, 2, bounds both together) and a second stage (1).
    shared = dispatcher(tmp_path, dest, send=slow_send, parallel_sends=2)
    workers = [
        threading.Thread(target=stage.deliver_due)
        for stage in (shared, shared, dispatcher(tmp_path, dest, send=slow_send))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not all_sending.broken  # three sends were on their way at the same time
    assert most_on_shared == 2  # the shared stage's two threads together kept to its parallel_sends
    assert sum(sent.values()) == len(ids)  # and none twice
    assert [i.state for i in setup.list_items()] == ["delivered"] * len(ids)


def test_destination_down_then_up_receives_everything(tmp_path: Path, files_root: Path) -> None:
    studies = [study_files(files_root, 1), study_files(files_root, 2)]
    clock = FakeClock()
    with OrthancServer(tmp_path / "pacs", ae_title="PACS") as pacs:
        dest = {"pacs": dicom_destination("pacs", pacs)}
        stage = dispatcher(tmp_path, dest, clock=clock, base_delay_s=5)
        outbox = stage.outbox
        for study_uid, files in studies:
            outbox.enqueue(study_uid, "pacs", "sr", files[-1:])
            outbox.enqueue(study_uid, "pacs", "sc", files[:-1])

        pacs.stop(graceful=False)
        failed = stage.deliver_due()
        assert [(i.state, i.attempts) for i in failed] == [("pending", 1)] * 4
        assert all("connection refused" in (i.last_error or "") for i in failed)
        text = format_outbox_status(outbox.list_items(), now=clock.now, max_attempts=stage.policy.max_attempts)
        assert "outbox: 4 pending (4 retrying), 0 sending, 0 delivered, 0 dead" in text
        assert "in 5 s" in text and "connection refused by 127.0.0.1" in text

        pacs.start()
        assert stage.deliver_due() == []  # backoff not over yet
        clock.advance(5)
        delivered = stage.deliver_due()
        assert [i.state for i in delivered] == ["delivered"] * 4
        assert pacs.sop_instance_uids() == set().union(*(sop_uids(files) for _, files in studies))
        assert all(outbox.study_delivered(uid, 1) for uid, _ in studies)
        assert format_outbox_status(outbox.list_items(), now=clock.now) == (
            "outbox: 0 pending (0 retrying), 0 sending, 4 delivered, 0 dead"
        )


def test_format_outbox_status_lists_undelivered_items_with_reasons(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    clock = FakeClock()
    stage = dispatcher(tmp_path, {"local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")},
                       clock=clock, max_attempts=2)
    outbox = stage.outbox
    outbox.enqueue("1.2.3.1", "gone", "sr", study_a[1][-1:])
    outbox.enqueue("1.2.3.2", "local", "sc", study_a[1][-1:])
    stage.deliver_due()
    outbox.enqueue("1.2.3.3", "pacs", "sr", study_a[1][-1:])
    text = format_outbox_status(outbox.list_items(), now=clock.now, max_attempts=2)
    lines = text.splitlines()
    assert lines[0] == "outbox: 1 pending (0 retrying), 0 sending, 1 delivered, 1 dead"
    assert lines[1].split() == ["ID", "STATE", "DESTINATION", "KIND", "ATTEMPTS", "NEXT", "TRY", "STUDY"]
    assert lines[2].split() == ["1", "dead", "gone", "sr", "0/2", "-", "1.2.3.1"]
    assert lines[3].strip() == "destination 'gone' is not in the configuration (configured: local)"
    assert lines[4].split() == ["3", "pending", "pacs", "sr", "0/2", "due", "now", "1.2.3.3"]
    assert lines[-1] == "dead items can be sent again with: spectnode retry ID | STUDY_UID | --all"
    assert "1.2.3.2" not in text  # delivered items are only counted


def test_enqueue_outputs_routes_kinds_by_destination_outputs(tmp_path: Path, study_a: tuple[str, list[Path]]) -> None:
    from spectnode.config import parse_config
    from spectnode.dispatch import destinations_by_name

    cfg = parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": [
                {"name": "local", "type": "folder", "path": "results"},
                {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
                 "outputs": ["sr"]},
            ],
        },
        check_dirs=False,
    )
    resolved = destinations_by_name(cfg)
    assert resolved["local"].path == tmp_path / "data" / "results"
    assert resolved["pacs"] == cfg.destinations[1]

    outbox = JobStore(tmp_path / "jobs.sqlite").outbox
    sr, sc = study_a[1][-1:], study_a[1][:1]
    peer = Peer(ae_title="MODALITY", address="10.0.0.5", port=0)
    ids = outbox.enqueue_outputs(study_a[0], {"sr": sr, "sc": sc}, cfg.destinations, sender=peer)
    items = outbox.list_items()
    assert [i.id for i in items] == ids
    assert [(i.destination, i.kind, i.files) for i in items] == [
        ("local", "sr", tuple(sr)), ("local", "sc", tuple(sc)), ("pacs", "sr", tuple(sr))
    ]
    assert all(i.sender == peer and i.state == "pending" for i in items)
    assert outbox.enqueue_outputs(study_a[0], {"sr": sr, "sc": sc}, cfg.destinations, sender=peer) == ids
    assert outbox.counts() == {"pending": 3, "sending": 0, "awaiting_commitment": 0, "delivered": 0, "dead": 0,
                               "superseded": 0}


def test_items_of_an_older_generation_are_superseded_not_sent(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    clock = FakeClock()
    study_uid, files = study_a
    sent: list[tuple[Path, ...]] = []

    def send(destination: DestinationConfig, files: tuple[Path, ...], **kwargs: object) -> None:
        if destination.name == "down":
            raise DispatchError("connection refused", peer_unreachable=True)
        sent.append(files)

    down = DestinationConfig(name="down", type="dicom", ae_title="DOWN", host="127.0.0.1", port=free_port())
    dests = {"down": down, "local": DestinationConfig(name="local", type="folder", path=tmp_path / "out")}
    stage = dispatcher(tmp_path, dests, clock=clock, send=send, max_attempts=2)
    outbox, store = stage.outbox, stage.store
    at_generation(store, study_uid, 1)
    old_dead = outbox.enqueue(study_uid, "down", "sr", files[:1], generation=1)
    stage.deliver_due()
    clock.advance(60)
    stage.deliver_due()
    assert outbox.get(old_dead).state == "dead"
    backing_off = outbox.enqueue(study_uid, "down", "sc", files[1:2], generation=1)
    stage.deliver_due()
    assert outbox.get(backing_off).next_attempt_at > clock.now  # waiting, not due
    old_pending = outbox.enqueue(study_uid, "local", "sr", files[:1], generation=1)
    # The study is re-opened (generation 2): the items of generation 1 are not sent, due or not.
    at_generation(store, study_uid, 2)
    assert stage.deliver_due() == []
    tried = outbox.get(old_pending)
    assert tried.state == "superseded" and sent == []
    assert tried.last_error == "superseded by generation 2 of the study"
    assert outbox.get(backing_off).state == "superseded"
    # Queueing generation 2 supersedes the dead item of generation 1: retrying everything cannot resend it.
    new = outbox.enqueue(study_uid, "local", "sr", files[1:2], generation=2)
    assert outbox.get(old_dead).state == "superseded"
    assert outbox.retry() == 0
    assert not outbox.study_delivered(study_uid, 2)
    stage.deliver_due()
    assert sent == [tuple(files[1:2])] and outbox.get(new).state == "delivered"
    # Only the current generation counts: the study is delivered despite its older, undelivered items.
    assert outbox.study_delivered(study_uid, 2) and not outbox.study_delivered(study_uid, 1)
    assert [i.id for i in outbox.list_items(generation=2)] == [new]
    text = format_outbox_status(outbox.list_items(), now=clock.now, counts=outbox.counts())
    assert text == "outbox: 0 pending (0 retrying), 0 sending, 1 delivered, 0 dead, 3 superseded"


def test_new_items_for_a_destination_in_backoff_wait_without_a_connection_attempt(
    tmp_path: Path, study_a: tuple[str, list[Path]]
) -> None:
    clock = FakeClock()
    calls: list[str] = []

    def counting_send(destination: DestinationConfig, files: list[Path], **kwargs: object) -> None:
        calls.append(destination.name)
        send_files(destination, files, **kwargs)  # type: ignore[arg-type]

    dests = {
        "pacs": refused_destination(),
        "local": DestinationConfig(name="local", type="folder", path=tmp_path / "out"),
    }
    stage = dispatcher(tmp_path, dests, clock=clock, send=counting_send, base_delay_s=5)
    outbox = stage.outbox
    first = outbox.enqueue("1.2.3.1", "pacs", "sr", study_a[1][-1:])
    stage.deliver_due()
    assert calls == ["pacs"]
    # A later study's results: the item for "pacs" is due, but "pacs" is backing off; the folder is not.
    later = outbox.enqueue("1.2.3.2", "pacs", "sr", study_a[1][-1:])
    local = outbox.enqueue("1.2.3.2", "local", "sr", study_a[1][-1:])
    clock.advance(1)
    tried = stage.deliver_due()
    assert [i.id for i in tried] == [local] and calls == ["pacs", "local"]
    assert (outbox.get(later).state, outbox.get(later).attempts) == ("pending", 0)
    # An operator's retry is tried at once, backoff or not.
    assert outbox.retry(item_id=first) == 1
    stage.deliver_due()
    assert calls == ["pacs", "local", "pacs"]
    assert outbox.get(later).attempts == 0  # still waiting for the destination's backoff
    # Once the backoff is over, both are due: one connection attempt, and both fail with its reason.
    clock.advance(5)
    stage.deliver_due()
    assert calls == ["pacs", "local", "pacs", "pacs"]
    assert [outbox.get(i).attempts for i in (first, later)] == [2, 1]
    assert outbox.get(first).last_error == outbox.get(later).last_error
