"""Helpers for the node tests: DCMTK peers, a tiny model bundle, a node subprocess.

Tests import this module directly (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydicom
import yaml
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from spectnode.store import InstanceRecord

from dicomtools import require_tool
from orthanc import free_port  # noqa: F401  (one allocator, so no two servers get the same port)

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset

    from spectnode.imaging.views import StudyViews
    from spectnode.phantom.generate import PhantomStudyRecord


class FakeClock:
    """Epoch seconds that only move when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class PhantomStudy:
    """A phantom study as the report tests use it: its record, its datasets and its views."""

    record: PhantomStudyRecord
    datasets: list[Dataset]
    views: StudyViews


def instance_record(path: Path) -> InstanceRecord:
    """The job-store record of a DICOM file, as the receive stage makes it."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceRecord(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                          str(ds.SOPClassUID), str(ds.Modality), str(ds.file_meta.TransferSyntaxUID), path,
                          hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)

#: storescu option that proposes a compressed file's own transfer syntax
#: (storescu proposes only uncompressed syntaxes unless told).
STORESCU_TS_OPTION = {
    RLELossless: "-xr",
    JPEGLSLossless: "-xt",
    JPEGLosslessSV1: "-xs",
    JPEG2000Lossless: "-xv",
}


def storescu(port: int, files: list[Path], aet: str = "CAMERA", aec: str = "SPECTNODE",
             timeout: float = 60, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu, one association per transfer syntax group; ``options`` go to storescu."""
    exe = require_tool("storescu")
    groups: dict[str | None, list[str]] = {}
    for f in files:
        ts = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        groups.setdefault(STORESCU_TS_OPTION.get(ts), []).append(str(f))
    last: subprocess.CompletedProcess[str] | None = None
    for option, paths in groups.items():
        cmd = [exe, "-aet", aet, "-aec", aec, *options, *([option] if option else []), "127.0.0.1", str(port), *paths]
        last = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if last.returncode != 0:
            return last
    assert last is not None
    return last


def echoscu(port: int, aet: str = "CAMERA", aec: str = "SPECTNODE") -> bool:
    exe = require_tool("echoscu")
    proc = subprocess.run([exe, "-aet", aet, "-aec", aec, "-to", "2", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=10)
    return proc.returncode == 0


def tiny_bundle(tmp_path_factory: Any) -> Path:
    """A tiny dSPIC bundle trained for one epoch on 16 phantoms (about 25 s), once per test session."""
    base = tmp_path_factory.getbasetemp()
    bundle = base / "node-tiny-bundle"
    if (bundle / "card.json").exists():
        return bundle
    from spectnode.phantom.generate import generate_phantoms

    phantoms = base / "node-tiny-bundle-phantoms"
    generate_phantoms(phantoms, n=16, seed=21)
    proc = subprocess.run(
        [sys.executable, "-m", "spectnode", "train", "--data", str(phantoms), "--labels", str(phantoms / "labels.csv"),
         "--arch", "dSPIC-AM", "--scheme", "dspic4", "--out", str(bundle), "--epochs", "1",
         "--input-shape", "128x32", "--arch-options", '{"fc_units": [16]}', "--batch-size", "8"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bundle


def spectnode_command(command: str, *args: str) -> list[str]:
    """argv that runs ``spectnode COMMAND ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "spectnode", command, *args]


def run_spectnode(command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(spectnode_command(command, *args), capture_output=True, text=True, timeout=timeout,
                          env=env)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class NodeProcess:
    """``python -m spectnode serve --config FILE`` (or another ``command``) as a subprocess, logging to a file."""

    def __init__(self, config: Path, port: int, log: Path, command: list[str] | None = None) -> None:
        self.config = config
        self.port = port
        self.log = log
        #: argv before ``--config FILE`` (default ``spectnode serve``).
        self.command = command if command is not None else spectnode_command("serve")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> NodeProcess:
        """Start and wait until the node answers C-ECHO (echoscu)."""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        log = self.log.open("ab")
        self.proc = subprocess.Popen([*self.command, "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if echoscu(self.port):
                return self
            time.sleep(0.3)
        raise AssertionError(f"node did not answer C-ECHO within {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or power cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def _content_items(items: Any) -> Any:
    for item in items or []:
        yield item
        yield from _content_items(item.get("ContentSequence"))


def _concept(item: Any) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return f"{seq[0].CodingSchemeDesignator}:{seq[0].CodeValue}" if seq else ""


def sr_findings(sr: Any) -> dict[str, float]:
    """Finding code value -> Certainty of Finding (%) of each TID 1501 group of an SR."""
    found: dict[str, float] = {}
    for group in _content_items(sr.ContentSequence):
        children = list(group.get("ContentSequence") or [])
        finding = [c for c in children if _concept(c) == "DCM:121071" and c.ValueType == "CODE"]
        certainty = [c for c in children if _concept(c) == "DCM:111012" and c.ValueType == "NUM"]
        if finding and certainty:
            value = float(certainty[0].MeasuredValueSequence[0].NumericValue)
            found[finding[0].ConceptCodeSequence[0].CodeValue] = value
    return found


def sr_text_values(sr: Any) -> list[str]:
    """Every TEXT value of an SR's content tree."""
    return [str(i.TextValue) for i in _content_items(sr.ContentSequence) if i.ValueType == "TEXT"]


def sr_code_values(sr: Any) -> list[tuple[str, str]]:
    """(concept name code, value code value) of every CODE item of an SR's content tree."""
    return [(_concept(i), i.ConceptCodeSequence[0].CodeValue)
            for i in _content_items(sr.ContentSequence) if i.ValueType == "CODE"]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


_HOLD_LOCK = ("import sys\n"
              "from spectnode.node.datadir import DataDir\n"
              "lock = DataDir(sys.argv[1]).lock(sys.argv[2])\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n")  # holds it until its stdin closes, or it is killed


class LockingProcess:
    """Another process that holds a data directory's lock as ``command`` (conftest's ``locking_process``)."""

    def __init__(self, root: Path, command: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(root), command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # returns once the lock is held (or the process ended)
        assert line.strip() == "locked", line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up code runs; the kernel drops the lock."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def write_minimal_sr(path: Path, study_uid: str, patient_id: str, patient_name: str) -> Path:
    """A minimal Comprehensive SR in ``study_uid`` (what the node returns, reduced to what a PACS files by)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 900, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "126000", "DCM"
    concept.CodeMeaning = "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
