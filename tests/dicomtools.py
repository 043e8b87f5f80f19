"""Helpers for tests that check DICOM files with real command-line tools.

Tests import this module directly (pytest puts ``tests/`` on ``sys.path``).
The tools are required, never skipped: a missing tool fails the test with the
package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

#: Debian package that provides each tool.
TOOL_PACKAGES = {
    "dciodvfy": "dicom3tools",
    "dcmdump": "dcmtk",
    "dcmdjpeg": "dcmtk",
    "dcmdjpls": "dcmtk",
    "dcmdrle": "dcmtk",
    "dsr2html": "dcmtk",
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "echoscu": "dcmtk",
}


def _is_native(path: str) -> bool:
    """True for a compiled executable, False for a script.

    pynetdicom installs Python console scripts named like DCMTK's tools
    (storescu, echoscu, findscu, getscu, movescu) into the virtual environment,
    which comes first on PATH once it is activated; the tests mean DCMTK's.
    """
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def require_tool(name: str) -> str:
    """Return the path of the native executable ``name`` on PATH, or fail the test saying what to install."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=folder)
        if path is not None and _is_native(path):
            return path
    package = TOOL_PACKAGES.get(name, name)
    pytest.fail(
        f"{name} (native, not a Python script of the same name) is not on PATH; install it to run this test "
        f"(Debian/Ubuntu: apt install {package})",
        pytrace=False,
    )


def dciodvfy_messages(path: Path) -> list[str]:
    """Run ``dciodvfy`` on ``path`` and return its ``Error``/``Warning`` lines."""
    executable = require_tool("dciodvfy")
    result = subprocess.run(
        [executable, str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


def dciodvfy_errors(path: Path) -> list[str]:
    """Only the ``Error`` lines of :func:`dciodvfy_messages`."""
    return [line for line in dciodvfy_messages(path) if line.startswith("Error")]


# C-STORE statuses, from PS3.4 Annex B.2.3: what the tests expect, independent of spectnode's constants.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error: Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC210  # Error: Cannot understand (C000-CFFF; 0xC210 as DCMTK answers)
