"""systemd/spectnode.service: hardened, restarts on failure, and systemd-analyze accepts it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "spectnode.service"
INSTALLED_BINARY = "/opt/spectnode/venv/bin/spectnode"


def unit_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(UNIT)
    return parser["Service"]


def test_unit_is_hardened_and_unprivileged():
    service = unit_service()
    assert service["User"] == "spectnode" and service["Group"] == "spectnode"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/spectnode"  # the only writable path: the data directory
    for key in ("PrivateTmp", "ProtectHome", "PrivateDevices", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert service[key] in ("yes", "true"), key
    assert service["CapabilityBoundingSet"] == ""
    assert service["ExecStart"].split()[:2] == [INSTALLED_BINARY, "serve"]


def test_systemd_analyze_verify_accepts_it(tmp_path):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd (tests/run.sh does)"
    # verify checks that ExecStart exists; point it at this environment's spectnode, as the
    # README's install steps do with their prefix. Nothing else in the unit changes.
    binary = Path(sys.executable).parent / "spectnode"
    assert binary.exists(), f"{binary} missing: install spectnode into this environment first"
    unit = tmp_path / "spectnode.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "spectnode.service" in line]
    assert not problems, problems
