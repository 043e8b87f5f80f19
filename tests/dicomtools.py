"""Helpers for tests that check DICOM files with real command-line tools.

Tests import this module directly (pytest puts ``tests/`` on ``sys.path``).
The tools are required, never skipped: a missing tool fails the test with the
package to install.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: Debian package that provides each tool.
TOOL_PACKAGES = {
    "dciodvfy": "dicom3tools",
    "dcmdump": "dcmtk",
    "dcmdjpeg": "dcmtk",
    "dcmdjpls": "dcmtk",
    "dcmdrle": "dcmtk",
    "dsr2html": "dcmtk",
}


def require_tool(name: str) -> str:
    """Return the path of executable ``name``, or fail the test saying what to install."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        pytest.fail(
            f"{name} is not on PATH; install it to run this test "
            f"(Debian/Ubuntu: apt install {package})",
            pytrace=False,
        )
    return path


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
