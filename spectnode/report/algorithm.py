"""The algorithm a report is about: identity shared by every object it creates.

IHE AI Results (AIR) asks that an AI result names its algorithm consistently:
TID 4019 Algorithm Identification (name, version), the TID 1004 device
observer (UID), and a ContributingEquipmentSequence (0018,A001) item with
Purpose of Reference DCM 109102 "Processing Equipment", Manufacturer,
Manufacturer's Model Name, Software Versions and Device UID. Everything here
comes from one :class:`AlgorithmInfo`, so the places cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from spectnode.report import content

if TYPE_CHECKING:
    from spectnode.bundle.card import ModelCard

__all__ = ["DEFAULT_MANUFACTURER", "AlgorithmInfo"]

#: Manufacturer of every object spectnode creates, and of its algorithms.
DEFAULT_MANUFACTURER = "spectnode"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identity of the model that produced a result.

    Attributes:
        name: Model name: TID 4019 Algorithm Name, device observer name and
            model name, and Manufacturer's Model Name of the processing
            equipment.
        version: Model version: TID 4019 Algorithm Version and the processing
            equipment's Software Versions.
        device_uid: DICOM UID of the model (the card's ``device_uid``): device
            observer UID and the processing equipment's Device UID.
        research_use_statement: Text every report carries; it says research
            use only, not for clinical use, and (where true) that the model was
            trained on synthetic data.
        classes: Class names in the model's output order.
        scheme: Labelling scheme (``"dspic4"``, ``"lung3"``, ``"binary"``).
        manufacturer: Algorithm manufacturer.
        trained_on_synthetic_data: Whether the model saw only synthetic scans.
    """

    name: str
    version: str
    device_uid: str
    research_use_statement: str
    classes: tuple[str, ...]
    scheme: str
    manufacturer: str = DEFAULT_MANUFACTURER
    trained_on_synthetic_data: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        problems = []
        for field in ("name", "version", "manufacturer", "research_use_statement", "scheme"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{field} must be a non-empty string, got {value!r}")
        if not UID(str(self.device_uid)).is_valid:
            problems.append(
                f"device_uid must be a valid DICOM UID, got {self.device_uid!r} "
                "(a model card gets one when its bundle is saved)"
            )
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            problems.append(f"classes must be >= 2 distinct names, got {self.classes!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_card(cls, card: ModelCard, manufacturer: str = DEFAULT_MANUFACTURER) -> AlgorithmInfo:
        """The algorithm described by a saved bundle's model card.

        The research-use statement is the card's intended use, completed by
        :func:`spectnode.report.content.research_use_statement`.

        Raises:
            ValueError: if the card has no Device UID (it was never saved with
                :func:`spectnode.bundle.save_bundle`).
        """
        synthetic = bool(getattr(card.training_data, "synthetic", False))
        return cls(
            name=card.name,
            version=card.version,
            device_uid=card.device_uid,
            research_use_statement=content.research_use_statement(card.intended_use, synthetic),
            classes=tuple(card.classes),
            scheme=card.scheme,
            manufacturer=manufacturer,
            trained_on_synthetic_data=synthetic,
        )

    def algorithm_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification (name and version)."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)

    def device_observer_context(self) -> hd.sr.ObserverContext:
        """TID 1004 device observer: UID, name, manufacturer and model name."""
        return hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.device_uid,
                name=self.name,
                manufacturer_name=self.manufacturer,
                model_name=self.name,
            ),
        )

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """ContributingEquipmentSequence item of the algorithm (IHE AIR).

        highdicom's :class:`~highdicom.ContributingEquipment` has no Device UID
        argument, so DeviceUID (0018,1002) is set on the item afterwards.
        """
        item = hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name,
            software_versions=self.version,
            contribution_description=f"Classification by {self.name} {self.version}",
        )
        item.DeviceUID = self.device_uid
        return item

