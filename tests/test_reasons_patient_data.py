"""No patient data in reasons, logs, ``spectnode status`` or the not-assessable SR (issue 14, point 6).

Every study here carries a patient's name, "DOE^JANE", in private elements that no
de-identification touches (GE (0009,xx40) Patient Object Name, as GE Millennium exports
keep it, and a Siemens-like private block), in a description that a reason would quote,
and distinctive PatientName, PatientID and SOP Instance UIDs. Each ends not assessable for
another reason (no view, a lateral view code, noise for pixels, a truncated JPEG 2000
codestream, an early phase named in SeriesDescription, spooled files damaged after they were
received). They go through the real stages in-process (assemble, classify with the real
view reader and guards, report, dispatch to a folder); then neither the name, nor the
patient's name or ID, nor a SOP Instance UID, nor the spool's path may appear in the stored
reason, a log record at INFO or above, ``spectnode status`` (text and JSON, and the study's
audit trail), or any value of the not-assessable SR outside the attributes that must hold
them (the patient module, the references to the source images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from spectnode.classify import Classifiers
from spectnode.config import DestinationConfig, parse_config
from spectnode.imaging.safe_text import WITHHELD, code_value, object_name, quote
from spectnode.imaging.views import NotAssessable, read_study_views
from spectnode.node import commands
from spectnode.node.datadir import DataDir
from spectnode.node.logs import JsonLineFormatter
from spectnode.node.stages.assemble import AssembleStage
from spectnode.node.stages.classify import ClassifyStage
from spectnode.node.stages.dispatch import DispatchStage
from spectnode.node.stages.report import ReportStage
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import ERROR, NOT_ASSESSABLE, JobStore
from test_content_guard import classifier_that_must_not_run
from test_stages import spool

from nodetools import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from spectnode.report import AlgorithmInfo

PRIVATE_NAME = "DOE^JANE"
PATIENT_NAME = "ZEBRAFISH^QUENTINA"
PATIENT_ID = "PID-ZX93718"
#: Words that must never appear (case-insensitive); "doe" alone would match "does".
NAME_WORDS = ("DOE^JANE", "DOE,JANE", "JANE", "ZEBRAFISH", "QUENTINA", PATIENT_ID)
TIMEOUT_S = 60.0
SIEMENS_LIKE_CREATOR = "SIEMENS MED NM"


def with_patient_data(ds: Dataset, series_description: str = "WB DOE JANE") -> Dataset:
    """``ds`` with the name in private elements and a description, and a distinctive patient."""
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.SeriesDescription = series_description
    ge = ds.private_block(0x0009, "GEMS_GENIE_1", create=True)
    ge.add_new(0x40, "PN", PRIVATE_NAME)  # Patient Object Name
    ge.add_new(0x20, "LO", "WB DOE,JANE")  # Series Object Name
    siemens = ds.private_block(0x0033, SIEMENS_LIKE_CREATOR, create=True)
    siemens.add_new(0x10, "LO", PRIVATE_NAME)
    siemens.add_new(0x11, "UN", b"DOE^JANE")  # as an Implicit VR file's unknown private element reads
    return ds


def no_views(datasets: list[Dataset]) -> None:
    """Two single-frame objects that no header names: nothing to infer a view from."""
    for ds in datasets:
        del ds.ImageID
        # the GE Dataset Name (0011,xx12) and User Orientation (0009,xx22) name the view
        for tag in [e.tag for e in ds if e.tag.group == 0x0011 or e.tag == 0x00091022]:
            del ds[tag]


def lateral_view_codes(datasets: list[Dataset]) -> None:
    for ds in datasets:
        for item in ds.DetectorInformationSequence:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator = "399297009", "SCT"
            code.CodeMeaning = "Right lateral projection"
            item.ViewCodeSequence = Sequence([code])


def noise_pixels(datasets: list[Dataset]) -> None:
    rng = np.random.default_rng(3)
    for ds in datasets:
        frames = int(ds.get("NumberOfFrames", 1))
        ds.PixelData = rng.integers(0, 256, (frames, ds.Rows, ds.Columns), dtype=np.uint16).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def truncated_jpeg2000(datasets: list[Dataset]) -> None:
    for ds in datasets:
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        ds.PixelData = encapsulate([frame[: len(frame) // 3] for frame in frames])


def early_phase(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.SeriesDescription = "DOE JANE FRUEH"


@dataclass(frozen=True)
class Case:
    layout: str
    change: Callable[[list[Dataset]], None]
    code: str
    #: Words of a readable reason, which a PACS engineer needs.
    readable: tuple[str, ...]
    damage_spool: bool = False


CASES = {
    "no views": Case("split-instances", no_views, "missing_views",
                     ("NM object 1 of 2 (SeriesNumber 1, InstanceNumber 1)", "(0008,103E) SeriesDescription "
                      "(text withheld)", "(0009,1020) Series Object Name (text withheld)")),
    "lateral view code": Case("multiframe", lateral_view_codes, "missing_views",
                              ("(0054,0220) ViewCodeSequence", "'SCT' '399297009' 'Right lateral projection'",
                               "NM object 1 of 1 (SeriesNumber 1, InstanceNumber 1)")),
    "noise for pixels": Case("multiframe", noise_pixels, "not_bone_scan", ("not a whole-body bone scan",)),
    "truncated JPEG 2000": Case("jpeg2000", truncated_jpeg2000, "unreadable",
                                ("(7FE0,0010) PixelData of NM object 1 of 1 (SeriesNumber 1, InstanceNumber 1)",
                                 "JPEG 2000", "cannot be decoded")),
    "early phase named": Case("split-series", early_phase, "early_phase",
                              ("(0008,103E) SeriesDescription (text withheld)",)),
    "damaged spool": Case("split-instances", lambda datasets: None, "unreadable",
                          ("received object 1 of 2 (NM) cannot be read as DICOM (InvalidDicomError)",),
                          damage_spool=True),
}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Run:
    data_dir: DataDir
    store: JobStore
    studies: dict[str, str]  # case -> study UID
    sop_uids: list[str]
    records: list[logging.LogRecord]

    def forbidden(self) -> list[str]:
        return [*NAME_WORDS, *self.sop_uids, str(self.data_dir.spool)]


def leaks(text: str, forbidden: list[str]) -> list[str]:
    return [word for word in forbidden if word.lower() in text.lower()]


def make_study(case: Case, seed: int, out: Path) -> list[Path]:
    (record,) = generate_phantoms(out / "phantom", 1, seed=seed, layout=case.layout)
    datasets = [with_patient_data(pydicom.dcmread(path)) for path in record.files]
    case.change(datasets)
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(out / f"{i}.dcm")
        ds.save_as(paths[-1])
    return paths


def drain(step: Callable[[], bool]) -> None:
    for _ in range(50):
        if not step():
            return
    raise AssertionError("a stage kept finding work")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, algorithm: AlgorithmInfo) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("reasons")
    data_dir = DataDir(base / "data")
    data_dir.create()
    clock = FakeClock()
    store = JobStore(data_dir.database, clock=clock)
    studies, sop_uids = {}, []
    for seed, (name, case) in enumerate(CASES.items(), start=901):
        paths = make_study(case, seed, base / f"case{seed}")
        for path in paths:
            spool(store, data_dir, path)
            sop_uids.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        studies[name] = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        if case.damage_spool:
            for spooled in store.instance_paths(studies[name]):
                spooled.write_bytes(b"damaged after it was received")
    handler = Records()
    logger = logging.getLogger("spectnode")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        assemble = AssembleStage(store, data_dir, TIMEOUT_S, clock=clock)
        drain(assemble.step)
        clock.advance(TIMEOUT_S)
        drain(assemble.step)
        classifiers = Classifiers([classifier_that_must_not_run()])
        drain(ClassifyStage(store, data_dir, lambda: classifiers, not_assessable_sr=True).step)
        destination = DestinationConfig(name="local", type="folder", path=base / "delivered")
        drain(ReportStage(store, data_dir, lambda: {algorithm.name: algorithm}, [destination]).step)
        drain(DispatchStage(store, data_dir, {"local": destination}, "SPECTNODE").step)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    yield Run(data_dir, store, studies, sop_uids, handler.records)
    store.close()


@pytest.mark.parametrize("name", list(CASES))
def test_the_stored_reason_is_readable_and_holds_no_patient_data(run: Run, name: str) -> None:
    study = run.store.study(run.studies[name])
    assert study is not None and study.reason and study.result is not None and study.result.reason
    case = CASES[name]
    if case.damage_spool:  # its SR cannot be made from files that no longer read: a visible error
        assert study.state == ERROR and study.reason.startswith("report failed: received object")
    else:
        assert study.state == NOT_ASSESSABLE and study.reason == study.result.reason
    reason = study.result.reason
    assert study.result.reason_code == case.code, reason
    for words in case.readable:
        assert words in reason, reason
    for text in (study.reason, reason, *(m for _, _, m in run.store.events(study.study_uid))):
        assert not leaks(text, run.forbidden()), text


def test_no_log_record_at_info_or_above_holds_patient_data(run: Run) -> None:
    formatter = JsonLineFormatter()
    shown = [r for r in run.records if r.levelno >= logging.INFO]
    assert any("not assessable" in r.getMessage() for r in shown)  # the reasons were logged
    for record in shown:
        line = formatter.format(record)  # the message and every extra field
        assert not leaks(line, run.forbidden()), line
    # without logging.patient_data, what the decoder said is not logged even at DEBUG
    assert not [r for r in run.records if "the decoder said" in r.getMessage()]


def test_spectnode_status_holds_no_patient_data(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config({"storage": {"data_dir": str(run.data_dir.root)}}, check_dirs=False)
    outputs = []
    for json in (False, True):
        assert commands.status(cfg, json=json) == 0
        outputs.append(capsys.readouterr().out)
        for name in CASES:
            assert commands.status(cfg, json=json, study_uid=run.studies[name]) == 0
            outputs.append(capsys.readouterr().out)
    assert all(uid in outputs[0] for uid in run.studies.values())  # the studies are listed
    assert "(text withheld)" in outputs[0]  # with their reasons
    for text in outputs:
        assert not leaks(text, run.forbidden()), text


def _values(ds: Dataset, path: str = "") -> Iterator[tuple[str, str]]:
    """(keyword path, value as text) of every element of ``ds``, nested ones included."""
    for element in ds:
        where = f"{path}/{element.keyword or element.tag}"
        if element.VR == "SQ":
            for item in element.value:
                yield from _values(item, where)
        elif isinstance(element.value, bytes):
            yield where, element.value.decode("latin-1")
        else:
            yield where, str(element.value)


def test_the_not_assessable_sr_holds_no_patient_data_outside_its_patient_and_references(run: Run) -> None:
    checked = 0
    for name in CASES:
        if CASES[name].damage_spool:
            continue
        (output,) = [o for o in run.store.outputs(run.studies[name]) if o.kind == "sr"]
        sr = pydicom.dcmread(output.path)
        values = list(_values(sr))
        study = run.store.study(run.studies[name])
        assert study is not None and study.reason
        assert any(study.reason in value for _, value in values)  # the reason is in the SR
        for where, value in values:
            allowed = [PATIENT_NAME.split("^")[0], PATIENT_NAME.split("^")[1]] if where == "/PatientName" else []
            allowed += [PATIENT_ID] if where == "/PatientID" else []
            allowed += run.sop_uids if where.endswith("/ReferencedSOPInstanceUID") else []
            found = [w for w in leaks(value, run.forbidden()) if w not in allowed]
            assert not found, (name, where, value)
        checked += 1
    assert checked == len(CASES) - 1


def test_the_decoders_message_is_logged_at_debug_only_with_logging_patient_data(
        tmp_path: Path, data_dir: DataDir, store: JobStore, caplog: pytest.LogCaptureFixture) -> None:
    paths = make_study(CASES["truncated JPEG 2000"], 904, tmp_path)
    detail = read_study_views([pydicom.dcmread(p) for p in paths])
    assert isinstance(detail, NotAssessable) and detail.detail and detail.detail not in detail.reason
    for path in paths:
        spool(store, data_dir, path)
    assert AssembleStage(store, data_dir, TIMEOUT_S).step()  # complete by content: the headers name both views
    classifiers = Classifiers([classifier_that_must_not_run()])
    with caplog.at_level(logging.DEBUG, logger="spectnode"):
        assert ClassifyStage(store, data_dir, lambda: classifiers, not_assessable_sr=False,
                             log_patient_data=True).step()
    (said,) = [r for r in caplog.records if "the decoder said" in r.getMessage()]
    assert said.levelno == logging.DEBUG and detail.detail in said.getMessage()


def test_the_studies_hold_the_name_where_cameras_put_it(tmp_path: Path) -> None:
    """The tests above prove something only if the name is really in the files they read."""
    (path, *_) = make_study(CASES["no views"], 901, tmp_path)
    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == PATIENT_ID
    assert ds[ds.private_block(0x0009, "GEMS_GENIE_1").get_tag(0x40)].value == PRIVATE_NAME
    assert ds[ds.private_block(0x0033, SIEMENS_LIKE_CREATOR).get_tag(0x10)].value == PRIVATE_NAME



# ------------------------------------------------------------ the checks themselves, one by one


def _deidentified_with_private_names() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "", "4711"  # de-identified; the camera's private elements were not
    ge = ds.private_block(0x0009, "GEMS_GENIE_1", create=True)
    ge.add_new(0x40, "PN", PRIVATE_NAME)
    ge.add_new(0x20, "LO", "WB Roe,Richard")
    return ds


def test_a_text_repeating_a_private_name_is_withheld_though_patient_name_is_empty() -> None:
    ds = _deidentified_with_private_names()
    for text in ("WB JANE DOE", "Doe WB", "Richard ANT", "ROE"):
        assert quote(text, ds) == WITHHELD, text
    for text in ("WB ANT", "WB BONE", "GK früh"):  # only the name part of "WB Roe,Richard" counts
        assert quote(text, ds) == repr(text), text


def test_an_unknown_private_element_of_an_implicit_vr_file_is_read_for_names(tmp_path: Path) -> None:
    ds = _deidentified_with_private_names()
    ds.private_block(0x0033, "ACME NM 1.0", create=True).add_new(0x10, "LO", "MUSTERMANN^ERIKA")
    ds.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)  # a raw dataset, no file meta
    read = pydicom.dcmread(tmp_path / "implicit.dcm", force=True)
    assert read[read.private_block(0x0033, "ACME NM 1.0").get_tag(0x10)].VR == "UN"
    assert quote("ERIKA WB", read) == WITHHELD and quote("WB", read) == "'WB'"


def test_an_object_is_named_by_position_series_and_instance_number_never_a_uid() -> None:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "1.2.3.4.5", 5, 1
    assert object_name(ds, 2, 3) == "NM object 2 of 3 (SeriesNumber 5, InstanceNumber 1)"
    ds.InstanceNumber = 4711081  # a run of digits that long may be an identifier
    assert object_name(ds) == "NM object (SeriesNumber 5)"
    del ds.SeriesNumber
    assert object_name(ds, 1, 1) == "NM object 1 of 1"


def test_a_standard_concept_id_is_shown_but_not_a_patient_id() -> None:
    ds = Dataset()
    ds.PatientID = "399321004"
    assert code_value("399001007", ds, standard_scheme=True) == "'399001007'"
    assert code_value("399321004", ds, standard_scheme=True) == WITHHELD
    assert code_value("12345678", None, standard_scheme=False) == WITHHELD
