"""``spectnode demo``: the whole node on one machine, in about a minute.

It starts a node on loopback (a free port, a working folder of its own),
generates four synthetic studies (one per dSPIC class, each in another DICOM
layout), sends them to the node over DICOM as a camera would, waits for the
results and prints, per study, the phantom's true class, the model's label and
probabilities, and where the SR and secondary captures are. The files stay in
``<workdir>/results/<StudyInstanceUID>/``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from spectnode.config import parse_config
from spectnode.node.worker import Node
from spectnode.store import DISPATCHED

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DEMO_STUDIES", "DEMO_SEED", "run_demo"]

#: Studies the demo sends: one per class of the dSPIC scheme.
DEMO_STUDIES = 4
#: Phantom seed of the demo (any seed gives one study per class in the first four).
DEMO_SEED = 2024
_CALLING_AE = "SPECTDEMO"


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(workdir: Path | None = None, *, bundles: Sequence[Path] | None = None, timeout_s: float = 300.0) -> int:
    """Run the demonstration and return the exit code (0 when every study got its results).

    Args:
        workdir: Working folder (created if needed); a new temporary folder
            when None. It receives ``phantoms/``, ``data/`` (the node's data
            directory) and ``results/`` (the folder destination).
        bundles: Model bundles; None uses the shipped default models.
        timeout_s: Longest wait for the results.
    """
    from spectnode import RESEARCH_USE_NOTICE
    from spectnode.bundle import BundleError, verify_bundle
    from spectnode.classify import bundle_paths
    from spectnode.dispatch import DispatchError, StoreTarget, store_to_peer
    from spectnode.phantom.generate import generate_phantoms

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="spectnode-demo-")) if workdir is None else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    try:
        for bundle in bundle_paths(bundles):
            verify_bundle(bundle)
    except BundleError as exc:
        _say(f"spectnode demo: the model bundle cannot be used: {exc}")
        return 1
    results = workdir / "results"
    cfg = parse_config(
        {
            "node": {"ae_title": "SPECTNODE", "bind_address": "127.0.0.1", "allowed_calling_ae_titles": ["*"]},
            "storage": {"data_dir": str(workdir / "data")},
            "destinations": [{"name": "demo-folder", "type": "folder", "path": str(results), "outputs": ["sr", "sc"]}],
            "model": {"bundles": [str(b) for b in bundles] if bundles else None},
            "completion": {"timeout_seconds": 30},
            "logging": {"level": "WARNING"},
        },
        source="<demo>",
    )
    from spectnode.node.logs import configure_logging

    configure_logging(cfg.logging)
    _say(f"spectnode demo, working folder {workdir}")
    _say(RESEARCH_USE_NOTICE)
    node = Node(cfg, port=0)
    node.start()  # the model loads in the background while the phantoms are made
    try:
        _say(f"node SPECTNODE listening on 127.0.0.1:{node.port}")
        records = generate_phantoms(workdir / "phantoms", n=DEMO_STUDIES, seed=DEMO_SEED)
        target = StoreTarget("SPECTNODE", "127.0.0.1", node.port)
        for record in records:
            try:
                store_to_peer(record.files, target, calling_ae_title=_CALLING_AE, timeout=30)
            except DispatchError as exc:
                _say(f"spectnode demo: sending study {record.study_uid} failed: {exc.reason}")
                return 1
            _say(f"sent {len(record.files)} file(s) of a synthetic {record.label} study ({record.layout} layout) "
                 f"by C-STORE as {_CALLING_AE}")
        try:
            finished = node.wait_until_settled([r.study_uid for r in records], timeout_s)
        except TimeoutError as exc:
            _say(f"spectnode demo: {exc}")
            return 1
        ok = True
        for record in records:
            study = finished[record.study_uid]
            result = study.result
            _say("")
            _say(f"study {record.study_uid}")
            _say(f"  phantom truth: {record.label} ({record.layout})")
            if study.state != DISPATCHED or result is None:
                ok = False
                _say(f"  {study.state}: {study.reason}")
                continue
            for model in result.models:
                probabilities = ", ".join(f"{k} {v:.3f}" for k, v in model.probabilities.items())
                second = f", second: {model.second_label}" if model.second_label else ""
                _say(f"  result: {model.label}{second}  [{probabilities}]  ({model.model} {model.version})")
            folder = results / record.study_uid
            assert node.store is not None
            outputs = node.store.outputs(record.study_uid)
            for output in sorted(outputs, key=lambda o: (o.kind != "sr", o.path.name)):
                copy = folder / output.path.name
                _say(f"  {output.kind.upper()}: {copy if copy.exists() else output.path}")
        _say("")
        _say(f"SR and secondary-capture files are in {results} (one folder per study); "
             f"done in {time.monotonic() - started:.0f} s")
        return 0 if ok else 1
    finally:
        node.stop()
