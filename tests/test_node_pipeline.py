"""The node end to end with real peers on loopback: one ``spectnode serve`` process for the module.

DCMTK storescu plays the camera, a real Orthanc is the PACS destination, and
the SR and secondary captures are read back through Orthanc's REST API,
checked against the classification and validated with dciodvfy.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

from spectnode.phantom.dicom import LAYOUTS
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import certainty_percent
from spectnode.report.content import class_code
from spectnode.store import DISPATCHED, END_STATES, NOT_ASSESSABLE, REPORTED, JobStore

from dicomtools import dciodvfy_errors
from nodetools import (
    NodeProcess,
    free_port,
    run_spectnode,
    sr_code_values,
    sr_findings,
    sr_text_values,
    storescu,
    tiny_bundle,
    wait_for,
    write_config,
)
from orthanc import OrthancServer

SR_MODALITY = "SR"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with OrthancServer(tmp_path_factory.mktemp("pacs")) as server:
        yield server


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs):
    root = tmp_path_factory.mktemp("node")
    port = free_port()
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "bind_address": "127.0.0.1",
                 "allowed_calling_ae_titles": ["CAMERA", "SCU"]},
        "storage": {"data_dir": str(root / "data")},
        "destinations": [
            {"name": "local", "type": "folder", "path": "delivered", "outputs": ["sr", "sc"]},
            {"name": "pacs", "type": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
             "port": pacs.dicom_port, "outputs": ["sr", "sc"]},
        ],
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        "completion": {"timeout_seconds": 3},
        "report": {"not_assessable_sr": True},
        "dispatch": {"max_attempts": 40, "retry_base_seconds": 0.5, "retry_max_seconds": 1.0},
        "logging": {"level": "INFO", "format": "json", "file": str(root / "node.log")},
    })
    node = NodeProcess(config, port, root / "stdout.log").start()
    store = JobStore(root / "data" / "spectnode.sqlite")
    yield {"root": root, "config": config, "port": port, "node": node, "store": store}
    store.close()
    assert node.stop() == 0, node.log_text()[-2000:]


def settle(store: JobStore, study_uids, timeout: float = 90.0, states=END_STATES):
    def done():
        records = [store.study(uid) for uid in study_uids]
        return records if all(r is not None and r.state in states and not r.report_pending for r in records) else None

    return wait_for(done, timeout, f"studies {study_uids} to reach {states}")


@pytest.fixture(scope="module")
def layouts(setup, tmp_path_factory):
    """One phantom study per layout, sent by storescu and processed."""
    records = generate_phantoms(tmp_path_factory.mktemp("phantoms"), n=len(LAYOUTS), seed=11)
    assert {r.layout for r in records} == set(LAYOUTS)
    for record in records:
        proc = storescu(setup["port"], record.files)
        assert proc.returncode == 0, f"{record.layout}: {proc.stderr}"
    settle(setup["store"], [r.study_uid for r in records])
    return records


def test_every_layout_is_completed_by_content_classified_and_dispatched(setup, layouts):
    store = setup["store"]
    for record in layouts:
        study = store.study(record.study_uid)
        assert study.state == DISPATCHED, (record.layout, study.state, study.reason)
        assert study.completed_by == "content", record.layout  # no idle timeout waited for
        assert (study.calling_ae, study.peer_address) == ("CAMERA", "127.0.0.1")
        probabilities = study.result.probabilities
        assert study.result.label == max(probabilities, key=probabilities.get)
        assert sorted(study.result.views) == ["anterior", "posterior"]
        outputs = store.outputs(record.study_uid)
        assert sorted(o.kind for o in outputs) == ["sc", "sc", "sr"]
        for output in outputs:
            assert output.path.is_file()
            assert output.path.parent == setup["root"] / "data" / "results" / record.study_uid
        summary = json.loads((output.path.parent / "result.json").read_text())
        assert summary["label"] == study.result.label


def test_pacs_receives_sr_and_sc_that_match_the_classification(setup, layouts, pacs, tmp_path):
    store = setup["store"]
    for record in layouts:
        study = store.study(record.study_uid)
        datasets = [pacs.instance_dataset(i) for i in pacs.instances_of_study(record.study_uid)]
        srs = [ds for ds in datasets if ds.Modality == SR_MODALITY]
        scs = [ds for ds in datasets if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"]
        assert len(srs) == 1 and len(scs) == 2, record.layout
        sr = srs[0]
        expected = {class_code(name).value: certainty_percent(p) for name, p in study.result.probabilities.items()}
        assert sr_findings(sr) == pytest.approx(expected, abs=0.006)
        assert ("99SPECTNODE:TOPCLASS", class_code(study.result.label).value) in sr_code_values(sr)
        assert sr.StudyInstanceUID == record.study_uid and sr.PatientID == record.patient_id
        assert {str(o.sop_instance_uid) for o in store.outputs(record.study_uid)} == \
            {str(ds.SOPInstanceUID) for ds in (sr, *scs)}
        for ds in (sr, *scs):
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(pacs.instance_file(next(i for i in pacs.instances_of_study(record.study_uid)
                                                     if pacs.instance_tags(i)["SOPInstanceUID"] ==
                                                     ds.SOPInstanceUID)))
            assert dciodvfy_errors(path) == [], (record.layout, ds.Modality)


def log_entries(setup) -> list[dict]:
    """The node's JSON log lines so far."""
    return [json.loads(line) for line in (setup["root"] / "node.log").read_text().splitlines() if line.strip()]


def test_logs_are_json_lines_with_study_and_calling_ae(setup, layouts):
    lines = log_entries(setup)
    study_uid = layouts[0].study_uid
    mine = [entry for entry in lines if entry.get("study_uid") == study_uid]
    assert any(e.get("calling_ae") == "CAMERA" and "stored" in e["message"] for e in mine)
    assert any("classified as" in e["message"] and study_uid in e["message"] for e in mine)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in lines)


def test_unknown_calling_ae_is_refused_and_nothing_stored(setup, tmp_path):
    record = generate_phantoms(tmp_path, n=1, seed=404)[0]
    proc = storescu(setup["port"], record.files, aet="BADAE")
    assert proc.returncode != 0 and "Calling AE Title Not Recognized" in proc.stderr
    assert setup["store"].study(record.study_uid) is None
    assert not (setup["root"] / "data" / "spool" / record.study_uid).exists()


def _send(port: int, ds: object, sop_class, raw: bool = False) -> int:
    from pynetdicom import AE
    from pynetdicom import _config as pynetdicom_config

    ae = AE(ae_title="SCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
    assert assoc.is_established
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    try:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = raw
        return int(assoc.send_c_store(ds).Status)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def test_a_dataset_without_sop_instance_uid_is_refused(setup, tmp_path, layouts):
    ds = pydicom.dcmread(layouts[0].files[0])
    ds.StudyInstanceUID = generate_uid()
    sop = generate_uid()
    del ds.SOPInstanceUID
    # pynetdicom will not send such a dataset itself; send it as a file whose meta names an instance.
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "no-sop.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert _send(setup["port"], path, NuclearMedicineImageStorage, raw=True) == 0xA900
    assert setup["store"].study(ds.StudyInstanceUID) is None


def _ct_dataset(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "CT-1"
    ds.PatientName = "Ct^Only"
    ds.StudyDate, ds.StudyTime = "20250101", "120000"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
    return ds


def test_a_ct_study_ends_not_assessable_with_its_reason_and_no_sr(setup, pacs):
    study_uid = generate_uid()
    assert _send(setup["port"], _ct_dataset(study_uid), CTImageStorage) == 0
    (study,) = settle(setup["store"], [study_uid], timeout=60)
    assert study.state == NOT_ASSESSABLE and study.completed_by == "timeout"
    assert "Modality CT" in study.reason and "NM" in study.reason
    # A study without any NM object was routed here by mistake: even with report.not_assessable_sr
    # on, no SR about it is written into PACS.
    assert not study.report_pending and setup["store"].outputs(study_uid) == []
    assert pacs.instances_of_study(study_uid) == []


def test_an_nm_study_that_is_no_whole_body_scan_gets_a_not_assessable_sr(setup, pacs):
    study_uid = generate_uid()
    ds = _ct_dataset(study_uid)  # a small static NM image: not a whole-body scan
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert _send(setup["port"], ds, NuclearMedicineImageStorage) == 0
    (study,) = settle(setup["store"], [study_uid], timeout=60)
    assert study.state == NOT_ASSESSABLE and "not a whole-body bone scan" in study.reason
    assert study.result.reason_code == "not_whole_body"
    # report.not_assessable_sr is on: the PACS gets an SR that says why.
    srs = wait_for(lambda: [i for i in pacs.instances_of_study(study_uid)
                            if pacs.instance_tags(i).get("Modality") == SR_MODALITY], 30, "the not-assessable SR")
    texts = sr_text_values(pacs.instance_dataset(srs[0]))
    assert any("not a whole-body bone scan" in t for t in texts)


def test_identical_resend_is_no_new_work_and_a_change_gets_a_successor_sr(setup, layouts, pacs, tmp_path):
    store = setup["store"]
    record = next(r for r in layouts if r.layout == "split-instances")
    before = store.study(record.study_uid)
    old_sr = next(o for o in store.outputs(record.study_uid) if o.kind == "sr")
    assert storescu(setup["port"], record.files).returncode == 0
    # The node answered Success only after deciding about each object; its audit trail and log say what it
    # decided (the log without SOP Instance UIDs: logging.patient_data is off).
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in record.files}
    assert sops <= {r.sop_instance_uid for r in store.receipts(record.study_uid)
                    if r.outcome == "identical copy received before; nothing to do"}
    wait_for(lambda: len([e for e in log_entries(setup) if e.get("study_uid") == record.study_uid
                          and "received again, identical; nothing to do" in e["message"]]) == len(sops),
             60, "the log lines of the identical objects")
    again = store.study(record.study_uid)
    assert (again.generation, again.state, again.content_version) == (before.generation, DISPATCHED,
                                                                       before.content_version)

    changed = pydicom.dcmread(record.files[1])
    changed.SeriesDescription = "WB POST corrected"  # same SOP Instance UID, new content
    path = tmp_path / "changed.dcm"
    changed.save_as(path)
    assert storescu(setup["port"], [path]).returncode == 0
    wait_for(lambda: (s := store.study(record.study_uid)).generation == before.generation + 1
             and s.state == DISPATCHED, 60, "the changed study to be processed again")
    (new_sr,) = [o for o in store.outputs(record.study_uid) if o.kind == "sr"]
    assert new_sr.sop_instance_uid != old_sr.sop_instance_uid
    ids = wait_for(lambda: [i for i in pacs.instances_of_study(record.study_uid)
                            if pacs.instance_tags(i)["SOPInstanceUID"] == new_sr.sop_instance_uid], 30, "new SR")
    sr = pacs.instance_dataset(ids[0])
    predecessors = [ref.ReferencedSOPInstanceUID
                    for study in sr.PredecessorDocumentsSequence
                    for series in study.ReferencedSeriesSequence
                    for ref in series.ReferencedSOPSequence]
    assert predecessors == [old_sr.sop_instance_uid]


def test_a_destination_that_goes_down_still_gets_everything(setup, pacs, tmp_path):
    store = setup["store"]
    record = generate_phantoms(tmp_path, n=1, seed=808, layout="split-series")[0]
    pacs.stop()
    try:
        assert storescu(setup["port"], record.files).returncode == 0
        wait_for(lambda: store.study(record.study_uid) and store.study(record.study_uid).state == REPORTED,
                 60, "the study to be reported")

        def retrying_items():
            proc = run_spectnode("status", "--config", str(setup["config"]), "--json")
            items = [i for i in json.loads(proc.stdout)["outbox"]["items"] if i["study_uid"] == record.study_uid]
            return items if any(i["attempts"] >= 2 for i in items) else None

        items = wait_for(retrying_items, 60, "two failed attempts in status", interval=0.5)
        assert {i["destination"] for i in items} == {"pacs"}  # the folder copy went through meanwhile
        assert all(i["state"] in ("pending", "sending") for i in items)
        assert any("127.0.0.1" in (i["last_error"] or "") for i in items)
    finally:
        pacs.start()
    settle(store, [record.study_uid], timeout=60)
    assert store.study(record.study_uid).state == DISPATCHED
    sops = {pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances_of_study(record.study_uid)}
    assert {o.sop_instance_uid for o in store.outputs(record.study_uid)} <= sops


def test_status_lists_studies_by_state(setup, layouts):
    proc = run_spectnode("status", "--config", str(setup["config"]))
    assert proc.returncode == 0, proc.stderr
    assert "dispatched" in proc.stdout and layouts[0].study_uid in proc.stdout
    assert "not_assessable" in proc.stdout and "Modality CT" in proc.stdout
    report = json.loads(run_spectnode("status", "--config", str(setup["config"]), "--json").stdout)
    assert report["counts"]["dispatched"] >= len(layouts)
    by_uid = {s["study_uid"]: s for s in report["studies"]}
    assert by_uid[layouts[0].study_uid]["label"] == setup["store"].study(layouts[0].study_uid).result.label


def test_a_single_view_is_processed_after_the_idle_timeout(setup, tmp_path):
    store = setup["store"]
    record = generate_phantoms(tmp_path, n=1, seed=909, layout="split-instances")[0]
    anterior_file = record.views["anterior"][0]
    assert storescu(setup["port"], [anterior_file]).returncode == 0
    (study,) = settle(store, [record.study_uid], timeout=90)
    assert study.state == DISPATCHED and study.completed_by == "timeout"  # not by content: one view
    (reason,) = [reason for _, state, reason in store.events(record.study_uid) if state == "complete"]
    assert "(completion.timeout_seconds 3) and both views not found" in reason
    assert study.result.views == ["anterior"]
    assert sorted(o.kind for o in store.outputs(record.study_uid)) == ["sc", "sr"]


def test_views_named_by_headers_complete_a_study_whose_pixels_cannot_be_decoded(setup, tmp_path):
    """Completion reads headers only; the one decode is the classify stage's, and when it fails the
    study ends not assessable at once instead of waiting for the idle timeout."""
    record = generate_phantoms(tmp_path, n=1, seed=515, layout="split-instances")[0]
    broken = []
    for i, source in enumerate(record.files):
        ds = pydicom.dcmread(source)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4]  # a quarter of the frame: cannot be decoded
        broken.append(tmp_path / f"broken{i}.dcm")
        ds.save_as(broken[-1])
    assert storescu(setup["port"], broken).returncode == 0
    (study,) = settle(setup["store"], [record.study_uid], timeout=60)
    assert study.state == NOT_ASSESSABLE and study.completed_by == "content"  # not by the idle timeout
    assert study.result.reason_code == "unreadable" and "(7FE0,0010) PixelData" in study.reason


def test_two_objects_naming_the_same_view_end_not_assessable_as_ambiguous(setup, tmp_path):
    """Two different anterior objects and a posterior: not complete by content, so the idle timeout
    completes the study, and the node says which view is ambiguous."""
    record = generate_phantoms(tmp_path, n=1, seed=616, layout="split-instances")[0]
    second = pydicom.dcmread(record.views["anterior"][0])
    second.SOPInstanceUID = generate_uid()  # another object that also says it is the anterior view
    second_path = tmp_path / "second-anterior.dcm"
    second.save_as(second_path)
    assert storescu(setup["port"], [*record.files, second_path]).returncode == 0
    (study,) = settle(setup["store"], [record.study_uid], timeout=90)
    assert study.state == NOT_ASSESSABLE and study.completed_by == "timeout"
    assert study.result.reason_code == "missing_views"
    assert study.reason.startswith("ambiguous: 2 different objects/frames are anterior views")
    assert study.instance_count == 3


def test_the_nodes_own_sr_and_sc_sent_back_are_recorded_as_its_own_and_not_processed(setup, layouts):
    store = setup["store"]
    record = next(r for r in layouts if r.layout == "multiframe")
    before = store.study(record.study_uid)
    outputs = store.outputs(record.study_uid)
    assert sorted(o.kind for o in outputs) == ["sc", "sc", "sr"]
    # A PACS echoes them back (storescu -R: its default proposal lacks Comprehensive 3D SR).
    assert storescu(setup["port"], [o.path for o in outputs], options=("-R",)).returncode == 0
    own = {str(o.sop_instance_uid) for o in outputs}
    assert own <= {r.sop_instance_uid for r in store.receipts(record.study_uid)
                   if r.outcome == "own result sent back; not re-processed"}
    wait_for(lambda: len([e for e in log_entries(setup) if e.get("study_uid") == record.study_uid
                          and "one of this node's own results, sent back; not re-processed" in e["message"]])
             == len(own), 60, "the log lines of the node's own objects")
    after = store.study(record.study_uid)
    assert (after.generation, after.state, after.content_version, after.instance_count) == (
        before.generation, DISPATCHED, before.content_version, before.instance_count)
    assert not own & {row["sop_instance_uid"] for row in store.instances(record.study_uid)}
