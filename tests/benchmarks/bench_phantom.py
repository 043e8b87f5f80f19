"""Benchmark (on demand): seconds per synthetic study, synthesis only and with DICOM writing, per layout.

    python tests/benchmarks/bench_phantom.py [--n 10] [--layouts multiframe,matrix512,...]

For each layout both figures are measured under the same conditions, so they can be compared: the
same matrix (the layout's, e.g. 2048 x 512 for ``matrix512``), the same labels in turn, both warmed
up first (one untimed study each), and both timed per study as the median of ``n``. Their
difference is what writing the layout's DICOM files (encoding and compression included) costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from spectnode.phantom.dicom import LAYOUTS, matrix_for_layout
from spectnode.phantom.generate import generate_phantoms
from spectnode.phantom.synth import LABELS, synthesize_scan


def _synthesis_seconds(layout: str, n: int) -> list[float]:
    rng = np.random.default_rng(21)
    matrix = matrix_for_layout(layout)
    synthesize_scan(rng, LABELS[0], matrix=matrix)  # warm-up
    times = []
    for i in range(n):
        start = time.perf_counter()
        synthesize_scan(rng, LABELS[i % len(LABELS)], matrix=matrix)
        times.append(time.perf_counter() - start)
    return times


def _generate_seconds(layout: str, n: int, out: Path) -> list[float]:
    generate_phantoms(out / "warm-up", 1, seed=4, layout=layout)  # warm-up
    times = []
    for i in range(n):
        start = time.perf_counter()
        generate_phantoms(out / f"study{i}", 1, seed=5 + i, layout=layout)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10, help="timed studies per layout and figure (default 10)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated layouts (default: all)")
    args = parser.parse_args()
    print(f"median s/study of {args.n} per figure, each warmed up by one untimed study")
    print(f"  {'layout':<16} {'matrix':>10} {'synthesis':>10} {'+ DICOM':>10} {'DICOM part':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            synthesis = statistics.median(_synthesis_seconds(layout, args.n))
            generated = statistics.median(_generate_seconds(layout, args.n, Path(tmp) / layout))
            rows, cols = matrix_for_layout(layout)
            print(f"  {layout:<16} {f'{rows}x{cols}':>10} {synthesis:10.3f} {generated:10.3f} "
                  f"{generated - synthesis:11.3f}")


if __name__ == "__main__":
    main()
