"""Durable file writes and safe file names, shared by the node's stages and the bundle writer.

* :func:`write_durably` / :func:`copy_durably`: a file appears whole or not at
  all, and survives a crash or power loss once the call returns (temporary
  file, fsync, rename, fsync of the folder and of a newly made parent).
* :func:`safe_file_name` / :func:`instance_file_name`: names built from DICOM
  values (UIDs, Modality) that cannot climb out of their folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "fsync_dir",
    "fsync_file",
    "write_durably",
    "copy_durably",
    "safe_file_name",
    "instance_file_name",
]

# Letters, digits, dot, dash, underscore; no leading dot (no "..", no hidden files).
_SAFE_NAME: Final = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_COPY_CHUNK: Final = 1 << 20


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that renames and new entries in it are on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a file written by someone else (a library that only takes a path)."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(folder)
    _make_entries_durable(folder)


#: Folders whose entry in their parent this process has fsynced (they stay durable).
_DURABLE_FOLDERS: set[Path] = set()
_DURABLE_LOCK = threading.Lock()


def _make_entries_durable(folder: Path) -> None:
    """fsync the parent of ``folder`` and of each folder above it, up to one this process made
    durable before. Not "the folders this write created": another thread may have created them a
    moment ago and not fsynced their parents yet."""
    absolute = folder.absolute()
    for current in (absolute, *absolute.parents):
        with _DURABLE_LOCK:
            if current in _DURABLE_FOLDERS:
                return
        if current.parent == current:
            return  # the file system's root
        fsync_dir(current.parent)
        with _DURABLE_LOCK:
            _DURABLE_FOLDERS.add(current)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it survives a crash or power loss.

    The bytes go to a temporary file in the same folder, which is fsynced and
    renamed over ``path``; then the folder is fsynced so that the rename (and
    a newly created folder, through its parent) is on disk too. A reader never
    sees a partial file.

    Raises:
        OSError: If any step fails; no partial file is left behind.
    """

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    _write_atomically(path, write)


def copy_durably(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` the way :func:`write_durably` writes.

    The file is streamed in 1 MiB chunks, never held in memory whole.

    Raises:
        OSError: If ``source`` cannot be read or any step of the write fails
            (``FileNotFoundError`` for a missing ``source``); no partial file
            is left behind.
    """
    with open(source, "rb") as src:
        def copy(handle: BinaryIO) -> None:
            while chunk := src.read(_COPY_CHUNK):
                handle.write(chunk)

        _write_atomically(path, copy)


def safe_file_name(value: str) -> str:
    """``value`` itself if it is safe as one file name, else a hash of it.

    Safe: 1 to 64 letters, digits, ``.``, ``-`` or ``_``, not starting with a
    dot. UIDs and Modality values always are; anything else (a UID holding
    ``/`` or ``..``, a name too long for a path component) becomes ``x``
    followed by 40 hex digits of its SHA-256, the same for the same value.
    """
    if _SAFE_NAME.match(value):
        return value
    return "x" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:40]


def instance_file_name(modality: str, sop_instance_uid: str) -> str:
    """``<Modality>_<SOPInstanceUID>.dcm``, each part through :func:`safe_file_name`.

    The name under which result objects are written and delivered to folder
    destinations; an empty Modality is written ``OT`` (other).
    """
    return f"{safe_file_name(modality.strip() or 'OT')}_{safe_file_name(sop_instance_uid.strip())}.dcm"
