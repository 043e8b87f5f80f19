"""``spectnode backfill`` against a real Orthanc, loaded with phantom NM studies, a CT study, a
one-view study, a study with another vendor's SR and a study that already has a spectnode SR.

What a person would check in the PACS afterwards is what is checked here: every eligible study
holds exactly one spectnode SR and one secondary capture per view, in that study; the others hold
nothing new; a second run does no new work; a run killed with SIGKILL and started again leaves no
duplicate; a PACS that goes away mid-run is waited for.
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid

import spectnode.backfill.run as backfill_run
from spectnode.backfill.progress import Progress
from spectnode.backfill.query import PacsClient, PacsRefused
from spectnode.backfill.retrieve import RetrieveOutcome, retrieve_series
from spectnode.backfill.run import BackfillOptions, algorithm_of, run_backfill
from spectnode.config import parse_config
from spectnode.node.datadir import DataDir
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import AlgorithmInfo, build_not_assessable_sr
from spectnode.result import StudyResult
from spectnode.store import JobStore

from nodetools import FakeClock, NodeProcess, free_port, spectnode_command, tiny_bundle, write_config
from orthanc import OrthancServer

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from pynetdicom.events import Event

AE_TITLE = "SPECTNODE"


@dataclass
class Archive:
    """What the PACS holds before the backfill, by role."""

    #: Eligible studies: StudyInstanceUID -> number of views its files hold.
    eligible: dict[str, int]
    #: The study whose spectnode SR (of the current model) is already in the PACS.
    done_in_pacs: str
    ct_study: str
    one_view: str
    files: list[Path]

    def load(self, pacs: OrthancServer, only: set[str] | None = None) -> None:
        for path in self.files:
            if only is None or str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) in only:
                pacs.upload(path.read_bytes())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory)


def _sr_file(datasets: list[pydicom.Dataset], algorithm: AlgorithmInfo, out: Path) -> Path:
    result = StudyResult(str(datasets[0].StudyInstanceUID), "not_assessable", reason="an earlier run")
    sr = build_not_assessable_sr(datasets, result, [algorithm])
    sr.Manufacturer = algorithm.manufacturer  # another vendor's SR says so in its header too
    sr.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Archive:
    root = tmp_path_factory.mktemp("backfill-archive")
    records = generate_phantoms(root / "nm", 5, seed=41)
    (single,) = generate_phantoms(root / "single", 1, seed=42, layout="split-instances")
    files: list[Path] = []
    eligible = {}
    for record in records[:4]:
        files += record.files
        eligible[record.study_uid] = 2
    anterior_file = single.views["anterior"][0]
    files.append(anterior_file)
    eligible[single.study_uid] = 1
    # Another vendor's SR in an eligible study does not make it done.
    current = algorithm_of(parse_config({"model": {"bundles": [str(bundle)]}}, check_dirs=False), None)
    other = AlgorithmInfo(name="other-ai", version="9", device_uid="1.2.3.4.5", research_use_statement="test",
                          classes=("a", "b"), scheme="binary", manufacturer="OtherVendor")
    files.append(_sr_file([pydicom.dcmread(records[0].files[0])], other, root / "other-sr.dcm"))
    # The fifth study already has a spectnode SR of the current model: it is skipped.
    done = records[4]
    files += done.files
    files.append(_sr_file([pydicom.dcmread(done.files[0])], current, root / "done-sr.dcm"))
    # A CT study is never found (ModalitiesInStudy NM).
    ct = pydicom.dcmread(records[0].files[0])
    ct.Modality = "CT"
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ct.StudyInstanceUID, ct.SeriesInstanceUID = generate_uid(), generate_uid()
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ct.save_as(root / "ct.dcm", enforce_file_format=True)
    files.append(root / "ct.dcm")
    return Archive(eligible, done.study_uid, str(ct.StudyInstanceUID), single.study_uid, files)


def _config(tmp_path: Path, pacs: OrthancServer, retrieve: str, node_port: int, bundle: Path,
            **pacs_keys: Any) -> dict[str, Any]:
    return {
        "node": {"ae_title": AE_TITLE, "port": node_port},
        "storage": {"data_dir": str(tmp_path / "data")},
        "destinations": [],
        "model": {"bundles": [str(bundle)]},
        "dispatch": {"retry_base_seconds": 0.5, "retry_max_seconds": 2},
        "pacs": [{"name": "main", "ae_title": pacs.ae_title, "host": pacs.host, "port": pacs.dicom_port,
                  "retrieve": retrieve, "studies_per_minute": 600, "timeout_seconds": 10,
                  "retry_base_seconds": 0.5, "retry_max_seconds": 2, **pacs_keys}],
    }


def _orthanc(tmp_path: Path, node_port: int) -> OrthancServer:
    return OrthancServer(tmp_path / "pacs", modalities={"spectnode": (AE_TITLE, "127.0.0.1", node_port)})


def spectnode_objects(pacs: OrthancServer, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """The objects spectnode made in a study of the PACS, by Modality (SR, OT)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for instance in pacs.instances_of_study(study_uid):
        tags = pacs.instance_tags(instance)
        if tags.get("Manufacturer") == "spectnode":
            found.setdefault(tags["Modality"], []).append(tags)
    return found


def assert_each_result_once(pacs: OrthancServer, archive: Archive, studies: dict[str, int]) -> None:
    for uid, views in studies.items():
        made = spectnode_objects(pacs, uid)
        assert len(made.get("SR", [])) == 1, (uid, made.keys())
        assert len(made.get("OT", [])) == views, uid
        assert all(t["StudyInstanceUID"] == uid for kind in made.values() for t in kind)


def _quiet() -> Progress:
    return Progress(io.StringIO(), terminal=False)


def test_c_get_backfill_classifies_every_eligible_study_skips_the_rest_and_a_rerun_does_nothing(
        archive: Archive, bundle: Path, tmp_path: Path) -> None:
    node_port = free_port()
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs)
        cfg = parse_config(_config(tmp_path, pacs, "get", node_port, bundle))

        out = io.StringIO()
        dry = run_backfill(cfg, "main", BackfillOptions(dry_run=True), Progress(out, terminal=False))
        plans = [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "plan"]
        assert dry.found == 6 and dry.skipped == {"PACS": 1} and dry.retrieved == 0
        assert sorted(p["study_uid"] for p in plans if p["action"].startswith("retrieve")) == sorted(archive.eligible)
        with JobStore(DataDir(cfg.storage.data_dir).database) as store:
            assert store.studies() == []

        summary = run_backfill(cfg, "main", BackfillOptions(), _quiet())
        assert summary.found == 6  # the CT study is not an NM study
        assert summary.skipped == {"PACS": 1}
        assert summary.retrieved == summary.classified == 5
        assert not summary.failed and not summary.not_assessable
        assert_each_result_once(pacs, archive, archive.eligible)
        # The one-view study is classified on the view it has and references only that one.
        (sr,) = spectnode_objects(pacs, archive.one_view)["SR"]
        with JobStore(DataDir(cfg.storage.data_dir).database) as store:
            result = store.study(archive.one_view).result
            assert result is not None and result.views == ["anterior"]
        assert sr["SeriesDescription"] == "spectnode result"
        assert spectnode_objects(pacs, archive.done_in_pacs).keys() == {"SR"}
        assert len(spectnode_objects(pacs, archive.done_in_pacs)["SR"]) == 1
        assert archive.ct_study not in {uid for uid in archive.eligible}
        assert spectnode_objects(pacs, archive.ct_study) == {}
        instances = len(pacs.instances())

        again = run_backfill(cfg, "main", BackfillOptions(), _quiet())
        assert again.skipped == {"job store": 5, "PACS": 1} and again.retrieved == 0
        assert len(pacs.instances()) == instances

        # Without the job store, the SRs in the PACS alone say the studies are done.
        fresh = parse_config({**_config(tmp_path / "fresh", pacs, "get", node_port, bundle)})
        third = run_backfill(fresh, "main", BackfillOptions(), _quiet())
        assert third.skipped == {"PACS": 6} and third.retrieved == 0
        assert len(pacs.instances()) == instances


def test_a_c_get_backfill_listens_for_the_storage_commitment_reports_of_its_destinations(
        archive: Archive, bundle: Path, tmp_path: Path) -> None:
    # Orthanc reports storage commitment on an association of its own, to the node's AE title and port:
    # a backfill without a serve must listen there, though its objects come by C-GET.
    node_port = free_port()
    (study,) = list(archive.eligible)[:1]
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs, {study})
        config = _config(tmp_path, pacs, "get", node_port, bundle, return_results=False)
        config["dispatch"]["max_attempts"] = 1  # without the report the item is dead at its first timeout
        config["destinations"] = [{"name": "archive", "type": "dicom", "ae_title": pacs.ae_title, "host": pacs.host,
                                   "port": pacs.dicom_port, "outputs": ["sr"], "storage_commitment": True,
                                   "commitment_timeout_seconds": 20}]
        cfg = parse_config(config)
        summary = run_backfill(cfg, "main", BackfillOptions(), _quiet())
        assert summary.classified == 1 and not summary.failed, summary
        with JobStore(DataDir(cfg.storage.data_dir).database) as store:
            (item,) = store.outbox.list_items(study_uid=study)
        assert (item.state, item.attempts) == ("delivered", 0)
        assert "committed: N-EVENT-REPORT event type 1 from ORTHANC@127.0.0.1 on an association of its own" in (
            item.acknowledgement or "")
        assert len(spectnode_objects(pacs, study).get("SR", [])) == 1


def test_c_get_brings_every_layout_in_the_transfer_syntax_the_pacs_holds_it_in(tmp_path: Path) -> None:
    # One study of each phantom layout: uncompressed, RLE, JPEG-LS, JPEG lossless, JPEG 2000,
    # implicit VR, split instances and series. A C-GET that offered one presentation context per
    # SOP class got Explicit VR Little Endian accepted, so Orthanc had to decompress every object,
    # and answered 0xC000 ("Cannot transcode") for JPEG 2000, which it has no codec for.
    root = tmp_path / "layouts"
    records = generate_phantoms(root, 9, seed=43)
    held = {}
    for path in (f for r in records for f in r.files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        held[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    assert "1.2.840.10008.1.2.4.90" in held.values()  # JPEG 2000 lossless is among them
    received: dict[str, str] = {}

    def store(event: Event) -> int:
        received[str(event.dataset.SOPInstanceUID)] = str(event.context.transfer_syntax)
        return 0x0000

    node_port = free_port()
    with _orthanc(tmp_path, node_port) as pacs:
        for path in (f for r in records for f in r.files):
            pacs.upload(path.read_bytes())
        cfg = parse_config(_config(tmp_path, pacs, "get", node_port, tmp_path))
        client = PacsClient(cfg.pacs[0], AE_TITLE)
        for record in records:
            series = [hit.series_uid for hit in client.find_series(record.study_uid)]
            outcome = retrieve_series(client, record.study_uid, series, store_handler=store)
            assert outcome == RetrieveOutcome(completed=len(record.files), failed=0, warning=0), record.layout
        assert "Cannot transcode" not in pacs.log_tail(400)
    assert received == held


def test_a_study_the_pacs_refuses_is_retried_after_a_pause_and_given_up_after_max_attempts(
        archive: Archive, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The PACS answers 0xC000 to the first C-GET of one study and to every C-GET of another.
    once, always = list(archive.eligible)[:2]
    clock = FakeClock(0.0)  # moves only when the run sleeps
    calls: dict[str, list[float]] = {once: [], always: []}

    def refusing(client: PacsClient, study_uid: str, series_uids: Sequence[str], **kw: Any) -> RetrieveOutcome:
        calls[study_uid].append(clock())
        if study_uid == always or len(calls[study_uid]) == 1:
            raise PacsRefused("C-GET of a series: the PACS answered 0xC000")
        return retrieve_series(client, study_uid, series_uids, **kw)

    monkeypatch.setattr(backfill_run, "retrieve_series", refusing)

    node_port = free_port()
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs, {once, always})
        cfg = parse_config(_config(tmp_path, pacs, "get", node_port, bundle, max_attempts=3))
        out = io.StringIO()
        summary = run_backfill(cfg, "main", BackfillOptions(), Progress(out, terminal=False), clock=clock,
                               sleep=clock.advance)
        assert [len(c) for c in calls.values()] == [2, 3]
        # Each retry came after a pause of at least retry_base_seconds (0.5).
        assert all(later - earlier >= 0.5 for c in calls.values() for earlier, later in zip(c, c[1:]))
        assert summary.classified == 1 and summary.retrieved == 1
        assert summary.failed == {"retrieve failed 3 times: C-GET of a series: the PACS answered 0xC000": 1}
        notes = [e for e in _events(out.getvalue().splitlines()) if e["event"] == "note"]
        assert len(notes) == 3 and all("0xC000; trying again in" in n["message"] for n in notes)
        assert_each_result_once(pacs, archive, {once: archive.eligible[once]})
        assert spectnode_objects(pacs, always) == {}


def _events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def _backfill_process(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(spectnode_command("backfill", "--pacs", "main", "--config", str(config), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", **__import__("os").environ})


def _until(proc: subprocess.Popen[str], seen: list[str], event: str, timeout_lines: int = 1000) -> dict[str, Any]:
    """Read JSON lines until an event of kind ``event``; returns it."""
    assert proc.stdout is not None
    for _ in range(timeout_lines):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"backfill ended before a {event!r} event: {seen[-20:]}")
        seen.append(line)
        if line.startswith("{") and json.loads(line)["event"] == event:
            return dict(json.loads(line))
    raise AssertionError(f"no {event!r} event in {timeout_lines} lines")


def _finish(proc: subprocess.Popen[str], seen: list[str], timeout: float = 240) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    seen += out.splitlines()
    summary = [e for e in _events(seen) if e["event"] == "summary"]
    assert proc.returncode == 0 and summary, seen[-20:]
    return summary[-1]


def test_c_move_backfill_while_serve_runs_goes_through_the_running_node(archive: Archive, bundle: Path,
                                                                         tmp_path: Path) -> None:
    node_port = free_port()
    chosen = dict(list(archive.eligible.items())[:2])
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs, set(chosen))
        config = write_config(tmp_path / "spectnode.yaml", _config(tmp_path, pacs, "move", node_port, bundle))
        node = NodeProcess(config, node_port, tmp_path / "node.log").start()
        try:
            seen: list[str] = []
            summary = _finish(_backfill_process(config), seen)
        finally:
            node.stop()
        assert summary["found"] == 2 and summary["classified"] == 2 and summary["failed"] == 0, summary
        assert_each_result_once(pacs, archive, chosen)
        assert "C-STORE" not in "".join(seen)  # progress only, no log lines on stdout
        assert "from ORTHANC" in node.log_text()  # the running node received the moved studies


def test_a_backfill_killed_midway_and_started_again_finishes_with_no_duplicates(archive: Archive, bundle: Path,
                                                                               tmp_path: Path) -> None:
    node_port = free_port()
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs, set(archive.eligible))
        config = write_config(tmp_path / "spectnode.yaml", _config(tmp_path, pacs, "move", node_port, bundle))
        seen: list[str] = []
        first = _backfill_process(config)
        _until(first, seen, "retrieved")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert first.stdout is not None
        first.stdout.close()
        summary = _finish(_backfill_process(config), seen)
        assert summary["failed"] == 0, summary
        assert summary["classified"] + summary["skipped"] == len(archive.eligible), summary
        assert_each_result_once(pacs, archive, archive.eligible)


def test_a_pacs_stopped_mid_run_makes_the_backfill_wait_and_resume(archive: Archive, bundle: Path,
                                                                  tmp_path: Path) -> None:
    node_port = free_port()
    chosen = dict(list(archive.eligible.items())[:3])
    with _orthanc(tmp_path, node_port) as pacs:
        archive.load(pacs, set(chosen))
        config = write_config(tmp_path / "spectnode.yaml",
                              _config(tmp_path, pacs, "get", node_port, bundle, max_parallel_retrieves=1,
                                      studies_per_minute=30))
        seen: list[str] = []
        proc = _backfill_process(config)
        _until(proc, seen, "retrieved")
        pacs.stop(graceful=False)
        note = _until(proc, seen, "note")
        assert "unavailable" in note["message"]
        pacs.start()
        summary = _finish(proc, seen)
        assert summary["failed"] == 0 and summary["classified"] == 3, summary
        assert_each_result_once(pacs, archive, chosen)


def test_a_pacs_rejecting_the_called_ae_title_is_refused_every_time(tmp_path: Path) -> None:
    # Orthanc closes the connection right after its A-ASSOCIATE-RJ; pynetdicom then at times handles the
    # close first and calls the association aborted. A permanent rejection must still read as one (not as
    # an unavailable PACS that backfill waits for), whichever comes first: tried a dozen times.
    with OrthancServer(tmp_path / "strict", ae_title="STRICT", check_called_aet=True) as strict:
        cfg = parse_config(_config(tmp_path, strict, "get", free_port(), tmp_path))
        client = PacsClient(dataclasses.replace(cfg.pacs[0], ae_title="WRONGAE"), AE_TITLE)
        for _ in range(12):
            with pytest.raises(PacsRefused, match="Called AE title not recognised"), client.associate(
                    [("1.2.840.10008.1.1", None)]):
                pass
