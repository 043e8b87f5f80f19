"""How many studies of each held-out set each model flags as outside its training domain.

    python tests/benchmarks/bench_domain.py SET [SET ...] [--bundle B ...]

Each SET is a folder of DICOM studies (e.g. ``spectnode phantom --out SET
--n 200 --seed S [--anatomy voxel]``). For each bundle (default: the shipped
ones) it prints, per set, the studies read, how many the model took, how many
it flagged, and the median and 99th percentile of the domain-fit score, beside
the bundle's threshold. Not run by the suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spectnode.classify import Classifiers, find_dicom_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--bundle", action="append", type=Path)
    args = parser.parse_args()
    classifiers = Classifiers.from_bundles(args.bundle)
    for classifier in classifiers:
        if classifier.domain is None:
            print(f"{classifier.name}: no domain fit")
            continue
        print(f"{classifier.name} {classifier.card.version}: threshold {classifier.domain.threshold:.3f} "
              f"({classifier.domain.calibration.get('held_out', '?')})")
        for folder in args.sets:
            results = Classifiers([classifier]).classify_paths(find_dicom_files(folder))
            scores = np.array([r.models[0].domain_score for r in results if r.classified])
            flagged = sum(r.models[0].outside_domain for r in results if r.classified)
            print(f"  {folder}: {len(results)} studies, {len(scores)} classified, {flagged} flagged "
                  f"({100 * flagged / max(len(scores), 1):.1f} %), score median {np.median(scores):.2f}, "
                  f"99th percentile {np.percentile(scores, 99):.2f}")


if __name__ == "__main__":
    main()
