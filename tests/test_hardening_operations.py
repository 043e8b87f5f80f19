"""Audit trail, logs without patient data, Prometheus and /healthz, SIGTERM (issue 15, points 7 and 8).

One real ``spectnode serve`` on loopback, fed by DCMTK's storescu, delivering
to a DCMTK storescp (the "PACS"), with metrics on:

* ``spectnode status STUDY_UID`` shows who sent each object (AE title,
  address), when, each stage's outcome and time, and where each output went
  with the peer's acknowledgement;
* the JSON log holds the study UID but neither the patient's name nor ID;
* ``/metrics`` reports studies by outcome, per-stage latency histograms,
  outbox depth and age, free disk and refused associations by reason;
  ``/healthz`` says ok, and degraded once a destination is down long enough;
* SIGTERM: new associations are refused at once, an association in flight
  can still store and release, and the process exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pydicom
import pytest
from pynetdicom import AE

from spectnode.node.stages.receive import ReceiveStage
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import DISPATCHED, JobStore

from dicomtools import require_tool
from nodetools import NodeProcess, free_port, run_spectnode, storescu, tiny_bundle, wait_for, write_config


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` of the Prometheus text format."""
    (line,) = [line for line in text.splitlines() if line.split(" ")[0] == name]
    return float(line.split(" ")[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("operations")
    port, pacs_port, metrics_port = free_port(), free_port(), free_port()
    received = root / "pacs"
    received.mkdir()
    pacs = subprocess.Popen([require_tool("storescp"), "-aet", "PACS", "-od", str(received), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"],
                 "shutdown_grace_seconds": 20},
        "storage": {"data_dir": str(root / "data"), "min_free_bytes": 1024 * 1024},
        "destinations": [{"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": pacs_port, "outputs": ["sr"]}],
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        "completion": {"timeout_seconds": 30},
        "dispatch": {"retry_base_seconds": 0.2, "retry_max_seconds": 0.5},
        "logging": {"level": "INFO", "format": "json", "file": str(root / "node.log")},
        "metrics": {"enabled": True, "port": metrics_port, "outbox_stuck_seconds": 2},
    })
    node = NodeProcess(config, port, root / "stdout.log")
    try:
        node.start()
        store = JobStore(root / "data" / "spectnode.sqlite")
        (record,) = generate_phantoms(root / "phantoms", n=1, seed=71, layout="split-instances")
        yield {"node": node, "port": port, "pacs": pacs, "pacs_port": pacs_port, "metrics_port": metrics_port,
               "store": store, "record": record, "config": config, "log": root / "node.log"}
        store.close()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
        if pacs.poll() is None:
            pacs.kill()
            pacs.wait()


def test_status_study_uid_shows_the_audit_trail(env):
    store, record = env["store"], env["record"]
    assert storescu(env["port"], record.files).returncode == 0
    wait_for(lambda: (s := store.study(record.study_uid)) and s.state == DISPATCHED, 120, "the study to be dispatched")
    proc = run_spectnode("status", "--config", str(env["config"]), record.study_uid)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in record.files]
    for sop in sops:  # who sent each object, and what the node answered
        (line,) = [line for line in text.splitlines() if sop in line]
        assert "from CAMERA@127.0.0.1:" in line and "(to SPECTNODE)" in line and "status 0x0000: stored" in line
    for stage in ("received: first object from CAMERA@127.0.0.1", "complete: complete by content",
                  "classified: classified as", "reported: ", "dispatched: every output delivered"):
        assert stage in text, text
    assert f"acknowledged by PACS@127.0.0.1:{env['pacs_port']} with C-STORE status Success" in text
    audit = json.loads(run_spectnode("status", "--json", "--config", str(env["config"]), record.study_uid).stdout)
    assert [r["sop_instance_uid"] for r in audit["received"]] == sops
    assert [h["state"] for h in audit["history"]] == ["received", "received", "complete", "classified", "reported",
                                                      "dispatched"][-len(audit["history"]):]
    assert all(h["seconds"] >= 0 for h in audit["history"])
    (delivery,) = audit["deliveries"]
    assert delivery["state"] == "delivered" and delivery["delivered_at"] >= delivery["queued_at"]
    missing = run_spectnode("status", "--config", str(env["config"]), "1.2.3.4")
    assert missing.returncode == 1 and "no study 1.2.3.4" in missing.stderr


def test_the_json_log_holds_no_patient_name_or_id(env):
    header = pydicom.dcmread(env["record"].files[0], stop_before_pixels=True)
    name, patient_id = str(header.PatientName), str(header.PatientID)
    assert name and patient_id
    log = env["log"].read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    assert any(e.get("study_uid") == env["record"].study_uid for e in entries)
    assert name not in log and name.replace("^", " ") not in log and patient_id not in log


def test_logging_patient_data_puts_them_in_the_log_only_when_allowed(tmp_path, store, data_dir, caplog):
    for seed, allowed in ((72, False), (75, True)):
        (record,) = generate_phantoms(tmp_path / str(seed), n=1, seed=seed, layout="multiframe")
        header = pydicom.dcmread(record.files[0], stop_before_pixels=True)
        stage = ReceiveStage(store, data_dir, ae_title="SPECTNODE", port=0, log_patient_data=allowed)
        stage.start()
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="spectnode.receive"):
                assert storescu(stage.port, record.files).returncode == 0
            (stored,) = [r for r in caplog.records if "stored NM instance" in r.getMessage()]
            assert (getattr(stored, "patient_id", None) == str(header.PatientID)) is allowed
            assert (getattr(stored, "patient_name", None) == str(header.PatientName)) is allowed
            assert str(header.PatientID) not in stored.getMessage()
        finally:
            stage.stop()


def test_metrics_report_outcomes_latency_outbox_disk_and_refusals(env):
    port = env["metrics_port"]
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", env["port"], ae_title="SPECTNODE")
    assert assoc.is_rejected
    code, text = _get(port, "/metrics")
    assert code == 200
    assert _metric(text, 'spectnode_studies{state="dispatched"}') >= 1
    assert _metric(text, 'spectnode_refused_associations_total{reason="calling_ae_title"}') == 1
    for stage in ("receive", "assemble", "classify", "report", "dispatch"):
        assert _metric(text, f'spectnode_stage_seconds_count{{stage="{stage}"}}') >= 1
    assert _metric(text, 'spectnode_cstore_answers_total{status="0x0000"}') >= 2
    assert _metric(text, "spectnode_outbox_depth") == 0
    assert _metric(text, "spectnode_outbox_oldest_undelivered_age_seconds") == 0
    assert _metric(text, "spectnode_disk_free_bytes") > _metric(text, "spectnode_disk_min_free_bytes") > 0
    assert _get(port, "/healthz") == (200, json.dumps({"status": "ok"}))


def test_healthz_is_degraded_while_the_outbox_is_stuck(env):
    env["pacs"].kill()  # the PACS goes down
    env["pacs"].wait()
    (record,) = generate_phantoms(env["record"].files[0].parent.parent / "second", n=1, seed=73, layout="multiframe")
    assert storescu(env["port"], record.files).returncode == 0

    def degraded():
        code, body = _get(env["metrics_port"], "/healthz")
        return code == 503 and json.loads(body)
    body = wait_for(degraded, 120, "/healthz to report the stuck outbox")
    assert body["status"] == "degraded" and any("outbox stuck" in p for p in body["problems"])
    _, text = _get(env["metrics_port"], "/metrics")
    assert _metric(text, "spectnode_outbox_depth") >= 1 and _metric(text, "spectnode_healthy") == 0


def test_sigterm_refuses_new_associations_and_lets_one_in_flight_finish(env):
    node = env["node"]
    (record,) = generate_phantoms(env["record"].files[0].parent.parent / "third", n=1, seed=74, layout="multiframe")
    ds = pydicom.dcmread(record.files[0])
    ae = AE(ae_title="CAMERA")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", env["port"], ae_title="SPECTNODE")
    assert assoc.is_established
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "waiting up to 20 s for 1 association(s) in flight" in env["log"].read_text(), 30,
             "the node to close its listener")
    late = AE(ae_title="CAMERA")
    late.add_requested_context("1.2.840.10008.1.1")
    assert not late.associate("127.0.0.1", env["port"], ae_title="SPECTNODE").is_established
    assert int(assoc.send_c_store(ds).Status) == 0x0000  # in flight: still stored
    assoc.release()
    started = time.monotonic()
    assert node.proc.wait(timeout=60) == 0
    assert time.monotonic() - started < 20  # it did not wait out the grace period
    assert env["store"].study(record.study_uid) is not None
