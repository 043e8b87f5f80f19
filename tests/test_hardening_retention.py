"""Retention (issue 15, point 6): finished studies' files go, oldest first; nothing still needed does.

The soak is cheap on purpose: 1,000 studies of tiny synthetic files driven
through the job store's real transitions and outbox (no network, no model),
with the policy applied as the node applies it; ``spectnode purge`` is run as
a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from spectnode.config import DestinationConfig, parse_config
from spectnode.node import retention
from spectnode.node.datadir import DataDir
from spectnode.node.retention import RetentionPolicy, remove_unrecorded_files
from spectnode.node.worker import Node
from spectnode.peer import Peer
from spectnode.store import (
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    ERROR,
    NOT_ASSESSABLE,
    REPORTED,
    InstanceRecord,
    JobStore,
    OutputRecord,
)

from nodetools import FakeClock, run_spectnode, write_config

DEST = DestinationConfig(name="local", type="folder", path=None)
FILE_BYTES = 8 * 1024


def _spool(store: JobStore, data: DataDir, uid: str, content: bytes, mtime_ns: int | None = None,
           record: bool = True) -> Path:
    """One copy of the study's object ``<uid>.1`` in the spool, as the receive stage writes it (its file
    time ``mtime_ns`` when given), and recorded unless ``record`` is False (a copy still being received)."""
    digest = hashlib.sha256(content).hexdigest()
    spool = data.spooled_object(uid, f"{uid}.1", digest)
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(content)
    if mtime_ns is not None:
        os.utime(spool, ns=(mtime_ns, mtime_ns))
    if record:
        store.record_instance(InstanceRecord(uid, f"{uid}.1", f"{uid}.9", "1.2.840.10008.5.1.4.1.1.20", "NM",
                                             "1.2.840.10008.1.2.1", spool, digest, len(content)),
                              Peer("CAMERA", "127.0.0.1", 1))
    return spool


def _study(store: JobStore, data: DataDir, n: int, deliver: bool = True) -> str:
    """A study received, classified, reported and (if ``deliver``) dispatched, with small real files."""
    uid = f"1.2.3.{n}"
    _spool(store, data, uid, bytes(FILE_BYTES))
    work = data.work_file(uid, 1)
    work.parent.mkdir(parents=True, exist_ok=True)
    work.write_bytes(bytes(FILE_BYTES))
    result = data.results_folder(uid) / "SR_1.dcm"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(bytes(FILE_BYTES))
    assert store.advance(uid, 1, "received", COMPLETE, "test")
    assert store.advance(uid, 1, COMPLETE, CLASSIFIED, "test")
    store.record_outputs(uid, 1, [OutputRecord(uid, 1, "sr", f"{uid}.77", "1.2.840.10008.5.1.4.1.1.88.33",
                                               f"{uid}.78", result, True, 0.0)])
    with store.transaction(uid, 1, CLASSIFIED) as tx:
        (item,) = store.outbox.enqueue_outputs(uid, {"sr": [result]}, [DEST], connection=tx.db)
        tx.move(REPORTED, "test")
    if deliver:
        assert store.outbox.claim(item) and store.outbox.delivered(item, acknowledgement="test")
        assert store.advance(uid, 1, REPORTED, DISPATCHED, "every output delivered")
    return uid


def _files(data: DataDir, uid: str) -> list[bool]:
    return [bool(data.spooled_versions(uid, f"{uid}.1")), data.work_file(uid, 1).exists(),
            (data.results_folder(uid) / "SR_1.dcm").exists()]


def test_after_keep_seconds_finished_studies_go_and_others_stay(data_dir):
    clock = FakeClock()
    store = JobStore(data_dir.database, clock=clock)
    done = _study(store, data_dir, 1)
    waiting = _study(store, data_dir, 2, deliver=False)  # its SR is not acknowledged yet
    failed = _study(store, data_dir, 3)
    store.advance(failed, 1, DISPATCHED, ERROR, "test")  # an error: `retry` needs its files
    policy = RetentionPolicy(store, data_dir, keep_seconds=3600, max_bytes=None)
    assert policy.run().studies == []  # too early
    clock.advance(3601)
    plan = policy.run(dry_run=True)
    assert [s.study_uid for s in plan.studies] == [done] and _files(data_dir, done) == [True] * 3
    assert [s.study_uid for s in policy.run().studies] == [done]
    assert _files(data_dir, done) == [False] * 3
    assert _files(data_dir, waiting) == [True] * 3 and _files(data_dir, failed) == [True] * 3
    purged = store.study(done)
    assert purged.purged_at is not None and purged.state == DISPATCHED  # the audit rows stay
    assert any("files removed by retention" in m for _, _, m in store.events(done))
    store.close()


def test_the_copies_a_changed_object_replaced_go_with_their_study_and_a_copy_arriving_now_stays(data_dir):
    """A changed object is spooled under a new name and the copy it replaced is kept (a stage may be
    reading it); retention removes such copies with the study. One newer than the recorded copy, and
    not recorded, is a copy the receive stage is storing right now: it stays."""
    clock = FakeClock()
    store = JobStore(data_dir.database, clock=clock)
    uid, t = "1.2.3.500", 1_700_000_000 * 10**9
    legacy = data_dir.spool_folder(uid) / f"{uid}.1.dcm"  # how releases before named the spool
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"first")
    os.utime(legacy, ns=(t, t))
    replaced = _spool(store, data_dir, uid, b"second" * 100, t + 10**9)
    recorded = _spool(store, data_dir, uid, b"third" * 100, t + 2 * 10**9)
    assert [Path(r["path"]) for r in store.instances(uid)] == [recorded]
    assert store.advance(uid, 1, "received", COMPLETE, "test")
    assert store.advance(uid, 1, COMPLETE, NOT_ASSESSABLE, "test")
    policy = RetentionPolicy(store, data_dir, keep_seconds=0, max_bytes=None)
    (planned,) = policy.plan().studies
    assert planned.bytes == len(b"first") + 600 + 500  # every copy counts
    arriving = _spool(store, data_dir, uid, b"fourth" * 100, t + 3 * 10**9, record=False)
    assert [s.study_uid for s in policy.run().studies] == [uid]
    assert data_dir.spooled_versions(uid, f"{uid}.1") == [arriving]
    assert not (legacy.exists() or replaced.exists() or recorded.exists())
    store.close()


def test_a_soak_of_1000_studies_stays_under_the_disk_budget(data_dir):
    clock = FakeClock()
    store = JobStore(data_dir.database, clock=clock)
    budget = 60 * 3 * FILE_BYTES  # room for 60 studies' files
    policy = RetentionPolicy(store, data_dir, keep_seconds=None, max_bytes=budget)
    peak = 0
    kept_back = []
    for n in range(1000):
        uid = _study(store, data_dir, n, deliver=n % 100 != 0)  # every 100th is never acknowledged
        if n % 100 == 0:
            kept_back.append(uid)
        clock.advance(1)
        if n % 10 == 9:  # the node applies the policy periodically
            policy.run()
            usage = policy.usage_bytes()
            peak = max(peak, usage)
            assert usage <= budget + len(kept_back) * 3 * FILE_BYTES
    print(json.dumps({"studies": 1000, "budget_bytes": budget, "peak_after_purge_bytes": peak}))
    for uid in kept_back:  # never acknowledged: never removed
        assert _files(data_dir, uid) == [True] * 3
    removed = [s for s in store.studies([DISPATCHED]) if s.purged_at is not None]
    assert len(removed) >= 1000 - 60 - len(kept_back)
    # oldest first: every study still holding files ended after every removed one
    kept = [s for s in store.studies([DISPATCHED]) if s.purged_at is None]
    assert max(s.updated_at for s in removed) <= min(s.updated_at for s in kept)
    store.close()


def test_spectnode_purge_dry_run_and_for_real(tmp_path):
    data = DataDir(tmp_path / "data")
    data.create()
    store = JobStore(data.database)
    uid = _study(store, data, 1)
    store.close()
    config = write_config(tmp_path / "spectnode.yaml", {"storage": {"data_dir": str(data.root)},
                                                        "retention": {"keep_seconds": 0}})
    dry = run_spectnode("purge", "--dry-run", "--config", str(config))
    assert dry.returncode == 0 and f"would remove {uid}" in dry.stdout and _files(data, uid) == [True] * 3
    real = run_spectnode("purge", "--json", "--config", str(config))
    assert real.returncode == 0, real.stderr
    assert [s["study_uid"] for s in json.loads(real.stdout)["studies"]] == [uid]
    assert _files(data, uid) == [False] * 3


def test_start_up_removes_old_files_no_record_names_and_keeps_every_recorded_and_recent_one(data_dir):
    store = JobStore(data_dir.database)
    now = 2_000_000_000.0
    hour_ago = int((now - 3600) * 1e9)
    recorded = _spool(store, data_dir, "1.2.3.1", b"recorded", mtime_ns=hour_ago)
    # A crash between writing and recording: the sender got no Success and sends it again later.
    crashed = _spool(store, data_dir, "1.2.3.2", b"never recorded", mtime_ns=hour_ago, record=False)
    # Another process storing an object at this moment: written, its record a millisecond away.
    arriving = _spool(store, data_dir, "1.2.3.3", b"being received", mtime_ns=int(now * 1e9), record=False)
    # An older copy that a changed copy replaced (its row names the new one).
    replaced = _spool(store, data_dir, "1.2.3.1", b"first version", mtime_ns=hour_ago - 10**9, record=False)
    leftovers = [data_dir.work_file("1.2.3.1", 1).parent / ".gen1.npz.x1.tmp",
                 data_dir.results_folder("1.2.3.1") / ".SR_1.dcm.x2.tmp", recorded.parent / ".x.dcm.x3.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, ns=(hour_ago, hour_ago))
    result = data_dir.results_folder("1.2.3.1") / "SR_1.dcm"  # results are no spool: never swept
    result.write_bytes(b"sr")
    os.utime(result, ns=(hour_ago, hour_ago))

    assert remove_unrecorded_files(store, data_dir, now=now) == 5
    assert recorded.is_file() and arriving.is_file() and result.is_file()
    assert not crashed.exists() and not crashed.parent.exists()  # and its empty study folder
    assert not replaced.exists() and not any(p.exists() for p in leftovers)
    assert remove_unrecorded_files(store, data_dir, now=now) == 0


def test_a_node_starting_removes_what_a_crash_left_unrecorded(tmp_path):
    cfg = parse_config({"node": {"ae_title": "SPECTNODE", "bind_address": "127.0.0.1"},
                        "storage": {"data_dir": str(tmp_path / "data")}})
    data = DataDir(tmp_path / "data")
    data.create()
    orphan = data.spooled_object("1.2.3.4", "1.2.3.4.1", hashlib.sha256(b"x").hexdigest())
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    old = int((time.time() - 3600) * 1e9)
    os.utime(orphan, ns=(old, old))

    def no_model(_bundle: object) -> object:
        raise RuntimeError("no model in this test")

    node = Node(cfg, port=0, classifier_loader=no_model)
    node.start()
    try:
        assert not orphan.exists()
    finally:
        node.stop(timeout=10)
        if node.store is not None:
            node.store.close()


def test_start_up_matches_records_made_under_another_spelling_of_the_data_directory(tmp_path):
    real = DataDir(tmp_path / "real")
    real.create()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    via_link = DataDir(tmp_path / "link")  # e.g. the systemd unit names it otherwise than the shell did
    store = JobStore(real.database)
    hour_ago = int((time.time() - 3600) * 1e9)
    kept = _spool(store, via_link, "1.2.3.1", b"recorded via the link", mtime_ns=hour_ago)
    assert remove_unrecorded_files(store, real) == 0
    assert kept.is_file() and (tmp_path / "real" / kept.relative_to(tmp_path / "link")).is_file()


def test_start_up_puts_back_a_copy_written_under_the_same_name_meanwhile(data_dir):
    # A backfill storing into a serving node's spool without the data directory's lock writes the
    # same bytes under the same content-addressed name after the sweep looked at the old copy.
    store = JobStore(data_dir.database)
    hour_ago = int((time.time() - 3600) * 1e9)
    orphan = _spool(store, data_dir, "1.2.3.5", b"same bytes", mtime_ns=hour_ago, record=False)
    seen = orphan.lstat()
    fresh = orphan.with_name(".fresh.tmp")
    fresh.write_bytes(b"same bytes")
    os.replace(fresh, orphan)  # the other process's durable write
    assert retention._remove_unrecorded(store, orphan, seen) == 0
    assert orphan.read_bytes() == b"same bytes"
    assert not list(orphan.parent.glob(".*.unrecorded"))


def test_a_node_starting_keeps_every_recorded_file_of_an_unfinished_study(tmp_path):
    cfg = parse_config({"node": {"ae_title": "SPECTNODE", "bind_address": "127.0.0.1"},
                        "storage": {"data_dir": str(tmp_path / "data")}})
    data = DataDir(tmp_path / "data")
    data.create()
    store = JobStore(data.database)
    hour_ago = int((time.time() - 3600) * 1e9)
    kept = _spool(store, data, "1.2.3.6", b"received, not yet complete", mtime_ns=hour_ago)
    store.close()

    def no_model(_bundle: object) -> object:
        raise RuntimeError("no model in this test")

    node = Node(cfg, port=0, classifier_loader=no_model)
    node.start()
    try:
        assert kept.is_file()
    finally:
        node.stop(timeout=10)
        if node.store is not None:
            node.store.close()
