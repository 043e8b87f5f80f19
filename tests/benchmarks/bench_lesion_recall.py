"""On demand: which metastatic studies a model finds, by how many metastases and how conspicuous.

    python tests/benchmarks/bench_lesion_recall.py --data DIR [--bundle B ...]

``DIR`` is a ``spectnode phantom`` folder (its ``labels.csv`` and ``truth.jsonl``). For every
metastatic and "both" study, a model "finds" the metastases when it calls the study metastatic
or both. Printed by the number of metastases, by the conspicuity of the most conspicuous one
(:func:`spectnode.phantom.findings.conspicuity_mm2`: excess uptake times area, at least 200 mm2
by construction except in a superscan's many faint lesions) and by counts per view, for each
bundle (default: the shipped ones).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_BY_COUNT = ((1, 2), (2, 5), (5, 13), (13, float("inf")))
_BY_CONSPICUITY = ((0, 200), (200, 300), (300, 500), (500, 1000), (1000, 2000), (2000, float("inf")))
_BY_COUNTS_PER_VIEW = ((0.0, 0.6e6), (0.6e6, 1.2e6), (1.2e6, float("inf")))


def metastatic_studies(data: Path) -> dict[str, tuple[int, float, float]]:
    """Study UID -> (number of metastases, largest conspicuity, counts per view) of every study with metastases."""
    from dataclasses import fields

    from spectnode.phantom.findings import Lesion, conspicuity_mm2

    names = {f.name for f in fields(Lesion)}
    found = {}
    for path in sorted(data.rglob("truth.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            metastases = [Lesion(**{k: v for k, v in lesion.items() if k in names})
                          for lesion in entry["lesions"] if lesion["kind"] == "metastasis"]
            if entry["label"] in ("metastatic", "both") and metastases:
                found[entry["study_uid"]] = (len(metastases), max(map(conspicuity_mm2, metastases)),
                                             float(entry["acquisition"]["counts_per_view"]))
    return found


def main() -> None:
    from spectnode.classify import DEFAULT_BUNDLES, StudyClassifier, find_dicom_files
    from spectnode.training.commands import read_labels
    from spectnode.training.train import load_samples, predict_studies

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, action="append")
    args = parser.parse_args()
    truth = metastatic_studies(args.data)
    files = find_dicom_files(args.data)
    for bundle in args.bundle or list(DEFAULT_BUNDLES):
        classifier = StudyClassifier.from_bundle(bundle)
        classes = list(classifier.classes)
        studies = [s for s in read_labels(args.data / "labels.csv", files, classifier.card.scheme)
                   if s.study_uid in truth]
        samples = load_samples(files, studies, classes, classifier.spec)
        predicted = np.argmax(predict_studies(classifier.model, samples), axis=1)
        rows = [(*truth[s.study_uid], classes[int(k)] in ("metastatic", "both"))
                for s, k in zip(samples.studies, predicted)]
        print(f"{classifier.card.name} {classifier.card.version} on {args.data}: {len(rows)} studies with metastases")
        for title, column, bins in (("metastases", 0, _BY_COUNT), ("largest conspicuity mm2", 1, _BY_CONSPICUITY),
                                    ("counts per view", 2, _BY_COUNTS_PER_VIEW)):
            for lo, hi in bins:
                chosen = [row[3] for row in rows if lo <= row[column] < hi]
                rate = f"{np.mean(chosen):.2f}" if chosen else "-"
                print(f"  {title} from {lo:g} to under {hi:g}: {len(chosen)} studies, found {rate}")


if __name__ == "__main__":
    main()
