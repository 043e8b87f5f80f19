"""A full disk pauses the pipeline; it does not fail it (issue 15, point 5).

A real ``spectnode serve`` keeps its data directory on a small tmpfs that the
test mounts (the tests run as root) and fills with a ballast file:

1. below ``storage.min_free_bytes`` a new object gets 0xA700 (PS3.4 B.2.3
   "Refused: Out of Resources") although the disk is not full yet, and
   nothing of it is stored;
2. objects that fit are acknowledged; then the stages run out of space for
   real (ENOSPC) while they write work files and results: the studies wait
   in their state, none goes to ``error``;
3. once the ballast is removed, every acknowledged study goes on to its
   result with no ``spectnode retry``.

In process, with a classifier that raises: a write failing with ENOSPC,
EDQUOT or EROFS, or SQLite's "database or disk is full", leaves the study
where it is; any other exception still puts it in ``error``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pydicom
import pytest
from pynetdicom import AE

from spectnode.node.diskspace import DiskSpace, is_disk_full
from spectnode.node.stages.assemble import AssembleStage
from spectnode.node.stages.classify import ClassifyStage
from spectnode.peer import Peer
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import COMPLETE, DISPATCHED, END_STATES, ERROR, RECEIVED, JobStore

from nodetools import FakeClock, NodeProcess, free_port, instance_record, storescu, tiny_bundle, wait_for, write_config

if TYPE_CHECKING:
    from pathlib import Path

STATUS_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 Refused: Out of Resources
MIB = 1024 * 1024
FLOOR = MIB // 2
STUDIES = 6


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def _fill_to(ballast: Path, free_bytes: int) -> None:
    """Grow or shrink ``ballast`` so that its file system has ``free_bytes`` free."""
    current = ballast.stat().st_size if ballast.exists() else 0
    free = shutil.disk_usage(ballast.parent).free
    size = max(0, current + free - free_bytes)
    with open(ballast, "ab") as stream:
        stream.truncate(size)
        if size > current:
            os.posix_fallocate(stream.fileno(), current, size - current)


@pytest.fixture
def full_disk_node(tmp_path, tmp_path_factory):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "160m")  # each study makes about 15 MB (SC overlays, work file, delivered copies)
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"]},
        "storage": {"data_dir": str(disk / "data"), "min_free_bytes": FLOOR, "disk_retry_seconds": 0.5},
        "destinations": [{"name": "local", "type": "folder", "path": "delivered", "outputs": ["sr", "sc"]}],
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        # Single views: complete by the idle timeout, so every object is in before any stage writes.
        "completion": {"timeout_seconds": 6},
        "dispatch": {"retry_base_seconds": 0.2, "retry_max_seconds": 1},
        "logging": {"level": "INFO", "format": "json", "file": str(tmp_path / "node.log")},
        "metrics": {"enabled": True, "port": metrics_port},
    })
    node = NodeProcess(config, port, tmp_path / "stdout.log")
    try:
        node.start()
        store = JobStore(disk / "data" / "spectnode.sqlite")
        yield {"node": node, "port": port, "store": store, "ballast": disk / "ballast", "log": tmp_path / "node.log",
               "phantoms": tmp_path / "phantoms", "metrics_port": metrics_port}
        store.close()
        assert node.stop() == 0
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_pauses_the_pipeline_and_every_acknowledged_study_finishes(full_disk_node):
    env, store = full_disk_node, full_disk_node["store"]
    records = [generate_phantoms(env["phantoms"] / str(i), n=1, seed=500 + i, layout="split-instances")[0]
               for i in range(STUDIES + 1)]
    views = [record.files[0] for record in records]  # one view each
    size = max(path.stat().st_size for path in views)

    # 1. Below the floor (the disk is not full: 0.8 object's worth is still free above it).
    _fill_to(env["ballast"], FLOOR + int(0.8 * size))
    refused = records[-1]
    assert _cstore(env["port"], views[-1]) == STATUS_OUT_OF_RESOURCES
    assert store.study(refused.study_uid) is None
    assert shutil.disk_usage(env["ballast"].parent).free > FLOOR  # refused before the disk was full

    # 2. Room for the objects (and the job store's growth), not for what the stages write: the first
    # work file (about 1.3 MB) no longer fits, so the classify stage meets ENOSPC itself.
    _fill_to(env["ballast"], FLOOR + STUDIES * (size + 32 * 1024) + 256 * 1024)
    proc = storescu(env["port"], views[:STUDIES])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uids = [record.study_uid for record in records[:STUDIES]]
    assert all(store.study(uid) is not None for uid in uids)  # every one acknowledged and recorded
    wait_for(lambda: "stage cannot write (OSError [ENOSPC]" in env["log"].read_text(), 120,
             "a stage to run out of space (ENOSPC)")

    def health_says_waiting() -> dict | None:
        states = {uid: store.study(uid).state for uid in uids}
        assert ERROR not in states.values(), states  # at no moment does a study fail
        code, body = _healthz(env["metrics_port"])
        return body if code == 503 and any("waits for disk space" in p for p in body["problems"]) else None

    health = wait_for(health_says_waiting, 60, "/healthz to report a stage waiting for disk space")
    assert health["status"] == "degraded"
    waiting = [uid for uid in uids if store.study(uid).state not in END_STATES]
    assert waiting, "the disk filled only after every study had finished"

    # 3. Space comes back: every study goes on by itself.
    env["ballast"].unlink()
    finished = {uid: wait_for(lambda u=uid: (s := store.study(u)) and s.state in END_STATES and not s.report_pending
                              and s, 180, f"study {uid} to finish") for uid in uids}
    assert all(s.state != ERROR for s in finished.values()), {u: (s.state, s.reason) for u, s in finished.items()}
    assert [s.state for s in finished.values()].count(DISPATCHED) >= 1
    log = env["log"].read_text()
    assert "can write again; resumed" in log
    assert wait_for(lambda: _healthz(env["metrics_port"]) == (200, {"status": "ok"}), 30, "/healthz to say ok")
    assert "retried by an operator" not in str([store.events(uid) for uid in uids])


def _healthz(port: int) -> tuple[int, dict]:
    """GET /healthz: (HTTP status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _cstore(port: int, path: Path) -> int:
    """C-STORE one file; the status the node answered."""
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="CAMERA")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


class _FailingClassifier:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def classify(self, *_args, **_kwargs):
        raise self.exc


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError(errno.EDQUOT, "Disk quota exceeded"),
                                 OSError(errno.EROFS, "Read-only file system"),
                                 sqlite3.OperationalError("database or disk is full")],
                         ids=["ENOSPC", "EDQUOT", "EROFS", "SQLITE_FULL"])
def test_a_write_that_fails_for_want_of_space_leaves_the_study_waiting(store, data_dir, tmp_path, exc):
    uid = _complete_study(store, tmp_path)
    disk = DiskSpace(data_dir.root, 0, retry_seconds=60)
    stage = ClassifyStage(store, data_dir, lambda: _FailingClassifier(exc), True, disk=disk)
    assert is_disk_full(exc)
    assert stage.step() is False  # it waits ...
    assert store.study(uid).state == COMPLETE and store.study(uid).reason is None
    assert disk.waiting_stages() == ["classify"] and disk.should_wait("classify")
    assert stage.step() is False  # ... and does not even look until the retry time
    assert store.study(uid).state == COMPLETE


def test_any_other_exception_still_puts_the_study_in_error(store, data_dir, tmp_path):
    uid = _complete_study(store, tmp_path)
    disk = DiskSpace(data_dir.root, 0)
    stage = ClassifyStage(store, data_dir, lambda: _FailingClassifier(OSError(errno.EACCES, "Permission denied")),
                          True, disk=disk)
    assert stage.step() is True
    assert store.study(uid).reason == "classify failed: PermissionError [EACCES]; the node's log has its traceback"
    assert store.study(uid).state == ERROR
    assert disk.waiting_stages() == []


def _complete_study(store: JobStore, tmp_path: Path) -> str:
    (record,) = generate_phantoms(tmp_path / "phantom", n=1, seed=77, layout="multiframe")
    instance = instance_record(record.files[0])
    store.record_instance(instance, Peer("CAMERA", "127.0.0.1", 1))
    study = store.study(instance.study_uid)
    assert store.advance(study.study_uid, study.generation, "received", COMPLETE, "test")
    return instance.study_uid


def test_assemble_waits_after_a_failed_write_also_below_the_floor(store, data_dir, tmp_path):
    """Like the classify and report stages: a job-store write that failed for want of space, or free
    space below the floor, makes the stage wait (it used to run on whenever the floor was passed)."""
    uid = _received_study(store, tmp_path)
    clock = FakeClock(0.0)
    disk = DiskSpace(data_dir.root, 2**62, retry_seconds=60, clock=clock)  # far below the floor
    stage = AssembleStage(store, data_dir, timeout_seconds=3600, disk=disk)
    disk.write_failed("assemble", sqlite3.OperationalError("database or disk is full"), uid)
    assert stage.step() is False
    assert store.study(uid).state == RECEIVED
    clock.advance(61)  # the retry time has passed, but the disk is still below its floor
    assert stage.step() is False
    assert store.study(uid).state == RECEIVED
    disk.min_free_bytes = 0  # space is back
    assert stage.step() is True
    assert store.study(uid).state == COMPLETE and disk.waiting_stages() == []


def _received_study(store: JobStore, tmp_path: Path) -> str:
    """A study whose both views are recorded (complete by content) and still ``received``."""
    (record,) = generate_phantoms(tmp_path / "phantom", n=1, seed=78, layout="multiframe")
    instance = instance_record(record.files[0])
    store.record_instance(instance, Peer("CAMERA", "127.0.0.1", 1))
    assert store.study(instance.study_uid).state == RECEIVED
    return instance.study_uid
