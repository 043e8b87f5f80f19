"""Benchmark (run on demand, not part of the test suite): milliseconds per study.

    python tests/benchmarks/bench_classify.py [--bundle B] [--n 24]

Generates N phantom studies (mixed layouts), then times, per study:
  read   - reading the DICOM files and finding the views,
  infer  - preprocessing and the network (both views),
  cam    - LayerCAM heatmaps for both views,
after one warm-up study. TensorFlow is limited to the cores it can see
(2 on the reference machine); the figures are medians.
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--n", type=int, default=24)
    args = parser.parse_args()

    from spectnode.classify import StudyClassifier, find_dicom_files
    from spectnode.imaging.views import load_study_views
    from spectnode.phantom.generate import generate_phantoms

    classifier = StudyClassifier.from_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        records = generate_phantoms(Path(tmp), n=args.n + 1, seed=4242)
        timings: dict[str, list[float]] = {"read": [], "infer": [], "cam": []}
        for i, _rec in enumerate(records):
            files = find_dicom_files(Path(tmp) / f"study_{i:05d}")
            t0 = time.perf_counter()
            (views,) = load_study_views(files).values()
            t1 = time.perf_counter()
            inputs, probs = classifier.study_probabilities(views)
            t2 = time.perf_counter()
            classifier.explain(views, inputs, int(probs.argmax()))
            t3 = time.perf_counter()
            if i == 0:
                continue  # warm-up: graph tracing
            timings["read"].append(t1 - t0)
            timings["infer"].append(t2 - t1)
            timings["cam"].append(t3 - t2)
    print(f"bundle: {classifier.card.name} {classifier.card.version} ({classifier.card.architecture}, "
          f"input {classifier.card.input_shape}, {classifier.spec.mode}); cores visible: {os.cpu_count()}; "
          f"studies: {args.n}")
    total = [sum(v) for v in zip(*timings.values())]
    for name, values in [*timings.items(), ("total", total)]:
        print(f"{name:>6}: median {1000 * statistics.median(values):7.1f} ms/study  "
              f"(min {1000 * min(values):.1f}, max {1000 * max(values):.1f})")


if __name__ == "__main__":
    main()
