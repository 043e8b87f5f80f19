"""``spectnode demo``: a node on loopback, four phantom studies over DICOM, results printed and kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pydicom

from dicomtools import dciodvfy_errors


def test_demo_sends_four_studies_and_leaves_their_results(tmp_path):
    """The README's first command, as a user runs it: the shipped models, no configuration."""
    workdir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "spectnode", "demo", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"working folder {workdir.resolve()}" in out
    truths = re.findall(r"phantom truth: (\w+) \(([\w-]+)\)", out)
    assert sorted(t for t, _ in truths) == ["arthritic", "both", "metastatic", "normal"]  # one study per class
    assert len({layout for _, layout in truths}) == 4  # each in another layout
    results = re.findall(r"result: (\w+)[^\[]*\[([^\]]+)\]", out)
    models = re.findall(r"result: .*\((spectnode-[\w-]+ [\d.]+)\)$", out, flags=re.MULTILINE)
    assert len(results) == len(models) == 8 and len(set(models)) == 2  # each study read by both shipped models
    for label, probabilities in results:
        values = dict(p.rsplit(" ", 1) for p in probabilities.split(", "))
        assert set(values) == {"normal", "metastatic", "arthritic", "both"}
        assert abs(sum(float(v) for v in values.values()) - 1.0) < 0.01
        assert label == max(values, key=lambda k: float(values[k]))
    srs = [Path(p) for p in re.findall(r"SR: (\S+)", out)]
    scs = [Path(p) for p in re.findall(r"SC: (\S+)", out)]
    assert len(srs) == 4 and len(scs) == 8
    for path in srs + scs:
        assert path.is_file() and path.is_relative_to(workdir.resolve() / "results")
    sr = pydicom.dcmread(srs[0])
    assert sr.Modality == "SR" and dciodvfy_errors(srs[0]) == []
    assert f"SR and secondary-capture files are in {workdir.resolve() / 'results'}" in out
