"""The Orthanc test harness (tests/orthanc.py) against the real Orthanc and dcmtk."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spectnode.phantom.generate import generate_phantoms

from dicomtools import require_tool
from orthanc import OrthancError, OrthancServer


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two single-frame NM instances (anterior, posterior) of one synthetic study."""
    (record,) = generate_phantoms(tmp_path_factory.mktemp("phantom"), 1, seed=11, layout="split-instances")
    return list(record.files)


def test_orthanc_receives_storescu_and_keeps_it_across_restart(tmp_path: Path, phantom_files: list[Path]) -> None:
    with OrthancServer(tmp_path / "pacs", ae_title="HARNESS") as pacs:
        assert pacs.get_json("/system")["DicomAet"] == "HARNESS"
        assert pacs.echo()
        assert pacs.instances() == []

        result = subprocess.run(
            [require_tool("storescu"), "-aet", "MODALITY", "-aec", pacs.ae_title,
             pacs.host, str(pacs.dicom_port), *map(str, phantom_files)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

        sent = [pydicom.dcmread(p) for p in phantom_files]
        assert pacs.sop_instance_uids() == {ds.SOPInstanceUID for ds in sent}
        assert pacs.study_instance_uids() == {sent[0].StudyInstanceUID}
        assert len(pacs.instances_of_study(sent[0].StudyInstanceUID)) == 2
        by_uid = {ds.SOPInstanceUID: ds for ds in sent}
        for instance_id in pacs.instances():
            tags = pacs.instance_tags(instance_id)
            assert tags["Modality"] == "NM"
            stored = pacs.instance_dataset(instance_id)
            np.testing.assert_array_equal(stored.pixel_array, by_uid[stored.SOPInstanceUID].pixel_array)

        pacs.stop()
        assert not pacs.running
        assert not pacs.dicom_listening()
        assert not pacs.echo(timeout=2)

        pacs.start()
        assert pacs.echo()
        assert pacs.sop_instance_uids() == {ds.SOPInstanceUID for ds in sent}
    assert not pacs.running


def test_orthanc_checks_called_ae_title_when_asked(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    with OrthancServer(tmp_path / "strict", ae_title="STRICT", check_called_aet=True) as pacs:
        good = subprocess.run([echoscu, "-aec", "STRICT", pacs.host, str(pacs.dicom_port)],
                              capture_output=True, text=True, timeout=30, check=False)
        bad = subprocess.run([echoscu, "-aec", "SOMEONE", pacs.host, str(pacs.dicom_port)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert good.returncode == 0, good.stderr
    assert bad.returncode != 0
    assert "Called AE Title Not Recognized" in bad.stdout + bad.stderr


def test_orthanc_start_failure_reports_its_log(tmp_path: Path) -> None:
    pacs = OrthancServer(tmp_path / "clash")
    with socket.socket() as squatter:
        squatter.bind((pacs.host, pacs.http_port))
        squatter.listen()
        with pytest.raises(OrthancError) as info:
            pacs.start(timeout_s=10)
    assert not pacs.running
    # The message carries Orthanc's own words about the port it could not take.
    assert str(pacs.http_port) in str(info.value)


def test_free_port_never_gives_two_live_processes_the_same_port() -> None:
    """pytest-xdist workers, a replacement for a crashed one, a second test run and a benchmark are
    separate processes: while one holds a port, no other is handed it, and none is ephemeral."""
    script = ("import sys; sys.path.insert(0, 'tests'); from orthanc import free_port, _ephemeral_low; "
              "print(_ephemeral_low(), *(free_port() for _ in range(50)), flush=True); sys.stdin.read()")
    root = Path(__file__).parent.parent
    holders = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=root) for _ in range(2)]
    try:
        lines = [[int(p) for p in holder.stdout.readline().split()] for holder in holders]  # type: ignore[union-attr]
    finally:
        for holder in holders:
            holder.communicate("", timeout=60)
    (low, *first), (_, *second) = lines
    assert len(set(first)) == len(set(second)) == 50 and not set(first) & set(second)
    assert all(20000 <= port < low for port in first + second)
    # Once a process has ended, its ports are free to hand out again.
    again = subprocess.run([sys.executable, "-c", script], input="", capture_output=True, text=True, timeout=60,
                           cwd=root, check=True).stdout.split()[1:]
    assert set(map(int, again)) & set(first + second)
