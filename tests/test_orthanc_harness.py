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


@pytest.mark.parametrize(("worker", "block"), [("gw0", range(20000, 26000)), ("gw1", range(26000, 32000))])
def test_free_port_gives_each_xdist_worker_ports_of_its_own_outside_the_ephemeral_range(
    worker: str, block: range
) -> None:
    """Two workers are two processes: a port one of them was handed must never be handed to the other."""
    script = ("import sys; sys.path.insert(0, 'tests'); from orthanc import free_port; "
              "print(*(free_port() for _ in range(50)))")
    env = {"PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    ports = [int(p) for p in out.split()]
    assert len(set(ports)) == 50 and all(p in block for p in ports)
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert max(ports) < low
