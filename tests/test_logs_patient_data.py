"""The node's JSON log lines and job store hold no patient data unless ``logging.patient_data``
allows it (issue 14 point 6, issue 15 point 7).

A camera sends, by DCMTK storescu over loopback to a real receive stage, a study whose
PatientName, PatientID and private elements hold a distinctive name, and with it an object
whose PatientName has a VR the dictionary does not give it (it cannot be parsed) and one whose
SeriesInstanceUID holds the patient's name (it cannot be filed); then one object again,
identical. The study goes through the real stages in this process: not assessable, its SR
written, its delivery to a folder failing (a file where the study's folder must go), the SR
sent back to the node as a PACS echoes it; then a new object re-opens it, and its report fails
for real (a folder where its new SR must be written), and once more (the SR it must name as its
predecessor was never written). The node's logging is configured as ``spectnode serve``
configures it, JSON lines into a file.

Without ``logging.patient_data``, no log line (at any level) and no text of the job store
(``spectnode status``, the study's reason, history and deliveries) holds the name, the patient
ID, or a SOP Instance UID of any object sent or made, or a spool path; with it, the log
names the objects by their SOP Instance UIDs and quotes what they were refused for, and the job
store's texts are the same. The audit receipts of ``spectnode status STUDY_UID`` keep every
object's SOP Instance UID either way (the operator's audit, by design).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import logging
import sqlite3
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from spectnode.classify import Classifiers
from spectnode.config import DestinationConfig, LoggingConfig, parse_config
from spectnode.errors import exception_name, traceback_without_messages
from spectnode.fsutil import instance_file_name
from spectnode.node import commands
from spectnode.node.datadir import DataDir
from spectnode.node.logs import EscapingFormatter, JsonLineFormatter, configure_logging
from spectnode.node.stages.assemble import AssembleStage
from spectnode.node.stages.classify import ClassifyStage
from spectnode.node.stages.dispatch import DispatchStage
from spectnode.node.stages.receive import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_SUCCESS,
    ReceiveStage,
)
from spectnode.node.stages.report import ReportStage
from spectnode.node.status import study_audit
from spectnode.peer import Peer
from spectnode.store import ERROR, JobStore
from test_content_guard import classifier_that_must_not_run
from test_reasons_patient_data import CASES, NAME_WORDS, PATIENT_NAME, TIMEOUT_S, drain, leaks, make_study

from nodetools import FakeClock, storescu

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from spectnode.report import AlgorithmInfo

#: The patient's name in a UID, as a camera's bug or a fuzzer puts it there.
NAMED_UID = "1.2.ZEBRAFISH"
NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")


@dataclass
class Run:
    patient_data: bool
    log_lines: list[dict[str, Any]]
    store: JobStore
    data_dir: DataDir
    study_uid: str
    #: every object the camera sent, refused ones included
    sent_uids: list[str]
    #: every SR and SC the node made (and recorded)
    made_uids: list[str]
    status_outputs: list[str]
    #: the folder destination
    delivered: Path

    def forbidden(self) -> list[str]:
        return [*NAME_WORDS, *self.sent_uids, *self.made_uids, str(self.data_dir.spool)]

    def lines(self, text: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines if text in line["message"]]


def _variant(source: Path, out: Path, instance_number: int) -> tuple[Path, str]:
    """A copy of ``source`` as another object of the study (new SOP Instance UID, InstanceNumber)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), instance_number
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out)
    return out, str(ds.SOPInstanceUID)


def _send(port: int, paths: list[Path], options: tuple[str, ...] = (), refused: bool = False) -> None:
    """storescu ``paths``; ``refused``: the node refuses the one file (storescu then exits non-zero; the
    receipts tell what the node answered)."""
    assert not refused or len(paths) == 1
    proc = storescu(port, paths, options=options)
    assert refused or proc.returncode == 0, proc.stdout + proc.stderr


def _json_log(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]  # every line is one JSON object


def _run(base: Path, algorithm: AlgorithmInfo, patient_data: bool) -> Run:
    """Send and process the study (see the module's docstring) with ``logging.patient_data`` as given."""
    data_dir = DataDir(base / "data")
    data_dir.create()
    clock = FakeClock()
    store = JobStore(data_dir.database, clock=clock)
    loggers = [logging.getLogger(name) for name in ("spectnode", "pynetdicom")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    log = base / "node.log"
    handler = configure_logging(LoggingConfig(level="DEBUG", format="json", file=log, patient_data=patient_data))
    receive = ReceiveStage(store, data_dir, ae_title="SPECTNODE", port=0, log_patient_data=patient_data)
    receive.start()
    try:
        paths = make_study(CASES["no views"], 941, base / "study")
        sent_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
        study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        # An object whose PatientName is written with VR DS: the node cannot parse it.
        malformed = pydicom.dcmread(paths[0])
        malformed.SOPInstanceUID = generate_uid()
        malformed[0x00100010] = RawDataElement(Tag(0x00100010), "DS", 18, b"ZEBRAFISH^QUENTINA", 0, False, True)
        malformed.save_as(base / "malformed.dcm")
        # An object whose SeriesInstanceUID holds the name: the node cannot file it.
        named = copy.deepcopy(pydicom.dcmread(paths[1]))
        named.SOPInstanceUID = generate_uid()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid UID it is told to write
            named.SeriesInstanceUID = NAMED_UID
        named.save_as(base / "named.dcm")
        sent_uids += [str(malformed.SOPInstanceUID), str(named.SOPInstanceUID)]
        _send(receive.port, paths)
        _send(receive.port, [base / "malformed.dcm"], refused=True)
        _send(receive.port, [base / "named.dcm"], refused=True)
        _send(receive.port, [paths[0]])  # again, identical

        destination = DestinationConfig(name="local", type="folder", path=base / "delivered")
        (base / "delivered").mkdir()
        (base / "delivered" / study_uid).write_text("a file where the study's folder must go")

        def process() -> None:
            assemble = AssembleStage(store, data_dir, TIMEOUT_S, clock=clock)
            drain(assemble.step)
            clock.advance(TIMEOUT_S)
            drain(assemble.step)
            classifiers = Classifiers([classifier_that_must_not_run()])
            drain(ClassifyStage(store, data_dir, lambda: classifiers, not_assessable_sr=True,
                                log_patient_data=patient_data).step)
            drain(ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [destination]).step)
            drain(DispatchStage(store, data_dir, {"local": destination}, "SPECTNODE").step)

        process()
        (sr,) = store.outputs(study_uid)
        _send(receive.port, [sr.path], options=("-R",))  # a PACS echoes the SR back

        # A new object re-opens the study; its new SR cannot be written (a folder in the way).
        new_path, new_uid = _variant(paths[1], base / "new.dcm", 3)
        sent_uids.append(new_uid)
        sr_uid = str(generate_uid(entropy_srcs=[study_uid, "2", str(algorithm.device_uid), "sr"]))
        blocked = data_dir.results_folder(study_uid) / instance_file_name("SR", sr_uid)
        (blocked / "in the way").mkdir(parents=True)
        _send(receive.port, [new_path])
        process()
        assert (store.study(study_uid) or pytest.fail("no study")).state == ERROR
        assert [o.path for o in store.outputs(study_uid, current_only=False) if o.generation == 2] == [blocked]
        # Another re-opens it: the SR of generation 2, its predecessor, was never written.
        (blocked / "in the way").rmdir()
        blocked.rmdir()
        newer_path, newer_uid = _variant(paths[1], base / "newer.dcm", 4)
        sent_uids.append(newer_uid)
        _send(receive.port, [newer_path])
        process()

        made_uids = [o.sop_instance_uid for o in store.outputs(study_uid, current_only=False)]
        cfg = parse_config({"storage": {"data_dir": str(data_dir.root)}}, check_dirs=False)
        outputs = []
        for as_json in (False, True):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert commands.status(cfg, json=as_json) == 0
            outputs.append(out.getvalue())
    finally:
        receive.stop()
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()
    return Run(patient_data, _json_log(log), store, data_dir, study_uid, sent_uids, made_uids, outputs,
               base / "delivered")


@pytest.fixture(scope="module")
def run_off(tmp_path_factory: pytest.TempPathFactory, algorithm: AlgorithmInfo) -> Iterator[Run]:
    """The run without ``logging.patient_data`` (the default)."""
    run = _run(tmp_path_factory.mktemp("patient-data-off"), algorithm, patient_data=False)
    yield run
    run.store.close()


@pytest.fixture(scope="module")
def run_on(tmp_path_factory: pytest.TempPathFactory, algorithm: AlgorithmInfo) -> Iterator[Run]:
    """The run with ``logging.patient_data: true``."""
    run = _run(tmp_path_factory.mktemp("patient-data-on"), algorithm, patient_data=True)
    yield run
    run.store.close()


@pytest.fixture(params=["run_off", "run_on"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each of the two runs."""
    found: Run = request.getfixturevalue(request.param)
    return found


def test_the_run_met_every_case_it_is_meant_to(run: Run) -> None:
    """The checks below prove something only if each case was logged and stored."""
    statuses = {r.sop_instance_uid: r.status for r in run.store.receipts()}
    assert [statuses[uid] for uid in run.sent_uids] == [STATUS_SUCCESS, STATUS_SUCCESS, STATUS_CANNOT_UNDERSTAND,
                                                        STATUS_DOES_NOT_MATCH_SOP_CLASS, STATUS_SUCCESS,
                                                        STATUS_SUCCESS]
    assert len(run.lines("cannot be parsed")) == 1 and len(run.lines("it cannot be filed")) == 1
    assert len(run.lines("stored NM instance")) == 4 and len(run.lines("received again, identical")) == 1
    assert len(run.lines("one of this node's own results")) == 1
    (attempt,) = run.lines("attempt 1/")
    assert f"cannot write result file 1 of 1 into '{run.delivered / run.study_uid}' (FileExistsError [EEXIST])" \
        in attempt["message"]
    assert run.lines("not assessable")
    study = run.store.study(run.study_uid)
    assert study is not None and study.state == ERROR and study.generation == 3
    history = [m for _, _, m in run.store.events(run.study_uid)]
    assert "not_assessable: report failed: IsADirectoryError [EISDIR]; the node's log has its traceback" in history
    assert study.reason == ("report failed: the previous SR (of generation 2) that the new SR must name as its "
                            "predecessor cannot be read (FileNotFoundError [ENOENT])")
    (failed,) = [line for line in run.log_lines if "report failed: IsADirectoryError" in line["message"]]
    assert failed["level"] == "ERROR" and "Traceback (most recent call last)" in failed["exception"]
    assert "os.replace(tmp_name, path)" in failed["exception"]  # the frames are there


def test_without_logging_patient_data_no_log_line_holds_patient_data(run_off: Run) -> None:
    run = run_off
    for line in run.log_lines:  # every level, DEBUG included; the message and every field
        assert not leaks(json.dumps(line), run.forbidden()), line
    (stored, *_) = run.lines("stored NM instance")
    assert "NuclearMedicineImageStorage, SeriesNumber 1, InstanceNumber 1" in stored["message"]
    assert "patient_name" not in stored and "patient_id" not in stored
    (failed,) = [line for line in run.log_lines if "report failed: IsADirectoryError" in line["message"]]
    assert "message withheld" in failed["exception"] and "Is a directory" not in failed["exception"]


def test_with_logging_patient_data_the_log_names_uids_and_values(run_on: Run) -> None:
    run = run_on
    stored = run.lines("stored NM instance")
    assert {line["level"] for line in stored} == {"INFO"}
    assert all(any(uid in line["message"] for line in stored) for uid in run.sent_uids[:2])
    assert stored[0]["patient_name"] == PATIENT_NAME
    (named,) = run.lines("it cannot be filed")
    assert repr(NAMED_UID) in named["message"] and run.sent_uids[3] in named["message"]
    (failed,) = [line for line in run.log_lines if "report failed: IsADirectoryError" in line["message"]]
    assert "Is a directory" in failed["exception"]


def test_the_job_store_texts_hold_no_patient_data_either_way(run: Run) -> None:
    audit = study_audit(run.store, run.study_uid)
    assert audit is not None
    # The audit trail keeps the UIDs of what was received and made: the operator's audit, by design.
    assert {r["sop_instance_uid"] for r in audit["received"]} >= {*run.sent_uids[:2], *run.sent_uids[4:]}
    received = [{k: v for k, v in r.items() if k != "sop_instance_uid"} for r in audit["received"]]
    # So do the lists of the SR and SC made (their SOP Instance UIDs and files), where the operator finds them.
    assert audit["outputs"] and all(o["sop_instance_uid"] in o["path"] for o in audit["outputs"])
    text_status, json_status = run.status_outputs
    status = json.loads(json_status)
    for study in status["studies"]:
        assert [o["sop_instance_uid"] for o in study.pop("outputs")] == [run.made_uids[-1]]
    texts = [json.dumps(audit["study"]), json.dumps(audit["history"]), json.dumps(audit["deliveries"]),
             json.dumps(received), text_status, json.dumps(status)]
    assert all("report failed: the previous SR (of generation 2)" in text for text in (text_status, json_status))
    assert any("superseded by generation 2" in text for text in texts)  # the failed delivery
    for text in texts:
        assert not leaks(text, run.forbidden()), text


# ------------------------------------------------------------ the pieces, one by one


def _file_meta_header() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = NM_IMAGE_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)
    return header.getvalue()


def test_a_parsers_message_is_logged_at_debug_only_with_logging_patient_data(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # PatientName, then a sequence of undefined length whose item never ends: pydicom's reader fails.
    body = (b"\x10\x00\x10\x00PN\x12\x00ZEBRAFISH^QUENTINA" + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x10\x00PN\x04\x00AB^C")
    with JobStore(tmp_path / "jobs.sqlite") as store:
        for allowed in (False, True):
            stage = ReceiveStage(store, DataDir(tmp_path / "data"), ae_title="SPECTNODE", log_patient_data=allowed)
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="spectnode.receive"):
                status = stage.store_object(_file_meta_header() + body, ExplicitVRLittleEndian,
                                            Peer("CAMERA", "127.0.0.1", 4242))
            assert status == STATUS_CANNOT_UNDERSTAND
            (refused,) = [r for r in caplog.records if "cannot be parsed" in r.getMessage()]
            assert refused.levelno == logging.ERROR and "cannot be parsed: OSError;" in refused.getMessage()
            said = [r for r in caplog.records if "the parser said" in r.getMessage()]
            assert [r.levelno for r in said] == ([logging.DEBUG] if allowed else [])
            assert all("No tag to read" in r.getMessage() for r in said)


def test_an_exception_is_named_by_its_class_and_code() -> None:
    assert exception_name(FileNotFoundError(errno.ENOENT, "No such file", "/spool/1.2.3.dcm")) == \
        "FileNotFoundError [ENOENT]"
    assert exception_name(ValueError("Invalid value 'ZEBRAFISH^QUENTINA'")) == "ValueError"
    full = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as info:
        full.execute("SELECT * FROM missing_table")
    assert exception_name(info.value) == "OperationalError [SQLITE_ERROR]"


def _chained() -> BaseException:
    try:
        try:
            raise OSError(errno.EISDIR, "Is a directory", "/results/1.2.3/SR_4.5.6.dcm")
        except OSError as exc:
            raise RuntimeError("the SR 4.5.6 of ZEBRAFISH^QUENTINA cannot be written") from exc
    except RuntimeError as exc:
        return exc
    raise AssertionError("not raised")


def test_a_traceback_keeps_its_frames_and_classes_but_not_the_messages() -> None:
    text = traceback_without_messages(_chained())
    assert text.count("Traceback (most recent call last):") == 2 and "in _chained" in text
    assert "IsADirectoryError [EISDIR] (message withheld" in text and "RuntimeError (message withheld" in text
    # The frames' source lines are code; the messages (what str() of each exception says) are gone.
    assert "[Errno 21] Is a directory: '/results" not in text and "RuntimeError: the SR" not in text


@pytest.mark.parametrize("formatter", [JsonLineFormatter, lambda **kwargs: EscapingFormatter("%(message)s", **kwargs)])
def test_the_log_formats_show_an_exceptions_message_only_with_logging_patient_data(formatter: Any) -> None:
    exc = _chained()
    record = logging.LogRecord("spectnode.node", logging.ERROR, __file__, 1, "report failed", (),
                               (type(exc), exc, exc.__traceback__))
    message = "RuntimeError: the SR 4.5.6 of ZEBRAFISH^QUENTINA cannot be written"
    logging.Formatter().format(record)  # another handler formats first, and caches the whole traceback
    assert message in (record.exc_text or "")
    withheld = formatter().format(record)
    assert message not in withheld and "RuntimeError (message withheld" in withheld
    assert message in formatter(patient_data=True).format(record)
