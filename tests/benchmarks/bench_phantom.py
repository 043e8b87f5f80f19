"""Benchmark (on demand): seconds per synthetic study, synthesis only and with DICOM writing.

    python tests/benchmarks/bench_phantom.py [--n 40] [--anatomy classic|voxel] [--phase delayed|early]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from spectnode.phantom.generate import generate_phantoms
from spectnode.phantom.synth import LABELS, synthesize_scan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--anatomy", default="classic")
    parser.add_argument("--phase", default="delayed")
    args = parser.parse_args()
    rng = np.random.default_rng(21)
    synthesize_scan(rng, "both", anatomy=args.anatomy, phase=args.phase)  # warm-up
    times = []
    for i in range(args.n):
        start = time.perf_counter()
        synthesize_scan(rng, LABELS[i % len(LABELS)], anatomy=args.anatomy, phase=args.phase)
        times.append(time.perf_counter() - start)
    print(f"synthesis 1024x256 ({args.anatomy}, {args.phase}), both views: "
          f"median {statistics.median(times):.3f} s/study")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_phantoms(Path(tmp), n=args.n, seed=5, anatomy=args.anatomy, phase=args.phase)
        print(f"generate_phantoms (mixed layouts, DICOM written): {(time.perf_counter() - start) / args.n:.3f} s/study")


if __name__ == "__main__":
    main()
