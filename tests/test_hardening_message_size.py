"""An object larger than ``node.max_object_bytes``: refused with a status, or cut off as it arrives.

pynetdicom holds a C-STORE's data set in memory until its last fragment, so the size check on
the received object alone would let one peer streaming an endless data set fill the node's
memory. Up to 1 MiB over the limit the object arrives whole and is answered 0xA700 (Refused:
out of resources); beyond that the connection ends while the data set is still arriving, and
the node goes on serving others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from spectnode.config import parse_config
from spectnode.net.server import policy_from_config
from spectnode.node.datadir import DataDir
from spectnode.node.stages.receive import ReceiveStage
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import JobStore

from dicomtools import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from nodetools import wait_for

if TYPE_CHECKING:
    from pathlib import Path

LIMIT = 300_000


@pytest.fixture
def scp(tmp_path):
    cfg = parse_config({"node": {"allowed_calling_ae_titles": ["CAMERA"], "max_object_bytes": LIMIT},
                        "storage": {"data_dir": str(tmp_path / "data")}}, "test.yaml")
    refused: list[str] = []
    stage = ReceiveStage(JobStore(tmp_path / "jobs.sqlite"), DataDir(tmp_path / "data"), ae_title="SPECTNODE",
                         port=0, allowed_calling_ae_titles=cfg.node.allowed_calling_ae_titles,
                         policy=policy_from_config(cfg.node), max_object_bytes=cfg.node.max_object_bytes,
                         on_refused=lambda _peer, reason: refused.append(reason))
    stage.start()
    yield stage, refused
    stage.stop()


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> Path:
    # one view of 1024 x 256 16-bit pixels: about 0.5 MB, over LIMIT by less than 1 MiB
    (record,) = generate_phantoms(tmp_path_factory.mktemp("size"), n=1, seed=5, layout="split-instances")
    return record.files[0]


def _store(port: int, ds: pydicom.Dataset) -> tuple[pydicom.Dataset, AE, object]:
    ae = AE(ae_title="CAMERA")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
    assert assoc.is_established
    return assoc.send_c_store(ds), ae, assoc


def test_an_object_a_little_over_the_limit_is_refused_with_a_status(scp, view):
    stage, refused = scp
    ds = pydicom.dcmread(view)
    assert LIMIT < len(ds.PixelData) < LIMIT + 1024 * 1024
    status, _, assoc = _store(stage.port, ds)
    assert int(status.Status) == STATUS_OUT_OF_RESOURCES
    assoc.release()
    assert refused == []


def test_a_data_set_far_over_the_limit_ends_the_connection_as_it_arrives(scp, view):
    stage, refused = scp
    ds = pydicom.dcmread(view)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x00111010, "OB", bytes(8 * 1024 * 1024))  # 8 MiB more: a data set far past the limit
    status, _, assoc = _store(stage.port, ds)
    assert "Status" not in status  # no answer: the node closed the connection
    wait_for(lambda: not assoc.is_established, 10, "the cut-off association to end")
    assert refused == ["size"]
    # the node is still there for everyone else
    small = pydicom.dcmread(view)
    small.PixelData = small.PixelData[: len(small.PixelData) // 4]
    small.Rows = small.Rows // 4
    status, _, assoc = _store(stage.port, small)
    assert int(status.Status) == STATUS_SUCCESS
    assoc.release()
