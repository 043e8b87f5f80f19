"""The ``spectnode`` command line.

Each subcommand imports what it needs when it runs, so ``spectnode config
check`` answers in a fraction of a second without loading TensorFlow.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import Config

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
                                    preview=args.preview, anatomy=args.anatomy, phase=args.phase,
                                    max_studies_per_patient=args.max_studies_per_patient)
    except ValueError as exc:
        print(f"spectnode phantom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.label] = counts.get(rec.label, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    patients = len({rec.patient_id for rec in records})
    print(f"wrote {len(records)} synthetic studies of {patients} patients to {args.out} ({summary}); labels in "
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


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 1024x256, got {text!r}") from None
    if rows < 16 or cols < 16:
        raise argparse.ArgumentTypeError(f"input shape must be at least 16x16, got {text!r}")
    return rows, cols


def _data_files(path: str) -> list[Path]:
    from .classify import find_dicom_files

    files = find_dicom_files(Path(path))
    if not files:
        raise FileNotFoundError(f"no files under {path}")
    return files


def _cmd_train(args: argparse.Namespace) -> int:
    from .bundle import BundleError, load_bundle
    from .models import ARCHITECTURES
    from .training.commands import run_training
    from .training.labels import LabelError
    from .training.train import TrainSettings, paper_defaults

    if args.arch not in ARCHITECTURES:
        print(f"spectnode train: unknown architecture {args.arch!r}; see `spectnode models`", file=sys.stderr)
        return EXIT_USAGE
    defaults = paper_defaults(args.arch)
    try:
        arch_options = json.loads(args.arch_options) if args.arch_options else {}
        if not isinstance(arch_options, dict):
            raise ValueError(f"--arch-options must be a JSON object such as '{{\"head\": \"gap\"}}', "
                             f"not {args.arch_options!r}")
        settings = TrainSettings(
            arch=args.arch, scheme=args.scheme,
            learning_rate=args.learning_rate or defaults["learning_rate"],
            batch_size=args.batch_size or defaults["batch_size"],
            epochs=args.epochs or defaults["epochs"],
            input_mode=args.input_mode or defaults["input_mode"],
            input_shape=args.input_shape, translate_px=args.translate, rotate_deg=args.rotate,
            mirror=not args.no_mirror, patience=args.patience, seed=args.seed, arch_options=arch_options,
            normalization=args.normalization, warmup_epochs=args.warmup_epochs,
            lesion_supervision=args.lesion_supervision, precision=args.precision)
        settings.input_spec()
        files = _data_files(args.data)
        if (args.test_data is None) != (args.test_labels is None):
            raise ValueError("--test-data and --test-labels go together")
        test_set = None
        if args.test_data is not None:
            test_set = (Path(args.test_data), Path(args.test_labels), _data_files(args.test_data))
        initial = load_bundle(args.init_from) if args.init_from is not None else None
        run_training(
            Path(args.data),
            Path(args.labels),
            settings,
            Path(args.out),
            name=args.name or Path(args.out).name,
            version=args.version,
            resume=args.resume,
            files=files,
            test_set=test_set,
            initial=initial,
            weights_dtype=args.weights_dtype,
        )
    except (ValueError, LabelError, FileNotFoundError, BundleError) as exc:
        print(f"spectnode train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .training.commands import run_calibration
    from .training.labels import LabelError

    try:
        fit = (Path(args.fit_data), Path(args.fit_labels), _data_files(args.fit_data))
        held_out = (Path(args.held_out_data), Path(args.held_out_labels), _data_files(args.held_out_data))
        domain = run_calibration(Path(args.bundle), fit, held_out, log=lambda m: print(m, file=sys.stderr),
                                 layer=args.layer)
    except (ValueError, LabelError, FileNotFoundError, BundleError) as exc:
        print(f"spectnode calibrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"threshold": domain["threshold"], "calibration": domain["calibration"]}))
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .training.commands import run_evaluation
    from .training.labels import LabelError
    from .training.metrics import format_metrics_table

    try:
        metrics = run_evaluation(Path(args.bundle) if args.bundle else None, Path(args.labels),
                                 _data_files(args.data), Path(args.out) if args.out else None,
                                 log=lambda m: print(m, file=sys.stderr))
    except (ValueError, LabelError, FileNotFoundError, BundleError) as exc:
        print(f"spectnode evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_metrics_table(metrics), file=sys.stderr)
    print(json.dumps(metrics, indent=1))
    return EXIT_OK


def _batch_logging(cfg: Config, progress_on_terminal: bool) -> None:
    """Logs of a batch run: as configured, but only warnings on a terminal that shows the progress bar."""
    import dataclasses

    from .node.logs import configure_logging

    settings = cfg.logging
    if progress_on_terminal and settings.file is None and settings.level in ("DEBUG", "INFO"):
        settings = dataclasses.replace(settings, level="WARNING")
    configure_logging(settings)


def _summary_exit(summary: object) -> int:
    from .backfill.progress import Summary

    assert isinstance(summary, Summary)
    return EXIT_FAILURE if summary.failed else EXIT_OK


def _cmd_classify_send(args: argparse.Namespace) -> int:
    from .backfill.progress import Progress
    from .backfill.run import PipelineError, run_folder
    from .bundle import BundleError
    from .node.datadir import DataDirInUse

    cfg = _node_config(args)
    if cfg is None:
        return EXIT_USAGE
    try:
        files = _data_files(args.path)
    except FileNotFoundError as exc:
        print(f"spectnode classify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress(terminal=False if args.json else None)
    _batch_logging(cfg, progress.terminal)
    try:
        summary = run_folder(cfg, files, progress, bundles=[Path(b) for b in args.bundle] if args.bundle else None)
    except BundleError as exc:
        print(f"spectnode classify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DataDirInUse, PipelineError) as exc:
        print(f"spectnode classify: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _summary_exit(summary)


def _dicom_date(text: str) -> str:
    digits = text.replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD or YYYYMMDD, got {text!r}")
    return digits


def _cmd_backfill(args: argparse.Namespace) -> int:
    from .backfill.progress import Progress
    from .backfill.query import PacsError
    from .backfill.run import BackfillOptions, PipelineError, run_backfill
    from .bundle import BundleError
    from .node.datadir import DataDirInUse

    cfg = _node_config(args)
    if cfg is None:
        return EXIT_USAGE
    names = [p.name for p in cfg.pacs]
    if args.pacs not in names:
        print(f"spectnode backfill: no pacs entry named {args.pacs!r} in {cfg.source} (entries: "
              f"{', '.join(names) or 'none'})", file=sys.stderr)
        return EXIT_USAGE
    options = BackfillOptions(since=args.since, until=args.until, patient_id=args.patient, accession=args.accession,
                              limit=args.limit, dry_run=args.dry_run)
    progress = Progress(terminal=False if args.json else None)
    _batch_logging(cfg, progress.terminal)
    try:
        summary = run_backfill(cfg, args.pacs, options, progress)
    except BundleError as exc:
        print(f"spectnode backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PacsError, DataDirInUse, PipelineError) as exc:
        print(f"spectnode backfill: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _summary_exit(summary)


def _cmd_classify(args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .classify import Classifiers

    if args.send:
        return _cmd_classify_send(args)
    if args.config:
        print("spectnode classify: --config applies only with --send", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = _data_files(args.path)
        classifiers = Classifiers.from_bundles(args.bundle)
    except (FileNotFoundError, BundleError) as exc:
        print(f"spectnode classify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for result in classifiers.classify_paths(files):
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
        elif result.classified:
            inferred = "".join(f", {v} inferred ({result.view_certainty.get(v, 0):.2f})"
                               for v in result.inferred_views)
            print(f"{result.study_uid}: [{'+'.join(result.views)}{inferred}]")
            for model in result.models:
                probs = ", ".join(f"{k} {v:.2f}" for k, v in model.probabilities.items())
                second = f" (second: {model.second_label})" if model.second_label else ""
                domain = " OUTSIDE THE TRAINING DOMAIN" if model.outside_domain else ""
                print(f"  {model.model}: {model.label}{second} {probs}{domain}")
            for name, why in result.skipped_models.items():
                print(f"  {name}: not used: {why}")
        else:
            print(f"{result.study_uid}: not assessable: {result.reason}")
    return EXIT_OK


def _node_config(args: argparse.Namespace, check_dirs: bool = True) -> Config | None:
    """The validated configuration, or None after printing why (exit code 2).

    ``status`` and ``retry`` only read: they must work for an operator account
    that cannot create the node's folders.
    """
    from .config import ConfigError, load_config

    try:
        return load_config(args.config, check_dirs=check_dirs)
    except ConfigError as exc:
        print(f"spectnode: configuration error: {exc}", file=sys.stderr)
        return None


def _cmd_serve(args: argparse.Namespace) -> int:
    from .node.commands import serve

    cfg = _node_config(args)
    return EXIT_USAGE if cfg is None else serve(cfg)


def _cmd_status(args: argparse.Namespace) -> int:
    from .node.commands import status

    cfg = _node_config(args, check_dirs=False)
    return EXIT_USAGE if cfg is None else status(cfg, json=args.json, study_uid=args.study)


def _cmd_purge(args: argparse.Namespace) -> int:
    from .node.commands import purge

    cfg = _node_config(args, check_dirs=False)
    return EXIT_USAGE if cfg is None else purge(cfg, dry_run=args.dry_run, json=args.json)


def _cmd_retry(args: argparse.Namespace) -> int:
    from .node.commands import retry

    if (args.target is None) == (not args.all):
        print("spectnode retry: give an outbox item ID, a study UID, or --all", file=sys.stderr)
        return EXIT_USAGE
    cfg = _node_config(args, check_dirs=False)
    return EXIT_USAGE if cfg is None else retry(cfg, None if args.all else args.target)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .node.commands import demo

    return demo(Path(args.workdir) if args.workdir else None)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text}")
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
    p.add_argument("--anatomy", default="classic",
                   help="anatomy builder: classic (2-D primitives at relative depths), voxel (3-D skeleton "
                        "graph, its own physics), or mixed (a seeded choice per patient); default classic")
    p.add_argument("--phase", default="delayed",
                   help="delayed bone scan (default) or early blood-pool images")
    p.add_argument("--max-studies-per-patient", type=_positive_int, default=1, metavar="K",
                   help="give each patient 1 to K studies: follow-ups months apart, findings evolving "
                        "(default 1)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = config_sub.add_parser("check", help="validate a configuration file exactly as start-up does")
    c.add_argument("file", help="YAML configuration file")
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser("models", help="list the network architectures and their parameter counts")
    p.add_argument("--json", action="store_true", help='print a JSON array of {"name", "params"}')
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a network on labelled scans and write a model bundle")
    p.add_argument("--data", required=True, help="folder of DICOM studies")
    p.add_argument("--labels", required=True,
                   help="CSV (study_uid,patient_id,label) or a folder of LabelMe JSON annotations")
    p.add_argument("--arch", required=True, help="architecture (see `spectnode models`)")
    p.add_argument("--scheme", required=True, choices=["dspic4", "lung3", "binary"])
    p.add_argument("--out", required=True, help="bundle folder to write (checkpoints go in OUT/checkpoints)")
    p.add_argument("--test-data", help="separate held-out DICOM folder (then all of --data is trained on)")
    p.add_argument("--test-labels", help="labels of --test-data")
    p.add_argument("--epochs", type=_positive_int, help="default: the paper's (300)")
    p.add_argument("--batch-size", type=_positive_int, help="default: the paper's (dSPIC 16, inRAC 32)")
    p.add_argument("--learning-rate", type=_positive_float, help="Adam learning rate; default: the paper's")
    p.add_argument("--input-mode", choices=["per_view", "aggregate"],
                   help="default: per_view for dSPIC-family, aggregate for inRAC-family networks")
    p.add_argument("--input-shape", type=_parse_shape, default=(1024, 256), help="ROWSxCOLS (default 1024x256)")
    # Checked by InputSpec against the one table of normalisations, not repeated here.
    p.add_argument("--normalization", default="minmax",
                   help="input scaling: the papers' min-max (default), or a window from 0 to 5 times "
                        "the body's bone uptake (the hottest pixels saturate)")
    p.add_argument("--weights-dtype", choices=("float32", "float16"), default="float32",
                   help="how the bundle stores the weights; float16 halves its size (inference runs in float32)")
    # Checked by TrainSettings against train.PRECISIONS, not repeated here.
    p.add_argument("--precision", default="float32",
                   help="computation while training: float32 (default), or mixed_bfloat16 (bfloat16 on float32 "
                        "weights; about 3x faster for dSPIC-AM where the CPU has AMX / AVX512-BF16, or on a GPU); "
                        "the bundle is float32 either way")
    p.add_argument("--translate", type=int, default=3, help="augmentation: +/- pixels of translation")
    p.add_argument("--rotate", type=float, default=3.0, help="augmentation: +/- degrees of rotation")
    p.add_argument("--no-mirror", action="store_true", help="augmentation: no left-right mirroring")
    p.add_argument("--patience", type=_positive_int, default=10, help="early stopping patience (epochs)")
    p.add_argument("--warmup-epochs", type=_non_negative_int, default=0,
                   help="ramp the learning rate up linearly over this many epochs (default 0: none)")
    p.add_argument("--lesion-supervision", type=_non_negative_float, default=0.0, metavar="WEIGHT",
                   help="also train a head (dropped from the bundle) to point at the findings that the "
                        "truth.jsonl files under --data record (spectnode phantom writes them), with this "
                        "loss weight (default 0: labels only)")
    p.add_argument("--seed", type=int, default=0, help="split and augmentation seed")
    p.add_argument("--arch-options", help='JSON keyword arguments for the builder, e.g. \'{"fc_units": [256]}\'')
    p.add_argument("--name", help="model name in the card and in reports (default: OUT's folder name)")
    p.add_argument("--version", default="1.0.0", help="model version in the card")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--init-from", metavar="BUNDLE",
                   help="fine-tune: start from this bundle's weights (same architecture, scheme and views; "
                        "another --input-shape only where the weights fit, as with a pooled head)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a model bundle on labelled scans")
    p.add_argument("--bundle", help="bundle folder (default: the shipped synthetic-trained model)")
    p.add_argument("--data", required=True, help="folder of DICOM studies")
    p.add_argument("--labels", required=True, help="CSV or LabelMe folder, as for train")
    p.add_argument("--out", help="also write metrics.json, predictions.csv, roc.png, confusion.png here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a bundle's training domain (the domain-fit score and its threshold)")
    p.add_argument("--bundle", required=True, help="bundle folder; its card is rewritten, its weights are not")
    p.add_argument("--fit-data", required=True, help="in-domain studies like the training data (DICOM folder)")
    p.add_argument("--fit-labels", required=True, help="their labels (CSV or LabelMe folder)")
    p.add_argument("--held-out-data", required=True, help="other in-domain studies: the threshold is their 99th "
                   "percentile")
    p.add_argument("--held-out-labels", required=True, help="their labels")
    p.add_argument("--layer", help="layer whose output (pooled if a feature map) is the feature vector "
                                   "(default: the last global average pooling, what the head reads)")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("classify", help="classify DICOM files offline, grouped into studies")
    p.add_argument("path", help="a DICOM file or a folder")
    p.add_argument("--bundle", action="append",
                   help="bundle folder; repeat for several models (default: the shipped synthetic-trained models)")
    p.add_argument("--json", action="store_true", help="one JSON object per study per line")
    p.add_argument("--send", action="store_true",
                   help="run the studies through the node's pipeline and job store and send the results to the "
                        "configured destinations, with progress and a summary (the batch path of backfill)")
    p.add_argument("--config", help="YAML configuration, with --send (default: built-in defaults)")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("backfill", help="classify the NM studies already in a PACS (C-FIND, then C-GET or C-MOVE)")
    p.add_argument("--pacs", required=True, metavar="NAME", help="the pacs entry of the configuration")
    p.add_argument("--since", type=_dicom_date, metavar="DATE", help="studies on or after DATE (YYYY-MM-DD)")
    p.add_argument("--until", type=_dicom_date, metavar="DATE", help="studies on or before DATE (YYYY-MM-DD)")
    p.add_argument("--patient", metavar="ID", help="only this PatientID")
    p.add_argument("--accession", metavar="A", help="only this AccessionNumber")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="retrieve at most N studies in this run (studies skipped as done do not count)")
    p.add_argument("--dry-run", action="store_true", help="list what would be done; retrieve nothing")
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal (the default elsewhere)")
    p.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    p.set_defaults(func=_cmd_backfill)

    p = sub.add_parser("serve", help="run the DICOM node (C-STORE/C-ECHO SCP, classify, report, dispatch)")
    p.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("status", help="studies by state, the outbox and dead letters; or one study's audit trail")
    p.add_argument("study", nargs="?", metavar="STUDY_UID",
                   help="show this study's audit trail: who sent each object, each stage, each delivery")
    p.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("purge", help="apply the retention policy now: remove the files of finished studies")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    p.set_defaults(func=_cmd_purge)

    p = sub.add_parser("retry", help="send dead-lettered results again / resume studies in error")
    p.add_argument("target", nargs="?", help="outbox item ID or study UID")
    p.add_argument("--all", action="store_true", help="everything dead or in error")
    p.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    p.set_defaults(func=_cmd_retry)

    p = sub.add_parser("demo", help="start the node on loopback, send phantom studies, print the results")
    p.add_argument("--workdir", help="folder for the demo's data and results (default: a new temporary folder)")
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up lines (CUDA probing, CPU features) are noise to a user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
