"""On demand: which metastatic studies a model finds, by how many metastases and how conspicuous.

    python tests/benchmarks/bench_lesion_recall.py --data DIR [--bundle B ...]

``DIR`` is a ``spectnode phantom`` folder (its ``labels.csv`` and ``truth.jsonl``). For every
metastatic and "both" study, a model "finds" the metastases when it calls the study metastatic
or both. Printed by the number of metastases, by the conspicuity of the most conspicuous one
(:func:`spectnode.phantom.findings.conspicuity_mm2`: excess uptake times area, at least 200 mm2
by construction except in a superscan's many faint lesions) and by counts per view, for each
bundle (default: the shipped ones). Phantoms of a generator with the visibility rule also
record each disease kind's index finding's ideal-observer SNR (``visibility`` in truth.jsonl,
at least 15 by construction): then metastases and arthritis are also printed by it (the SNR in
the image made, after any raise). Normal studies called metastatic or both, and arthritic or
both, are printed by the benign findings they show (injection site, contamination,
degenerative change, ...: a study counts under each kind it has, "none" when it has only
physiological uptake): which of the things a reader ignores the model does not.
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
_BY_SNR = ((0, 15), (15, 20), (20, 30), (30, 50), (50, 100), (100, float("inf")))


def index_snr(entry: dict, kind: str) -> float:
    """The index finding's SNR in the image made (after any raise), NaN if the truth has none."""
    seen = (entry.get("visibility") or {}).get(kind)
    return float(seen["shown_snr"]) if seen and "shown_snr" in seen else float("nan")


def read_truth(data: Path) -> list[dict]:
    """Every entry of every truth.jsonl under ``data``."""
    return [json.loads(line) for path in sorted(data.rglob("truth.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()]


def arthritic_studies(entries: list[dict]) -> dict[str, float]:
    """Study UID -> index arthritic focus's SNR of every arthritic and "both" study whose truth records it."""
    return {entry["study_uid"]: index_snr(entry, "arthritis") for entry in entries
            if entry["label"] in ("arthritic", "both") and not np.isnan(index_snr(entry, "arthritis"))}


def normal_studies(entries: list[dict]) -> dict[str, frozenset[str]]:
    """Study UID -> the kinds of benign findings (not physiological uptake) of every normal study."""
    return {entry["study_uid"]: frozenset(lesion["kind"] for lesion in entry["lesions"]
                                          if lesion["kind"] != "physiological") or frozenset({"none"})
            for entry in entries if entry["label"] == "normal"}


def metastatic_studies(entries: list[dict]) -> dict[str, tuple[int, float, float, float]]:
    """Study UID -> (number of metastases, largest conspicuity, counts per view, index SNR) of every study
    with metastases."""
    from dataclasses import fields

    from spectnode.phantom.findings import Lesion, conspicuity_mm2

    names = {f.name for f in fields(Lesion)}
    found = {}
    for entry in entries:
        metastases = [Lesion(**{k: v for k, v in lesion.items() if k in names})
                      for lesion in entry["lesions"] if lesion["kind"] == "metastasis"]
        if entry["label"] in ("metastatic", "both") and metastases:
            found[entry["study_uid"]] = (len(metastases), max(map(conspicuity_mm2, metastases)),
                                         float(entry["acquisition"]["counts_per_view"]),
                                         index_snr(entry, "metastasis"))
    return found


def main() -> None:
    from spectnode.classify import DEFAULT_BUNDLES, StudyClassifier, find_dicom_files
    from spectnode.training.commands import read_labels
    from spectnode.training.train import load_samples, predict_studies

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, action="append")
    args = parser.parse_args()
    entries = read_truth(args.data)
    truth, arthritic, normal = metastatic_studies(entries), arthritic_studies(entries), normal_studies(entries)
    files = find_dicom_files(args.data)
    for bundle in args.bundle or list(DEFAULT_BUNDLES):
        classifier = StudyClassifier.from_bundle(bundle)
        classes = list(classifier.classes)
        studies = [s for s in read_labels(args.data / "labels.csv", files, classifier.card.scheme)
                   if s.study_uid in truth or s.study_uid in arthritic or s.study_uid in normal]
        samples = load_samples(files, studies, classes, classifier.spec)
        called = {s.study_uid: classes[int(k)] for s, k in
                  zip(samples.studies, np.argmax(predict_studies(classifier.model, samples), axis=1))}
        rows = [(*truth[uid], called[uid] in ("metastatic", "both")) for uid in called if uid in truth]
        print(f"{classifier.card.name} {classifier.card.version} on {args.data}: {len(rows)} studies with metastases")
        tables = [("metastases", 0, _BY_COUNT), ("largest conspicuity mm2", 1, _BY_CONSPICUITY),
                  ("counts per view", 2, _BY_COUNTS_PER_VIEW)]
        if any(not np.isnan(row[3]) for row in rows):
            tables.append(("index metastasis SNR", 3, _BY_SNR))
        for title, column, bins in tables:
            for lo, hi in bins:
                chosen = [row[4] for row in rows if lo <= row[column] < hi]
                rate = f"{np.mean(chosen):.2f}" if chosen else "-"
                print(f"  {title} from {lo:g} to under {hi:g}: {len(chosen)} studies, found {rate}")
        joints = [(arthritic[uid], called[uid] in ("arthritic", "both")) for uid in called if uid in arthritic]
        if joints:
            print(f"  {len(joints)} arthritic or 'both' studies, called arthritic or both:")
            for lo, hi in _BY_SNR:
                chosen = [hit for snr, hit in joints if lo <= snr < hi]
                rate = f"{np.mean(chosen):.2f}" if chosen else "-"
                print(f"  index arthritic focus SNR from {lo:g} to under {hi:g}: {len(chosen)} studies, found {rate}")
        normals = [(normal[uid], called[uid]) for uid in called if uid in normal]
        if normals:
            print(f"  {len(normals)} normal studies, called metastatic or both / arthritic or both, by benign finding:")
            for kind in sorted({k for kinds, _ in normals for k in kinds}, key=lambda k: (k != "none", k)):
                chosen = [label for kinds, label in normals if kind in kinds]
                as_metastatic = np.mean([label in ("metastatic", "both") for label in chosen])
                as_arthritic = np.mean([label in ("arthritic", "both") for label in chosen])
                print(f"  {kind}: {len(chosen)} studies, called metastatic {as_metastatic:.2f}, "
                      f"arthritic {as_arthritic:.2f}")


if __name__ == "__main__":
    main()
