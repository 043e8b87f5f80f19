"""Benchmark (run on demand, not part of the test suite): a training step in float32 and in mixed bfloat16.

    python tests/benchmarks/bench_train_precision.py [--steps 10] [--batch-size 16] [--arch A ...]

For each shipped architecture (dSPIC-AM with the shipped per-view options, Classifier-inRAC) at
384 x 96, times ``train_on_batch`` on random inputs under ``spectnode train --precision float32``
and ``--precision mixed_bfloat16``, alternating the two step by step so that a noisy machine slows
them alike; prints the median seconds a step and the ratio. bfloat16 pays only where the hardware
computes it (AMX or AVX512-BF16 CPUs, GPUs); elsewhere it is emulated and slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHIPPED = {
    "dSPIC-AM": {"fc_units": [1024, 1024], "head": "gap_gmp"},
    "Classifier-inRAC": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", choices=tuple(SHIPPED), default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import keras
    import numpy as np

    from spectnode.training.train import TrainSettings, build_network, paper_defaults

    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 384, 96, 1), dtype=np.float32)
    y = rng.integers(0, 4, args.batch_size)
    for arch in args.arch or list(SHIPPED):
        models = {}
        for precision in ("float32", "mixed_bfloat16"):
            # The network as `spectnode train` builds it, under the run's dtype policy.
            settings = TrainSettings(arch=arch, scheme="dspic4", epochs=1, input_shape=(384, 96),
                                     arch_options=SHIPPED[arch], precision=precision,
                                     **{k: v for k, v in paper_defaults(arch).items() if k != "epochs"})
            model = build_network(settings, 4)
            model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
            for _ in range(2):  # tracing
                model.train_on_batch(x, y)
            models[precision] = model
        times: dict[str, list[float]] = {p: [] for p in models}
        for _ in range(args.steps):
            for precision, model in models.items():
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[precision].append(time.perf_counter() - start)
        f32, bf16 = (statistics.median(times[p]) for p in ("float32", "mixed_bfloat16"))
        print(f"{arch}: float32 {f32:.3f} s a step, mixed_bfloat16 {bf16:.3f} s ({f32 / bf16:.2f}x), "
              f"batch {args.batch_size}, {args.steps} steps each, median")


if __name__ == "__main__":
    main()
