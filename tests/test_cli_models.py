"""`spectnode models [--json]` lists every architecture with its parameter count on 1x1024x256."""

from __future__ import annotations

import json
import subprocess
import sys

from spectnode.models import ARCHITECTURES


def test_models_json_lists_every_architecture():
    proc = subprocess.run([sys.executable, "-m", "spectnode", "models", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(ARCHITECTURES)
    assert all(set(r) == {"name", "params"} and isinstance(r["params"], int) for r in rows)
    params = {r["name"]: r["params"] for r in rows}
    assert 1.72e9 < params["dSPIC-AM-flatten"] < 1.74e9  # the paper's head, never allocated
    assert 15.0e6 < params["Classifier-inRAC"] < 15.3e6


def test_models_table():
    proc = subprocess.run([sys.executable, "-m", "spectnode", "models"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    assert "dSPIC-AM" in proc.stdout and "1,732,851,725" in proc.stdout
