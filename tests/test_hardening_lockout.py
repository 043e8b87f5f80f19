"""Nobody can lock the node out (issue 15): a real ``spectnode serve`` against stalled and idle peers.

Loopback has a whole /8: the hostile peers connect from 127.0.0.2 and
127.0.0.3 (``bind``), the camera (DCMTK storescu) from 127.0.0.1, so the
per-address limit is tested as it works on a real network.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from typing import TYPE_CHECKING

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomtools import require_tool
from nodetools import NodeProcess, free_port, wait_for, write_config

if TYPE_CHECKING:
    from pathlib import Path

STALLED_FROM = "127.0.0.2"
IDLE_FROM = "127.0.0.3"
#: How long storescu may take before the test calls it hung. Not a performance bound: that the
#: sender got through while the attackers' connections were still held shows the limits did it,
#: not a timeout (the default timeouts, 30 s and more, would free their slots only later).
HUNG_S = 120.0


def tiny_object(path: Path) -> Path:
    """A small valid Secondary Capture object for storescu."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Lockout^Test"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 4, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu_from(port: int, file: Path, timeout: float) -> subprocess.CompletedProcess:
    """DCMTK storescu from 127.0.0.1 (the allowed camera), killed after ``timeout`` seconds."""
    cmd = [require_tool("storescu"), "-aet", "CAMERA", "-aec", "SPECTNODE", "-ta", "5", "127.0.0.1", str(port),
           str(file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def stalled_connections(port: int, n: int, source: str, payload: bytes = b"\x01\x00\x00") -> list[socket.socket]:
    """``n`` connections from ``source`` that send the first bytes of a PDU and go quiet."""
    sockets = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(payload)
        except OSError:
            pass  # refused or reset at once: the node closed it, as a refused connection should be
        sockets.append(sock)
    return sockets


def idle_associations(port: int, n: int, source: str) -> tuple[AE, list]:
    """``n`` established associations from ``source`` that then send nothing."""
    ae = AE(ae_title="CAMERA")
    ae.add_requested_context(Verification)
    ae.network_timeout = None  # the client itself must never give up: the node has to
    ae.acse_timeout = 60  # a hang-only deadline: a loaded machine may take seconds to answer
    assocs = [ae.associate("127.0.0.1", port, ae_title="SPECTNODE", bind_address=(source, 0)) for _ in range(n)]
    return ae, assocs


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the node closed ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def start_node(root: Path, node: dict) -> NodeProcess:
    port = free_port()
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"], **node},
        "storage": {"data_dir": str(root / "data")},
        "logging": {"level": "INFO", "file": str(root / "node.log")},
    })
    return NodeProcess(config, port, root / "stdout.log").start()


@pytest.fixture(scope="module")
def default_node(tmp_path_factory):
    """A node with the default limits and timeouts (30 s and more: too long to rescue anyone in 10 s)."""
    node = start_node(tmp_path_factory.mktemp("lockout-default"), {})
    yield node
    assert node.stop() == 0


@pytest.fixture(scope="module")
def quick_node(tmp_path_factory):
    """A node with short timeouts, to see each one end a connection."""
    node = start_node(tmp_path_factory.mktemp("lockout-quick"), {
        "max_associations": 6, "max_associations_per_peer": 3,
        "timeouts": {"association_request_seconds": 2, "pdu_seconds": 2, "idle_seconds": 2, "dimse_seconds": 2},
    })
    yield node
    assert node.stop() == 0


def test_a_sender_gets_through_while_50_connections_stall_and_50_associations_idle(default_node, tmp_path):
    port = default_node.port
    stalled = stalled_connections(port, 50, STALLED_FROM)
    _ae, idle = idle_associations(port, 50, IDLE_FROM)
    try:
        # The node holds its per-address share of each (4 by default) and closed the rest unread.
        assert sum(a.is_established for a in idle) == 4
        proc = storescu_from(port, tiny_object(tmp_path / "camera.dcm"), timeout=HUNG_S)
        assert proc.returncode == 0, proc.stderr
        # The held ones are still open: no timeout freed a slot for the sender, the limits did.
        assert all(a.is_established for a in idle if a.is_established) and sum(a.is_established for a in idle) == 4
    finally:
        for sock in stalled:
            sock.close()
        for assoc in idle:
            if assoc.is_established:
                assoc.abort()
    log = default_node.log_text() + (default_node.log.parent / "node.log").read_text()
    assert f"connection from {STALLED_FROM} refused: {STALLED_FROM} already holds its maximum of 4" in log
    # One line per peer and reason, not 46: a flood must not flood the log.
    assert log.count(f"connection from {IDLE_FROM} refused") == 1


@pytest.fixture(scope="module")
def patient_node(tmp_path_factory):
    """A node whose association request and PDU deadlines (an hour) are far beyond any wait of the tests:
    whatever frees a slot here within them, it is not a deadline."""
    node = start_node(tmp_path_factory.mktemp("lockout-patient"), {
        "timeouts": {"association_request_seconds": 3600, "pdu_seconds": 3600}})
    yield node
    assert node.stop() == 0


def test_connections_opened_and_closed_free_their_slots_when_they_close(patient_node, tmp_path):
    """300 connections opened and closed used to keep the node refusing until their deadline (issue 15)."""
    port = patient_node.port
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    # The node frees a slot when its connection thread sees the close, which may take a moment under
    # load; the deadlines (an hour) would free them only long after this generous wait.
    camera = tiny_object(tmp_path / "after.dcm")
    wait_for(lambda: storescu_from(port, camera, timeout=HUNG_S).returncode == 0, HUNG_S,
             "a slot freed by the closed connections", interval=0.5)


def test_the_association_request_deadline_closes_a_partial_pdu(quick_node):
    (sock,) = stalled_connections(quick_node.port, 1, STALLED_FROM)
    try:
        assert closed_by_peer(sock, timeout=HUNG_S)
    finally:
        sock.close()


def test_a_silent_connection_is_closed_by_the_association_request_deadline(quick_node):
    sock = socket.create_connection(("127.0.0.1", quick_node.port), timeout=5)
    try:
        assert closed_by_peer(sock, timeout=HUNG_S)
    finally:
        sock.close()


def test_a_trickled_pdu_is_closed_by_its_deadline(quick_node):
    """One byte every 0.5 s never lets a per-read timeout (2 s) expire; the PDU deadline (2 s from the
    first byte) still ends the connection long before the PDU's 206 bytes (103 s) are through."""
    sock = socket.create_connection(("127.0.0.1", quick_node.port), timeout=5)
    pdu = struct.pack(">BBL", 0x01, 0, 200) + bytes(200)
    sent = 0
    try:
        for byte in pdu:
            # The trickle's pace is the attack itself; reading for 0.5 s between bytes also notices the close.
            if closed_by_peer(sock, timeout=0.5):
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            sent += 1
    finally:
        sock.close()
    assert sent < len(pdu), "the whole trickled PDU got through: no deadline ended it"


def test_an_idle_association_is_aborted_by_the_idle_timeout(quick_node):
    _ae, (assoc,) = idle_associations(quick_node.port, 1, IDLE_FROM)
    assert assoc.is_established
    wait_for(lambda: not assoc.is_alive(), HUNG_S, "the node to end the idle association")
    assert assoc.is_aborted


def test_an_oversized_pdu_ends_the_connection(quick_node):
    sock = socket.create_connection(("127.0.0.1", quick_node.port), timeout=5)
    try:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0x7FFFFFFF) + bytes(1024))
        assert closed_by_peer(sock, timeout=HUNG_S)
    finally:
        sock.close()
    # Closed for its length (not by a deadline): the log names it.
    assert "it sent a PDU of 2147483647 bytes" in (quick_node.log.parent / "node.log").read_text()


@pytest.fixture(scope="module")
def limited_node(tmp_path_factory):
    """6 associations in total, 3 per address, and deadlines far beyond any wait of the test, so that
    only the limits decide (the quick node's 2 s idle timeout would free slots under a loaded machine)."""
    node = start_node(tmp_path_factory.mktemp("lockout-limited"), {
        "max_associations": 6, "max_associations_per_peer": 3,
        "timeouts": {"association_request_seconds": 3600, "pdu_seconds": 3600, "idle_seconds": 3600,
                     "dimse_seconds": 3600},
    })
    yield node
    assert node.stop() == 0


def test_the_total_limit_holds_and_frees(limited_node, tmp_path):
    """6 in total, 3 per address: two addresses fill the node; a third is refused until they go."""
    port = limited_node.port
    _ae2, idle2 = idle_associations(port, 3, STALLED_FROM)
    _ae3, idle3 = idle_associations(port, 3, IDLE_FROM)
    try:
        assert all(a.is_established for a in idle2 + idle3)
        refused = storescu_from(port, tiny_object(tmp_path / "full.dcm"), timeout=HUNG_S)
        assert refused.returncode != 0
    finally:
        for assoc in idle2 + idle3:
            assoc.release()
    wait_for(lambda: storescu_from(port, tmp_path / "full.dcm", timeout=HUNG_S).returncode == 0, HUNG_S,
             "a slot to be free again")
    assert "the node already holds its maximum of 6 connections" in (limited_node.log.parent / "node.log").read_text()
