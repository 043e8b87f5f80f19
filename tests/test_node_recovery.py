"""Crash and restart, stage errors, dead letters and retries, return to sender: a ``spectnode serve``
process that the tests SIGKILL and start again on the same data directory."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest

from spectnode.phantom.generate import generate_phantoms
from spectnode.store import COMPLETE, DISPATCHED, END_STATES, ERROR, RECEIVED, REPORTED, JobStore

from dicomtools import require_tool
from nodetools import (
    NodeProcess,
    free_port,
    run_spectnode,
    sr_findings,
    storescu,
    tiny_bundle,
    wait_for,
    write_config,
)
from orthanc import OrthancServer

#: ``spectnode serve`` with a model loading that waits for a file (the test's point to kill at).
GATED_SERVE = Path(__file__).with_name("gated_serve.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    port = free_port()
    with OrthancServer(root / "pacs", modalities={"spectnode": ("SPECTNODE", "127.0.0.1", port)}) as pacs:
        settings = {
            "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA", "ORTHANC"]},
            "storage": {"data_dir": str(root / "data")},
            "destinations": [
                {"name": "local", "type": "folder", "path": "delivered", "outputs": ["sr", "sc"]},
                # Results go back to whoever sent the study, at the PACS's port.
                {"name": "back", "type": "sender", "port": pacs.dicom_port, "outputs": ["sr"]},
            ],
            "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
            "completion": {"timeout_seconds": 60},
            "dispatch": {"max_attempts": 2, "retry_base_seconds": 0.3, "retry_max_seconds": 0.5},
        }
        config = write_config(root / "spectnode.yaml", settings)
        node = NodeProcess(config, port, root / "node.log").start()
        try:
            store = JobStore(root / "data" / "spectnode.sqlite")
        except BaseException:
            node.kill()  # a failed setup must not leave a node process behind
            raise
        state = {"root": root, "port": port, "pacs": pacs, "node": node, "store": store, "config": config,
                 "settings": settings, "phantoms": root / "phantoms"}
        yield state
        store.close()
        assert state["node"].stop() == 0  # the tests replace the process as they restart it


def restart(env, kill: bool = True) -> None:
    node = env["node"]
    if node.proc.poll() is None:  # still running (not killed by the test already)
        if kill:
            node.kill()
        else:
            assert node.stop() == 0
    env["node"] = NodeProcess(env["config"], env["port"], env["root"] / "node.log").start()


def finished(store: JobStore, uid: str, timeout: float = 60):
    return wait_for(lambda: (s := store.study(uid)) is not None and s.state in END_STATES and s, timeout,
                    f"study {uid} to finish")


def test_killed_between_two_instances_the_study_completes_after_restart(env):
    store = env["store"]
    record = generate_phantoms(env["phantoms"] / "a", n=1, seed=31, layout="split-instances")[0]
    first, second = record.files
    assert storescu(env["port"], [first]).returncode == 0
    assert store.study(record.study_uid) is not None  # recorded before storescu got Success
    restart(env, kill=True)
    study = store.study(record.study_uid)
    assert (study.state, study.instance_count) == (RECEIVED, 1)
    assert storescu(env["port"], [second]).returncode == 0
    study = finished(store, record.study_uid)
    assert study.state == DISPATCHED and study.completed_by == "content"
    assert study.result.views == ["anterior", "posterior"]


def test_killed_after_complete_the_study_is_finished_after_restart(env):
    store = env["store"]
    # A node whose model loading waits for a gate file the test never makes: its classify stage is held,
    # so the study stops at complete, and the test kills the node there.
    gate = env["root"] / "model-gate"
    assert env["node"].stop() == 0
    env["node"] = NodeProcess(env["config"], env["port"], env["root"] / "node.log",
                              command=[sys.executable, str(GATED_SERVE), str(gate)]).start()
    wait_for(lambda: gate.with_name("model-gate.waiting").exists(), 120, "the model loading to be held")
    record = generate_phantoms(env["phantoms"] / "b", n=1, seed=32, layout="jpeg-lossless")[0]
    assert storescu(env["port"], record.files).returncode == 0
    wait_for(lambda: (s := store.study(record.study_uid)) is not None and s.state == COMPLETE, 120, "completion")
    env["node"].kill()
    assert not gate.exists() and store.study(record.study_uid).state == COMPLETE
    restart(env, kill=False)  # the ordinary node
    study = finished(store, record.study_uid)
    assert study.state == DISPATCHED
    assert len(store.outputs(record.study_uid)) == 3


def test_a_classify_failure_is_visible_and_spectnode_retry_classifies_again(env):
    store = env["store"]
    record = generate_phantoms(env["phantoms"] / "f", n=1, seed=36, layout="split-series")[0]
    # A plain file where the study's work folder must go: the classify stage fails for real, after the model ran.
    blocker = env["root"] / "data" / "work" / record.study_uid
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    assert storescu(env["port"], record.files).returncode == 0
    study = finished(store, record.study_uid)
    assert study.state == ERROR and study.error_stage == COMPLETE
    assert study.reason.startswith("classify failed:") and "Error" in study.reason
    status = run_spectnode("status", "--config", str(env["config"]))
    assert record.study_uid in status.stdout and "classify failed" in status.stdout
    blocker.unlink()
    proc = run_spectnode("retry", "--config", str(env["config"]), record.study_uid)
    assert proc.returncode == 0 and "returned to complete" in proc.stdout, proc.stdout + proc.stderr
    study = finished(store, record.study_uid)
    assert study.state == DISPATCHED and study.result is not None and study.result.classified
    assert len(store.outputs(record.study_uid)) == 3


def test_a_stage_error_is_visible_and_retry_resumes_it(env):
    store = env["store"]
    record = generate_phantoms(env["phantoms"] / "c", n=1, seed=33, layout="multiframe")[0]
    # A plain file where the study's results folder must go: the report stage fails for real.
    blocker = env["root"] / "data" / "results" / record.study_uid
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    assert storescu(env["port"], record.files).returncode == 0
    study = finished(store, record.study_uid)
    assert study.state == ERROR and study.error_stage == "classified"
    assert study.reason.startswith("report failed:") and "Error" in study.reason
    status = run_spectnode("status", "--config", str(env["config"]))
    assert "error" in status.stdout and record.study_uid in status.stdout and "report failed" in status.stdout
    blocker.unlink()
    proc = run_spectnode("retry", "--config", str(env["config"]), record.study_uid)
    assert proc.returncode == 0 and "returned to classified" in proc.stdout
    assert finished(store, record.study_uid).state == DISPATCHED


def test_results_return_to_the_sender(env):
    pacs, store = env["pacs"], env["store"]
    record = generate_phantoms(env["phantoms"] / "d", n=1, seed=34, layout="split-series")[0]
    for path in record.files:  # the study is in the PACS first ...
        request = urllib.request.Request(f"{pacs.url}/instances", data=path.read_bytes(), method="POST")
        urllib.request.urlopen(request, timeout=30).close()
    (orthanc_study,) = [s for s in pacs.studies()
                        if pacs.get_json(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == record.study_uid]
    # ... and the PACS sends it to the node, as its calling AE title ORTHANC.
    pacs.post_json("/modalities/spectnode/store", {"Resources": [orthanc_study], "Synchronous": True})
    study = finished(store, record.study_uid)
    assert study.state == DISPATCHED and study.calling_ae == pacs.ae_title
    (sr,) = [o for o in store.outputs(record.study_uid) if o.kind == "sr"]
    back = [i for i in pacs.instances_of_study(record.study_uid)
            if pacs.instance_tags(i)["SOPInstanceUID"] == sr.sop_instance_uid]
    assert back, "the SR did not come back to the sending PACS"
    assert sr_findings(pacs.instance_dataset(back[0]))


def test_dead_letters_are_listed_and_retry_sends_them(env, tmp_path):
    store = env["store"]
    archive_port = free_port()
    settings = json.loads(json.dumps(env["settings"]))
    settings["destinations"].append({"name": "archive", "type": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                     "port": archive_port, "outputs": ["sr"]})
    write_config(env["config"], settings)
    restart(env, kill=False)
    record = generate_phantoms(env["phantoms"] / "e", n=1, seed=35, layout="rle")[0]
    assert storescu(env["port"], record.files).returncode == 0

    def dead_letters():
        report = json.loads(run_spectnode("status", "--config", str(env["config"]), "--json").stdout)
        return [i for i in report["outbox"]["dead_letters"] if i["study_uid"] == record.study_uid]

    (dead,) = wait_for(dead_letters, 60, "a dead letter", interval=0.5)
    assert dead["destination"] == "archive" and "2 attempts" in dead["last_error"]
    assert store.study(record.study_uid).state == REPORTED
    text = run_spectnode("status", "--config", str(env["config"])).stdout
    assert "dead" in text and "archive" in text and "spectnode retry" in text
    # The study itself says why it is not dispatched.
    (line,) = [row for row in text.splitlines() if row.startswith("reported") and record.study_uid in row]
    assert f"dispatch failed: sr to archive: {dead['last_error']} [outbox item {dead['id']}]" in line
    report = json.loads(run_spectnode("status", "--config", str(env["config"]), "--json").stdout)
    (study_json,) = [s for s in report["studies"] if s["study_uid"] == record.study_uid]
    assert study_json["dispatch_failed"] == [{"item": dead["id"], "destination": "archive", "kind": "sr",
                                              "reason": dead["last_error"]}]
    assert not [i for i in report["outbox"]["items"] if i["state"] == "dead"]  # listed once, as a dead letter

    # The node crashes with the item dead; the archive comes up; after a restart, retry sends it.
    env["node"].kill()
    received = tmp_path / "archive"
    received.mkdir()
    archive = subprocess.Popen([require_tool("storescp"), "-aet", "ARCHIVE", "-od", str(received), str(archive_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        restart(env, kill=False)
        assert run_spectnode("retry", "--config", str(env["config"]), "999999").returncode == 1
        proc = run_spectnode("retry", "--config", str(env["config"]), "--all")
        assert proc.returncode == 0 and "1 outbox item" in proc.stdout
        assert finished(store, record.study_uid).state == DISPATCHED
        (sr,) = [o for o in store.outputs(record.study_uid) if o.kind == "sr"]
        files = wait_for(lambda: list(received.iterdir()), 60, "the archive's file")
        assert pydicom.dcmread(files[0]).SOPInstanceUID == sr.sop_instance_uid
    finally:
        archive.terminate()
        archive.wait(timeout=10)


def test_without_not_assessable_sr_a_ct_study_only_shows_its_reason(env):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    settings = json.loads(json.dumps(env["settings"]))
    settings["report"] = {"not_assessable_sr": False}
    settings["completion"] = {"timeout_seconds": 1}
    write_config(env["config"], settings)
    restart(env, kill=False)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "CT-2"
    path = env["root"] / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert storescu(env["port"], [path]).returncode == 0
    study = finished(env["store"], ds.StudyInstanceUID, timeout=30)
    assert study.state == "not_assessable" and "Modality CT" in study.reason
    assert not study.report_pending and env["store"].outputs(ds.StudyInstanceUID) == []
    report = json.loads(run_spectnode("status", "--config", str(env["config"]), "--json").stdout)
    assert not [i for i in report["outbox"]["items"] if i["study_uid"] == ds.StudyInstanceUID]
