"""Benchmark (run on demand, not part of the test suite): milliseconds per study, side by side.

    python tests/benchmarks/bench_classify.py [--n 24] [--baseline BUNDLE] [--bundle B ...]

Generates N two-view phantom studies (mixed layouts), reads each once, and then, for every
configuration in turn on the same study (so a noisy machine slows them alike), times the
classification as the node runs it (guards, every model that takes the study, LayerCAM of the
first model for the overlay):

* each bundle alone (``--bundle``, repeatable; default: the shipped bundles),
* all of them together (what a node with the default ``model.bundles: null`` does),
* ``--baseline`` alone, if given (e.g. an earlier default, to compare against; issue 13 point 7:
  both shipped models together may cost at most twice the earlier single model).

After one warm-up study (graph tracing). TensorFlow is limited to the cores it can see (2 on
the reference machine); figures are medians, and ratios are of medians from this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", default=None, help="a bundle to time (default: the shipped ones)")
    parser.add_argument("--baseline", default=None, help="a bundle to compare against (timed alone)")
    parser.add_argument("--n", type=int, default=24)
    args = parser.parse_args()

    from spectnode.classify import DEFAULT_BUNDLES, Classifiers, StudyClassifier, find_dicom_files
    from spectnode.imaging.views import load_study_views
    from spectnode.phantom.generate import generate_phantoms

    models = [StudyClassifier.from_bundle(p) for p in (args.bundle or DEFAULT_BUNDLES)]
    configurations: dict[str, Classifiers] = {
        f"{m.card.name} {m.card.version} ({m.card.architecture}, {m.spec.mode})": Classifiers([m]) for m in models
    }
    if len(models) > 1:
        configurations["all of them together"] = Classifiers(models)
    baseline_name = None
    if args.baseline:
        base = StudyClassifier.from_bundle(args.baseline)
        baseline_name = f"baseline {base.card.name} {base.card.version} ({base.card.architecture})"
        configurations[baseline_name] = Classifiers([base])
    timings: dict[str, list[float]] = {name: [] for name in ["read", *configurations]}
    with tempfile.TemporaryDirectory() as tmp:
        records = generate_phantoms(Path(tmp), n=args.n + 1, seed=4242)
        for i, _record in enumerate(records):
            files = find_dicom_files(Path(tmp) / f"study_{i:05d}")
            t0 = time.perf_counter()
            (views,) = load_study_views(files).values()
            read = time.perf_counter() - t0
            times = {}
            for name, classifiers in configurations.items():
                t0 = time.perf_counter()
                result = classifiers.classify(views, explain=True)
                times[name] = time.perf_counter() - t0
                assert result.outcome == "classified", (name, result.reason)
            if i == 0:
                continue
            timings["read"].append(read)
            for name, seconds in times.items():
                timings[name].append(seconds)
    print(f"studies: {args.n} (after one warm-up); cores visible: {os.cpu_count()}; medians per study")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, values in timings.items():
        print(f"{1000 * medians[name]:8.1f} ms  (min {1000 * min(values):.1f}, max {1000 * max(values):.1f})  {name}")
    if baseline_name and len(models) > 1:
        together = medians["all of them together"] / medians[baseline_name]
        print(f"all of them together / baseline: {together:.2f} (issue 13 point 7: at most 2)")


if __name__ == "__main__":
    main()
