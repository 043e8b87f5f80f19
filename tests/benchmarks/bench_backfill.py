"""Backfill throughput: studies per hour from a real Orthanc, against model-only batch inference.

Run on demand (pytest does not collect this file)::

    python tests/benchmarks/bench_backfill.py [--studies 50] [--bundle DIR] [--retrieve get|move]

It generates N phantom studies, loads them into an Orthanc on loopback, and then, in this process,
on the same studies:

1. **model only**: :meth:`spectnode.classify.StudyClassifier.classify_paths` with heatmaps
   (``explain=True``, as the classify stage does) on the files, read from disk: what a batch
   inference script would do, with no DICOM network, job store, report or dispatch;
2. **backfill**: :func:`spectnode.backfill.run.run_backfill` with no rate limit to speak of
   (studies_per_minute 10000): C-FIND, C-GET/C-MOVE into the spool and job store, the node's
   stages in-process (assemble, classify, report SR + SCs, dispatch back to Orthanc by C-STORE),
   until every study is delivered.

The model is loaded before either is timed. It prints both rates (studies per hour) and their
ratio (the goal is >= 0.8). ``--bundle`` picks another model (e.g. the tiny test bundle when the
default one is too slow on a contended machine).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectnode.backfill.progress import Progress  # noqa: E402
from spectnode.backfill.run import BackfillOptions, run_backfill  # noqa: E402
from spectnode.classify import StudyClassifier  # noqa: E402
from spectnode.config import parse_config  # noqa: E402
from spectnode.phantom.generate import generate_phantoms  # noqa: E402

from orthanc import OrthancServer, free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--retrieve", choices=["get", "move"], default="get")
    parser.add_argument("--parallel", type=int, default=2, help="max_parallel_retrieves")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        records = generate_phantoms(root / "studies", args.studies, seed=7)
        files = [f for r in records for f in r.files]
        node_port = free_port()
        classifier = StudyClassifier.from_bundle(args.bundle)
        classifier.classify_paths(records[0].files, explain=True)  # warm-up: graph tracing, first call

        started = time.perf_counter()
        results = classifier.classify_paths(files, explain=True)
        model_s = time.perf_counter() - started
        assert len(results) == args.studies

        with OrthancServer(root / "pacs", modalities={"node": ("SPECTNODE", "127.0.0.1", node_port)}) as pacs:
            for path in files:
                pacs.upload(path.read_bytes())
            cfg = parse_config({
                "node": {"ae_title": "SPECTNODE", "port": node_port},
                "storage": {"data_dir": str(root / "data")},
                "destinations": [],
                "model": {"bundles": [str(args.bundle)] if args.bundle else None},
                "pacs": [{"name": "bench", "ae_title": pacs.ae_title, "host": pacs.host, "port": pacs.dicom_port,
                          "retrieve": args.retrieve, "studies_per_minute": 10000,
                          "max_parallel_retrieves": args.parallel}],
            })
            # The same loaded model serves the in-process node, so neither run pays for loading it.
            started = time.perf_counter()
            summary = run_backfill(cfg, "bench", BackfillOptions(), Progress(io.StringIO(), terminal=False),
                                   classifier_loader=lambda _bundle: classifier)
            backfill_s = time.perf_counter() - started
        if summary.failed or summary.retrieved != args.studies:
            print(f"not every study went through: {summary.to_json()}")

    model_rate = args.studies / model_s * 3600
    backfill_rate = args.studies / backfill_s * 3600
    print(f"studies:              {args.studies} ({args.retrieve.upper()}, {args.parallel} parallel retrieves, "
          f"model {classifier.card.name} {classifier.card.architecture})")
    print(f"model only:           {model_s:7.1f} s  {model_rate:8.0f} studies/h")
    print(f"backfill (end to end): {backfill_s:6.1f} s  {backfill_rate:8.0f} studies/h")
    print(f"ratio backfill/model: {backfill_rate / model_rate:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
