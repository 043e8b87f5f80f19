"""On demand: a model's accuracy on held-out phantoms, by the camera and patient settings they were made with.

    python tests/benchmarks/bench_accuracy_by_setting.py --data DIR [--data DIR ...] [--bundle B ...]

Each ``DIR`` is a ``spectnode phantom`` folder (its ``labels.csv`` and ``truth.jsonl``). Every
study is classified by each bundle (default: the shipped ones) as ``spectnode evaluate`` does,
and the share called right is printed by the settings a reader ignores: collimator FWHM at
10 cm, counts per view, scatter fraction, pixel size, motion, DICOM layout, and the patient's
age, body-mass index and sex. Every one of them is drawn across its whole range in training,
so this is not a held-out family; it shows where inside the range the model is weakest, which
is where another camera or population is likely to hurt it most. The bins hold a few dozen
studies each: differences under about 0.2 are noise. Pixel size is binned as it would be on a
1024-row matrix (the 2048 x 512 layout's pixels count at twice their size), so that it measures the
field of view and is not the layout again; the layout has its own line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: A study's bin under one setting: (position in print order, name).
Setting = Callable[[dict], tuple[int, str]]


def _binned(value: Callable[[dict], float], edges: tuple[float, ...], unit: str) -> Setting:
    def which(entry: dict) -> tuple[int, str]:
        x = value(entry)
        for i, (lo, hi) in enumerate(zip((-np.inf, *edges), (*edges, np.inf))):
            if lo <= x < hi:
                if lo == -np.inf:
                    return i, f"under {hi:g}{unit}"
                return i, f"{lo:g}{unit} and over" if hi == np.inf else f"{lo:g} to {hi:g}{unit}"
        return len(edges) + 1, "?"
    return which


def _bmi(entry: dict) -> float:
    patient = entry["patient"]
    return float(patient["weight_kg"]) / (float(patient["height_cm"]) / 100.0) ** 2


SETTINGS: dict[str, Setting] = {
    "collimator FWHM at 10 cm": _binned(lambda e: e["acquisition"]["fwhm_10cm_mm"], (9.0, 11.0, 12.5), " mm"),
    "counts per view": _binned(lambda e: e["acquisition"]["counts_per_view"] / 1e6, (0.6, 1.2), " M"),
    "scatter fraction": _binned(lambda e: e["acquisition"]["scatter_fraction"], (0.1, 0.2), ""),
    "pixel size at 1024 rows": _binned(lambda e: e["pixel_spacing_mm"] * e["matrix"][0] / 1024, (2.0, 2.4), " mm"),
    "motion": lambda e: (0, str(e["acquisition"]["motion"])),
    "layout": lambda e: (0, str(e["layout"])),
    "age": _binned(lambda e: e["patient"]["age"], (55, 70), " y"),
    "body-mass index": _binned(_bmi, (25.0, 30.0), ""),
    "sex": lambda e: (0, str(e["patient"]["sex"])),
}


def read_truth(data: Path) -> dict[str, dict]:
    """Study UID -> its truth entry, from every truth.jsonl under ``data``."""
    entries = (json.loads(line) for path in sorted(data.rglob("truth.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines())
    return {entry["study_uid"]: entry for entry in entries}


def main() -> None:
    from spectnode.classify import DEFAULT_BUNDLES, StudyClassifier, find_dicom_files
    from spectnode.training.commands import read_labels
    from spectnode.training.train import load_samples, predict_studies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--bundle", type=Path, action="append")
    args = parser.parse_args()
    for bundle in args.bundle or list(DEFAULT_BUNDLES):
        classifier = StudyClassifier.from_bundle(bundle)
        classes = list(classifier.classes)
        for data in args.data:
            truth, files = read_truth(data), find_dicom_files(data)
            studies = [s for s in read_labels(data / "labels.csv", files, classifier.card.scheme)
                       if s.study_uid in truth]
            samples = load_samples(files, studies, classes, classifier.spec)
            called = np.argmax(predict_studies(classifier.model, samples), axis=1)
            right = {s.study_uid: classes[int(k)] == s.label for s, k in zip(samples.studies, called)}
            print(f"{classifier.card.name} {classifier.card.version} on {data}: {len(right)} studies, "
                  f"accuracy {np.mean(list(right.values())):.3f}")
            for title, which in SETTINGS.items():
                groups: dict[tuple[int, str], list[bool]] = {}
                for uid, hit in right.items():
                    groups.setdefault(which(truth[uid]), []).append(hit)
                cells = ", ".join(f"{name} {np.mean(hits):.2f} ({len(hits)})"
                                  for (_, name), hits in sorted(groups.items()))
                print(f"  {title}: {cells}")


if __name__ == "__main__":
    main()
