"""Fixtures shared by the test modules.

* ``clock``: a :class:`FakeClock`, for stages and the outbox;
* ``data_dir`` and ``store``: a temporary data directory and its job store;
* ``algorithm``: a report-side model identification that needs no model;
* ``locking_process``: starts processes that hold a data directory's lock
  (:class:`nodetools.LockingProcess`), killed when the test ends;
* ``study``: one phantom study per layout, read as datasets and views
  (:class:`nodetools.PhantomStudy`); a module that uses it names its layouts
  in ``LAYOUTS_UNDER_TEST`` and its seed in ``SEED``.

Helpers that tests call (DCMTK peers, records of spooled files, the tiny
bundle) are in :mod:`nodetools`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pydicom
import pytest

from spectnode.bundle import ModelCard, TrainingData, derive_device_uid
from spectnode.imaging.views import StudyViews, read_study_views
from spectnode.node.datadir import DataDir
from spectnode.phantom.generate import generate_phantoms
from spectnode.report import AlgorithmInfo
from spectnode.store import JobStore

from nodetools import FakeClock, LockingProcess, PhantomStudy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

#: The dSPIC four-class scheme, in its output order.
DSPIC4 = ("normal", "metastatic", "arthritic", "both")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    layout = DataDir(tmp_path / "data")
    layout.create()
    return layout


@pytest.fixture
def store(data_dir: DataDir) -> Iterator[JobStore]:
    db = JobStore(data_dir.database)
    yield db
    db.close()


@pytest.fixture
def locking_process() -> Iterator[Callable[[Path, str], LockingProcess]]:
    started: list[LockingProcess] = []

    def start(root: Path, command: str) -> LockingProcess:
        started.append(LockingProcess(root, command))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.fixture(scope="session")
def algorithm() -> AlgorithmInfo:
    """The identification of a dSPIC-AM test model in reports (no weights behind it)."""
    content_hash = "sha256:" + hashlib.sha256(b"spectnode test model").hexdigest()
    card = ModelCard(
        name="spectnode-test-dspic", version="0.3.1", architecture="dSPIC-AM", scheme="dspic4",
        classes=list(DSPIC4), input_shape=[128, 32, 1],
        preprocessing={"views": "per_view", "normalization": "minmax", "resample_to": [128, 32]},
        training_data=TrainingData("synthetic phantoms", synthetic=True),
        content_hash=content_hash, device_uid=derive_device_uid(content_hash),
    )
    return AlgorithmInfo.from_card(card)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "study" in metafunc.fixturenames:
        metafunc.parametrize("study", metafunc.module.LAYOUTS_UNDER_TEST, indirect=True, scope="module")


@pytest.fixture(scope="module")
def study(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """One phantom study of the layout ``request.param``, with the module's ``SEED``."""
    out = tmp_path_factory.mktemp(f"{request.module.__name__}-{request.param}")
    (record,) = generate_phantoms(out, 1, request.module.SEED, layout=request.param)
    datasets = [pydicom.dcmread(path) for path in record.files]
    views = read_study_views(datasets)
    assert isinstance(views, StudyViews), views
    return PhantomStudy(record, datasets, views)
