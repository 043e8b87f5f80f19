"""The job store: instance outcomes, conditional transitions, errors and retries, outputs."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from spectnode.result import ModelResult, StudyResult, ViewSource
from spectnode.store import (
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    ERROR,
    NOT_ASSESSABLE,
    RECEIVED,
    REPORTED,
    InstanceRecord,
    JobStore,
    OutputRecord,
    Peer,
    StoreError,
)

#: One model's result that a study in these tests was classified with.
NORMAL = ModelResult("test-model", "1", {"normal": 0.9, "metastatic": 0.1}, "normal")
PEER = Peer("CAMERA1", "10.0.0.5", 40000, "SPECTNODE")


def instance(study: str, sop: str, sha: str = "a" * 64, modality: str = "NM") -> InstanceRecord:
    return InstanceRecord(study, sop, f"{study}.1", "1.2.840.10008.5.1.4.1.1.20", modality,
                          "1.2.840.10008.1.2.1", Path(f"/spool/{study}/{sop}.dcm"), sha, 100)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    db = JobStore(tmp_path / "jobs.sqlite")
    yield db
    db.close()


def test_new_duplicate_changed_and_own_output(store):
    assert store.record_instance(instance("1.1", "1.1.1"), PEER) == "new"
    assert store.record_instance(instance("1.1", "1.1.1"), PEER) == "duplicate"
    study = store.study("1.1")
    assert (study.state, study.instance_count, study.content_version) == (RECEIVED, 1, 1)
    assert store.record_instance(instance("1.1", "1.1.1", sha="b" * 64), PEER) == "changed"
    assert store.study("1.1").content_version == 2
    assert store.known_instance("1.1", "1.1.1") == "b" * 64
    store.record_outputs("1.1", 1, [OutputRecord("1.1", 1, "sr", "9.9", "1.2.840.10008.5.1.4.1.1.88.34", "9",
                                                 Path("/r/sr.dcm"), True, 0.0)])
    # An SR of ours sent back by a PACS is recognised, not added to the study.
    assert store.known_instance("1.1", "9.9") == "own_output"
    assert store.record_instance(instance("1.1", "9.9"), PEER) == "own_output"
    assert store.study("1.1").instance_count == 1


def test_peer_is_recorded_per_study(store):
    store.record_instance(instance("1.2", "1.2.1"), PEER)
    assert store.study("1.2").peer == PEER
    other = Peer("PACS", "10.0.0.9", 50000, "SPECTNODE")
    store.record_instance(instance("1.2", "1.2.2"), other)
    assert store.study("1.2").peer == other  # the last sender gets results back


def test_the_pipeline_and_stale_generations(store):
    store.record_instance(instance("2.1", "2.1.1"), PEER)
    study = store.study("2.1")
    assert store.advance("2.1", study.generation, RECEIVED, COMPLETE, "both views", completed_by="content",
                         content_version=study.content_version)
    assert store.advance(
        "2.1", 1, COMPLETE, CLASSIFIED, "classified", result=StudyResult("2.1", "classified", models=[NORMAL])
    )
    # A stage holding an older view of the study is refused.
    assert not store.advance("2.1", 1, COMPLETE, CLASSIFIED, "again")
    assert store.advance("2.1", 1, CLASSIFIED, REPORTED, "reported")
    # A new object re-opens the study: generation 2, back to received, result cleared.
    assert store.record_instance(instance("2.1", "2.1.2"), PEER) == "new"
    reopened = store.study("2.1")
    assert (reopened.state, reopened.generation, reopened.result) == (RECEIVED, 2, None)
    # The dispatcher that still thinks generation 1 is reported cannot finish it.
    assert not store.advance("2.1", 1, REPORTED, DISPATCHED, "delivered")
    assert [e[1] for e in store.events("2.1")] == [RECEIVED, COMPLETE, CLASSIFIED, REPORTED, RECEIVED]


def test_completion_is_refused_when_an_object_arrived_meanwhile(store):
    store.record_instance(instance("3.1", "3.1.1"), PEER)
    seen = store.study("3.1").content_version
    store.record_instance(instance("3.1", "3.1.2"), PEER)
    assert not store.advance("3.1", 1, RECEIVED, COMPLETE, "stale look", content_version=seen)
    assert store.study("3.1").state == RECEIVED


def test_error_is_visible_and_retry_returns_to_the_failed_stage(store):
    store.record_instance(instance("4.1", "4.1.1"), PEER)
    store.advance("4.1", 1, RECEIVED, COMPLETE, "complete")
    assert store.fail("4.1", 1, COMPLETE, "classify failed: RuntimeError: boom")
    study = store.study("4.1")
    assert (study.state, study.error_stage, study.reason) == (ERROR, COMPLETE, "classify failed: RuntimeError: boom")
    assert store.retry_study("4.1") == COMPLETE
    assert store.study("4.1").state == COMPLETE and store.study("4.1").reason is None
    assert store.retry_study("4.1") is None  # not in error any more


def test_not_assessable_keeps_its_reason_through_an_error_and_retry(store):
    store.record_instance(instance("5.1", "5.1.1", modality="CT"), PEER)
    store.advance("5.1", 1, RECEIVED, COMPLETE, "timeout", completed_by="timeout")
    reason = "no NM object in the study: found Modality CT"
    store.advance("5.1", 1, COMPLETE, NOT_ASSESSABLE, "not assessable", reason=reason,
                  result=StudyResult("5.1", "not_assessable", reason=reason), report_pending=True)
    assert store.fail("5.1", 1, NOT_ASSESSABLE, "report failed: OSError: disk full")
    assert store.retry_study("5.1") == NOT_ASSESSABLE
    study = store.study("5.1")
    assert (study.reason, study.report_pending) == (reason, True)


def test_outputs_supersede_and_predecessor(store):
    def sr(gen: int, uid: str) -> OutputRecord:
        return OutputRecord("6.1", gen, "sr", uid, "1.2.840.10008.5.1.4.1.1.88.34", "6.9", Path(f"/r/{uid}"), True, 0)

    def reopen(sop: str) -> None:
        study = store.study("6.1")
        store.advance("6.1", study.generation, RECEIVED, COMPLETE, "complete")
        store.record_instance(instance("6.1", sop), PEER)

    store.record_instance(instance("6.1", "6.1.1"), PEER)
    assert store.predecessor_sr("6.1", 1) is None
    assert store.record_outputs("6.1", 1, [sr(1, "6.1.100")])
    reopen("6.1.2")
    # A report of generation 1 that finishes after the re-opening records nothing.
    assert not store.record_outputs("6.1", 1, [sr(1, "6.1.101")])
    assert store.record_outputs("6.1", 2, [sr(2, "6.1.200")])
    assert [o.sop_instance_uid for o in store.outputs("6.1")] == ["6.1.200"]  # only one current result
    assert store.predecessor_sr("6.1", 2).sop_instance_uid == "6.1.100"
    assert store.predecessor_sr("6.1", 3).sop_instance_uid == "6.1.200"
    # Recording generation 2 again (a re-run after a crash) replaces it, keeping one current SR.
    assert store.record_outputs("6.1", 2, [sr(2, "6.1.201")])
    assert [o.sop_instance_uid for o in store.outputs("6.1")] == ["6.1.201"]
    assert {o.sop_instance_uid for o in store.outputs("6.1", current_only=False)} == {"6.1.100", "6.1.201"}
    # Generation 2's report is refused after it recorded its outputs (re-opened again):
    # they are forgotten, and generation 3 names generation 1's SR as its predecessor.
    assert store.discard_outputs("6.1", 2) == []  # still current: nothing happens
    reopen("6.1.3")
    assert [o.sop_instance_uid for o in store.discard_outputs("6.1", 2)] == ["6.1.201"]
    assert [o.sop_instance_uid for o in store.outputs("6.1")] == ["6.1.100"]
    assert store.predecessor_sr("6.1", 3).sop_instance_uid == "6.1.100"


def test_a_transaction_commits_with_the_move_or_not_at_all(store):
    store.record_instance(instance("6.2", "6.2.1"), PEER)
    with store.transaction("6.2", 1, RECEIVED) as tx:
        assert tx is not None
        tx.db.execute("CREATE TABLE side (x TEXT)")
        tx.db.execute("INSERT INTO side VALUES ('queued')")
        tx.move(COMPLETE, "complete", completed_by="content")
    assert store.study("6.2").state == COMPLETE
    with pytest.raises(RuntimeError), store.transaction("6.2", 1, COMPLETE) as tx:
        tx.db.execute("INSERT INTO side VALUES ('lost')")
        tx.move(CLASSIFIED, "classified")
        raise RuntimeError("the enqueue failed")
    assert store.study("6.2").state == COMPLETE
    with store.transaction("6.2", 2, COMPLETE) as stale:
        assert stale is None  # another generation: the caller drops its work
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("SELECT x FROM side").fetchall() == [("queued",)]


def test_wal_and_concurrent_writers(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    errors: list[BaseException] = []

    def receive(thread: int) -> None:
        try:
            for i in range(40):
                store.record_instance(instance(f"7.{thread}", f"7.{thread}.{i}"), PEER)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=receive, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # A second process-like reader (another connection) sees every committed row.
    reader = JobStore(tmp_path / "jobs.sqlite")
    assert [s.instance_count for s in reader.studies()] == [40, 40, 40, 40]
    assert reader.counts_by_state()[RECEIVED] == 4
    with sqlite3.connect(tmp_path / "jobs.sqlite") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.study("7.0")


def test_a_stored_result_reads_back_typed_from_another_connection(store, tmp_path):
    store.record_instance(instance("8.1", "8.1.1"), PEER)
    store.advance("8.1", 1, RECEIVED, COMPLETE, "c")
    probabilities = {"normal": 0.1, "metastatic": 0.7, "arthritic": 0.1, "both": 0.1}
    source = ViewSource("8.1.1", "1.2.840.10008.5.1.4.1.1.20", 2, (2.4, 2.4))
    model = ModelResult("spectnode-test", "2.0.0", probabilities, "metastatic", second_label="arthritic",
                        views=["anterior"], input_mode="per_view", domain_score=1.25, outside_domain=False)
    result = StudyResult("8.1", "classified", views=["anterior"], models=[model],
                         skipped_models={"aggregate-model": "needs both views"}, view_sources={"anterior": source})
    store.advance("8.1", 1, COMPLETE, CLASSIFIED, "c", result=result)
    # What the column holds, written out by hand: the keys a reader of the database sees.
    with sqlite3.connect(store.path) as raw:
        (text,) = raw.execute("SELECT result FROM studies WHERE study_uid = '8.1'").fetchone()
    assert json.loads(text) == {
        "study_uid": "8.1",
        "outcome": "classified",
        "reason": None,
        "reason_code": None,
        "views": ["anterior"],
        "view_certainty": {},
        "inferred_views": [],
        "label": "metastatic",
        "probabilities": probabilities,
        "models": [{"model": "spectnode-test", "version": "2.0.0", "input_mode": "per_view", "views": ["anterior"],
                    "label": "metastatic", "second_label": "arthritic", "probabilities": probabilities,
                    "domain_score": 1.25, "outside_domain": False}],
        "skipped_models": {"aggregate-model": "needs both views"},
        "view_sources": {
            "anterior": {
                "sop_instance_uid": "8.1.1",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20",
                "frame_number": 2,
                "pixel_spacing_mm": [2.4, 2.4],
            }
        },
    }
    with JobStore(store.path) as other:  # another process's view of the same file
        read = other.study("8.1").result
    assert isinstance(read, StudyResult) and isinstance(read.view_sources["anterior"], ViewSource)
    assert read == result


def test_a_file_that_is_not_a_job_store_is_refused(tmp_path):
    bad = tmp_path / "jobs.sqlite"
    bad.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match="cannot open the job store"):
        JobStore(bad)


def test_only_objects_that_can_hold_a_view_reopen_a_finished_study(store):
    store.record_instance(instance("9.1", "9.1.1"), PEER)
    store.advance("9.1", 1, RECEIVED, COMPLETE, "complete")
    store.advance(
        "9.1", 1, COMPLETE, CLASSIFIED, "classified", result=StudyResult("9.1", "classified", models=[NORMAL])
    )
    store.advance("9.1", 1, CLASSIFIED, REPORTED, "reported")
    # A radiologist's SR, another AI's KOS, a presentation state, a later CT: recorded, not re-opened.
    for sop, modality in (("9.1.2", "SR"), ("9.1.3", "KO"), ("9.1.4", "PR"), ("9.1.5", "CT")):
        assert store.record_instance(instance("9.1", sop, modality=modality), PEER) == "new"
    study = store.study("9.1")
    assert (study.state, study.generation, study.instance_count) == (REPORTED, 1, 5)
    assert study.result == StudyResult("9.1", "classified", models=[NORMAL])
    assert "not re-opened" in store.events("9.1")[-1][2]
    # An NM object (also a secondary capture with Modality NM) can hold a view: it re-opens the study.
    sc_nm = InstanceRecord("9.1", "9.1.6", "9.1.9", "1.2.840.10008.5.1.4.1.1.7", "NM", "1.2.840.10008.1.2.1",
                           Path("/spool/9.1/9.1.6.dcm"), "c" * 64, 100)
    assert store.record_instance(sc_nm, PEER) == "new"
    assert (store.study("9.1").state, store.study("9.1").generation) == (RECEIVED, 2)
