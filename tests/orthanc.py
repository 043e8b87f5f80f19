"""A real Orthanc PACS on loopback, for tests that need a DICOM peer.

Tests import this module directly (pytest puts ``tests/`` on ``sys.path``)::

    from orthanc import OrthancServer

    def test_something(tmp_path):
        with OrthancServer(tmp_path / "pacs") as pacs:
            ...send to ("127.0.0.1", pacs.dicom_port, pacs.ae_title)...
            assert len(pacs.instances()) == 2
            pacs.stop()          # the destination goes down
            pacs.start()         # and comes back on the same storage and ports

Each server gets its own JSON configuration, storage folder, free DICOM and HTTP
ports and log file under the folder it is given; plugins are off and the REST
API needs no login (it listens on loopback only). The ``Orthanc`` executable
(Debian package ``orthanc``) is required, never skipped: a missing executable
fails the test with what to install.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

    from pydicom.dataset import Dataset

__all__ = ["OrthancError", "OrthancServer", "free_port", "require_orthanc"]

#: Uncompressed transfer syntaxes only, for an instance that must not accept
#: compressed pixel data (``accepted_transfer_syntaxes=UNCOMPRESSED_ONLY``).
UNCOMPRESSED_ONLY: tuple[str, ...] = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 40


class OrthancError(RuntimeError):
    """Orthanc did not start, stopped unexpectedly, or a REST call failed."""


def require_orthanc() -> str:
    """Return the path of the ``Orthanc`` executable, or fail the test saying what to install."""
    path = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    if path is None:
        pytest.fail(
            "Orthanc is not installed; install it to run this test (Debian/Ubuntu: apt install orthanc)",
            pytrace=False,
        )
    return path


#: Ports ``free_port`` hands out start here; they end below the kernel's ephemeral range
#: (32768 up by default), so no socket bound to port 0 and no outgoing connection takes one.
_FIRST_PORT = 20000
#: One byte-range lock per port in this file marks a port handed out, for as long as the
#: process that took it lives: pytest-xdist workers (and a replacement for a crashed one),
#: two test runs and a benchmark each take ports no other live process has.
_PORT_LOCKS = Path(os.environ.get("TMPDIR", "/tmp")) / f"spectnode-test-ports-{os.getuid()}.lock"
_port_locks_fd: int | None = None
_HANDED_OUT: set[int] = set()  # a process's own lock on a byte does not stop it taking the byte again


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_END_PORT = _ephemeral_low()  # read once: it does not change while the tests run


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on now, never handed to another live process.

    A port is only bound later by the server it is for, so a port that is merely free now
    could be offered again to the next caller, in this process or another (seen: Orthanc's
    DICOM port equal to the node's, and the node's C-ECHO check answered by Orthanc). So a
    port is reserved with a lock first, then checked by binding it.
    """
    global _port_locks_fd
    if _port_locks_fd is None:
        _port_locks_fd = os.open(_PORT_LOCKS, os.O_RDWR | os.O_CREAT, 0o600)  # kept open: closing drops the locks
    for port in range(_FIRST_PORT, _END_PORT):
        if port in _HANDED_OUT:
            continue
        try:
            fcntl.lockf(_port_locks_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:
            continue  # another live process has it
        _HANDED_OUT.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((_HOST, port))
            except OSError:
                continue  # something outside the tests listens there (or it is in TIME_WAIT)
        return port
    raise RuntimeError(f"no free port left between {_FIRST_PORT} and {_END_PORT}")


class OrthancServer:
    """One Orthanc process with its own configuration, storage and ports.

    The ports and storage are fixed when the object is made, so ``stop()``
    followed by ``start()`` brings back the same PACS, with what it stored, at
    the same address: exactly what a destination that goes down and comes back
    looks like to a sender.

    Args:
        work_dir: Folder for the configuration, storage and log (created).
        ae_title: Orthanc's own (called) AE title.
        check_called_aet: Reject associations whose called AE title is not
            ``ae_title`` (Orthanc's ``DicomCheckCalledAet``).
        accepted_transfer_syntaxes: Transfer syntax UIDs (wildcards allowed)
            the storage SCP accepts; ``None`` keeps Orthanc's default (all of
            ``1.2.840.10008.1.*``).
        modalities: Known peers, ``{name: (ae_title, host, port)}``, for
            Orthanc's own SCU commands; storing to Orthanc is allowed from any
            peer regardless (``DicomAlwaysAllowStore``).
        extra_config: More Orthanc configuration keys, merged last.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        ae_title: str = "ORTHANC",
        check_called_aet: bool = False,
        accepted_transfer_syntaxes: Iterable[str] | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.executable = require_orthanc()
        self.work_dir = Path(work_dir)
        self.storage_dir = self.work_dir / "storage"
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self.host = _HOST
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

        config: dict[str, Any] = {
            "Name": f"spectnode-test-{ae_title}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpThreadsCount": 4,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": check_called_aet,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomScpTimeout": 10,
            "DicomModalities": {name: list(peer) for name, peer in (modalities or {}).items()},
            "UnknownSopClassAccepted": False,
        }
        if accepted_transfer_syntaxes is not None:
            config["AcceptedTransferSyntaxes"] = list(accepted_transfer_syntaxes)
        config.update(extra_config or {})
        self.config = config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def running(self) -> bool:
        """Whether the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> OrthancServer:
        """Start Orthanc (on the same storage and ports as before) and wait until REST answers.

        Raises:
            OrthancError: If the process exits or REST does not answer within
                ``timeout_s``; the message carries the tail of Orthanc's log.
        """
        if self.running:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps the descriptor
        try:
            self._process = subprocess.Popen(
                [self.executable, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                start_new_session=True,  # a Ctrl-C in the test run must not reach it twice
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise OrthancError(f"Orthanc exited with status {code} while starting\n{self.log_tail()}")
            try:
                self.get_json("/system", timeout=1.0)
                if self.dicom_listening():
                    return self
            except (OrthancError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise OrthancError(
                    f"Orthanc did not answer on {self.url}/system within {timeout_s:g} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, graceful: bool = True) -> None:
        """Stop Orthanc; storage is kept.

        Args:
            graceful: SIGTERM and wait (about 3 s; SIGKILL after 10 s), as a
                service stop does; False kills at once, as a crash does (Orthanc's
                SQLite index survives either).
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if not graceful:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Killing saves the ~3 s of a graceful stop; the storage is a test's temp folder.
        self.stop(graceful=False)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of Orthanc's log, for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no Orthanc log)"
        return "\n".join(text.splitlines()[-lines:])

    def dicom_listening(self) -> bool:
        """Whether the DICOM port accepts TCP connections."""
        try:
            with socket.create_connection((self.host, self.dicom_port), timeout=1.0):
                return True
        except OSError:
            return False

    # --------------------------------------------------------------------- REST

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise OrthancError(f"{method} {path}: {exc.reason}") from None

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        """GET ``path`` (e.g. ``"/studies"``) and decode the JSON answer."""
        return json.loads(self._request("GET", path, timeout=timeout))

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer."""
        return json.loads(self._request("POST", path, json.dumps(body).encode("utf-8")))

    def upload(self, data: bytes) -> str:
        """Store one DICOM file through REST (as an archive already holds it); returns its Orthanc id."""
        return str(json.loads(self._request("POST", "/instances", data))["ID"])

    def studies(self) -> list[str]:
        """Orthanc identifiers of every stored study."""
        return list(self.get_json("/studies"))

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.get_json("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's main tags by keyword (``/instances/{id}/simplified-tags``)."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance, as bytes."""
        return self._request("GET", f"/instances/{instance_id}/file")

    def instance_dataset(self, instance_id: str) -> Dataset:
        """The stored DICOM file of an instance, read by pydicom."""
        return pydicom.dcmread(BytesIO(self.instance_file(instance_id)))

    def sop_instance_uids(self) -> set[str]:
        """SOPInstanceUID of every stored instance."""
        return {self.instance_tags(i)["SOPInstanceUID"] for i in self.instances()}

    def study_instance_uids(self) -> set[str]:
        """StudyInstanceUID of every stored study."""
        return {self.get_json(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in self.studies()}

    def instances_of_study(self, study_instance_uid: str) -> list[str]:
        """Orthanc identifiers of the instances of the study with this StudyInstanceUID."""
        found = self.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_instance_uid}})
        return list(found)

    # --------------------------------------------------------------------- DICOM

    def echo(self, calling_ae_title: str = "ECHOSCU", timeout: float = 10.0) -> bool:
        """C-ECHO Orthanc from a pynetdicom SCU; True if it answered Success."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=calling_ae_title)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        assoc = ae.associate(self.host, self.dicom_port, ae_title=self.ae_title)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        return bool(status) and status.Status == 0x0000
