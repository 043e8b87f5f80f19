"""The ``spectnode`` command line.

Each subcommand imports what it needs when it runs, so ``spectnode config
check`` answers in a fraction of a second without loading TensorFlow.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import RESEARCH_USE_NOTICE, __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"spectnode: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{cfg.source}: OK (node {cfg.node.ae_title} on {cfg.node.bind_address}:{cfg.node.port}, "
          f"data in {cfg.storage.data_dir}, {len(cfg.destinations)} destination(s))")
    return EXIT_OK


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom.generate import generate_phantoms

    try:
        records = generate_phantoms(Path(args.out), n=args.n, seed=args.seed, layout=args.layout,
                                    preview=args.preview)
    except ValueError as exc:
        print(f"spectnode phantom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.label] = counts.get(rec.label, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"wrote {len(records)} synthetic studies to {args.out} ({summary}); labels in "
          f"{Path(args.out) / 'labels.csv'}")
    if args.preview:
        print(f"previews in {Path(args.out) / 'preview'}")
    print("These are synthetic phantoms, not patient data.")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_architectures

    rows = list_architectures()
    if args.json:
        print(json.dumps([{"name": r["name"], "params": int(r["params"])} for r in rows]))
    else:
        width = max(len(r["name"]) for r in rows)
        print(f"{'architecture':<{width}}  parameters (input 1x1024x256)")
        for r in rows:
            print(f"{r['name']:<{width}}  {int(r['params']):>14,}")
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectnode",
        description="DICOM node that classifies whole-body bone scans. " + RESEARCH_USE_NOTICE,
    )
    parser.add_argument("--version", action="version", version=f"spectnode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("phantom", help="generate synthetic whole-body bone scans (NM DICOM + labels.csv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=_positive_int, required=True, help="number of studies")
    p.add_argument("--seed", type=int, required=True, help="random seed; same seed, same files")
    p.add_argument("--layout", default=None,
                   help="DICOM layout for every study (default: a deterministic mix of all layouts)")
    p.add_argument("--preview", action="store_true", help="also write PNG previews (both views side by side)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = config_sub.add_parser("check", help="validate a configuration file exactly as start-up does")
    c.add_argument("file", help="YAML configuration file")
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser("models", help="list the network architectures and their parameter counts")
    p.add_argument("--json", action="store_true", help='print a JSON array of {"name", "params"}')
    p.set_defaults(func=_cmd_models)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
