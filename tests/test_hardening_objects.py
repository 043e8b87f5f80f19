"""Every hostile object of issue 15, sent as raw bytes to a real ``spectnode serve``.

Each object either gets a failure status (and nothing is stored), or is
accepted and its study ends with a result or "not assessable", never with
Success followed by ``error``. The bytes are written element by element
(pydicom writes a ``RawDataElement`` as given) and sent unchanged
(pynetdicom's chunked sending), because pynetdicom's own encoder would
repair them.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import zlib
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from spectnode.node.logs import EscapingFormatter, JsonLineFormatter
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import END_STATES, ERROR, JobStore

from dicomtools import STATUS_CANNOT_UNDERSTAND, STATUS_DOES_NOT_MATCH_SOP_CLASS, STATUS_OUT_OF_RESOURCES
from nodetools import NodeProcess, free_port, wait_for, write_config

MAX_PEAK_RSS_BYTES = 2 * 1024**3


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-node")
    port = free_port()
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"],
                 "max_object_bytes": 64 * 1024 * 1024},
        "storage": {"data_dir": str(root / "data")},
        "completion": {"timeout_seconds": 2},
        # The values an object is refused for are logged only with patient_data: the forging test needs them.
        "logging": {"level": "INFO", "format": "text", "file": str(root / "node.log"), "patient_data": True},
    })
    process = NodeProcess(config, port, root / "stdout.log").start()
    store = JobStore(root / "data" / "spectnode.sqlite")
    yield {"process": process, "port": port, "store": store, "log": root / "node.log"}
    store.close()
    assert process.stop() == 0


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Dataset:
    """One real-looking multi-frame whole-body NM scan (both views in one object)."""
    records = generate_phantoms(tmp_path_factory.mktemp("hostile-phantom"), n=1, seed=3, layout="multiframe")
    return pydicom.dcmread(records[0].files[0])


def fresh(scan: Dataset) -> Dataset:
    """A copy of ``scan`` as a new study, series and instance."""
    ds = copy.deepcopy(scan)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    return ds


def raw(tag: str, vr: str, value: bytes) -> RawDataElement:
    """An element written exactly as ``value`` (padded to even length), in explicit VR."""
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def part10(ds: Dataset, path: Path, affected_sop: str | None = None, deflate: bool = False) -> Path:
    """``ds`` as a Part 10 file, its dataset bytes as given; the file meta names ``affected_sop``
    (pynetdicom's chunked sending takes the request's Affected SOP Instance UID from there)."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    data = body.getvalue()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.20")
    meta.MediaStorageSOPInstanceUID = affected_sop if affected_sop is not None else generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflate else ExplicitVRLittleEndian
    if deflate:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    header = BytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)
    path.write_bytes(header.getvalue() + data)
    return path


def send(port: int, path: Path, monkeypatch) -> int:
    """C-STORE the file's bytes unchanged; the status the node answered."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="CAMERA")
    ae.dimse_timeout = 60
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        assert "Status" in status, "no C-STORE response"
        return int(status.Status)
    finally:
        assoc.release()


def settled(store: JobStore, study_uid: str):
    return wait_for(lambda: (s := store.study(study_uid)) is not None and s.state in END_STATES
                    and not s.report_pending and s, 180, f"study {study_uid} to end")


def test_an_empty_affected_sop_instance_uid_gets_a_failure(node, scan, tmp_path, monkeypatch):
    ds = fresh(scan)
    assert send(node["port"], part10(ds, tmp_path / "x.dcm", affected_sop=""), monkeypatch) == \
        STATUS_CANNOT_UNDERSTAND
    assert node["store"].study(ds.StudyInstanceUID) is None


@pytest.mark.parametrize("case", ["no SeriesInstanceUID", "no SOPClassUID", "backslash in StudyInstanceUID",
                                  "65-character SOPInstanceUID", "letters in SeriesInstanceUID"])
def test_missing_or_invalid_uids_are_refused(node, scan, tmp_path, monkeypatch, case):
    ds = fresh(scan)
    study = ds.StudyInstanceUID
    if case == "no SeriesInstanceUID":
        del ds.SeriesInstanceUID
    elif case == "no SOPClassUID":
        del ds.SOPClassUID
    elif case == "backslash in StudyInstanceUID":
        study = f"{generate_uid()}\\1.2.3"
        ds[0x0020000D] = raw("0020000D", "UI", study.encode())
    elif case == "65-character SOPInstanceUID":
        ds[0x00080018] = raw("00080018", "UI", b"1." + b"1" * 63)
    else:
        ds[0x0020000E] = raw("0020000E", "UI", b"1.2.ABC")
    assert send(node["port"], part10(ds, tmp_path / "x.dcm"), monkeypatch) == STATUS_DOES_NOT_MATCH_SOP_CLASS
    assert node["store"].study(study) is None and node["store"].study(study.split("\\")[0]) is None


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_rows_or_columns_with_the_wrong_vr_cannot_be_understood(node, scan, tmp_path, monkeypatch, keyword):
    ds = fresh(scan)
    tag = {"Rows": "00280010", "Columns": "00280011"}[keyword]
    ds[int(tag, 16)] = raw(tag, "LO", b"1024")
    assert send(node["port"], part10(ds, tmp_path / "x.dcm"), monkeypatch) == STATUS_CANNOT_UNDERSTAND
    assert node["store"].study(ds.StudyInstanceUID) is None


def test_a_deflate_bomb_is_refused_while_inflating(node, scan, tmp_path, monkeypatch):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "NM"
    # About 1 MB on the wire, 1 GiB inflated: the bomb took 4.4 GB of memory.
    ds[0x00091010] = raw("00091010", "OB", bytes(1024**3))
    bomb = part10(ds, tmp_path / "bomb.dcm", deflate=True)
    del ds
    assert bomb.stat().st_size < 2 * 1024**2
    assert send(node["port"], bomb, monkeypatch) == STATUS_OUT_OF_RESOURCES
    status = Path(f"/proc/{node['process'].proc.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kib * 1024 < MAX_PEAK_RSS_BYTES


def test_a_newline_in_a_uid_forges_no_log_line(node, scan, tmp_path, monkeypatch):
    ds = fresh(scan)
    forged = "1.2.3\n2030-01-01 00:00:00,000 ERROR spectnode.x: FORGED"
    ds[0x00080018] = raw("00080018", "UI", forged.encode())
    assert send(node["port"], part10(ds, tmp_path / "x.dcm"), monkeypatch) == STATUS_DOES_NOT_MATCH_SOP_CLASS
    log = wait_for(lambda: "FORGED" in (text := node["log"].read_text()) and text, 10, "the refusal's log line")
    assert not re.search(r"^2030-01-01", log, re.MULTILINE)
    (line,) = [line for line in log.splitlines() if "FORGED" in line]
    assert "ERROR spectnode.receive: C-STORE from CAMERA@127.0.0.1" in line and "answered 0xA900" in line


def test_log_formats_escape_control_characters_in_any_value():
    """Whatever a message interpolates (%s of a network value included) stays on one line."""
    record = logging.LogRecord("spectnode.receive", logging.WARNING, __file__, 1, "uid %s from %s",
                               ("1.2\n2030-01-01 ERROR forged", "AE\r\x1b[2K"), None)
    record.study_uid = "1.2\n3"
    text = EscapingFormatter("%(levelname)s %(message)s").format(record)
    assert text == "WARNING uid 1.2\\x0a2030-01-01 ERROR forged from AE\\x0d\\x1b[2K"
    entry = JsonLineFormatter().format(record)
    assert (
        "\n" not in entry and json.loads(entry)["message"] == "uid 1.2\\x0a2030-01-01 ERROR forged from AE\\x0d\\x1b[2K"
    )
    assert json.loads(entry)["study_uid"] == "1.2\\x0a3"


@pytest.mark.parametrize("case", ["1 MB PatientName", "PatientName A\\B\\C\\D", "SpecificCharacterSet ISO_IR 999",
                                  "zeros with one hot pixel"])
def test_odd_attributes_end_with_a_result_or_not_assessable(node, scan, tmp_path, monkeypatch, case):
    ds = fresh(scan)
    if case == "1 MB PatientName":
        ds[0x00100010] = raw("00100010", "PN", b"A" * 1024 * 1024)
    elif case == "PatientName A\\B\\C\\D":
        ds[0x00100010] = raw("00100010", "PN", b"A\\B\\C\\D")
    elif case == "SpecificCharacterSet ISO_IR 999":
        ds[0x00080005] = raw("00080005", "CS", b"ISO_IR 999")
        ds[0x00100010] = raw("00100010", "PN", "M\u00fcller^J\u00fcrgen".encode("latin-1"))
    else:
        pixels = ds.pixel_array * 0
        pixels[0, 500, 100] = 60000
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
    assert send(node["port"], part10(ds, tmp_path / "x.dcm"), monkeypatch) == 0
    study = settled(node["store"], ds.StudyInstanceUID)
    assert study.state != ERROR, study
    if case == "zeros with one hot pixel":
        assert study.state == "not_assessable", study
