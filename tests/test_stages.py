"""Each stage in-process: a temporary job store, a fake classifier, no network and no TensorFlow.

For every stage: each transition it makes, the refusal of a stale generation
(the study was re-opened by a new object while the stage worked), and resume
after a restart (a new stage object on the same data directory). The
completion rule has its own tests for every layout, the idle-timeout fallback
and a re-opened study.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest

from spectnode.config import DestinationConfig
from spectnode.dispatch import DispatchError
from spectnode.imaging.views import NotAssessable, StudyViews
from spectnode.node.diskspace import DiskSpace
from spectnode.node.stages.assemble import AssembleStage, check_completion
from spectnode.node.stages.classify import VIEW_KEY, ClassifyStage
from spectnode.node.stages.dispatch import DispatchStage, RetryPolicy
from spectnode.node.stages.report import ReportStage
from spectnode.peer import Peer
from spectnode.phantom.dicom import LAYOUTS
from spectnode.phantom.generate import PhantomStudyRecord, generate_phantoms
from spectnode.result import ModelResult, StudyResult
from spectnode.store import (
    CLASSIFIED,
    COMPLETE,
    DISPATCHED,
    ERROR,
    NOT_ASSESSABLE,
    RECEIVED,
    REPORTED,
    JobStore,
    StudyRecord,
)

from nodetools import FakeClock, instance_record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from spectnode.node.datadir import DataDir
    from spectnode.report import AlgorithmInfo

PEER = Peer("CAMERA", "10.0.0.5", 40000, "SPECTNODE")
PROBABILITIES = {"normal": 0.1, "metastatic": 0.7, "arthritic": 0.15, "both": 0.05}
TIMEOUT_S = 120.0


class FakeClassifier:
    """Answers like :class:`spectnode.classify.StudyClassifier`, without a network."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.seen: list[str] = []

    def classify(self, views: StudyViews | NotAssessable, explain: bool = False) -> StudyResult:
        self.seen.append(views.study_uid)
        if self.fail is not None:
            raise self.fail
        if isinstance(views, NotAssessable):
            return StudyResult(views.study_uid, "not_assessable", reason=views.reason, reason_code=views.code)
        heatmaps = {v: np.full(getattr(views, v).pixels.shape, 0.5, np.float32) for v in views.available_views}
        model = ModelResult("spectnode-test-dspic", "0.3.1", dict(PROBABILITIES), "metastatic",
                            second_label="arthritic", views=list(views.available_views), input_mode="per_view",
                            heatmaps=heatmaps if explain else {})
        return StudyResult(views.study_uid, "classified", views=list(views.available_views), models=[model])


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PhantomStudyRecord]:
    """One study per layout (the views of split layouts are separate files); a seed of its own for each,
    since the same seed gives the same UIDs."""
    out = tmp_path_factory.mktemp("stage-phantoms")
    return {layout: generate_phantoms(out / layout, 1, seed=71 + i, layout=layout)[0]
            for i, layout in enumerate(LAYOUTS)}


def spool(store: JobStore, data_dir: DataDir, source: Path) -> None:
    """What the receive stage does with an object: a copy in the spool, recorded in the store."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    target = data_dir.spooled_object(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID),
                                     hashlib.sha256(source.read_bytes()).hexdigest())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    store.record_instance(instance_record(target), PEER)


def view_file(record: PhantomStudyRecord, view: str) -> Path:
    return record.views[view][0]


@pytest.fixture
def clocked_store(data_dir: DataDir, clock: FakeClock) -> Iterator[JobStore]:
    db = JobStore(data_dir.database, clock=clock)
    yield db
    db.close()


def local_destination(data_dir: DataDir) -> DestinationConfig:
    return DestinationConfig(name="local", type="folder", path=data_dir.root / "delivered")


def complete(store: JobStore, data_dir: DataDir, record: PhantomStudyRecord) -> StudyRecord:
    """A study whose files are spooled and which the assemble stage has completed."""
    for path in record.files:
        spool(store, data_dir, path)
    assert AssembleStage(store, data_dir, TIMEOUT_S).step()
    study = store.study(record.study_uid)
    assert study is not None and study.state == COMPLETE
    return study


def classified(store: JobStore, data_dir: DataDir, record: PhantomStudyRecord) -> StudyRecord:
    complete(store, data_dir, record)
    assert ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True).step()
    study = store.study(record.study_uid)
    assert study is not None and study.state == CLASSIFIED
    return study


def reopen(store: JobStore, data_dir: DataDir, record: PhantomStudyRecord) -> None:
    """A changed copy of one of the study's NM objects arrives: the study goes back to ``received``."""
    ds = pydicom.dcmread(record.files[0])
    ds.SeriesDescription = "changed by the camera"
    changed = data_dir.root / "changed.dcm"
    ds.save_as(changed)
    spool(store, data_dir, changed)


# ------------------------------------------------------------------ the completion rule


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_views_complete_a_study_in_every_layout(phantoms, layout):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantoms[layout].files]
    completion = check_completion(headers)
    assert completion.complete and completion.views == ("anterior", "posterior"), completion.detail


def test_one_view_is_not_complete(phantoms):
    record = phantoms["split-instances"]
    completion = check_completion([pydicom.dcmread(view_file(record, "anterior"), stop_before_pixels=True)])
    assert not completion.complete and completion.views == ("anterior",)


def test_two_objects_naming_the_same_view_are_not_complete(phantoms, tmp_path):
    record = phantoms["split-instances"]
    anterior = pydicom.dcmread(view_file(record, "anterior"), stop_before_pixels=True)
    second = pydicom.dcmread(view_file(record, "anterior"), stop_before_pixels=True)
    second.SOPInstanceUID = anterior.SOPInstanceUID[:-2] + ".9"
    posterior = pydicom.dcmread(view_file(record, "posterior"), stop_before_pixels=True)
    completion = check_completion([anterior, second, posterior])
    assert not completion.complete and "anterior (2)" in completion.detail


def test_assemble_completes_by_content_at_once(store, data_dir, phantoms):
    record = phantoms["split-series"]
    stage = AssembleStage(store, data_dir, TIMEOUT_S)
    spool(store, data_dir, view_file(record, "anterior"))
    assert not stage.step()
    assert store.study(record.study_uid).state == RECEIVED
    spool(store, data_dir, view_file(record, "posterior"))
    assert stage.step()
    study = store.study(record.study_uid)
    assert (study.state, study.completed_by) == (COMPLETE, "content")


def test_a_single_view_is_completed_by_the_idle_timeout_only(clocked_store, data_dir, phantoms, clock):
    record = phantoms["split-instances"]
    stage = AssembleStage(clocked_store, data_dir, TIMEOUT_S, clock=clock)
    spool(clocked_store, data_dir, view_file(record, "anterior"))
    clock.advance(TIMEOUT_S - 1)
    assert not stage.step()
    study = clocked_store.study(record.study_uid)
    assert study.state == RECEIVED and study.checked_version == study.content_version  # looked at once
    clock.advance(1)
    assert stage.step()
    study = clocked_store.study(record.study_uid)
    assert (study.state, study.completed_by) == (COMPLETE, "timeout")


def test_a_reopened_study_is_completed_again_at_its_new_generation(store, data_dir, phantoms):
    record = phantoms["multiframe"]
    complete(store, data_dir, record)
    reopen(store, data_dir, record)
    assert (store.study(record.study_uid).state, store.study(record.study_uid).generation) == (RECEIVED, 2)
    assert AssembleStage(store, data_dir, TIMEOUT_S).step()
    study = store.study(record.study_uid)
    assert (study.state, study.generation, study.completed_by) == (COMPLETE, 2, "content")


def test_assemble_refuses_a_completion_when_an_object_arrived_meanwhile(store, data_dir, phantoms):
    record = phantoms["split-instances"]
    for path in record.files:
        spool(store, data_dir, path)
    stage = AssembleStage(store, data_dir, TIMEOUT_S)
    seen = store.study(record.study_uid)
    spool(store, data_dir, view_file(phantoms["split-series"], "anterior"))  # another study: no effect
    reopen(store, data_dir, record)  # a changed object: content_version moves on
    assert not stage.check_study(seen)  # judged on the old content: refused
    assert store.study(record.study_uid).state == RECEIVED
    assert stage.step()  # the next pass looks at the new content


def test_an_exception_in_the_completion_check_keeps_the_study_and_the_timeout_still_completes_it(
        clocked_store, data_dir, phantoms, clock):
    record = phantoms["split-instances"]
    spool(clocked_store, data_dir, view_file(record, "anterior"))
    data_dir.spool_folder(record.study_uid).joinpath("garbage").write_text("x")

    class Exploding(AssembleStage):
        def check_study(self, study: StudyRecord) -> bool:
            raise RuntimeError("completion check broke")

    stage = Exploding(clocked_store, data_dir, TIMEOUT_S, clock=clock)
    assert not stage.step()
    assert clocked_store.study(record.study_uid).state == RECEIVED
    clock.advance(TIMEOUT_S)
    assert stage.step()
    assert clocked_store.study(record.study_uid).completed_by == "timeout"


def test_assemble_resumes_after_a_restart(clocked_store, data_dir, phantoms, clock):
    record = phantoms["split-instances"]
    spool(clocked_store, data_dir, view_file(record, "anterior"))
    assert not AssembleStage(clocked_store, data_dir, TIMEOUT_S, clock=clock).step()
    clocked_store.close()
    clock.advance(TIMEOUT_S)
    with JobStore(data_dir.database, clock=clock) as reopened:  # the node restarts
        assert AssembleStage(reopened, data_dir, TIMEOUT_S, clock=clock).step()
        assert reopened.study(record.study_uid).state == COMPLETE


# ------------------------------------------------------------------------- classify


def test_classify_stores_the_result_and_keeps_views_and_heatmaps(store, data_dir, phantoms):
    record = phantoms["multiframe"]
    complete(store, data_dir, record)
    assert ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True).step()
    study = store.study(record.study_uid)
    assert study.state == CLASSIFIED and study.result is not None
    assert (study.result.label, study.result.probabilities) == ("metastatic", PROBABILITIES)
    # The frames the phantom wrote each view to (its frame order varies, as cameras' does).
    assert {v: s.frame_number for v, s in study.result.view_sources.items()} == {
        v: index + 1 for v, (_, index) in record.views.items()}
    with np.load(data_dir.work_file(record.study_uid, 1)) as kept:
        assert sorted(kept.files) == sorted(["anterior", "posterior", VIEW_KEY + "anterior", VIEW_KEY + "posterior"])
        assert kept[VIEW_KEY + "anterior"].shape == record.matrix
    assert not ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True).step()  # nothing left


@pytest.mark.parametrize("not_assessable_sr", [True, False])
def test_classify_ends_an_unusable_nm_study_not_assessable(store, data_dir, phantoms, not_assessable_sr):
    record = phantoms["split-instances"]
    spool(store, data_dir, view_file(record, "anterior"))
    store.advance(record.study_uid, 1, RECEIVED, COMPLETE, "timeout", completed_by="timeout")
    ds_path = store.instance_paths(record.study_uid)[0]
    ds = pydicom.dcmread(ds_path)
    spot = np.ascontiguousarray(ds.pixel_array[:128, :128])  # a 128 x 128 spot view, not a whole-body scan
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.Rows, ds.Columns, ds.PixelData = 128, 128, spot.tobytes()
    ds.save_as(ds_path)
    assert ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=not_assessable_sr).step()
    study = store.study(record.study_uid)
    assert study.state == NOT_ASSESSABLE and study.result is not None and study.reason == study.result.reason
    assert study.report_pending == not_assessable_sr


def test_a_classify_failure_is_a_visible_error_that_retry_returns_to_classify(store, data_dir, phantoms):
    record = phantoms["multiframe"]
    complete(store, data_dir, record)
    failing = FakeClassifier(fail=RuntimeError("model exploded"))
    assert ClassifyStage(store, data_dir, lambda: failing, not_assessable_sr=True).step()
    study = store.study(record.study_uid)
    assert (study.state, study.error_stage) == (ERROR, COMPLETE)
    # The exception's message may quote patient data: the reason keeps its class only.
    assert study.reason == "classify failed: RuntimeError; the node's log has its traceback"
    assert store.retry_study(record.study_uid) == COMPLETE
    assert ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True).step()
    assert store.study(record.study_uid).state == CLASSIFIED


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Sets this process's file size limit (RLIMIT_FSIZE, ``ulimit -f``, systemd's ``LimitFSIZE=``) until the
    test ends: a write past it fails with EFBIG for real (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield lambda limit: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_work_file_past_the_file_size_limit_fails_its_study_and_the_next_study_is_classified(
        clocked_store, data_dir, phantoms, clock, file_size_limit):
    """EFBIG is a limit on one file, not a full disk: waiting cannot cure it, and the stage must not
    try the oldest study again and again while the others wait behind it."""
    store = clocked_store
    first, second = phantoms["multiframe"], phantoms["split-instances"]
    complete(store, data_dir, first)
    clock.advance(1)
    complete(store, data_dir, second)
    stage = ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True,
                          disk=DiskSpace(data_dir.root, 0, retry_seconds=3600))
    store.db.read("PRAGMA wal_checkpoint(TRUNCATE)")  # the job store's own files stay far below the limit
    file_size_limit(160 * 1024)  # a work file is over 200 kB
    try:
        assert stage.step() is True
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    failed = store.study(first.study_uid)
    assert failed.state == ERROR and "OSError [EFBIG]" in failed.reason and failed.error_stage == COMPLETE
    assert not list(data_dir.work.rglob("*"))[1:]  # no partial work file (only the study's folder)
    assert stage.disk.waiting_stages() == []  # the stage does not wait for space that would not help
    assert stage.step() is True
    assert store.study(second.study_uid).state == CLASSIFIED


def test_classify_drops_the_result_of_a_stale_generation(store, data_dir, phantoms):
    record = phantoms["multiframe"]
    complete(store, data_dir, record)

    class ReopenWhileClassifying(FakeClassifier):
        def classify(self, views: StudyViews | NotAssessable, explain: bool = False) -> StudyResult:
            reopen(store, data_dir, record)  # a changed object arrives while the model runs
            return super().classify(views, explain)

    stage = ClassifyStage(store, data_dir, ReopenWhileClassifying, not_assessable_sr=True)
    assert stage.classify(store.studies([COMPLETE])[0]) is None
    study = store.study(record.study_uid)
    assert (study.state, study.generation, study.result) == (RECEIVED, 2, None)


def test_classify_resumes_after_a_restart(store, data_dir, phantoms):
    record = phantoms["split-series"]
    complete(store, data_dir, record)
    store.close()
    with JobStore(data_dir.database) as reopened:
        classifier = FakeClassifier()
        assert ClassifyStage(reopened, data_dir, lambda: classifier, not_assessable_sr=True).step()
        assert classifier.seen == [record.study_uid] and reopened.study(record.study_uid).state == CLASSIFIED


def test_a_study_whose_spooled_files_no_longer_read_ends_not_assessable_unreadable(
        clocked_store, data_dir, phantoms, clock):
    record = phantoms["split-instances"]
    for path in record.files:
        spool(clocked_store, data_dir, path)
    for path in clocked_store.instance_paths(record.study_uid):
        path.write_bytes(b"not DICOM any more")  # the spool's copies were damaged after they were received
    stage = AssembleStage(clocked_store, data_dir, TIMEOUT_S, clock=clock)
    assert not stage.step()  # the headers cannot be read: not complete by content
    clock.advance(TIMEOUT_S)
    assert stage.step()
    assert clocked_store.study(record.study_uid).completed_by == "timeout"
    classifier = FakeClassifier()
    assert ClassifyStage(clocked_store, data_dir, lambda: classifier, not_assessable_sr=True).step()
    study = clocked_store.study(record.study_uid)
    assert study.state == NOT_ASSESSABLE and study.result.reason_code == "unreadable"
    assert study.reason.startswith("no object of the study could be read: ")
    assert study.reason.count("cannot be read as DICOM") == 2


def test_one_unreadable_view_leaves_a_one_view_study_and_a_warning(clocked_store, data_dir, phantoms, clock,
                                                                   caplog):
    record = phantoms["split-instances"]
    for path in record.files:
        spool(clocked_store, data_dir, path)
    posterior = pydicom.dcmread(view_file(record, "posterior"), stop_before_pixels=True).SOPInstanceUID
    (damaged,) = data_dir.spooled_versions(record.study_uid, str(posterior))
    damaged.write_bytes(b"\0" * 64)
    stage = AssembleStage(clocked_store, data_dir, TIMEOUT_S, clock=clock)
    assert not stage.step()
    clock.advance(TIMEOUT_S)
    assert stage.step()
    caplog.set_level("WARNING", logger="spectnode.node")
    assert ClassifyStage(clocked_store, data_dir, FakeClassifier, not_assessable_sr=True).step()
    study = clocked_store.study(record.study_uid)
    assert study.state == CLASSIFIED and study.result.views == ["anterior"]
    position = [Path(r["path"]) for r in clocked_store.instances(record.study_uid)].index(damaged) + 1
    warnings = [r.getMessage() for r in caplog.records]
    assert any(f"received object {position} of 2 (NM) cannot be read as DICOM" in m for m in warnings), warnings
    assert not any(str(posterior) in m for m in warnings)  # named by position, not by its file or UID


# --------------------------------------------------------------------------- report


def test_report_writes_sr_and_captures_and_queues_them(store, data_dir, phantoms, algorithm):
    record = phantoms["split-instances"]
    classified(store, data_dir, record)
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
    assert stage.step()
    study = store.study(record.study_uid)
    assert study.state == REPORTED
    outputs = store.outputs(record.study_uid)
    assert sorted(o.kind for o in outputs) == ["sc", "sc", "sr"]
    assert all(o.path.parent == data_dir.results_folder(record.study_uid) and o.path.is_file() for o in outputs)
    assert data_dir.result_summary(record.study_uid).is_file()
    assert [(i.destination, i.kind, i.state) for i in store.outbox.list_items()] == [
        ("local", "sr", "pending"), ("local", "sc", "pending")]
    assert not stage.step()


def test_report_with_no_destination_for_the_outputs_ends_dispatched(store, data_dir, phantoms, algorithm):
    record = phantoms["multiframe"]
    classified(store, data_dir, record)
    assert ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, []).step()
    assert store.study(record.study_uid).state == DISPATCHED and store.outbox.list_items() == []


def test_a_report_failure_is_a_visible_error_that_retry_returns_to_report(store, data_dir, phantoms, algorithm):
    record = phantoms["multiframe"]
    classified(store, data_dir, record)
    data_dir.work_file(record.study_uid, 1).unlink()  # the classify stage's views are gone
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
    assert stage.step()
    study = store.study(record.study_uid)
    assert (study.state, study.error_stage) == (ERROR, CLASSIFIED)
    assert study.reason.startswith("report failed: FileNotFoundError")
    assert store.retry_study(record.study_uid) == CLASSIFIED


def test_report_resumes_after_a_restart_with_the_outputs_it_had_made(store, data_dir, phantoms, algorithm):
    record = phantoms["split-series"]
    study = classified(store, data_dir, record)
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
    # The node dies after the outputs were recorded and written, before they were queued.
    built = stage._build_outputs(study, *stage._load_result(study))
    assert store.record_outputs(study.study_uid, study.generation, [r for r, _ in built])
    for output, ds in built:
        output.path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(output.path, enforce_file_format=True)
    made = {o.sop_instance_uid: o.path.stat().st_mtime_ns for o in store.outputs(record.study_uid)}
    store.close()
    with JobStore(data_dir.database) as reopened:
        restarted = ReportStage(reopened, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
        assert restarted.step()
        assert reopened.study(record.study_uid).state == REPORTED
        # The same files are queued, not new ones.
        assert {o.sop_instance_uid: o.path.stat().st_mtime_ns for o in reopened.outputs(record.study_uid)} == made
        assert len(reopened.outbox.list_items()) == 2


def test_report_of_a_stale_generation_is_dropped(store, data_dir, phantoms, algorithm):
    record = phantoms["split-instances"]
    study = classified(store, data_dir, record)
    reopen(store, data_dir, record)
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
    assert stage.report(study) is None
    assert store.outputs(record.study_uid, current_only=False) == [] and store.outbox.list_items() == []


# ------------------------------------------------------------------------- dispatch


def reported(store: JobStore, data_dir: DataDir, record: PhantomStudyRecord, algorithm: AlgorithmInfo,
             destinations: list[DestinationConfig]) -> StudyRecord:
    classified(store, data_dir, record)
    assert ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, destinations).step()
    study = store.study(record.study_uid)
    assert study is not None and study.state == REPORTED
    return study


def test_dispatch_delivers_and_then_the_study_is_dispatched(store, data_dir, phantoms, algorithm):
    record = phantoms["multiframe"]
    dest = local_destination(data_dir)
    reported(store, data_dir, record, algorithm, [dest])
    stage = DispatchStage(store, data_dir, {"local": dest}, "SPECTNODE")
    assert stage.step()
    assert store.study(record.study_uid).state == DISPATCHED
    delivered = sorted(p.name for p in (data_dir.root / "delivered" / record.study_uid).iterdir())
    assert delivered == sorted(o.path.name for o in store.outputs(record.study_uid))
    assert not stage.step()


def test_dispatch_backs_off_and_keeps_the_study_reported_until_delivered(clocked_store, data_dir, phantoms,
                                                                          algorithm, clock):
    record = phantoms["multiframe"]
    dest = DestinationConfig(name="pacs", type="dicom", ae_title="PACS", host="127.0.0.1", port=9)
    reported(clocked_store, data_dir, record, algorithm, [dest])
    failures = []

    def down(destination, files, **kwargs):
        failures.append(destination.name)
        raise DispatchError("connection refused", peer_unreachable=True)

    stage = DispatchStage(clocked_store, data_dir, {"pacs": dest}, "SPECTNODE",
                          policy=RetryPolicy(max_attempts=3, base_delay_s=10, max_delay_s=10), send=down)
    assert stage.step()
    assert failures == ["pacs"]  # one attempt for both items of the unreachable destination
    assert [(i.state, i.attempts) for i in clocked_store.outbox.list_items()] == [("pending", 1)] * 2
    assert not stage.step() and failures == ["pacs"]  # backing off
    clock.advance(10)
    stage.send = lambda destination, files, **kwargs: None  # the PACS is back
    assert stage.step()
    assert clocked_store.study(record.study_uid).state == DISPATCHED


def test_dispatch_supersedes_the_items_of_a_stale_generation(store, data_dir, phantoms, algorithm):
    record = phantoms["multiframe"]
    dest = local_destination(data_dir)
    reported(store, data_dir, record, algorithm, [dest])
    reopen(store, data_dir, record)
    sent = []
    stage = DispatchStage(store, data_dir, {"local": dest}, "SPECTNODE",
                          send=lambda destination, files, **kwargs: sent.append(files))
    assert not stage.step()
    assert sent == [] and {i.state for i in store.outbox.list_items()} == {"superseded"}
    assert store.study(record.study_uid).state == RECEIVED


def test_dispatch_resumes_an_item_interrupted_mid_send_after_a_restart(store, data_dir, phantoms, algorithm):
    record = phantoms["split-series"]
    dest = local_destination(data_dir)
    reported(store, data_dir, record, algorithm, [dest])
    first = store.outbox.list_items()[0]
    assert store.outbox.claim(first.id)  # the node dies while sending it
    store.close()
    with JobStore(data_dir.database) as reopened:
        assert reopened.outbox.recover_interrupted() == 1
        assert DispatchStage(reopened, data_dir, {"local": dest}, "SPECTNODE").step()
        assert reopened.study(record.study_uid).state == DISPATCHED


def test_an_item_stuck_in_sending_while_the_node_runs_is_sent_after_the_claim_timeout(
        clocked_store, data_dir, phantoms, algorithm, clock):
    record = phantoms["multiframe"]
    dest = local_destination(data_dir)
    reported(clocked_store, data_dir, record, algorithm, [dest])
    stuck = clocked_store.outbox.list_items()[0]
    assert clocked_store.outbox.claim(stuck.id)  # a worker thread hung mid-send; the node keeps running
    stage = DispatchStage(clocked_store, data_dir, {"local": dest}, "SPECTNODE",
                          policy=RetryPolicy(claim_timeout_s=60))
    stage.step()
    assert clocked_store.outbox.get(stuck.id).state == "sending"  # not yet: it might still be sending
    clock.advance(60)
    stage.step()
    assert clocked_store.outbox.get(stuck.id).state == "delivered"
    assert clocked_store.study(record.study_uid).state == DISPATCHED


def test_a_sender_that_raises_something_unexpected_keeps_the_item_retrying(clocked_store, data_dir, phantoms,
                                                                             algorithm, clock):
    record = phantoms["multiframe"]
    dest = local_destination(data_dir)
    reported(clocked_store, data_dir, record, algorithm, [dest])

    def broken(destination, files, **kwargs):
        raise KeyError("a bug in a sender")

    stage = DispatchStage(clocked_store, data_dir, {"local": dest}, "SPECTNODE",
                          policy=RetryPolicy(base_delay_s=5, max_delay_s=5), send=broken)
    assert stage.step()
    items = clocked_store.outbox.list_items()
    assert [(i.state, i.attempts) for i in items] == [("pending", 1)] * 2
    assert items[0].last_error == "unexpected error: KeyError"  # its message may quote a value
    assert items[0].next_attempt_at == clock.now + 5
    assert clocked_store.study(record.study_uid).state == REPORTED


def test_a_result_of_release_0_1_0_without_a_model_name_is_classified_again_not_reported(store, data_dir, phantoms,
                                                                                          algorithm):
    """0.1.0 kept one model's result without its name: an SR must not name a model that did not make it."""
    record = phantoms["multiframe"]
    complete(store, data_dir, record)
    old = StudyResult.from_json({"study_uid": record.study_uid, "outcome": "classified", "views": ["anterior"],
                                 "label": "normal", "probabilities": dict(PROBABILITIES)})
    assert old.models[0].model == ""
    store.advance(record.study_uid, 1, COMPLETE, CLASSIFIED, "classified by 0.1.0", result=old)
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [local_destination(data_dir)])
    assert stage.step()
    study = store.study(record.study_uid)
    assert study.state == COMPLETE and store.outputs(record.study_uid, current_only=False) == []
    assert ClassifyStage(store, data_dir, FakeClassifier, not_assessable_sr=True).step()
    assert store.study(record.study_uid).result.models[0].model == "spectnode-test-dspic"
