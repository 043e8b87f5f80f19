"""Durable writes: which folders are fsynced, so that a written file survives a crash or power loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from spectnode import fsutil

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders fsync_dir is called on, in order (the real fsync still runs)."""
    calls: list[Path] = []
    real = fsutil.fsync_dir

    def recording(path: Path) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(fsutil, "fsync_dir", recording)
    monkeypatch.setattr(fsutil, "_DURABLE_FOLDERS", set())  # as in a process that has made none durable yet
    return calls


def test_a_write_into_new_folders_fsyncs_each_folders_entry_up_to_the_root(
    tmp_path: Path, synced: list[Path]
) -> None:
    folder = tmp_path / "a" / "b" / "c"
    fsutil.write_durably(folder / "result.dcm", b"data")
    assert (folder / "result.dcm").read_bytes() == b"data"
    assert synced == [folder, *folder.parents]
    synced.clear()
    fsutil.write_durably(folder / "second.dcm", b"more")
    assert synced == [folder]  # its entry and those above it are durable already


def test_a_folder_another_thread_created_gets_its_entry_fsynced_too(tmp_path: Path, synced: list[Path]) -> None:
    # It may have been made a moment ago by a thread that has not fsynced its parent yet.
    (tmp_path / "study").mkdir()
    fsutil.write_durably(tmp_path / "study" / "sr.dcm", b"data")
    assert synced == [tmp_path / "study", *(tmp_path / "study").parents]
    assert not [p for p in (tmp_path / "study").iterdir() if p.name.endswith(".tmp")]  # no temporary left


def test_copy_durably_syncs_the_same_folders(tmp_path: Path, synced: list[Path]) -> None:
    source = tmp_path / "source.dcm"
    source.write_bytes(b"x" * 3_000_000)
    fsutil.copy_durably(source, tmp_path / "out" / "copy.dcm")
    assert (tmp_path / "out" / "copy.dcm").read_bytes() == source.read_bytes()
    assert synced == [tmp_path / "out", *(tmp_path / "out").parents]
