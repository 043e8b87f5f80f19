"""The data directory's lock: one process at a time runs the pipeline on a data directory.

Real locks only: ``flock`` between descriptors of this process, and against other processes (a
helper that takes the lock, and ``spectnode serve`` itself), including one killed with SIGKILL.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from spectnode.node.datadir import DataDir, DataDirInUse, LockHolder

from nodetools import NodeProcess, free_port, run_spectnode, tiny_bundle, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nodetools import LockingProcess


def test_a_second_lock_is_refused_with_the_holders_name_and_taken_again_once_released(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")  # created by the lock
    first = data.lock("serve")
    assert first.holder == LockHolder("serve", os.getpid())
    with pytest.raises(DataDirInUse) as refused:
        data.lock("backfill")
    assert refused.value.holder == LockHolder("serve", os.getpid())
    assert f"in use by spectnode serve (pid {os.getpid()})" in str(refused.value)
    first.release()
    first.release()  # a second release does nothing
    with data.lock("backfill") as second:
        assert second.holder.command == "backfill"


def test_a_lock_held_by_another_process_is_refused_and_freed_when_that_process_is_killed(
        tmp_path: Path, locking_process: Callable[[Path, str], LockingProcess]) -> None:
    data = DataDir(tmp_path / "data")
    other = locking_process(data.root, "backfill")
    with pytest.raises(DataDirInUse) as refused:
        data.lock("serve")
    assert refused.value.holder == LockHolder("backfill", other.pid)
    other.kill()  # no clean-up code runs: the kernel drops the lock
    with data.lock("serve") as lock:
        assert lock.holder == LockHolder("serve", os.getpid())


def test_a_second_serve_on_the_same_data_directory_is_refused_and_names_the_first(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = str(tiny_bundle(tmp_path_factory))
    data = tmp_path / "data"
    first_port, second_port = free_port(), free_port()  # another port: only the data directory is shared
    first = NodeProcess(write_config(tmp_path / "first.yaml", {
        "node": {"port": first_port}, "storage": {"data_dir": str(data)}, "model": {"bundles": [bundle]}}),
        first_port, tmp_path / "first.log").start()
    try:
        second = write_config(tmp_path / "second.yaml", {
            "node": {"port": second_port}, "storage": {"data_dir": str(data)}, "model": {"bundles": [bundle]}})
        proc = run_spectnode("serve", "--config", str(second), timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert first.proc is not None
        assert f"in use by spectnode serve (pid {first.proc.pid})" in proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        assert first.stop() == 0
    with DataDir(data).lock("serve"):  # the first let go when it stopped
        pass
