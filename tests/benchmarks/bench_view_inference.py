"""How often a view that nothing names is inferred right from the image, on phantoms of each anatomy.

    python tests/benchmarks/bench_view_inference.py [--first 1000] [--n 100] [--matrix 1024x256]

For seeds ``first`` to ``first + n - 1`` of each anatomy it synthesises a scan
(label ``LABELS[seed % 4]``), infers the view of both images, each also
mirrored left-right (4 images a seed; the suite's own measure), and prints
the share inferred right and the mean certainty when right and when wrong.
The README's figures come from the defaults. The suite (``tests/test_view_inference.py``) guards fewer seeds against
regressions. Not run by the suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spectnode.cli import _parse_shape  # noqa: E402 - the ROWSxCOLS reader of `spectnode train --input-shape`
from test_view_inference import view_inference_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--matrix", type=_parse_shape, default=(1024, 256), help="ROWSxCOLS")
    args = parser.parse_args()
    seeds = range(args.first, args.first + args.n)
    for anatomy in ("classic", "voxel"):
        accuracy, signed = view_inference_accuracy(seeds, args.matrix, anatomy)
        right = [c for c in signed if c > 0]
        wrong = [-c for c in signed if c < 0]
        print(f"{anatomy}: seeds {seeds.start}-{seeds.stop - 1}, {len(signed)} images, {100 * accuracy:.1f} % right; "
              f"mean certainty {np.mean(right) if right else float('nan'):.2f} when right, "
              f"{np.mean(wrong) if wrong else float('nan'):.2f} when wrong")


if __name__ == "__main__":
    main()
