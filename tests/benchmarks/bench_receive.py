"""Receive throughput: spectnode's storage SCP against DCMTK storescp, side by side.

Run on demand (pytest does not collect this file)::

    python tests/benchmarks/bench_receive.py [--files 60] [--rounds 3] [--layout multiframe]

It writes N copies of a phantom NM object (each with its own study and SOP
Instance UID, so that nothing is deduplicated), then, for each round, sends
all of them with one ``storescu`` association to

* spectnode's :class:`~spectnode.node.stages.receive.ReceiveStage` (spool write with fsync
  of file and folder, SQLite commit with ``synchronous=FULL``, before each
  Success), running in this process, and
* DCMTK ``storescp -od DIR`` (writes each file, no fsync), as installed, and
  with the environment variable ``TCP_NODELAY=1`` (DCMTK then disables
  Nagle's algorithm; without it, each C-STORE response waits for the
  peer's delayed ACK, about 40 ms per object on Linux loopback),

in turn (the order rotates each round), and prints the median time, objects/s and MB/s of each
and the ratio. Both write to the same file system (a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def _native(tool: str) -> str | None:
    """DCMTK's executable: pynetdicom puts Python scripts of the same names into the venv."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(tool, path=folder)
        if path is not None:
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return path
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            subprocess.run([_native("echoscu"), "-to", "1", "127.0.0.1", str(port)], capture_output=True).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers C-ECHO on port {port}")


def _make_files(out: Path, n: int, layout: str) -> list[Path]:
    from spectnode.phantom.generate import generate_phantoms

    (record,) = generate_phantoms(out / "source", n=1, seed=1, layout=layout)
    template = pydicom.dcmread(record.files[0])
    files = []
    for i in range(n):
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        path = out / "send" / f"IM{i:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        template.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _send(port: int, files: list[Path]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([_native("storescu"), "-aec", "BENCH", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=60, help="objects per round (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per receiver (default 3)")
    parser.add_argument("--layout", default="multiframe", help="phantom layout of the objects (default multiframe)")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if _native(tool) is None:
            print(f"{tool} (DCMTK's, not pynetdicom's script of that name) is not on PATH "
                  "(Debian/Ubuntu: apt install dcmtk)", file=sys.stderr)
            return 2

    from spectnode.node.datadir import DataDir
    from spectnode.node.stages.receive import ReceiveStage
    from spectnode.store import JobStore

    with tempfile.TemporaryDirectory(prefix="spectnode-bench-") as tmp:
        root = Path(tmp)
        files = _make_files(root, args.files, args.layout)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        receivers = ["spectnode", "storescp", "storescp-nodelay"]
        times: dict[str, list[float]] = {name: [] for name in receivers}
        for round_number in range(args.rounds):
            order = receivers[round_number % 3:] + receivers[:round_number % 3]
            for receiver in order:
                target = root / f"{receiver}-{round_number}"
                target.mkdir()
                port = _free_port()
                if receiver == "spectnode":
                    store = JobStore(target / "spectnode.sqlite")
                    scp = ReceiveStage(store, DataDir(target), ae_title="BENCH", port=port)
                    scp.start()
                    try:
                        times[receiver].append(_send(port, files))
                    finally:
                        scp.stop()
                        store.close()
                    stored = len(list((target / "spool").rglob("*.dcm")))
                else:
                    env = {**os.environ, "TCP_NODELAY": "1"} if receiver == "storescp-nodelay" else None
                    proc = subprocess.Popen([_native("storescp"), "-aet", "BENCH", "-od", str(target), str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                    try:
                        _wait_for_port(port)
                        times[receiver].append(_send(port, files))
                    finally:
                        proc.terminate()
                        proc.wait(timeout=10)
                    stored = len([p for p in target.iterdir() if p.is_file()])
                if stored != len(files):
                    raise RuntimeError(f"{receiver} stored {stored} of {len(files)} objects")
                shutil.rmtree(target)
        print(f"{len(files)} objects of {megabytes / len(files):.2f} MB ({args.layout}), one storescu association, "
              f"median of {args.rounds} rounds")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"  {name:<17} {seconds:6.2f} s  {len(files) / seconds:7.1f} objects/s  "
                  f"{megabytes / seconds:7.1f} MB/s  (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        for name in receivers[1:]:
            print(f"  throughput spectnode / {name}: {medians[name] / medians['spectnode']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
