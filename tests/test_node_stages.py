"""The report stage against a real job store and its outbox: queueing is atomic with the study's transition."""

from __future__ import annotations

import pydicom
import pytest

from spectnode.config import DestinationConfig
from spectnode.node.datadir import DataDir
from spectnode.node.stages.report import ReportStage
from spectnode.peer import Peer
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import AlgorithmInfo
from spectnode.result import StudyResult
from spectnode.store import COMPLETE, NOT_ASSESSABLE, RECEIVED, InstanceRecord, JobStore

from nodetools import instance_record

PEER = Peer("CAMERA", "127.0.0.1", 40000, "SPECTNODE")
ALGORITHM = AlgorithmInfo(name="test-model", version="1", device_uid="1.2.826.0.1.3680043.8.498.77",
                          research_use_statement="Research use only.", classes=("normal", "metastatic"),
                          scheme="binary")
REASON = "NM object 1.2.3 is not a whole-body scan: ImageType STATIC"


class ReopeningStore(JobStore):
    """A job store in which an NM object arrives right after the report stage recorded its outputs."""

    arriving: InstanceRecord | None = None

    def record_outputs(self, *args, **kwargs) -> bool:
        recorded = super().record_outputs(*args, **kwargs)
        if self.arriving is not None:
            self.record_instance(self.arriving, PEER)
            self.arriving = None
        return recorded


@pytest.fixture
def node(tmp_path):
    record = generate_phantoms(tmp_path / "phantoms", n=1, seed=61, layout="split-instances")[0]
    data_dir = DataDir(tmp_path)
    store = ReopeningStore(data_dir.database)
    first, second = record.files
    store.record_instance(instance_record(first), PEER)
    store.advance(record.study_uid, 1, RECEIVED, COMPLETE, "complete", completed_by="timeout")
    store.advance(record.study_uid, 1, COMPLETE, NOT_ASSESSABLE, "not assessable", reason=REASON,
                  result=StudyResult(record.study_uid, "not_assessable", reason=REASON, reason_code="not_whole_body"),
                  report_pending=True)
    destinations = [DestinationConfig(name="local", type="folder", path=tmp_path / "delivered")]
    yield {
        "store": store,
        "outbox": store.outbox,
        "uid": record.study_uid,
        "later": instance_record(second),
        "stage": ReportStage(store, data_dir, lambda: {ALGORITHM.name: ALGORITHM}, destinations),
        "results": data_dir.results,
    }
    store.close()


def test_the_not_assessable_sr_is_queued_with_the_study_generation(node):
    store, uid = node["store"], node["uid"]
    study = store.study(uid)
    assert node["stage"].report(study) == NOT_ASSESSABLE
    assert not store.study(uid).report_pending
    (item,) = node["outbox"].list_items()
    (sr,) = store.outputs(uid)
    assert (item.study_uid, item.generation, item.kind, item.files) == (uid, 1, "sr", (sr.path,))
    assert item.sender == Peer("CAMERA", "127.0.0.1", 0)


def test_a_report_refused_because_the_study_reopened_queues_and_keeps_nothing(node):
    store, uid = node["store"], node["uid"]
    study = store.study(uid)
    store.arriving = node["later"]  # the second view arrives while the SR is being made
    assert node["stage"].report(study) is None
    reopened = store.study(uid)
    assert (reopened.state, reopened.generation) == (RECEIVED, 2)
    assert node["outbox"].list_items() == []  # nothing of generation 1 goes out
    assert store.outputs(uid, current_only=False) == []  # nor can it become generation 2's predecessor
    assert not list((node["results"] / uid).glob("*.dcm"))
    # A report of a snapshot that is already stale is refused before anything is recorded.
    assert node["stage"].report(study) is None
    assert node["outbox"].list_items() == [] and store.outputs(uid, current_only=False) == []


def test_report_headers_leave_deferred_pixel_data_unread(tmp_path):
    from spectnode.report._sources import header_with_study_defaults

    (record,) = generate_phantoms(tmp_path, n=1, seed=62, layout="split-instances")
    ds = pydicom.dcmread(record.files[0], defer_size="64 KB")
    # Reading a deferred value opens the file again: with the file gone, that would fail.
    record.files[0].rename(tmp_path / "moved.dcm")
    header = header_with_study_defaults(ds)
    assert "PixelData" not in header and header.StudyInstanceUID == record.study_uid


def test_the_report_of_a_classified_study_decodes_no_pixel_data(tmp_path):
    """Pixel data is decoded once, by the classify stage, which keeps the views it used; the report
    reads only the sources' headers. Here the spooled pixel data cannot even be decoded."""
    import numpy as np

    from spectnode.store import CLASSIFIED, REPORTED

    (phantom,) = generate_phantoms(tmp_path / "phantoms", n=1, seed=63, layout="split-instances")
    uid = phantom.study_uid
    data_dir = DataDir(tmp_path)
    store = JobStore(data_dir.database)
    outbox = store.outbox
    arrays, sources = {}, {}
    for view, (path, frame_index) in phantom.views.items():
        ds = pydicom.dcmread(path)
        arrays["view_" + view] = ds.pixel_array.astype(np.float32)
        arrays[view] = np.linspace(0, 1, ds.pixel_array.size, dtype=np.float32).reshape(ds.pixel_array.shape)
        sources[view] = {"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                         "frame_number": frame_index + 1, "pixel_spacing_mm": None}
        ds.PixelData = ds.PixelData[:100]  # undecodable from now on
        spooled = tmp_path / "spool" / f"{view}.dcm"
        spooled.parent.mkdir(exist_ok=True)
        ds.save_as(spooled)
        store.record_instance(instance_record(spooled), PEER)
    work = data_dir.work_file(uid, 1)
    work.parent.mkdir(parents=True)
    np.savez_compressed(work, **arrays)  # what the classify stage keeps for generation 1
    probabilities = {"normal": 0.1, "metastatic": 0.6, "arthritic": 0.2, "both": 0.1}
    store.advance(uid, 1, RECEIVED, COMPLETE, "complete", completed_by="content")
    store.advance(uid, 1, COMPLETE, CLASSIFIED, "classified", result=StudyResult.from_json({
        "study_uid": uid, "outcome": "classified", "reason": None, "reason_code": None,
        "views": ["anterior", "posterior"], "view_sources": sources,
        "models": [{"model": "test-model", "version": "1", "label": "metastatic", "second_label": "arthritic",
                    "probabilities": probabilities, "views": ["anterior", "posterior"]}]}))
    algorithm = AlgorithmInfo(name="test-model", version="1", device_uid="1.2.826.0.1.3680043.8.498.78",
                              research_use_statement="Research use only.", classes=tuple(probabilities),
                              scheme="dspic4")
    stage = ReportStage(store, data_dir, lambda: {algorithm.name: algorithm},
                        [DestinationConfig(name="local", type="folder", path=tmp_path / "delivered")])
    try:
        assert stage.report(store.study(uid)) == REPORTED
        outputs = store.outputs(uid)
        assert sorted(o.kind for o in outputs) == ["sc", "sc", "sr"]
        captures = [pydicom.dcmread(o.path) for o in outputs if o.kind == "sc"]
        assert [c.pixel_array.shape[2] for c in captures] == [3, 3] and all(c.Rows >= 1024 for c in captures)
        assert [i.kind for i in outbox.list_items(generation=1)] == ["sr", "sc"]
    finally:
        store.close()
