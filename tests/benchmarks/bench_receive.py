"""Receive throughput: spectnode's storage SCP against DCMTK storescp, each pair doing equal work.

Run on demand (pytest does not collect this file)::

    python tests/benchmarks/bench_receive.py [--files 60] [--rounds 3] [--layout multiframe]

It writes N copies of a phantom NM object (each with its own study and SOP
Instance UID, so that nothing is deduplicated), then, for each round, sends
all of them with one DCMTK ``storescu`` association to each receiver, in
turn (the order rotates each round):

* ``spectnode``: :class:`~spectnode.node.stages.receive.ReceiveStage` in this
  process, as the node runs it: before each Success the spool file and its
  folder are fsynced and the SQLite commit is ``synchronous=FULL``;
* ``spectnode-nofsync``: the same stage with durability switched off in this
  benchmark process only (``os.fsync`` does nothing, SQLite
  ``synchronous=OFF``); not a product setting;
* ``storescp``: DCMTK ``storescp -od DIR`` (writes each file, no fsync).

Every receiver gets the same conditions: the same maximum PDU (131072 bytes,
what spectnode advertises, passed to storescp with ``--max-pdu``; storescp's
default is 16384), one C-ECHO before timing (the warm-up), and Nagle's
algorithm off on every receiver's sockets (DCMTK switches it off when the
environment variable ``TCP_NODELAY=1`` is set; without it each response waits
for the peer's delayed ACK, about 40 ms per object on Linux loopback;
pynetdicom never does, so this benchmark sets TCP_NODELAY on the sockets
spectnode accepts). All write to the same file system (a temporary folder).
Two ratios are printed, each saying what each side did:

* spectnode without fsync / storescp: the same work (receive, parse, write,
  no fsync), so the price of spectnode's own code (Python, checks, SQLite);
* spectnode / spectnode without fsync: the price of durability.
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
from typing import Any

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
        echo = subprocess.run([_native("echoscu"), "-aec", "BENCH", "-to", "1", "127.0.0.1", str(port)],
                              capture_output=True)
        if echo.returncode == 0:
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


#: spectnode's maximum PDU (spectnode.net.server.ConnectionPolicy), given to storescp too.
MAX_PDU = 131072


def _without_durability() -> Any:
    """Switch off fsync and SQLite's synchronous writes in this process; returns an undo function."""
    from spectnode.store import database

    saved_fsync, saved_open = os.fsync, database.Database._open

    def open_unsynchronised(self: Any) -> Any:
        db = saved_open(self)
        db.execute("PRAGMA synchronous = OFF")
        return db

    os.fsync = lambda fd: None
    database.Database._open = open_unsynchronised  # type: ignore[method-assign]

    def undo() -> None:
        os.fsync = saved_fsync
        database.Database._open = saved_open  # type: ignore[method-assign]

    return undo


def _accept_without_nagle() -> None:
    """Set TCP_NODELAY on every socket a server of this process accepts (what DCMTK's TCP_NODELAY=1 does)."""
    import socket

    from spectnode.net.server import GuardedAssociationServer

    accept = GuardedAssociationServer.get_request

    def get_request(self: Any) -> Any:
        sock, address = accept(self)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    GuardedAssociationServer.get_request = get_request  # type: ignore[method-assign]


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

    from spectnode.net.server import ConnectionPolicy
    from spectnode.node.datadir import DataDir
    from spectnode.node.stages.receive import ReceiveStage
    from spectnode.store import JobStore

    _accept_without_nagle()
    with tempfile.TemporaryDirectory(prefix="spectnode-bench-") as tmp:
        root = Path(tmp)
        files = _make_files(root, args.files, args.layout)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        receivers = ["spectnode", "spectnode-nofsync", "storescp"]
        times: dict[str, list[float]] = {name: [] for name in receivers}
        for round_number in range(args.rounds):
            shift = round_number % len(receivers)
            for receiver in receivers[shift:] + receivers[:shift]:
                target = root / f"{receiver}-{round_number}"
                target.mkdir()
                port = _free_port()
                if receiver.startswith("spectnode"):
                    undo = _without_durability() if receiver == "spectnode-nofsync" else (lambda: None)
                    store = JobStore(target / "spectnode.sqlite")
                    scp = ReceiveStage(store, DataDir(target), ae_title="BENCH", port=port,
                                       policy=ConnectionPolicy(max_pdu_bytes=MAX_PDU))
                    scp.start()
                    try:
                        _wait_for_port(port)  # the warm-up: one C-ECHO, as for storescp
                        times[receiver].append(_send(port, files))
                    finally:
                        scp.stop()
                        store.close()
                        undo()
                    stored = len(list((target / "spool").rglob("*.dcm")))
                else:
                    command = [_native("storescp"), "--max-pdu", str(MAX_PDU), "-aet", "BENCH", "-od", str(target),
                               str(port)]
                    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"})
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
        print(f"{len(files)} objects of {megabytes / len(files):.2f} MB ({args.layout}), one storescu association "
              f"each, max PDU {MAX_PDU} on every receiver, one C-ECHO before timing, median of {args.rounds} rounds")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"  {name:<18} {seconds:6.2f} s  {len(files) / seconds:7.1f} objects/s  "
                  f"{megabytes / seconds:7.1f} MB/s  (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        print(f"  time spectnode without fsync / storescp: {medians['spectnode-nofsync'] / medians['storescp']:.2f}"
              "  (both: receive, write each file, no fsync; spectnode also parses and checks each object and "
              "commits it to SQLite with synchronous=OFF)")
        print(f"  time spectnode / spectnode without fsync: {medians['spectnode'] / medians['spectnode-nofsync']:.2f}"
              "  (the price of durability: fsync of each file and its folder, SQLite synchronous=FULL, "
              "before each Success)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
