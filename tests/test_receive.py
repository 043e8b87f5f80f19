"""The storage SCP with real peers (DCMTK storescu/echoscu, pynetdicom): spool, store, statuses, faults."""

from __future__ import annotations

import hashlib
import logging
import resource
import shutil
import sqlite3
import subprocess
import threading
import warnings
import zlib
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLSNearLossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage, NuclearMedicineImageStorage

from spectnode.node.datadir import DataDir
from spectnode.node.stages.receive import ReceiveStage
from spectnode.phantom.dicom import LAYOUTS
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import JobStore

from dicomtools import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    require_tool,
)
from nodetools import echoscu, storescu

if TYPE_CHECKING:
    from collections.abc import Callable




@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("receive-phantoms")
    return generate_phantoms(out, n=len(LAYOUTS), seed=5)  # the first 9 studies take every layout once


class Node:
    """A receive stage in this process on a free port; ``stored`` lists the study UIDs ``on_stored`` got."""

    def __init__(self, root: Path, allowed=("CAMERA", "PACS"), store: JobStore | None = None,
                 on_stored: Callable[[str], None] | None = None) -> None:
        self.store = store if store is not None else JobStore(root / "jobs.sqlite")
        self.stored: list[str] = []
        self.scp = ReceiveStage(self.store, DataDir(root), ae_title="SPECTNODE", port=0,
                                allowed_calling_ae_titles=allowed, on_stored=on_stored or self.stored.append)
        self.scp.start()

    @property
    def port(self) -> int:
        return self.scp.port

    def close(self) -> None:
        self.scp.stop()
        self.store.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("receive-node"))
    yield n
    n.close()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, after its file meta."""
    data = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    buffer = BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=False)
    return data[128 + 4 + len(buffer.getvalue()):]


def test_every_layout_is_spooled_as_received_and_recorded(node, phantoms):
    for record in phantoms:
        proc = storescu(node.port, record.files)
        assert proc.returncode == 0, f"{record.layout}: {proc.stderr}"
    for record in phantoms:
        study = node.store.study(record.study_uid)
        assert study is not None and study.instance_count == len(record.files), record.layout
        assert (study.calling_ae, study.peer_address) == ("CAMERA", "127.0.0.1")
        for source in record.files:
            sop = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
            spooled = _spooled(node, record.study_uid, sop)
            assert spooled == node.scp.data_dir.spooled_object(record.study_uid, sop,
                                                               hashlib.sha256(spooled.read_bytes()).hexdigest())
            # The dataset bytes are exactly what the camera sent (no re-encoding).
            assert dataset_bytes(spooled) == dataset_bytes(source), record.layout
            ts = pydicom.dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID
            assert ts == pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
            row = {r["sop_instance_uid"]: r for r in node.store.instances(record.study_uid)}[sop]
            assert row["sha256"] == hashlib.sha256(spooled.read_bytes()).hexdigest()
            assert row["modality"] == "NM"
    assert not list(node.scp.data_dir.spool.rglob("*.tmp"))


def test_c_echo(node):
    assert echoscu(node.port)


def test_unknown_calling_ae_and_wrong_called_ae_are_refused(node, phantoms, caplog):
    record = phantoms[0]
    before = node.store.counts_by_state()
    caplog.set_level(logging.WARNING, logger="spectnode.receive")
    bad_caller = storescu(node.port, record.files, aet="BADAE")
    assert bad_caller.returncode != 0
    assert "Calling AE Title Not Recognized" in bad_caller.stderr
    wrong_called = storescu(node.port, record.files, aec="NOTUS")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr
    assert node.store.counts_by_state() == before
    assert any("BADAE" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


#: Storage SOP classes from PS3.6 Annex A (UIDs written out, not taken from pynetdicom or spectnode).
STORAGE_CLASSES = {
    "NM Image": "1.2.840.10008.5.1.4.1.1.20",
    "NM Image (retired)": "1.2.840.10008.5.1.4.1.1.5",  # what older gamma cameras still send
    "CT Image": "1.2.840.10008.5.1.4.1.1.2",
    "MR Image": "1.2.840.10008.5.1.4.1.1.4",
    "Ultrasound Image": "1.2.840.10008.5.1.4.1.1.6.1",
    "Ultrasound Multi-frame Image": "1.2.840.10008.5.1.4.1.1.3.1",
    "Secondary Capture Image": "1.2.840.10008.5.1.4.1.1.7",
    "Multi-frame Grayscale Word SC Image": "1.2.840.10008.5.1.4.1.1.7.3",
    "Basic Text SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "Comprehensive SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "Positron Emission Tomography Image": "1.2.840.10008.5.1.4.1.1.128",
    "X-Ray Angiographic Image": "1.2.840.10008.5.1.4.1.1.12.1",
    "Encapsulated PDF": "1.2.840.10008.5.1.4.1.1.104.1",
    "RT Dose": "1.2.840.10008.5.1.4.1.1.481.2",
}
SYNTAXES = [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
            JPEGLossless, JPEGLSNearLossless, JPEG2000]


def test_storage_classes_of_many_modalities_and_common_transfer_syntaxes_are_accepted(node):
    ae = AE(ae_title="CAMERA")
    for sop_class in STORAGE_CLASSES.values():
        for ts in SYNTAXES:
            ae.add_requested_context(sop_class, ts)  # 98 contexts: one association can propose 128
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SPECTNODE")
    try:
        assert assoc.is_established
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        assert accepted == {(s, t) for s in STORAGE_CLASSES.values() for t in SYNTAXES}
    finally:
        assoc.release()


@pytest.mark.parametrize("name", sorted(STORAGE_CLASSES))
def test_an_object_of_each_storage_class_is_stored(node, name, tmp_path):
    ds = pydicom.Dataset()
    ds.SOPClassUID = STORAGE_CLASSES[name]
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "object.dcm"
    ds.save_as(path, enforce_file_format=True)
    # DCMTK storescu proposing only the file's own SOP class (-R): its default list lacks the retired
    # NM class, and pynetdicom's SCU refuses to send a class it does not know.
    proc = subprocess.run([require_tool("storescu"), "-R", "-aet", "CAMERA", "-aec", "SPECTNODE", "127.0.0.1",
                           str(node.port), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (row,) = node.store.instances(ds.StudyInstanceUID)
    assert (row["sop_instance_uid"], row["sop_class_uid"]) == (ds.SOPInstanceUID, STORAGE_CLASSES[name])
    assert _spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()


def _spooled(node: Node, study_uid: str, sop_instance_uid: str) -> Path:
    """The spooled file the job store records for an object."""
    (path,) = [Path(r["path"]) for r in node.store.instances(study_uid) if r["sop_instance_uid"] == sop_instance_uid]
    return path


def _send(port: int, payload, sop_class=NuclearMedicineImageStorage, ts=ExplicitVRLittleEndian) -> int:
    ae = AE(ae_title="CAMERA")
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(payload)
        return int(status.Status)
    finally:
        assoc.release()


def _raw_file(path: Path, body: bytes, sop: str, ts: str = ExplicitVRLittleEndian) -> Path:
    """A Part 10 file whose file meta is fine but whose dataset is ``body`` as given.

    Sent with pynetdicom's chunked sending, ``body`` goes on the wire unchanged, and the
    request's Affected SOP Instance UID is ``sop`` (the file meta's).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ts
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + body)
    return path


def _encoded(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    """``ds`` encoded as a dataset (no file meta), little endian."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    write_dataset(body, ds)
    return body.getvalue()


def _deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _header(phantoms) -> pydicom.Dataset:
    """A phantom object's header as a new study and instance (so nothing of it is known yet)."""
    ds = pydicom.dcmread(phantoms[0].files[0], stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    return ds


def _up_to_group_0020(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The elements of ``ds`` up to group 0020: every UID the node files an object by, no image."""
    head = pydicom.Dataset()
    for element in ds:
        if element.tag.group <= 0x0020:
            head.add(element)
    return head


def _cut_deflate_stream(ds: pydicom.Dataset) -> bytes:
    """A deflate stream of ``ds`` cut at an element boundary after group 0020, after a full flush:
    zlib inflates it without an error to whole elements, and no final block follows."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(_encoded(_up_to_group_0020(ds))) + packer.flush(zlib.Z_FULL_FLUSH)


# case -> (dataset bytes from the header's encoding, transfer syntax, what the node's log names)
MALFORMED = {
    "implicit VR under an explicit VR transfer syntax": (
        lambda ds: _encoded(ds, implicit=True), ExplicitVRLittleEndian,
        "the dataset is encoded in implicit VR, but its transfer syntax Explicit VR Little Endian is explicit VR"),
    "four bytes after the last element": (
        lambda ds: _encoded(ds) + b"\x01\x02\x03\x04", ExplicitVRLittleEndian,
        "4 byte(s) after the last complete element"),
    "an element that runs past the end": (
        lambda ds: _encoded(ds) + b"\x09\x00\x10\x00LO\xe8\x03" + b"x" * 10, ExplicitVRLittleEndian,
        "declares 1000 bytes but the dataset ends after 10"),
    "no element at all": (lambda ds: b"", ExplicitVRLittleEndian, "the dataset holds no data elements"),
    "a corrupt deflate stream": (
        # The first block header's type bits set to 11, a reserved block type (RFC 1951 3.2.3).
        lambda ds: bytes([_deflated(_encoded(ds))[0] | 0b110]) + _deflated(_encoded(ds))[1:],
        DeflatedExplicitVRLittleEndian, "cannot be inflated: Error -3 while decompressing data: invalid block type"),
    "a deflate stream cut short": (
        _cut_deflate_stream, DeflatedExplicitVRLittleEndian,
        "the deflate stream ends before its final block"),
    "bytes after the deflate stream": (
        lambda ds: _deflated(_encoded(ds)) + b"\x01\x02", DeflatedExplicitVRLittleEndian,
        "byte(s) after the end of the deflate stream"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_dataset_cannot_be_understood_and_the_log_says_why(node, phantoms, tmp_path, caplog,
                                                                      monkeypatch, case):
    encode, ts, reason = MALFORMED[case]
    caplog.set_level(logging.ERROR, logger="spectnode.receive")
    before = node.store.counts_by_state()
    # Send the dataset bytes as they are, without pynetdicom decoding them first.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = _header(phantoms)
    path = _raw_file(tmp_path / "malformed.dcm", encode(ds), str(ds.SOPInstanceUID), ts)
    assert _send(node.port, path, ts=ts) == STATUS_CANNOT_UNDERSTAND
    (line,) = [r.getMessage() for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert reason in line and "answered 0xC210" in line, line
    assert str(ds.SOPInstanceUID) not in line  # logging.patient_data is off
    assert node.store.counts_by_state() == before
    assert not node.scp.data_dir.spool_folder(str(ds.StudyInstanceUID)).exists()


def test_a_cut_deflate_stream_inflates_quietly_to_whole_elements(phantoms):
    """What makes "a deflate stream cut short" above a test of the end-of-stream check: zlib does not
    complain, and it gives whole elements with every UID, so no later check would notice."""
    ds = _header(phantoms)
    full, head = _encoded(ds), _encoded(_up_to_group_0020(ds))
    assert full.startswith(head) and len(head) < len(full)
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(_cut_deflate_stream(ds)) == head
    assert {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"} <= set(
        _up_to_group_0020(ds).dir())


def test_a_dataset_without_its_uids_does_not_match_its_sop_class(node, phantoms, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.ERROR, logger="spectnode.receive")
    before = node.store.counts_by_state()
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = pydicom.dcmread(phantoms[0].files[0])
    del ds.SOPInstanceUID
    del ds.StudyInstanceUID
    stripped = _raw_file(tmp_path / "no-uids.dcm", _encoded(ds), generate_uid())
    assert _send(node.port, stripped) == STATUS_DOES_NOT_MATCH_SOP_CLASS
    assert any("has no SOPInstanceUID and no StudyInstanceUID" in r.getMessage() for r in caplog.records)
    assert node.store.counts_by_state() == before


def test_an_affected_sop_instance_uid_other_than_the_datasets_is_logged_and_the_datasets_is_used(
        node, phantoms, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="spectnode.receive")
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = _header(phantoms)
    requested = generate_uid()
    path = _raw_file(tmp_path / "other-uid.dcm", _encoded(ds), requested)
    assert _send(node.port, path) == STATUS_SUCCESS
    assert [r["sop_instance_uid"] for r in node.store.instances(ds.StudyInstanceUID)] == [ds.SOPInstanceUID]
    assert _spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()
    assert node.scp.data_dir.spooled_versions(ds.StudyInstanceUID, requested) == []
    (line,) = [r.getMessage() for r in caplog.records if "names another SOP Instance UID" in r.getMessage()]
    assert "the C-STORE request names another SOP Instance UID than the dataset's; using the dataset's" in line
    assert requested not in line and ds.SOPInstanceUID not in line  # logging.patient_data is off


def _stored_once(node: Node, phantoms) -> tuple[pydicom.Dataset, dict]:
    """The first object of the phantoms, stored by C-STORE; and the job store's row of it."""
    ds = pydicom.dcmread(phantoms[0].files[0])
    assert _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID) == STATUS_SUCCESS
    (row,) = node.store.instances(str(ds.StudyInstanceUID))
    return ds, row


def _send_while_locked(node: Node, ds: pydicom.Dataset) -> int:
    """C-STORE ``ds`` while another connection (as another process would) holds the job store's write lock."""
    other = sqlite3.connect(node.store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        return _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID)
    finally:
        other.execute("ROLLBACK")
        other.close()


class FailingRecords(JobStore):
    """A job store whose recording of objects fails, as SQLite does on an I/O error."""

    def record_instance(self, record, peer, now=None):
        raise sqlite3.OperationalError("disk I/O error")


def test_a_job_store_failure_after_the_spool_write_answers_out_of_resources_and_leaves_no_file(
        tmp_path, phantoms, caplog):
    caplog.set_level(logging.ERROR, logger="spectnode.receive")
    failing = Node(tmp_path, store=FailingRecords(tmp_path / "jobs.sqlite"))
    try:
        ds = pydicom.dcmread(phantoms[0].files[0])
        assert _send(failing.port, ds, ts=ds.file_meta.TransferSyntaxUID) == STATUS_OUT_OF_RESOURCES
        assert [p for p in failing.scp.data_dir.spool.rglob("*") if p.is_file()] == []  # neither file nor .tmp
        assert failing.store.studies() == [] and failing.stored == []
        assert any("cannot be stored (OperationalError)" in r.getMessage() for r in caplog.records)
    finally:
        failing.close()


class CheckedBeforeTheOtherRecord(JobStore):
    """A job store whose next check of an object (``known_instance``) comes before another writer's
    record of it, as when two processes' C-STOREs of the same bytes overlap: it says "not seen" once."""

    stale = False

    def known_instance(self, study_uid, sop_instance_uid):
        if self.stale:
            self.stale = False
            return None
        return super().known_instance(study_uid, sop_instance_uid)


def test_an_identical_copy_whose_record_fails_leaves_the_recorded_file_of_the_same_name(tmp_path, phantoms):
    """Two C-STOREs of the same bytes write the same spool file; the first is recorded and answered Success.
    The second's record fails (another process holds the write lock, for real): its file, which is the
    first one's, stays."""
    store = CheckedBeforeTheOtherRecord(tmp_path / "jobs.sqlite", busy_timeout_s=0.2)
    node = Node(tmp_path, store=store)
    try:
        ds, row = _stored_once(node, phantoms)
        study_uid, sop, recorded = row["study_uid"], row["sop_instance_uid"], Path(row["path"])
        store.stale = True
        assert _send_while_locked(node, ds) == STATUS_OUT_OF_RESOURCES
        assert not store.stale  # the second C-STORE did get past the check to its record
        assert node.store.instances(study_uid) == [row]
        assert recorded.is_file() and hashlib.sha256(recorded.read_bytes()).hexdigest() == row["sha256"]
        assert _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID) == STATUS_SUCCESS  # identical: nothing to do
        assert node.scp.data_dir.spooled_versions(study_uid, sop) == [recorded]
    finally:
        node.close()


def test_an_on_stored_callback_that_raises_leaves_the_object_stored_with_success(tmp_path, phantoms, caplog):
    caplog.set_level(logging.ERROR, logger="spectnode.receive")

    def broken(study_uid: str) -> None:
        raise RuntimeError("the assemble stage cannot be woken")

    node = Node(tmp_path, on_stored=broken)
    try:
        ds = pydicom.dcmread(phantoms[0].files[0])
        assert _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID) == STATUS_SUCCESS
        assert [r["sop_instance_uid"] for r in node.store.instances(ds.StudyInstanceUID)] == [ds.SOPInstanceUID]
        assert _spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()
        assert any(f"study {ds.StudyInstanceUID}: on_stored callback failed" in r.getMessage()
                   for r in caplog.records)
    finally:
        node.close()


def test_duplicates_are_idempotent_and_changed_objects_are_noticed(node, phantoms):
    record = phantoms[0]
    storescu(node.port, record.files)  # already sent in the first test, or sent now
    study = node.store.study(record.study_uid)
    node.stored.clear()
    assert storescu(node.port, record.files).returncode == 0
    again = node.store.study(record.study_uid)
    assert again.content_version == study.content_version and not node.stored

    ds = pydicom.dcmread(record.files[0])
    ds.SeriesDescription = "WB edited"  # same SOP Instance UID, different content
    assert _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID) == 0
    changed = node.store.study(record.study_uid)
    assert changed.content_version == study.content_version + 1 and node.stored == [record.study_uid]
    spooled = _spooled(node, record.study_uid, ds.SOPInstanceUID)
    assert pydicom.dcmread(spooled, stop_before_pixels=True).SeriesDescription == "WB edited"


def test_a_changed_object_whose_record_fails_leaves_the_recorded_copy_as_recorded(tmp_path, phantoms):
    """The job store cannot record a changed copy (another process holds its write lock, for real): the
    copy the store records is not touched, and the refused one leaves no file. Sent again, the changed
    copy is recorded under a name of its own; the replaced copy is left to the retention policy."""
    node = Node(tmp_path, store=JobStore(tmp_path / "jobs.sqlite", busy_timeout_s=0.2))
    try:
        ds, row = _stored_once(node, phantoms)
        study_uid, sop, recorded = row["study_uid"], row["sop_instance_uid"], Path(row["path"])
        original = recorded.read_bytes()
        ds.SeriesDescription = "WB edited"  # same SOP Instance UID, other bytes
        assert _send_while_locked(node, ds) == STATUS_OUT_OF_RESOURCES
        assert node.store.instances(study_uid) == [row]
        assert hashlib.sha256(recorded.read_bytes()).hexdigest() == row["sha256"]
        assert node.scp.data_dir.spooled_versions(study_uid, sop) == [recorded]

        assert _send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID) == STATUS_SUCCESS
        (changed,) = node.store.instances(study_uid)
        assert Path(changed["path"]) != recorded and changed["sha256"] != row["sha256"]
        assert hashlib.sha256(Path(changed["path"]).read_bytes()).hexdigest() == changed["sha256"]
        assert recorded.read_bytes() == original
        assert sorted(node.scp.data_dir.spooled_versions(study_uid, sop)) == sorted([recorded, Path(changed["path"])])
    finally:
        node.close()


def test_deflated_dataset_is_stored(node):
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Deflate^Test"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert _send(node.port, ds, sop_class=CTImageStorage, ts=DeflatedExplicitVRLittleEndian) == 0
    spooled = _spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID)
    back = pydicom.dcmread(spooled)
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert back.PatientName == "Deflate^Test"


def test_a_broken_spool_answers_out_of_resources(tmp_path, phantoms, caplog):
    caplog.set_level(logging.ERROR, logger="spectnode.receive")
    broken = Node(tmp_path)
    try:
        # The spool folder is replaced by a plain file: every write fails with ENOTDIR.
        shutil.rmtree(broken.scp.data_dir.spool)
        broken.scp.data_dir.spool.write_text("not a folder")
        assert storescu(broken.port, phantoms[0].files).returncode != 0
        assert _send(broken.port, pydicom.dcmread(phantoms[0].files[0])) == STATUS_OUT_OF_RESOURCES
        assert broken.store.studies() == []
        assert any("out of resources" in r.getMessage() and "NotADirectoryError" in r.getMessage()
                   for r in caplog.records)
    finally:
        broken.close()


def test_a_full_disk_answers_out_of_resources(tmp_path, phantoms, caplog):
    """A real write failure: the file size limit (RLIMIT_FSIZE) makes writes fail with EFBIG,
    as a full disk makes them fail with ENOSPC (Python ignores SIGXFSZ, so write() returns the error)."""
    caplog.set_level(logging.ERROR, logger="spectnode.receive")
    small = Node(tmp_path)
    multiframe = next(r for r in phantoms if r.layout == "multiframe")
    assert multiframe.files[0].stat().st_size > 1_000_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, hard))
        status = _send(small.port, pydicom.dcmread(multiframe.files[0]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        assert status == STATUS_OUT_OF_RESOURCES
        assert small.store.studies() == []
        assert not [p for p in small.scp.data_dir.spool.rglob("*") if p.is_file()]  # no partial file left
        assert any("cannot be stored (OSError [EFBIG])" in r.getMessage() for r in caplog.records)
    finally:
        small.close()


def _implicit_file_labelled_explicit(path: Path, source: Path) -> Path:
    """A file whose meta says Explicit VR but whose dataset is Implicit VR: pydicom reads it with a warning."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    return _raw_file(path, body.getvalue(), str(ds.SOPInstanceUID))


def test_reads_warning_in_other_threads_do_not_fail_valid_stores(node, phantoms, tmp_path):
    """The structure check must not depend on the process-wide warning state: a stage thread
    reading a file that makes pydicom warn while an object arrives must not make a valid
    object count as broken (nor may the check swallow that thread's warnings)."""
    odd = _implicit_file_labelled_explicit(tmp_path / "odd.dcm", phantoms[0].files[0])
    with pytest.warns(UserWarning, match="Expected explicit VR, but found implicit VR"):
        pydicom.dcmread(odd)
    stop = threading.Event()
    reads = 0
    seen: list[warnings.WarningMessage] = []

    def read_odd_files() -> None:
        nonlocal reads
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            while not stop.is_set():
                pydicom.dcmread(odd)
                reads += 1
        seen.extend(caught)

    reader = threading.Thread(target=read_odd_files)
    reader.start()
    try:
        ds = pydicom.dcmread(phantoms[1].files[0])
        statuses = []
        for _ in range(15):
            ds.SOPInstanceUID = generate_uid()  # a new object each time, so each is checked and stored
            statuses.append(_send(node.port, ds, ts=ds.file_meta.TransferSyntaxUID))
    finally:
        stop.set()
        reader.join()
    assert reads > 15
    assert statuses == [0] * 15
    assert len(seen) == reads  # every read's warning reached its own thread


def test_truncated_pixel_data_is_not_understood(node, phantoms, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    source = phantoms[0].files[0]
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-1000])  # the pixel data ends 1000 bytes early
    before = node.store.counts_by_state()
    assert _send(node.port, cut, ts=ds.file_meta.TransferSyntaxUID) == STATUS_CANNOT_UNDERSTAND
    assert node.store.counts_by_state() == before
    assert _send(node.port, whole, ts=ds.file_meta.TransferSyntaxUID) == 0
