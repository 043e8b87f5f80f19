"""The parts of the backfill that need no PACS: politeness rules, ``pacs`` configuration, progress
output, and ``spectnode classify DIR --send`` (the same batch path for files on disk)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from spectnode.backfill.polite import Backoff, RateLimiter, TimeWindow, parse_window
from spectnode.backfill.progress import Progress
from spectnode.backfill.run import Pipeline, run_folder
from spectnode.config import ConfigError, parse_config
from spectnode.node.datadir import DataDir, DataDirInUse, LockHolder
from spectnode.node.stages.receive import ReceiveStage
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import JobStore

from nodetools import FakeClock, echoscu, free_port, tiny_bundle

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nodetools import LockingProcess

# ------------------------------------------------------------------ politeness


class SleepingClock(FakeClock):
    """A fake monotonic clock whose sleep moves it, recording each sleep."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def test_an_overnight_window_contains_the_night_and_says_when_it_opens() -> None:
    window = TimeWindow.parse("19:00-07:00")
    assert window is not None
    day = dt.datetime(2025, 3, 4, 12, 30)
    assert not window.contains(day)
    assert window.seconds_until_open(day) == 6.5 * 3600
    assert window.contains(dt.datetime(2025, 3, 4, 23, 0)) and window.contains(dt.datetime(2025, 3, 5, 6, 59))
    assert not window.contains(dt.datetime(2025, 3, 5, 7, 0))  # the end is not in it
    assert window.seconds_until_open(dt.datetime(2025, 3, 4, 19, 0)) == 0


def test_a_daytime_window_opens_the_next_morning_after_it_closes() -> None:
    window = TimeWindow.parse("08:00-10:00")
    assert window is not None
    assert window.seconds_until_open(dt.datetime(2025, 3, 4, 11, 0)) == 21 * 3600


@pytest.mark.parametrize("text", ["7-19", "25:00-07:00", "19:00-19:00", "19:60-07:00", ""])
def test_a_malformed_window_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


def test_the_rate_limiter_spaces_starts_evenly() -> None:
    clock = SleepingClock()
    limiter = RateLimiter(30, clock, clock.sleep)  # one start every 2 s
    waits = [limiter.acquire() for _ in range(4)]
    assert waits == [0.0, 2.0, 2.0, 2.0]
    clock.advance(10)
    assert limiter.acquire() == 0.0  # an idle limiter does not save up a burst


def test_the_backoff_doubles_up_to_its_cap_and_one_success_ends_it() -> None:
    clock = SleepingClock()
    backoff = Backoff(5, 30, clock, clock.sleep)
    assert [backoff.failure() for _ in range(5)] == [5, 10, 20, 30, 30]
    assert backoff.wait() == pytest.approx(30)
    backoff.failure()
    backoff.success()
    assert backoff.wait() == 0 and backoff.failures == 0


# --------------------------------------------------------------- configuration


def _pacs(**keys: Any) -> dict[str, Any]:
    return {"pacs": [{"name": "main", "ae_title": "PACS", "host": "10.0.0.5", "port": 104, "retrieve": "move",
                      **keys}]}


def test_a_pacs_entry_becomes_a_destination_of_its_results_by_default() -> None:
    cfg = parse_config(_pacs(), check_dirs=False)
    (pacs,) = cfg.pacs
    assert (pacs.max_parallel_retrieves, pacs.studies_per_minute, pacs.window) == (2, 30.0, None)
    dest = {d.name: d for d in cfg.destinations}["main"]
    assert (dest.type, dest.ae_title, dest.host, dest.port) == ("dicom", "PACS", "10.0.0.5", 104)
    assert "main" not in {d.name for d in parse_config(_pacs(return_results=False), check_dirs=False).destinations}


@pytest.mark.parametrize(("keys", "where", "words"), [
    ({"retrieve": "fetch"}, "pacs[0].retrieve", "one of 'get', 'move'"),
    ({"window": "7pm-7am"}, "pacs[0].window", "HH:MM-HH:MM"),
    ({"studies_per_minute": 0}, "pacs[0].studies_per_minute", "greater than 0"),
    ({"max_parallel_retrieves": 0}, "pacs[0].max_parallel_retrieves", "at least 1"),
    ({"retry_max_seconds": 1}, "pacs[0].retry_max_seconds", "at least retry_base_seconds"),
    ({"ae_title": "A" * 17}, "pacs[0].ae_title", "16"),
    ({"port": 0}, "pacs[0].port", "out of range"),
    ({"windw": "19:00-07:00"}, "pacs[0].windw", "unknown key"),
])
def test_a_bad_pacs_key_is_named(keys: dict[str, Any], where: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_pacs(**keys), "cfg.yaml", check_dirs=False)
    assert err.value.key == where and words in err.value.problem


def test_a_pacs_entry_needs_its_retrieve_method() -> None:
    data = _pacs()
    del data["pacs"][0]["retrieve"]
    with pytest.raises(ConfigError) as err:
        parse_config(data, check_dirs=False)
    assert err.value.key == "pacs[0].retrieve" and "required" in err.value.problem


def test_c_move_needs_the_pacs_among_the_allowed_callers() -> None:
    data = {**_pacs(), "node": {"allowed_calling_ae_titles": ["CAMERA"]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, check_dirs=False)
    assert err.value.key == "pacs[0].retrieve" and "allowed_calling_ae_titles" in err.value.problem
    parse_config({**_pacs(retrieve="get"), "node": {"allowed_calling_ae_titles": ["CAMERA"]}}, check_dirs=False)


def test_a_pacs_name_that_is_also_a_destination_name_is_refused() -> None:
    data = {**_pacs(), "destinations": [{"name": "main", "type": "folder", "path": "out"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, check_dirs=False)
    assert err.value.key == "pacs[0].name"


# ------------------------------------------------------------ progress output


def test_json_lines_carry_every_study_and_a_summary_by_reason() -> None:
    out = io.StringIO()
    progress = Progress(out, terminal=False)
    progress.start("test")
    progress.found(4)
    progress.skipped("1.2.1", "PACS")
    progress.classified("1.2.2", "normal")
    progress.not_assessable("1.2.3", "only a CT")
    progress.failed("1.2.4", "retrieve failed")
    summary = progress.finish()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "found", "study", "study", "study", "study", "summary"]
    assert [e["done"] for e in events if e["event"] == "study"] == [1, 2, 3, 4]
    final = events[-1]
    assert (final["found"], final["skipped"], final["classified"], final["not_assessable"], final["failed"]) == (
        4, 1, 1, 1, 1)
    assert final["not_assessable_by_reason"] == {"only a CT": 1} and final["failed_by_reason"] == {
        "retrieve failed": 1}
    assert summary.finished == 4


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta_and_a_text_summary() -> None:
    out = io.StringIO()
    progress = Progress(out, terminal=True)
    progress.start("backfill from main")
    progress.found(2)
    progress.classified("1.2.2", "normal")
    progress.finish()
    text = out.getvalue()
    assert "backfill from main" in text and "/min" in text and "ETA" in text
    assert "classified:     1" in text and "{" not in text


# --------------------------------------------------------- classify DIR --send


def test_classify_send_runs_files_through_the_pipeline_and_a_rerun_skips_them(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = tiny_bundle(tmp_path_factory)
    records = generate_phantoms(tmp_path / "studies", 2, seed=43)
    (tmp_path / "studies" / "notes.bin").write_bytes(b"not DICOM")
    cfg = parse_config({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"bundles": [str(bundle)]},
                        "destinations": [{"name": "out", "type": "folder", "path": str(tmp_path / "out")}]})
    files = sorted(p for p in (tmp_path / "studies").rglob("*") if p.is_file() and p.suffix != ".csv")
    summary = run_folder(cfg, files, Progress(io.StringIO(), terminal=False))
    assert summary.found == 2 and summary.classified == 2 and not summary.failed
    delivered = sorted(p.name.split("_")[0] for p in (tmp_path / "out").rglob("*.dcm"))
    assert delivered.count("SR") == 2 and delivered.count("OT") == 4
    again = run_folder(cfg, files, Progress(io.StringIO(), terminal=False))
    assert again.skipped == {"job store": 2} and again.classified == 0
    assert {r.study_uid for r in records} == set(json.loads(p.read_text())["study_uid"]
                                                 for p in (tmp_path / "data" / "results").rglob("result.json"))


# ------------------------------------------------- who runs the pipeline: the lock


def _no_model(_bundle: Path | None) -> Any:
    raise RuntimeError("no model in this test")


def _pipeline_config(tmp_path: Path, port: int) -> Any:
    return parse_config({"storage": {"data_dir": str(tmp_path / "data")}, "node": {"port": port},
                         "destinations": []})


def test_a_serve_holding_the_data_directory_gets_the_studies_though_nothing_answers_on_its_port(
        tmp_path: Path, locking_process: Callable[[Path, str], LockingProcess]) -> None:
    cfg = _pipeline_config(tmp_path, free_port())  # nothing listens there
    serve = locking_process(tmp_path / "data", "serve")
    pipeline = Pipeline(cfg, listen=True, classifier_loader=_no_model)
    try:
        assert pipeline.serving and pipeline.node is None
        with pytest.raises(DataDirInUse) as held:  # the serve keeps its lock; the run took none
            DataDir(tmp_path / "data").lock("test")
        assert held.value.holder == LockHolder("serve", serve.pid)
    finally:
        pipeline.close()


def test_without_a_serve_on_the_data_directory_the_run_is_the_pipeline_though_a_node_answers_on_the_port(
        tmp_path: Path) -> None:
    other_node = ReceiveStage(JobStore(tmp_path / "other.sqlite"), DataDir(tmp_path / "other"),
                              ae_title="SPECTNODE", port=0)
    other_node.start()  # another node (another data directory) answers C-ECHO on node.port as SPECTNODE
    try:
        assert echoscu(other_node.port)
        cfg = _pipeline_config(tmp_path, other_node.port)
        pipeline = Pipeline(cfg, listen=False, classifier_loader=_no_model)
        try:
            assert not pipeline.serving and pipeline.node is not None
            with pytest.raises(DataDirInUse) as held:  # a serve started now would be refused
                DataDir(tmp_path / "data").lock("serve")
            assert held.value.holder == LockHolder("backfill", os.getpid())
        finally:
            pipeline.close()
        with DataDir(tmp_path / "data").lock("serve"):  # and is not once the run has ended
            pass
    finally:
        other_node.stop()
        other_node.store.close()


def test_a_data_directory_that_another_backfill_runs_is_refused(
        tmp_path: Path, locking_process: Callable[[Path, str], LockingProcess]) -> None:
    other = locking_process(tmp_path / "data", "classify --send")
    with pytest.raises(DataDirInUse, match=rf"in use by spectnode classify --send \(pid {other.pid}\)"):
        Pipeline(_pipeline_config(tmp_path, free_port()), listen=False, classifier_loader=_no_model)
