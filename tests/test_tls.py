"""DICOM TLS and the address allow-list, with real peers on loopback.

DCMTK's storescu (+tls, BCP 195 profile) plays the camera against the node's
SCP, configured through the configuration file's keys; a real Orthanc with
DICOM TLS and a required client certificate is a ``dicom`` destination with
``tls: true``. Certificates come from the ``openssl`` command line: a CA, a
server certificate for the node and Orthanc, and a client certificate.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from spectnode.config import DestinationConfig, parse_config
from spectnode.dispatch import DispatchError, resolve_store_target, store_to_peer
from spectnode.net.server import policy_from_config
from spectnode.node.datadir import DataDir
from spectnode.node.stages.receive import ReceiveStage
from spectnode.store import JobStore
from test_hardening_lockout import tiny_object

from dicomtools import require_tool
from nodetools import wait_for
from orthanc import OrthancServer

if TYPE_CHECKING:
    from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA and two certificates it signed: ``server`` (node, Orthanc) and ``client``."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(d / f"{name}.pem"))
    return {"dir": d, **{p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}}


def scp_from_config(root: Path, node: dict) -> ReceiveStage:
    """A storage SCP with the limits, timeouts and TLS of a configuration's ``node`` section."""
    cfg = parse_config({"node": {"allowed_calling_ae_titles": ["CAMERA"], **node},
                        "storage": {"data_dir": str(root)}}, "test.yaml")
    scp = ReceiveStage(JobStore(root / "jobs.sqlite"), DataDir(root), ae_title="SPECTNODE", port=0,
                     allowed_calling_ae_titles=cfg.node.allowed_calling_ae_titles,
                     policy=policy_from_config(cfg.node), max_object_bytes=cfg.node.max_object_bytes)
    scp.start()
    return scp


def storescu(port: int, file: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("storescu"), "-aet", "CAMERA", "-aec", "SPECTNODE", "-ta", "5", "-to", "5", *tls,
           "127.0.0.1", str(port), str(file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def with_certificate(pki, name: str = "client") -> tuple[str, ...]:
    return ("+tls", str(pki[f"{name}_key"]), str(pki[f"{name}_pem"]), "+cf", str(pki["ca_pem"]))


def anonymous(pki) -> tuple[str, ...]:
    return ("+tla", "+cf", str(pki["ca_pem"]))


def server_tls(pki, mode: str, **extra) -> dict:
    return {"tls": {"mode": mode, "certificate": str(pki["server_pem"]), "private_key": str(pki["server_key"]),
                    **extra}}


def stored(scp: ReceiveStage, file: Path) -> bool:
    return scp.store.study(pydicom.dcmread(file).StudyInstanceUID) is not None


def test_required_tls_accepts_dcmtk_over_tls_and_refuses_plain(pki, tmp_path):
    scp = scp_from_config(tmp_path, server_tls(pki, "required"))
    try:
        plain = tiny_object(tmp_path / "plain.dcm")
        assert storescu(scp.port, plain).returncode != 0
        assert not stored(scp, plain)
        secure = tiny_object(tmp_path / "secure.dcm")
        proc = storescu(scp.port, secure, *anonymous(pki))
        assert proc.returncode == 0, proc.stderr
        assert stored(scp, secure)
    finally:
        scp.stop()
        scp.store.close()


def test_optional_tls_accepts_both_on_one_port(pki, tmp_path):
    scp = scp_from_config(tmp_path, server_tls(pki, "optional"))
    try:
        for name, tls in (("plain", ()), ("secure", anonymous(pki))):
            file = tiny_object(tmp_path / f"{name}.dcm")
            proc = storescu(scp.port, file, *tls)
            assert proc.returncode == 0, f"{name}: {proc.stderr}"
            assert stored(scp, file)
    finally:
        scp.stop()
        scp.store.close()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki, tmp_path):
    scp = scp_from_config(tmp_path, server_tls(pki, "required", ca_certificates=str(pki["ca_pem"]),
                                               require_client_certificate=True))
    try:
        without = tiny_object(tmp_path / "without.dcm")
        assert storescu(scp.port, without, *anonymous(pki)).returncode != 0
        assert not stored(scp, without)
        signed = tiny_object(tmp_path / "signed.dcm")
        proc = storescu(scp.port, signed, *with_certificate(pki))
        assert proc.returncode == 0, proc.stderr
        assert stored(scp, signed)
    finally:
        scp.stop()
        scp.store.close()


def test_a_silent_tls_client_does_not_block_other_connections(pki, tmp_path):
    """pynetdicom's own server runs the handshake in its accept loop: one silent client stops all."""
    import socket

    scp = scp_from_config(tmp_path, server_tls(pki, "required"))
    silent = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(3)]
    try:
        file = tiny_object(tmp_path / "through.dcm")
        proc = storescu(scp.port, file, *anonymous(pki))
        assert proc.returncode == 0, proc.stderr
    finally:
        for sock in silent:
            sock.close()
        scp.stop()
        scp.store.close()


def test_the_address_allow_list_refuses_unlisted_peers(tmp_path):
    scp = scp_from_config(tmp_path, {"allowed_addresses": ["127.0.0.2", "10.0.0.0/8"]})
    try:
        refused = tiny_object(tmp_path / "refused.dcm")
        assert storescu(scp.port, refused).returncode != 0  # storescu connects from 127.0.0.1
        assert not stored(scp, refused)
        ae = AE(ae_title="CAMERA")
        ae.add_requested_context(Verification)
        listed = ae.associate("127.0.0.1", scp.port, ae_title="SPECTNODE", bind_address=("127.0.0.2", 0))
        assert listed.is_established
        assert listed.send_c_echo().Status == 0
        listed.release()
    finally:
        scp.stop()
        scp.store.close()


def test_a_tls_destination_is_reached_over_tls_and_only_so(pki, tmp_path):
    d = pki["dir"]
    trusted = d / "trusted.pem"
    trusted.write_bytes(pki["client_pem"].read_bytes() + pki["ca_pem"].read_bytes())
    with OrthancServer(tmp_path / "orthanc", extra_config={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki["server_pem"]),
        "DicomTlsPrivateKey": str(pki["server_key"]), "DicomTlsTrustedCertificates": str(trusted),
        "DicomTlsRemoteCertificateRequired": True,
    }) as pacs:
        sr = tiny_object(tmp_path / "result.dcm")
        plain = DestinationConfig(name="pacs", type="dicom", ae_title=pacs.ae_title, host="127.0.0.1",
                                  port=pacs.dicom_port)
        with pytest.raises(DispatchError):
            store_to_peer([sr], resolve_store_target(plain, None), calling_ae_title="SPECTNODE", timeout=10)
        secure = DestinationConfig(name="pacs", type="dicom", ae_title=pacs.ae_title, host="127.0.0.1",
                                   port=pacs.dicom_port, tls=True, tls_ca_certificates=pki["ca_pem"],
                                   tls_certificate=pki["client_pem"], tls_private_key=pki["client_key"])
        store_to_peer([sr], resolve_store_target(secure, None), calling_ae_title="SPECTNODE", timeout=10)
        uid = pydicom.dcmread(sr).StudyInstanceUID
        wait_for(lambda: uid in pacs.study_instance_uids(), 10, "Orthanc to hold the object sent over TLS")
