"""On demand: does a model trained on one phantom anatomy read the other one (issue 13, point 2)?

    python tests/benchmarks/bench_transfer.py [--n 400] [--n-test 200] [--epochs 20]
        [--arch Inception-v1] [--input-shape 384x96] [--learning-rate LR] [--normalization bone_window]
        [--patience 10] [--workdir DIR]

Generates a training and a held-out set with each anatomy (``classic`` and ``voxel``), trains
one model per anatomy with ``spectnode train`` (held out: the same anatomy's test set), then
runs ``spectnode evaluate`` of each model on the other anatomy's test set. Prints accuracy,
macro AUC and per-class recall for a->a, a->b, b->b and b->a. A model that learned to read bone
scans, not its generator's habits, loses little from a->a to a->b.

Models trained elsewhere (a long CPU run with ``spectnode train``, checkpoints and ``--resume``)
are tabled the same way, by ``spectnode evaluate`` of each on both held-out sets::

    python tests/benchmarks/bench_transfer.py --trained classic=RUN_A --trained voxel=RUN_B \
        --test-set classic=TEST_A --test-set voxel=TEST_B

Smoke run (seconds, proves the plumbing only):

    python tests/benchmarks/bench_transfer.py --n 16 --n-test 8 --epochs 1 --input-shape 128x32 \\
        --arch-options '{"fc_units": [16]}' --arch dSPIC-AM
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ANATOMIES = ("classic", "voxel")
CLASSES = ("normal", "metastatic", "arthritic", "both")


def spectnode(*args: str) -> str:
    """Run the spectnode CLI; its stdout, or exit with its stderr on failure."""
    proc = subprocess.run([sys.executable, "-m", "spectnode", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"spectnode {args[0]} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def row(name: str, metrics: dict) -> str:
    recall = metrics["recall"]["per_class"]
    auc = metrics["auc"]["macro"]
    cells = [f"{metrics['accuracy']:.3f}", "  n/a" if auc is None else f"{auc:.3f}"]
    cells += [" n/a" if recall.get(c) is None else f"{recall[c]:.2f}" for c in CLASSES]
    return f"{name:18s} {metrics['n']:5d}  " + "  ".join(f"{c:>8s}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="training studies per anatomy")
    parser.add_argument("--n-test", type=int, default=200, help="held-out studies per anatomy")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--arch", default="Inception-v1")
    parser.add_argument("--input-shape", default="384x96")
    parser.add_argument("--batch-size", default="16")
    parser.add_argument("--arch-options", default=None, help="JSON builder options, passed to spectnode train")
    parser.add_argument("--learning-rate", default=None, help="passed to spectnode train (default: the paper's)")
    parser.add_argument("--normalization", default="bone_window", help="passed to spectnode train")
    parser.add_argument("--patience", default="10", help="early-stopping patience, passed to spectnode train")
    parser.add_argument("--seed", type=int, default=1300, help="first of the four phantom seeds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data and bundles here")
    parser.add_argument("--trained", action="append", default=[], metavar="ANATOMY=BUNDLE",
                        help="a bundle trained on ANATOMY's phantoms (both anatomies: no training here)")
    parser.add_argument("--test-set", action="append", default=[], metavar="ANATOMY=DIR",
                        help="ANATOMY's held-out set (DIR/labels.csv), with --trained")
    args = parser.parse_args()
    if args.trained or args.test_set:
        evaluate_trained(parser, args.trained, args.test_set)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    work.mkdir(parents=True, exist_ok=True)

    sets = {}
    for k, anatomy in enumerate(ANATOMIES):
        for j, (split, n) in enumerate((("train", args.n), ("test", args.n_test))):
            folder = work / f"{anatomy}-{split}"
            spectnode("phantom", "--out", str(folder), "--n", str(n), "--seed", str(args.seed + 2 * k + j),
                      "--anatomy", anatomy, "--max-studies-per-patient", "1")
            sets[anatomy, split] = folder
    common = ["--arch", args.arch, "--scheme", "dspic4", "--epochs", str(args.epochs), "--input-shape",
              args.input_shape, "--batch-size", args.batch_size, "--normalization", args.normalization,
              "--patience", args.patience]
    if args.learning_rate:
        common += ["--learning-rate", args.learning_rate]
    if args.arch_options:
        common += ["--arch-options", args.arch_options]
    results = {}
    for anatomy in ANATOMIES:
        bundle = work / f"model-{anatomy}"
        train, test = sets[anatomy, "train"], sets[anatomy, "test"]
        spectnode("train", "--data", str(train), "--labels", str(train / "labels.csv"), "--test-data", str(test),
                  "--test-labels", str(test / "labels.csv"), "--out", str(bundle), *common)
        results[anatomy, anatomy] = json.loads((bundle / "evaluation" / "metrics.json").read_text())
        other = next(a for a in ANATOMIES if a != anatomy)
        target = sets[other, "test"]
        results[anatomy, other] = json.loads(spectnode("evaluate", "--bundle", str(bundle), "--data", str(target),
                                                       "--labels", str(target / "labels.csv")))
    print(f"{args.arch} {args.input_shape}, {args.epochs} epochs, {args.n} training / {args.n_test} test studies "
          f"per anatomy (data in {work})")
    print_table(results)


def print_table(results: dict[tuple[str, str], dict]) -> None:
    print(f"{'train -> test':18s} {'n':>5s}  " + "  ".join(f"{h:>8s}" for h in
                                                         ("accuracy", "macroAUC", *(f"R:{c[:6]}" for c in CLASSES))))
    for trained in ANATOMIES:
        for tested in (trained, next(a for a in ANATOMIES if a != trained)):
            print(row(f"{trained} -> {tested}", results[trained, tested]))


def evaluate_trained(parser: argparse.ArgumentParser, trained: list[str], test_sets: list[str]) -> None:
    """Table two trained bundles (one per anatomy) on both anatomies' held-out sets."""
    def by_anatomy(pairs: list[str], option: str) -> dict[str, Path]:
        found = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        if len(found) != len(pairs) or sorted(found) != sorted(ANATOMIES):
            parser.error(f"{option} needs ANATOMY=PATH once for each of {', '.join(ANATOMIES)}")
        return {anatomy: Path(path) for anatomy, path in found.items()}

    bundles, sets = by_anatomy(trained, "--trained"), by_anatomy(test_sets, "--test-set")
    results = {(a, b): json.loads(spectnode("evaluate", "--bundle", str(bundles[a]), "--data", str(sets[b]),
                                            "--labels", str(sets[b] / "labels.csv")))
               for a in ANATOMIES for b in ANATOMIES}
    for anatomy in ANATOMIES:
        print(f"trained on {anatomy}: {bundles[anatomy]}")
    print("held out: " + ", ".join(f"{a} {sets[a]}" for a in ANATOMIES))
    print_table(results)


if __name__ == "__main__":
    main()
