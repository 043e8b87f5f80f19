"""Backfill throughput: studies per hour from a real Orthanc, against model-only batch inference.

Run on demand (pytest does not collect this file)::

    python tests/benchmarks/bench_backfill.py [--n 50] [--bundle DIR] [--retrieve get|move] [--parallel 2]

It generates N phantom studies (every layout among the first nine: compressed, split instances and
series, 512 matrix), loads them into an Orthanc on loopback, and then, in this one process, on the
same studies and with the same loaded models (the shipped default bundles unless ``--bundle``):

1. **model only**: :meth:`spectnode.classify.Classifiers.classify_paths` with heatmaps
   (``explain=True``, as the classify stage does) on the files, read from disk: what a batch
   inference script would do, with no DICOM network, job store, report or dispatch;
2. **backfill**: :func:`spectnode.backfill.run.run_backfill` with no rate limit to speak of
   (studies_per_minute 10000): C-FIND, C-GET/C-MOVE into the spool and job store, the node's
   stages in-process (assemble, classify, report SR + SCs, dispatch back to Orthanc by C-STORE),
   until every study is delivered.

It prints both rates (studies per hour) and their ratio (the goal is >= 0.8), then where the
backfill's time went: the seconds each part worked (find: every C-FIND; retrieve: the C-GETs or
C-MOVEs, storing included; each node stage's steps, as its ``observe`` hook, the one behind
``spectnode_stage_seconds``, reports them; the models' own share of classify), against the
backfill's wall time, and the CPU time of this process and of Orthanc against the cores there are,
per study against the model-only run's, and by thread (sampled from ``/proc/self/task``). The part
that worked closest to all of the wall time, or a CPU use near every core, is the limit; where both
runs keep every core busy, the ratio cannot exceed their CPU per study's ratio.
The timings come from wrapping those calls in this process; nothing in spectnode is changed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spectnode.backfill.run as backfill_run  # noqa: E402
from spectnode.backfill.progress import Progress  # noqa: E402
from spectnode.backfill.query import PacsClient  # noqa: E402
from spectnode.backfill.run import BackfillOptions, run_backfill  # noqa: E402
from spectnode.classify import DEFAULT_BUNDLE, Classifiers, StudyClassifier, bundle_paths  # noqa: E402
from spectnode.config import parse_config  # noqa: E402
from spectnode.node import worker  # noqa: E402
from spectnode.node.stages import classify as classify_stage  # noqa: E402
from spectnode.node.stages.receive import ReceiveStage  # noqa: E402
from spectnode.phantom.generate import generate_phantoms  # noqa: E402

from orthanc import OrthancServer, free_port  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator


class Timings:
    """Seconds and calls per part, summed over threads."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, part: str, seconds: float) -> None:
        """One call (or stage step) of ``part`` took ``seconds``."""
        with self._lock:
            self.seconds[part] += seconds
            self.calls[part] += 1

    def clear(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()

    @contextmanager
    def timed(self, owner: Any, name: str, part: str) -> Iterator[None]:
        """Time every call of ``owner.name`` as ``part`` while the block runs."""
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - started)

        setattr(owner, name, wrapper)
        try:
            yield
        finally:
            setattr(owner, name, original)

    @contextmanager
    def stage_steps(self) -> Iterator[None]:
        """Give every node stage thread started in the block this as its ``observe`` hook."""
        original = worker.StageThread.__init__
        add = self.add

        def init(thread: worker.StageThread, *args: Any, **kwargs: Any) -> None:
            original(thread, *args, **{**kwargs, "observe": add})

        worker.StageThread.__init__ = init  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            worker.StageThread.__init__ = original  # type: ignore[method-assign]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (every thread), or of process ``pid``."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SAMPLER = "bench-cpu-sampler"


class ThreadCpu:
    """CPU seconds of this process's threads by name while the block runs, sampled every 0.1 s
    (``/proc/self/task``; a thread that ends between samples loses its last 0.1 s at most)."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        python_names = {t.native_id: t.name for t in threading.enumerate()}  # the OS knows no Python names
        for task in Path("/proc/self/task").iterdir():
            try:
                name = python_names.get(int(task.name)) or (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            self.latest[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self) -> ThreadCpu:
        self._sample()
        self.before = dict(self.latest)
        self._thread = threading.Thread(target=self._run, name=SAMPLER, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_group(self) -> dict[str, float]:
        """CPU seconds spent in the block by thread name (pynetdicom's and TensorFlow's grouped)."""
        groups: defaultdict[str, float] = defaultdict(float)
        for tid, (name, seconds) in self.latest.items():
            spent = seconds - self.before.get(tid, (name, 0.0))[1]
            if name == SAMPLER:
                continue  # this benchmark's own
            if name in ("classify", "report", "dispatch", "assemble") or name.startswith("backfill"):
                group = "backfill workers" if name.startswith("backfill") else name
            elif name.startswith("dispatch-item"):
                group = "dispatch"
            elif name.startswith(("Requestor", "Acceptor", "Thread-")):
                group = "pynetdicom (associations, C-GET storing)"
            elif name == "MainThread":
                group = "main thread"
            else:
                group = "TensorFlow's threads and others"
            groups[group] += spent
        return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", "--studies", dest="n", type=int, default=50, help="studies (default 50)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle (default: the shipped ones, as model.bundles null loads)")
    parser.add_argument("--retrieve", choices=["get", "move"], default="get")
    parser.add_argument("--parallel", type=int, default=2, help="max_parallel_retrieves (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))

    paths = bundle_paths([args.bundle] if args.bundle is not None else None)  # as model.bundles
    loaded = {p.resolve(): StudyClassifier.from_bundle(p) for p in paths}
    models = Classifiers(list(loaded.values()))
    timings = Timings()

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        records = generate_phantoms(root / "studies", args.n, seed=args.seed)
        files = [f for r in records for f in r.files]
        models.classify_paths(records[0].files, explain=True)  # warm-up: graph tracing, first call

        with timings.timed(StudyClassifier, "model_result", "model"):
            model_cpu0 = cpu_seconds()
            started = time.perf_counter()
            results = models.classify_paths(files, explain=True)
            model_s = time.perf_counter() - started
            model_cpu_s = cpu_seconds() - model_cpu0
        model_alone_s = timings.seconds["model"]
        assert len(results) == args.n
        timings.clear()

        node_port = free_port()
        with OrthancServer(root / "pacs", modalities={"node": ("SPECTNODE", "127.0.0.1", node_port)}) as pacs:
            for path in files:
                pacs.upload(path.read_bytes())
            assert pacs._process is not None
            orthanc_pid = pacs._process.pid
            cfg = parse_config({
                "node": {"ae_title": "SPECTNODE", "port": node_port},
                "storage": {"data_dir": str(root / "data")},
                "destinations": [],
                "model": {"bundles": [str(p) for p in paths]},
                "pacs": [{"name": "bench", "ae_title": pacs.ae_title, "host": pacs.host, "port": pacs.dicom_port,
                          "retrieve": args.retrieve, "studies_per_minute": 10000,
                          "max_parallel_retrieves": args.parallel}],
            })
            # The same loaded models serve the in-process node, so neither run pays for loading them.
            def loader(path: Path | None) -> StudyClassifier:
                return loaded[Path(path or DEFAULT_BUNDLE).resolve()]

            with ExitStack() as timing:
                timing.enter_context(timings.timed(PacsClient, "find", "find"))
                timing.enter_context(timings.timed(backfill_run, "retrieve_series", "retrieve"))
                timing.enter_context(timings.timed(ReceiveStage, "handle_store", "receive"))
                timing.enter_context(timings.timed(StudyClassifier, "model_result", "model"))
                timing.enter_context(timings.timed(classify_stage, "read_spooled_study", "read"))
                timing.enter_context(timings.timed(classify_stage, "read_study_views", "read"))
                timing.enter_context(timings.timed(classify_stage.np, "savez_compressed", "arrays"))
                timing.enter_context(timings.timed(classify_stage, "write_durably", "arrays"))
                timing.enter_context(timings.stage_steps())
                cpu0, orthanc_cpu0 = cpu_seconds(), cpu_seconds(orthanc_pid)
                started = time.perf_counter()
                with ThreadCpu() as threads_cpu:
                    summary = run_backfill(cfg, "bench", BackfillOptions(),
                                           Progress(io.StringIO(), terminal=False), classifier_loader=loader)
                backfill_s = time.perf_counter() - started
                cpu_s, orthanc_cpu_s = cpu_seconds() - cpu0, cpu_seconds(orthanc_pid) - orthanc_cpu0
            stored_back = len(pacs.instances()) - len(files)
        through = summary.classified + sum(summary.not_assessable.values())
        if summary.failed or through != args.n:
            print(f"not every study went through: {summary.to_json()}")

    model_rate = args.n / model_s * 3600
    backfill_rate = args.n / backfill_s * 3600
    names = ", ".join(f"{c.card.name} {c.card.version} ({c.card.architecture})" for c in models)
    print(f"studies:    {args.n} (C-{args.retrieve.upper()}, {args.parallel} parallel retrieves), {cores} cores, "
          f"model(s): {names}")
    print(f"model only: {model_s:7.1f} s  {model_rate:7.0f} studies/h  (models {model_alone_s:.1f} s, reading the "
          f"files {model_s - model_alone_s:.1f} s)")
    print(f"backfill:   {backfill_s:7.1f} s  {backfill_rate:7.0f} studies/h  ({summary.classified} classified, "
          f"{sum(summary.not_assessable.values())} not assessable, {sum(summary.failed.values())} failed; "
          f"{stored_back} objects stored back in the PACS)")
    print(f"ratio backfill/model only: {backfill_rate / model_rate:.2f} (goal >= 0.8)")

    s, calls = timings.seconds, timings.calls
    parts = [
        ("find", "C-FIND: studies, series, image types, SRs", 1),
        ("retrieve", f"C-{args.retrieve.upper()} of each study, storing included", args.parallel),
        ("receive", "  of which storing into spool and job store", args.parallel),
        ("assemble", "assemble stage", 1),
        ("classify", "classify stage: read spool, models, heatmaps, write arrays", 1),
        ("model", "  of which the models (model_result)", 1),
        ("read", "  of which reading the spooled objects and their views", 1),
        ("arrays", "  of which compressing and writing views and heatmaps", 1),
        ("report", "report stage: SR and secondary captures", 1),
        ("dispatch", "dispatch stage: C-STORE back to the PACS", 1),
    ]
    print("\nwhere the backfill's time went (seconds of work summed over threads, calls, share of its wall time):")
    for key, what, threads in parts:
        print(f"  {key:9s} {what:60s} {s[key]:7.1f} s  {calls[key]:5d}  {s[key] / backfill_s:5.0%}"
              + (f" (on {threads} threads)" if threads > 1 else ""))
    if model_alone_s:
        print(f"  the models took {s['model'] / model_alone_s:.2f} x their time alone (sharing the CPU)")
    print(f"  CPU: this process {cpu_s:.1f} s, Orthanc {orthanc_cpu_s:.1f} s, of {cores * backfill_s:.1f} s "
          f"({cores} cores x wall): {(cpu_s + orthanc_cpu_s) / (cores * backfill_s):.0%} used (other processes on "
          "the machine not counted)")
    # Where both runs are bound by the CPU, the ratio cannot exceed the model-only run's CPU over the backfill's.
    print(f"  CPU per study: model only {model_cpu_s / args.n * 1000:.0f} ms ({model_cpu_s / (cores * model_s):.0%} of "
          f"{cores} cores), backfill {(cpu_s + orthanc_cpu_s) / args.n * 1000:.0f} ms with Orthanc's; their ratio "
          f"{model_cpu_s / (cpu_s + orthanc_cpu_s):.2f}")
    by_thread = sorted(threads_cpu.by_group().items(), key=lambda kv: -kv[1])
    print("  CPU per study by thread: " + ", ".join(
        f"{group} {seconds / args.n * 1000:.0f} ms" for group, seconds in by_thread)
        + f"; {(cpu_s - sum(v for _, v in by_thread)) / args.n * 1000:.0f} ms in threads that ended between samples "
        "(a sender's or an association's)")
    shares = ("model", "receive", "read", "arrays")  # parts of other parts
    serial = {key: s[key] / (backfill_s * threads) for key, _, threads in parts if key not in shares}
    busiest = max(serial, key=lambda k: serial[k])
    print(f"limit: the {busiest} part, busy {serial[busiest]:.0%} of the wall time"
          + (" (with every core in use)" if (cpu_s + orthanc_cpu_s) > 0.85 * cores * backfill_s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
