"""DICOM audit messages (PS3.15 Annex A.5) as XML.

:func:`audit_message` writes one ``AuditMessage`` of the DICOM audit message
schema (A.5.1) in the schema's element order; :func:`application_activity`,
:func:`security_alert` and :func:`instances_transferred` fill it in as the
event tables of A.5.3 ask for the three events the node reports:

* **Application Activity** (110100), EventTypeCode Application Start (110120)
  or Application Stop (110121): the application (RoleIDCode 110150) and who
  launched it (110151);
* **Security Alert** (110113), EventTypeCode Node Authentication (110126) for
  a peer refused by its address, AE title or TLS handshake, and Use of
  Restricted Function (110132) for one cut off by the connection limits or
  deadlines; outcome "minor failure" (4), with the reason in
  EventOutcomeDescription;
* **DICOM Instances Transferred** (110104): the process that sent the data
  (RoleIDCode 110153 Source Role ID) and the one that received it (110152
  Destination Role ID), one Study participant object (110180) with its SOP
  classes and instance counts, and the Patient (RFC 3881 "Patient Number")
  only when the caller passes one.

Coded values come from pydicom's copy of the DICOM code dictionary
(``codes.DCM``). Every value is written through ElementTree, which escapes
``<``, ``&`` and quotes, after :func:`xml_text` has replaced the characters
XML 1.0 cannot hold at all (control characters, lone surrogates), so an AE
title or a patient name can never break the document.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

__all__ = [
    "MAJOR_FAILURE",
    "MINOR_FAILURE",
    "SERIOUS_FAILURE",
    "SUCCESS",
    "EventAction",
    "Participant",
    "PatientObject",
    "StudyObject",
    "application_activity",
    "audit_message",
    "instances_transferred",
    "network_access_point_type",
    "security_alert",
    "xml_text",
]

#: EventOutcomeIndicator values (PS3.15 A.5.1).
SUCCESS: Final = 0
MINOR_FAILURE: Final = 4
SERIOUS_FAILURE: Final = 8
MAJOR_FAILURE: Final = 12

EventAction = Literal["C", "R", "U", "D", "E"]

#: RFC 3881 Participant Object ID Type Code 2, "Patient Number" (PS3.15 A.5.1.2.4).
_PATIENT_NUMBER: Final = Code("2", "RFC-3881", "Patient Number")
#: AuditSourceTypeCode 4: application server process (PS3.15 A.5.1.2.1).
_APPLICATION_SERVER: Final = "4"

# Characters XML 1.0 cannot carry, escaped or not (its Char production).
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """``str(value)`` with every character XML 1.0 cannot hold replaced by U+FFFD."""
    return _NOT_XML_CHAR.sub("\ufffd", str(value))


def network_access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode of ``address``: ``2`` for an IP address, ``1`` for a machine name."""
    try:
        ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "1"
    return "2"


@dataclass(frozen=True)
class Participant:
    """One ActiveParticipant.

    Attributes:
        user_id: UserID (PS3.15 A.5.2.1): an AE title, a process or a node.
        user_is_requestor: Whether it initiated the event.
        roles: RoleIDCode values.
        alternative_user_id: AlternativeUserID; for a DICOM application its
            AE titles, ``AETITLES=A;B`` (A.5.2.2).
        user_name: UserName: for a process, the process name (A.5.2.3).
        network_access_point: NetworkAccessPointID: an IP address or host name.
    """

    user_id: str
    user_is_requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str | None = None
    user_name: str | None = None
    network_access_point: str | None = None


@dataclass(frozen=True)
class StudyObject:
    """The Study participant object: its UID and how many instances of each SOP class."""

    study_uid: str
    #: SOP Class UID -> number of instances.
    sop_classes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PatientObject:
    """The Patient participant object (patient data: only where the configuration allows it)."""

    patient_id: str
    name: str | None = None


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": xml_text(code.value), "codeSystemName": xml_text(
        code.scheme_designator), "originalText": xml_text(code.meaning)})


def _timestamp(when: datetime) -> str:
    """EventDateTime: xsd:dateTime with its time zone (A.5.2.5)."""
    if when.tzinfo is None:
        raise ValueError("EventDateTime needs a time zone")
    return when.isoformat(timespec="milliseconds")


def audit_message(
    *,
    event_id: Code,
    action: EventAction,
    outcome: int,
    when: datetime,
    participants: Sequence[Participant],
    source_id: str,
    event_types: Sequence[Code] = (),
    outcome_description: str | None = None,
    studies: Sequence[StudyObject] = (),
    patient: PatientObject | None = None,
) -> bytes:
    """One DICOM ``AuditMessage`` (PS3.15 A.5.1), UTF-8 encoded with its XML declaration.

    Args:
        event_id: EventID.
        action: EventActionCode.
        outcome: EventOutcomeIndicator (:data:`SUCCESS` ... :data:`MAJOR_FAILURE`).
        when: EventDateTime, with a time zone.
        participants: The ActiveParticipants (at least one).
        source_id: AuditSourceID: who reports the event.
        event_types: EventTypeCode values.
        outcome_description: EventOutcomeDescription (why it failed).
        studies: Study participant objects.
        patient: The Patient participant object, if any.

    Raises:
        ValueError: Without participants, with an unknown outcome, or a ``when`` without time zone.
    """
    if not participants:
        raise ValueError("an audit message has at least one active participant")
    if outcome not in (SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE):
        raise ValueError(f"EventOutcomeIndicator {outcome} is not 0, 4, 8 or 12")
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": _timestamp(when), "EventOutcomeIndicator": str(outcome)})
    _coded(event, "EventID", event_id)
    for code in event_types:
        _coded(event, "EventTypeCode", code)
    if outcome_description:
        ET.SubElement(event, "EventOutcomeDescription").text = xml_text(outcome_description)
    for who in participants:
        attributes = {"UserID": xml_text(who.user_id), "UserIsRequestor": "true" if who.user_is_requestor else "false"}
        if who.alternative_user_id:
            attributes["AlternativeUserID"] = xml_text(who.alternative_user_id)
        if who.user_name:
            attributes["UserName"] = xml_text(who.user_name)
        if who.network_access_point:
            attributes["NetworkAccessPointID"] = xml_text(who.network_access_point)
            attributes["NetworkAccessPointTypeCode"] = network_access_point_type(who.network_access_point)
        participant = ET.SubElement(root, "ActiveParticipant", attributes)
        for role in who.roles:
            _coded(participant, "RoleIDCode", role)
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": xml_text(source_id)})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})
    for study in studies:
        item = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": xml_text(study.study_uid), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _coded(item, "ParticipantObjectIDTypeCode", codes.DCM.StudyInstanceUID)
        if study.sop_classes:
            description = ET.SubElement(item, "ParticipantObjectDescription")
            for uid, count in sorted(study.sop_classes.items()):
                ET.SubElement(description, "SOPClass", {"UID": xml_text(uid), "NumberOfInstances": str(int(count))})
    if patient is not None:
        item = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": xml_text(patient.patient_id), "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _coded(item, "ParticipantObjectIDTypeCode", _PATIENT_NUMBER)
        if patient.name:
            ET.SubElement(item, "ParticipantObjectName").text = xml_text(patient.name)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def application_activity(*, started: bool, when: datetime, application: Participant, launcher: Participant | None,
                         source_id: str) -> bytes:
    """Application Activity (A.5.3.1): the application started or stopped.

    ``application`` gets RoleIDCode Application and ``launcher`` (the user
    that started it) Application Launcher.
    """
    participants = [dataclasses.replace(application, roles=(codes.DCM.Application,))]
    if launcher is not None:
        participants.append(dataclasses.replace(launcher, roles=(codes.DCM.ApplicationLauncher,)))
    return audit_message(event_id=codes.DCM.ApplicationActivity, action="E", outcome=SUCCESS, when=when,
                         event_types=(codes.DCM.ApplicationStart if started else codes.DCM.ApplicationStop,),
                         participants=participants, source_id=source_id)


def security_alert(*, event_type: Code, when: datetime, reporter: Participant, performer: Participant,
                   description: str, source_id: str, outcome: int = MINOR_FAILURE) -> bytes:
    """Security Alert (A.5.3.11): ``reporter`` (this node) detected what ``performer`` (a peer) did."""
    return audit_message(event_id=codes.DCM.SecurityAlert, action="E", outcome=outcome, when=when,
                         event_types=(event_type,), outcome_description=description,
                         participants=(reporter, performer), source_id=source_id)


def instances_transferred(*, action: EventAction, outcome: int, when: datetime, source: Participant,
                          destination: Participant, study: StudyObject, source_id: str,
                          patient: PatientObject | None = None, outcome_description: str | None = None) -> bytes:
    """DICOM Instances Transferred (A.5.3.7): ``source`` sent ``study``'s instances to ``destination``.

    ``action`` is C when the receiver did not hold the instances, U when it
    replaced copies it held, R when it already held them or the reporter is
    not the receiver.
    """
    return audit_message(
        event_id=codes.DCM.DICOMInstancesTransferred, action=action, outcome=outcome, when=when,
        outcome_description=outcome_description,
        participants=(dataclasses.replace(source, roles=(codes.DCM.SourceRoleID,)),
                      dataclasses.replace(destination, roles=(codes.DCM.DestinationRoleID,))),
        source_id=source_id, studies=(study,), patient=patient)
