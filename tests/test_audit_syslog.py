"""DICOM audit messages (PS3.15 A.5) to syslog (issue 15, point 7): real listeners, a real node.

The syslog servers are sockets this test opens on loopback (UDP, TCP, and TLS
with mutual authentication); every frame they get is parsed strictly against
RFC 5424 (and the octet counting of RFC 5425/6587), and its MSG as XML. The
node is a real ``spectnode serve``: DCMTK's storescu sends a phantom study,
echoscu with an unknown AE title is refused, results go to a DCMTK storescp,
a TLS handshake is botched; and an in-process node whose syslog server is
dead still receives.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import subprocess
import threading
import urllib.request
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.sr.codedict import codes

from spectnode.audit import NodeAudit
from spectnode.audit.messages import Participant, PatientObject, StudyObject, audit_message
from spectnode.audit.syslog import SyslogSender, Transport, frame, syslog_message
from spectnode.config import ConfigError, parse_config
from spectnode.node.datadir import DataDir
from spectnode.node.stages.receive import ReceiveStage
from spectnode.node.worker import Node
from spectnode.phantom.generate import generate_phantoms
from spectnode.store import DISPATCHED, JobStore
from test_hardening_lockout import tiny_object
from test_tls import pki  # noqa: F401  (the fixture: a CA, server and client certificates)

from dicomtools import require_tool
from nodetools import NodeProcess, echoscu, free_port, storescu, tiny_bundle, wait_for, write_config

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Generous deadline for anything the node does in the background (a loaded machine; not a bound).
DEADLINE_S = 120.0
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG], with the field lengths of its ABNF.
_SYSLOG = re.compile(
    rb"<(?P<pri>0|[1-9]\d{0,2})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})) "
    rb"(?P<hostname>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) (?P<procid>[\x21-\x7e]{1,128}) "
    rb"(?P<msgid>[\x21-\x7e]{1,32}) (?P<sd>-|\[.+?\]) (?P<msg>.*)\Z", re.DOTALL)


def parse_syslog(data: bytes) -> dict:
    """One SYSLOG-MSG as its fields, MSG parsed as XML (``root``); fails on anything RFC 5424 does not allow."""
    match = _SYSLOG.match(data)
    assert match, f"not an RFC 5424 message: {data[:200]!r}"
    fields = {k: v.decode("ascii") for k, v in match.groupdict().items() if k != "msg"}
    pri = int(fields["pri"])
    assert pri <= 191
    fields["facility"], fields["severity"] = divmod(pri, 8)
    datetime.fromisoformat(fields["timestamp"])
    msg = match.group("msg")
    assert not msg.startswith(b"\xef\xbb\xbf"), "no BOM (ITI CP-477)"
    fields["text"] = msg.decode("utf-8")
    fields["root"] = ET.fromstring(msg)
    return fields


class UdpSyslog:
    """A syslog server on UDP: every datagram it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except OSError:
                return
            self.messages.append(data)

    def close(self) -> None:
        self.sock.close()


def read_frames(conn: socket.socket, into: list[bytes]) -> None:
    """Octet-counted frames (``MSG-LEN SP SYSLOG-MSG``) until the peer closes; a malformed frame fails the test."""
    buffer = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return
        if not chunk:
            assert buffer == b"", f"connection closed inside a frame: {buffer[:80]!r}"
            return
        buffer += chunk
        while True:
            head = re.match(rb"([1-9]\d{0,9}) ", buffer)
            if head is None:
                assert len(buffer) < 11 and re.fullmatch(rb"[1-9]?\d*", buffer), f"bad frame: {buffer[:80]!r}"
                break
            length = int(head.group(1))
            if len(buffer) < head.end() + length:
                break
            into.append(buffer[head.end():head.end() + length])
            buffer = buffer[head.end() + length:]


class StreamSyslog:
    """A syslog server on TCP, or TLS with ``context``: every frame of every connection."""

    def __init__(self, context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.context = context
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.messages: list[bytes] = []
        self.connections = 0
        self._open: list[tuple[socket.socket, threading.Thread]] = []
        self.handshake_errors: list[str] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.context is not None:
                try:
                    conn = self.context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.handshake_errors.append(str(exc))
                    conn.close()
                    continue
            reader = threading.Thread(target=read_frames, args=(conn, self.messages), daemon=True)
            self._open.append((conn, reader))
            reader.start()

    def close(self) -> None:
        """Stop listening and reset every connection, as a crashed server would (the sender's next send fails)."""
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept (a plain close would leave it listening)
        self.server.close()
        for conn, reader in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader, which would otherwise hold the socket open
            reader.join(DEADLINE_S)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            conn.close()


def events(messages: list[bytes]) -> list[dict]:
    """Every message parsed, with its EventID, EventTypeCodes and outcome."""
    parsed = []
    for data in messages:
        fields = parse_syslog(data)
        root = fields["root"]
        event = root.find("EventIdentification")
        assert root.tag == "AuditMessage" and event is not None
        fields["event_id"] = event.find("EventID").get("csd-code")
        fields["types"] = [t.get("csd-code") for t in event.findall("EventTypeCode")]
        fields["outcome"] = event.get("EventOutcomeIndicator")
        fields["action"] = event.get("EventActionCode")
        parsed.append(fields)
    return parsed


def participants(root: ET.Element) -> dict[str, ET.Element]:
    """ActiveParticipants by RoleIDCode (one role each)."""
    found = {}
    for p in root.findall("ActiveParticipant"):
        roles = [r.get("csd-code") for r in p.findall("RoleIDCode")]
        found[roles[0] if roles else f"norole:{p.get('UserID')}"] = p
    return found


def assert_audit_header(fields: dict) -> None:
    """The syslog header ITI-20 asks for: facility 10, APP-NAME, MSGID; no structured data."""
    assert fields["version"] == "1"
    assert fields["facility"] == 10 and fields["severity"] in (4, 5)
    assert fields["app"] == "spectnode" and fields["msgid"] == "IHE+RFC-3881" and fields["sd"] == "-"
    assert fields["procid"].isdigit()
    root = fields["root"]
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "SPECTNODE"
    # The schema's order: the event, the participants, the source, the objects.
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification" and tags.count("AuditSourceIdentification") == 1
    first_object = tags.index("ParticipantObjectIdentification") if "ParticipantObjectIdentification" in tags \
        else len(tags)
    assert set(tags[1:tags.index("AuditSourceIdentification")]) == {"ActiveParticipant"}
    assert tags.index("AuditSourceIdentification") + 1 == first_object


# ----------------------------------------------------------------------- messages, frames


def test_hostile_values_are_escaped_and_the_xml_parses():
    hostile = 'A<B>&"\'\x00\x01\x1b]\ud800 ok'
    data = audit_message(
        event_id=codes.DCM.SecurityAlert, action="E", outcome=4,
        when=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), source_id=hostile, outcome_description=hostile,
        participants=[Participant(user_id=hostile, user_is_requestor=True, alternative_user_id=hostile,
                                  user_name=hostile, network_access_point=hostile)],
        studies=[StudyObject(hostile, {hostile: 2})], patient=PatientObject(hostile, hostile))
    root = ET.fromstring(data)
    cleaned = 'A<B>&"\'\ufffd\ufffd\ufffd]\ufffd ok'  # what XML 1.0 cannot hold is replaced, the rest kept
    assert root.find("EventIdentification/EventOutcomeDescription").text == cleaned
    participant = root.find("ActiveParticipant")
    assert {participant.get(k) for k in ("UserID", "AlternativeUserID", "UserName", "NetworkAccessPointID")} == \
        {cleaned}
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == cleaned
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == cleaned and patient.find("ParticipantObjectName").text == cleaned
    assert study.find("ParticipantObjectDescription/SOPClass").get("UID") == cleaned


def test_syslog_header_and_octet_counting_frame():
    message = syslog_message(b"<x/>", severity=5, hostname="host name\nwith junk", app_name="spectnode",
                             procid="42", when=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    assert message == b"<85>1 2024-01-02T03:04:05.678901Z host_name_with_junk spectnode 42 IHE+RFC-3881 - <x/>"
    assert frame(message) == str(len(message)).encode() + b" " + message
    payload = "Müller".encode()
    assert frame(payload) == b"7 " + payload  # octets, not characters


def test_config_audit_section_is_validated(tmp_path):
    def check(audit: dict) -> None:
        parse_config({"audit": audit, "storage": {"data_dir": str(tmp_path)}}, "t.yaml", check_dirs=False)

    check({})  # off by default
    assert parse_config({}, check_dirs=False).audit.enabled is False
    with pytest.raises(ConfigError, match="audit.host: is required"):
        check({"enabled": True})
    with pytest.raises(ConfigError, match="audit.port"):
        check({"enabled": True, "host": "h", "port": 70000})
    with pytest.raises(ConfigError, match="audit.tls_ca_certificates: applies only with audit.transport: tls"):
        check({"enabled": True, "host": "h", "tls_ca_certificates": str(tmp_path / "ca.pem")})
    with pytest.raises(ConfigError, match="audit.transport"):
        check({"enabled": True, "host": "h", "transport": "smoke"})
    cfg = parse_config({"audit": {"enabled": True, "host": "h", "transport": "tls"}}, check_dirs=False)
    assert cfg.audit.server_port == 6514
    assert parse_config({"audit": {"enabled": True, "host": "h"}}, check_dirs=False).audit.server_port == 514


def test_tcp_sender_frames_back_to_back_and_resends_after_the_server_comes_back():
    server = StreamSyslog()
    port = server.port
    sender = SyslogSender(Transport("tcp", "127.0.0.1", port))
    sender.start()

    def submit(i: int) -> None:
        assert sender.submit(lambda: syslog_message(f"<m n='{i}'/>".encode(), severity=5, hostname="h",
                                                    app_name="spectnode", procid="1"))

    def names(messages: list[bytes]) -> list[str]:
        return [ET.fromstring(parse_syslog(m)["text"]).get("n") for m in messages]

    try:
        for i in range(5):
            submit(i)
        wait_for(lambda: len(server.messages) == 5, DEADLINE_S, "five frames")
        assert names(server.messages) == list("01234")
        assert server.connections == 1  # one connection, frames back to back
        server.close()
        for i in range(5, 8):  # the server is gone: they wait, and the sender retries
            submit(i)
        wait_for(lambda: sender.down, DEADLINE_S, "the sender to find the server down")
        back = StreamSyslog(port=port)
        wait_for(lambda: len(back.messages) == 3, DEADLINE_S, "the waiting messages once the server is back")
        assert names(back.messages) == list("567") and back.connections == 1
        back.close()
    finally:
        sender.close(1)


def test_a_full_queue_drops_without_blocking_a_server_that_never_reads():
    """A server that accepts and never reads: the sender thread ends up stuck in a send; submit never is."""
    black_hole = socket.create_server(("127.0.0.1", 0))  # the kernel accepts into the backlog; nobody reads
    sender = SyslogSender(Transport("tcp", "127.0.0.1", black_hole.getsockname()[1]), capacity=10)
    sender.start()
    big = b"x" * 65536
    results: list[bool] = []
    submitting = threading.Thread(target=lambda: results.extend(sender.submit(lambda: big) for _ in range(2000)))
    submitting.start()
    submitting.join(DEADLINE_S)  # a hang detector, not a performance bound
    assert not submitting.is_alive(), "submit blocked"
    assert len(results) == 2000 and results.count(False) > 0 and sender.dropped >= results.count(False)
    closing = threading.Thread(target=sender.close, args=(1.0,))
    closing.start()
    closing.join(DEADLINE_S)
    assert not closing.is_alive(), "close blocked"
    black_hole.close()


# ----------------------------------------------------------------------- the receive stage, in-process


@pytest.mark.parametrize("patient_data", [False, True])
def test_received_study_names_the_patient_only_when_patient_data_is_allowed(tmp_path, patient_data):
    syslog = UdpSyslog()
    audit = NodeAudit(SyslogSender(Transport("udp", "127.0.0.1", syslog.port)), ae_title="SPECTNODE",
                      patient_data=patient_data)
    audit.application_started()
    scp = ReceiveStage(JobStore(tmp_path / "jobs.sqlite"), DataDir(tmp_path), ae_title="SPECTNODE", port=0,
                       log_patient_data=patient_data, audit=audit)
    scp.start()
    try:
        obj = tiny_object(tmp_path / "tiny.dcm")
        header = pydicom.dcmread(obj)
        header.PatientID = "PAT-4711"
        header.save_as(obj)
        proc = subprocess.run([require_tool("storescu"), "-aet", "CAMERA", "-aec", "SPECTNODE", "127.0.0.1",
                               str(scp.port), str(obj), str(obj)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: len(syslog.messages) >= 2, DEADLINE_S, "the transfer message")
    finally:
        scp.stop()
        audit.application_stopped()
        syslog.close()
    start, transfer = events(syslog.messages)[:2]
    assert start["event_id"] == "110100" and transfer["event_id"] == "110104"
    # The same object twice in one association: one message, new to the node (C), one instance.
    assert transfer["action"] == "C" and transfer["outcome"] == "0"
    study = transfer["root"].find("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='3']")
    assert study.get("ParticipantObjectID") == str(header.StudyInstanceUID)
    (sop_class,) = study.findall("ParticipantObjectDescription/SOPClass")
    assert sop_class.get("UID") == str(header.SOPClassUID) and sop_class.get("NumberOfInstances") == "1"
    patients = transfer["root"].findall("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']")
    if patient_data:
        (patient,) = patients
        assert patient.get("ParticipantObjectID") == "PAT-4711"
        assert patient.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"
        assert patient.find("ParticipantObjectName").text == "Lockout^Test"
    else:
        assert patients == []
        assert "PAT-4711" not in transfer["text"] and "Lockout" not in transfer["text"]


# ----------------------------------------------------------------------- a real node, UDP


@pytest.fixture(scope="module")
def udp_node(tmp_path_factory) -> Iterator[dict]:
    """``spectnode serve`` with audit over UDP: a phantom study in, its SR out to a storescp, an
    unknown AE title refused, then SIGTERM; yields what the syslog server got."""
    root = tmp_path_factory.mktemp("audit-udp")
    syslog = UdpSyslog()
    port, pacs_port = free_port(), free_port()
    (root / "pacs").mkdir()
    pacs = subprocess.Popen([require_tool("storescp"), "-aet", "PACS", "-od", str(root / "pacs"), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"]},
        "storage": {"data_dir": str(root / "data"), "min_free_bytes": 1024 * 1024},
        "destinations": [{"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": pacs_port, "outputs": ["sr"]}],
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        "completion": {"timeout_seconds": 30},
        "dispatch": {"retry_base_seconds": 0.2, "retry_max_seconds": 0.5},
        "logging": {"level": "INFO", "file": str(root / "node.log")},
        "audit": {"enabled": True, "host": "127.0.0.1", "port": syslog.port, "transport": "udp"},
    })
    node = NodeProcess(config, port, root / "stdout.log")
    try:
        node.start()
        (record,) = generate_phantoms(root / "phantoms", n=1, seed=73, layout="split-instances")
        assert not echoscu(port, aet="INTRUDER")
        assert storescu(port, record.files).returncode == 0
        store = JobStore(root / "data" / "spectnode.sqlite")
        wait_for(lambda: (s := store.study(record.study_uid)) and s.state == DISPATCHED, DEADLINE_S,
                 "the study to be dispatched")
        store.close()
        assert node.stop() == 0
        wait_for(lambda: events(syslog.messages) and events(syslog.messages)[-1]["types"] == ["110121"],
                 DEADLINE_S, "Application Stop")
        yield {"events": events(syslog.messages), "record": record, "pacs_port": pacs_port, "log": root / "node.log"}
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
        pacs.kill()
        pacs.wait()
        syslog.close()


def test_every_frame_is_rfc5424_with_the_atna_header(udp_node):
    log = udp_node["log"].read_text()
    assert "Traceback" not in log and "callback failed" not in log and "could not be" not in log, log[-3000:]
    assert len(udp_node["events"]) >= 5
    for fields in udp_node["events"]:
        assert_audit_header(fields)
        assert fields["severity"] == (5 if fields["outcome"] == "0" else 4)


def test_application_start_and_stop_frame_the_node_s_life(udp_node):
    first, last = udp_node["events"][0], udp_node["events"][-1]
    for fields, type_code in ((first, "110120"), (last, "110121")):
        assert fields["event_id"] == "110100" and fields["types"] == [type_code]
        assert fields["action"] == "E" and fields["outcome"] == "0"
        roles = participants(fields["root"])
        assert roles["110150"].get("UserID") == "SPECTNODE"
        assert roles["110150"].get("AlternativeUserID") == "AETITLES=SPECTNODE"
        assert roles["110151"].get("UserIsRequestor") == "true"  # who launched it


def test_an_unknown_calling_ae_title_is_a_security_alert(udp_node):
    (alert,) = [e for e in udp_node["events"] if e["event_id"] == "110113"]
    assert alert["types"] == ["110126"] and alert["outcome"] == "4" and alert["action"] == "E"
    peer = next(p for p in alert["root"].findall("ActiveParticipant") if p.get("UserID") == "INTRUDER")
    assert peer.get("UserIsRequestor") == "true" and peer.get("NetworkAccessPointID") == "127.0.0.1"
    assert peer.get("NetworkAccessPointTypeCode") == "2"
    description = alert["root"].find("EventIdentification/EventOutcomeDescription").text
    assert "INTRUDER" in description and "allowed_calling_ae_titles" in description


def test_the_study_received_is_one_instances_transferred_from_the_camera(udp_node):
    record = udp_node["record"]
    transfers = [e for e in udp_node["events"] if e["event_id"] == "110104"]
    received = [e for e in transfers if participants(e["root"])["110153"].get("UserID") == "CAMERA"]
    (message,) = received  # one per association and study
    assert message["action"] == "C" and message["outcome"] == "0"
    roles = participants(message["root"])
    assert roles["110153"].get("UserIsRequestor") == "true"
    assert roles["110153"].get("NetworkAccessPointID") == "127.0.0.1"
    assert roles["110152"].get("UserID") == "SPECTNODE" and roles["110152"].get("UserIsRequestor") == "false"
    study = message["root"].find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == record.study_uid
    assert study.get("ParticipantObjectTypeCode") == "2" and study.get("ParticipantObjectTypeCodeRole") == "3"
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in record.files]
    expected: dict[str, int] = {}
    for ds in headers:
        expected[str(ds.SOPClassUID)] = expected.get(str(ds.SOPClassUID), 0) + 1
    assert {c.get("UID"): int(c.get("NumberOfInstances"))
            for c in study.findall("ParticipantObjectDescription/SOPClass")} == expected


def test_the_result_sent_is_one_instances_transferred_to_the_pacs(udp_node):
    transfers = [e for e in udp_node["events"] if e["event_id"] == "110104"]
    (sent,) = [e for e in transfers if participants(e["root"])["110152"].get("UserID") == "PACS"]
    assert sent["action"] == "R" and sent["outcome"] == "0"
    roles = participants(sent["root"])
    assert roles["110153"].get("UserID") == "SPECTNODE" and roles["110153"].get("UserIsRequestor") == "true"
    assert roles["110152"].get("NetworkAccessPointID") == "127.0.0.1"
    study = sent["root"].find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == udp_node["record"].study_uid
    (sop_class,) = study.findall("ParticipantObjectDescription/SOPClass")
    assert sop_class.get("UID") == SR_STORAGE and sop_class.get("NumberOfInstances") == "1"


def test_no_message_names_the_patient_with_patient_data_off(udp_node):
    header = pydicom.dcmread(udp_node["record"].files[0], stop_before_pixels=True)
    name, patient_id = str(header.PatientName), str(header.PatientID)
    assert name and patient_id
    for fields in udp_node["events"]:
        assert fields["root"].find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']") is None
        assert patient_id not in fields["text"] and name not in fields["text"]
        assert name.replace("^", " ") not in fields["text"]


# ----------------------------------------------------------------------- a real node, TLS


def test_a_botched_tls_handshake_is_a_security_alert_over_mutually_authenticated_tls(tmp_path, tmp_path_factory,
                                                                                        pki):  # noqa: F811
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki["server_pem"]), str(pki["server_key"]))
    context.load_verify_locations(cafile=str(pki["ca_pem"]))
    context.verify_mode = ssl.CERT_REQUIRED  # the node must present its client certificate
    syslog = StreamSyslog(context)
    port = free_port()
    config = write_config(tmp_path / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"],
                 "tls": {"mode": "optional", "certificate": str(pki["server_pem"]),
                         "private_key": str(pki["server_key"])}},
        "storage": {"data_dir": str(tmp_path / "data"), "min_free_bytes": 1024 * 1024},
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        "logging": {"level": "INFO", "file": str(tmp_path / "node.log")},
        "audit": {"enabled": True, "host": "127.0.0.1", "port": syslog.port, "transport": "tls",
                  "tls_ca_certificates": str(pki["ca_pem"]), "tls_certificate": str(pki["client_pem"]),
                  "tls_private_key": str(pki["client_key"])},
    })
    node = NodeProcess(config, port, tmp_path / "stdout.log")
    try:
        node.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")  # a TLS record that is no ClientHello
            sock.recv(100)
        wait_for(lambda: any(e["event_id"] == "110113" for e in events(syslog.messages)), DEADLINE_S,
                 "the Security Alert")
        assert node.stop() == 0
        wait_for(lambda: events(syslog.messages)[-1]["types"] == ["110121"], DEADLINE_S, "Application Stop")
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
        syslog.close()
    assert syslog.handshake_errors == []
    parsed = events(syslog.messages)
    for fields in parsed:
        assert_audit_header(fields)
    assert [e["types"] for e in parsed] == [["110120"], ["110126"], ["110121"]]
    alert = parsed[1]
    assert alert["outcome"] == "4"
    performer = next(p for p in alert["root"].findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert performer.get("UserID") == "127.0.0.1" and performer.get("NetworkAccessPointTypeCode") == "2"
    assert "no TLS session" in alert["root"].find("EventIdentification/EventOutcomeDescription").text


# ----------------------------------------------------------------------- a dead syslog server


def test_a_dead_syslog_server_does_not_hold_up_reception(tmp_path):
    dead = free_port()  # nothing listens there: every connection is refused
    metrics_port = free_port()
    cfg = parse_config({
        "node": {"ae_title": "SPECTNODE", "allowed_calling_ae_titles": ["CAMERA"]},
        "storage": {"data_dir": str(tmp_path / "data"), "min_free_bytes": 0},
        "audit": {"enabled": True, "host": "127.0.0.1", "port": dead, "transport": "tcp"},
        "metrics": {"enabled": True, "port": metrics_port},
    })

    def no_model(_bundle: object) -> object:
        raise RuntimeError("no model in this test: only reception is looked at")

    node = Node(cfg, port=0, classifier_loader=no_model)
    node.start()
    stopped = False
    try:
        (record,) = generate_phantoms(tmp_path / "phantoms", n=1, seed=74, layout="split-instances")
        for _ in range(3):  # associations whose transfer messages cannot go anywhere
            proc = storescu(node.port, record.files)
            assert proc.returncode == 0, proc.stderr
        assert not echoscu(node.port, aet="INTRUDER")
        assert node.store is not None
        assert node.store.study(record.study_uid) is not None
        assert node.audit is not None
        wait_for(lambda: node.audit.sender.pending() >= 1 and node.audit.sender.down, DEADLINE_S,
                 "audit messages to wait for the unreachable server")
        # an operator sees it on /metrics: messages waiting, none sent
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            scraped = answer.read().decode()
        samples = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line.startswith("spectnode_audit"))
        assert float(samples["spectnode_audit_messages_pending"]) >= 1
        assert float(samples["spectnode_audit_server_down"]) == 1
        assert float(samples['spectnode_audit_messages_total{outcome="sent"}']) == 0
        assert 'spectnode_audit_messages_total{outcome="dropped"}' in samples
        stopping = threading.Thread(target=node.stop)
        stopping.start()
        stopping.join(DEADLINE_S)  # a hang detector: a dead server must not hold the shutdown either
        assert not stopping.is_alive(), "node.stop() hung on the dead syslog server"
        stopped = True
        assert node.audit.sender.sent == 0 and node.audit.sender.dropped >= 5  # start, 3 transfers, alert, stop
    finally:
        if not stopped:
            node.stop()
