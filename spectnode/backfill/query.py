"""Talking to a PACS: associations and C-FIND (Study Root query/retrieve model).

:class:`PacsClient` opens one association per operation, with the timeouts of
its ``pacs`` entry, and turns every way a PACS can fail into one of two
exceptions the batch loop acts on:

* :class:`PacsUnavailable`: the PACS cannot be reached, does not answer in
  time, aborts, or rejects the association transiently (busy). The whole run
  pauses and tries again (:class:`spectnode.backfill.polite.Backoff`);
* :class:`PacsRefused`: the PACS answered, with a failure status, or rejected
  the association permanently (a configuration problem on one side).

The finders are what the backfill needs to know without retrieving anything:
the NM studies (``ModalitiesInStudy`` NM, PS3.4 C.6.1), their series, the
image type of an NM series' instances (planar whole body or tomography), and
the algorithm identification of the SR instances already in a study (IHE AI
Results: ContributingEquipmentSequence Manufacturer, Manufacturer's Model
Name, Software Versions and Device UID).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from spectnode.net.rejection import RejectionWatch

if TYPE_CHECKING:
    from spectnode.config import PacsConfig

__all__ = [
    "NON_WHOLE_BODY_IMAGE_TYPES",
    "PacsClient",
    "PacsError",
    "PacsRefused",
    "PacsUnavailable",
    "SeriesHit",
    "StudyHit",
    "check_status",
    "dicom_date_range",
]

#: Pending statuses of C-FIND/C-GET/C-MOVE (PS3.4 C.4).
PENDING: Final = (0xFF00, 0xFF01)
#: NM ImageType value 3 (PS3.3 C.8.4.8) of series that are not planar whole-body scans.
NON_WHOLE_BODY_IMAGE_TYPES: Final = frozenset(
    {"TOMO", "GATED TOMO", "RECON TOMO", "RECON GATED TOMO", "DYNAMIC", "GATED"})


class PacsError(Exception):
    """Something went wrong talking to a PACS (the message names no patient data)."""


class PacsUnavailable(PacsError):
    """The PACS cannot be reached, did not answer in time, aborted, or is busy: try again later."""


class PacsRefused(PacsError):
    """The PACS answered with a failure (a status, or a permanent association rejection)."""


@dataclass(frozen=True)
class StudyHit:
    """A study a C-FIND found."""

    study_uid: str
    #: StudyDate (YYYYMMDD), "" if the PACS gave none; used to order the run only.
    study_date: str


@dataclass(frozen=True)
class SeriesHit:
    """A series of a study."""

    series_uid: str
    modality: str
    #: NumberOfSeriesRelatedInstances, if the PACS gave it.
    instances: int | None


def dicom_date_range(since: str | None, until: str | None) -> str:
    """A DICOM date range matching key (PS3.4 C.2.2.2.5) from YYYYMMDD bounds ("" = any)."""
    if not since and not until:
        return ""
    return f"{since or ''}-{until or ''}"


def check_status(status: Dataset | None, what: str) -> int:
    """The status value of a DIMSE response.

    Raises:
        PacsUnavailable: If there is none (the association timed out or was aborted).
        PacsRefused: If it is a failure or cancel status.
    """
    if status is None or "Status" not in status:
        raise PacsUnavailable(f"{what}: no response (timed out or aborted)")
    value = int(status.Status)
    if value in PENDING or value == 0x0000 or 0xB000 <= value <= 0xBFFF or value == 0x0107:
        return value
    comment = str(status.get("ErrorComment", "")).strip()
    raise PacsRefused(f"{what}: the PACS answered 0x{value:04X}{f' ({comment[:120]})' if comment else ''}")


class PacsClient:
    """The query/retrieve SCU of one ``pacs`` entry.

    Args:
        pacs: The entry.
        calling_ae_title: This node's AE title (``node.ae_title``), which the
            PACS knows it by.
    """

    def __init__(self, pacs: PacsConfig, calling_ae_title: str) -> None:
        self.pacs = pacs
        self.calling_ae_title = calling_ae_title

    def __str__(self) -> str:
        return f"{self.pacs.name} ({self.pacs.ae_title}@{self.pacs.host}:{self.pacs.port})"

    @contextmanager
    def associate(self, contexts: Sequence[tuple[str, Sequence[str] | None]], *, roles: Sequence[Any] = (),
                  handlers: Sequence[Any] = ()) -> Iterator[Any]:
        """An established association for ``contexts`` ((abstract syntax, transfer syntaxes or None)).

        Raises:
            PacsUnavailable: If it cannot be established (unreachable, timeout,
                abort, transient rejection).
            PacsRefused: If the PACS rejects it permanently.
        """
        ae = AE(ae_title=self.calling_ae_title)
        timeout = self.pacs.timeout_seconds
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        for abstract, syntaxes in contexts:
            if syntaxes is None:
                ae.add_requested_context(abstract)
            else:
                ae.add_requested_context(abstract, list(syntaxes))
        rejections = RejectionWatch()
        try:
            assoc = ae.associate(self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title,
                                 ext_neg=list(roles) or None, evt_handlers=[*handlers, rejections.handler])
        except (OSError, RuntimeError) as exc:  # name resolution, socket errors
            raise PacsUnavailable(f"cannot connect to {self}: {exc}") from None
        if not assoc.is_established:
            primitive = rejections.rejection(assoc)
            if primitive is not None:
                reason = getattr(primitive, "reason_str", "") or "no reason given"
                if getattr(primitive, "result", None) == 0x02:
                    raise PacsUnavailable(f"{self} rejected the association for now: {reason}")
                raise PacsRefused(f"{self} rejected the association from {self.calling_ae_title}: {reason} (does "
                                  "the PACS know this node's AE title?)")
            raise PacsUnavailable(f"{self} did not accept an association (unreachable, timed out or aborted)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, query: Dataset, what: str) -> list[Dataset]:
        """Every match of a Study Root C-FIND.

        Raises:
            PacsUnavailable, PacsRefused: See :meth:`associate` and :func:`check_status`.
        """
        model = StudyRootQueryRetrieveInformationModelFind
        matches: list[Dataset] = []
        with self.associate([(model, None)]) as assoc:
            for status, identifier in assoc.send_c_find(query, model):
                if check_status(status, what) in PENDING and identifier is not None:
                    matches.append(identifier)
            if assoc.is_aborted:
                raise PacsUnavailable(f"{what}: {self} aborted the association")
        return matches

    # ------------------------------------------------------------------ finders

    def find_studies(self, *, since: str | None = None, until: str | None = None, patient_id: str | None = None,
                     accession: str | None = None) -> list[StudyHit]:
        """NM studies (ModalitiesInStudy NM), oldest first; dates are YYYYMMDD."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = "NM"
        query.StudyDate = dicom_date_range(since, until)
        query.PatientID = patient_id or ""
        query.AccessionNumber = accession or ""
        hits = {}
        for match in self.find(query, "C-FIND of NM studies"):
            uid = str(match.get("StudyInstanceUID", "")).strip()
            # A PACS that ignores ModalitiesInStudy matching answers other studies too.
            modalities = match.get("ModalitiesInStudy")
            listed = [str(m).strip().upper() for m in (modalities if isinstance(modalities, Sequence)
                                                       and not isinstance(modalities, str) else [modalities or ""])]
            if uid and (not any(listed) or "NM" in listed):
                hits[uid] = StudyHit(uid, str(match.get("StudyDate", "") or ""))
        return sorted(hits.values(), key=lambda h: (h.study_date, h.study_uid))

    def find_series(self, study_uid: str) -> list[SeriesHit]:
        """The series of a study."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        query.NumberOfSeriesRelatedInstances = ""
        series = []
        for match in self.find(query, "C-FIND of a study's series"):
            uid = str(match.get("SeriesInstanceUID", "")).strip()
            count = match.get("NumberOfSeriesRelatedInstances")
            if uid:
                series.append(SeriesHit(uid, str(match.get("Modality", "")).strip().upper(),
                                        int(count) if count not in (None, "") else None))
        return series

    def find_instances(self, study_uid: str, series_uid: str, **keys: Any) -> list[Dataset]:
        """The instances of a series, with the return ``keys`` asked for."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        return self.find(query, "C-FIND of a series' instances")

    def is_whole_body_series(self, study_uid: str, series: SeriesHit) -> bool:
        """Whether an NM series may hold planar whole-body views (by its instances' ImageType).

        A series is left out only when every instance says it is tomographic,
        dynamic or gated (ImageType value 3); an instance without that value
        keeps the series in, and the pipeline decides by content.
        """
        if series.modality != "NM":
            return False
        instances = self.find_instances(study_uid, series.series_uid, ImageType="")
        if not instances:
            return True
        for ds in instances:
            image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
            if len(image_type) < 3 or image_type[2] not in NON_WHOLE_BODY_IMAGE_TYPES:
                return True
        return False

    def sr_algorithms(self, study_uid: str, series: SeriesHit) -> list[tuple[str, str, str, str]]:
        """(Manufacturer, Manufacturer's Model Name, Software Versions, Device UID) of every
        ContributingEquipmentSequence item of the SR instances of ``series``."""
        found = []
        instances = self.find_instances(study_uid, series.series_uid, ContributingEquipmentSequence=[])
        for ds in instances:
            for item in ds.get("ContributingEquipmentSequence") or []:
                found.append(tuple(str(item.get(k, "") or "").strip()
                                   for k in ("Manufacturer", "ManufacturerModelName", "SoftwareVersions",
                                             "DeviceUID")))
        return found  # type: ignore[return-value]
