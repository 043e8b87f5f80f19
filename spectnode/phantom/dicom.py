"""Write synthetic whole-body bone scans as DICOM NM Image objects.

A :class:`~spectnode.phantom.synth.PhantomScan` (an anterior and a posterior
view) is written in one of several *layouts* that mirror how real gamma cameras
and PACS exports deliver planar whole-body studies:

``multiframe``
    One NM Image object with two frames (the standard form, PS3.3 C.8.4.8):
    ImageType ``ORIGINAL\\PRIMARY\\WHOLE BODY\\EMISSION``, FrameIncrementPointer
    naming EnergyWindowVector and DetectorVector, NumberOfDetectors 2, and a
    ViewCodeSequence (CID 26) in each DetectorInformationSequence item. Some
    studies store the frames in detector order 2, 1, or put the posterior view
    on detector 1, as real cameras do: readers must map frames through
    DetectorVector.
``split-instances``
    Two single-frame instances in one series (older GE Millennium/Genie
    exports). NumberOfDetectors 1 and no ViewCodeSequence: the view is named
    only in ImageID ("ANT", "ANTERIOR", "POST", "POSTERIOR"), and in some
    studies in GE private tags (creator ``GEMS_GENIE_1``, group 0009).
``split-series``
    Two series in one study, one single-frame instance each, with the view in
    SeriesDescription and in DetectorInformationSequence/ViewCodeSequence.
``matrix512``
    Like ``multiframe`` at 2048 rows x 512 columns.
``rle``, ``jpegls``, ``jpeg-lossless``, ``jpeg2000``
    Like ``multiframe``, with the pixel data compressed losslessly (RLE
    Lossless, JPEG-LS Lossless, JPEG Lossless SV1, JPEG 2000 Lossless).
``implicit-vr``
    Like ``multiframe``, in Implicit VR Little Endian.

Every other layout uses Explicit VR Little Endian. Every object is marked as
synthetic (InstitutionName, StudyDescription and ImageComments) and is checked
against the NM Image IOD by ``dciodvfy`` in the tests.

All UIDs are derived from a caller-supplied ``uid_seed`` string with
:func:`pydicom.uid.generate_uid` entropy sources, and every other varying
attribute (dates, accession number, spellings, frame order) is drawn from the
caller's :class:`numpy.random.Generator`, so the same inputs give byte-identical
files.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from spectnode import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence as SequenceOf

    from spectnode.phantom.synth import PhantomScan

__all__ = [
    "LAYOUTS",
    "NM_IMAGE_STORAGE",
    "VIEW_CODES",
    "WrittenStudy",
    "birth_date_for_age",
    "build_study_datasets",
    "derive_uid",
    "encode_jpeg_lossless_sv1",
    "matrix_for_layout",
    "study_instance_uid",
    "transfer_syntax_for_layout",
    "write_study",
]

#: SOP Class UID of the NM Image Storage SOP class.
NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")

#: Every layout :func:`write_study` can write, in a stable order.
LAYOUTS: tuple[str, ...] = (
    "multiframe",
    "split-instances",
    "split-series",
    "matrix512",
    "rle",
    "jpegls",
    "jpeg-lossless",
    "jpeg2000",
    "implicit-vr",
)

#: Layouts that hold both views in one two-frame object.
MULTIFRAME_LAYOUTS: frozenset[str] = frozenset(
    {"multiframe", "matrix512", "rle", "jpegls", "jpeg-lossless", "jpeg2000", "implicit-vr"}
)

_DEFAULT_MATRIX = (1024, 256)
_LARGE_MATRIX = (2048, 512)

_TRANSFER_SYNTAX_BY_LAYOUT: dict[str, UID] = {
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg2000": JPEG2000Lossless,
    "implicit-vr": ImplicitVRLittleEndian,
}

# (code value, coding scheme designator, code meaning)
_CodeTriple = tuple[str, str, str]

#: View codes of CID 26 (Nuclear Medicine Projection), keyed by view name.
VIEW_CODES: dict[str, _CodeTriple] = {
    "anterior": ("399321004", "SCT", "Anterior projection"),
    "posterior": ("399001007", "SCT", "Posterior projection"),
}
_TC99M_CODE: _CodeTriple = ("72454006", "SCT", "^99m^Technetium")  # CID 18
_MEDRONATE_CODE: _CodeTriple = ("96390006", "SCT", "Technetium Tc^99m^ medronate")  # CID 25
_INTRAVENOUS_CODE: _CodeTriple = ("47625008", "SCT", "Intravenous route")  # CID 11
_RECUMBENT_CODE: _CodeTriple = ("102538003", "SCT", "recumbent")  # CID 19
_SUPINE_CODE: _CodeTriple = ("40199007", "SCT", "supine")  # CID 20
_HEADFIRST_CODE: _CodeTriple = ("102540008", "SCT", "headfirst")  # CID 21

_TC99M_PHOTOPEAK_KEV = 140.0

_IS_MAX = 2**31 - 1

_SYNTHETIC_NOTICE = "Synthetic phantom - not a patient"
_INSTITUTION = "spectnode synthetic phantom"
_MANUFACTURER = "spectnode phantom"
_MODEL = "synthetic whole-body bone scan"

# Spellings seen in real single-view exports (GE Millennium/Genie and others).
_IMAGE_ID_SPELLINGS = {"anterior": ("ANT", "ANTERIOR"), "posterior": ("POST", "POSTERIOR")}
_SHARED_SERIES_DESCRIPTIONS = ("WB ANT+POST", "WB ANT/POST", "WHOLE BODY ANT POST")
_SERIES_DESCRIPTIONS_BY_VIEW = {
    "anterior": ("WB ANTERIOR", "WB ANT"),
    "posterior": ("WB POSTERIOR", "WB POST"),
}
_MULTIFRAME_SERIES_DESCRIPTIONS = ("WB BONE", "WHOLE BODY", "WB ANT/POST")
# Early (blood-pool) images say so; "GK früh" is the Siemens Symbia German form
# (Ganzkörper früh), which needs a Latin-1 character set.
_EARLY_SERIES_DESCRIPTIONS = ("WB BLOOD POOL", "GK früh", "WB EARLY BLOOD POOL")
_EARLY_SERIES_DESCRIPTIONS_BY_VIEW = {
    "anterior": ("WB BLOOD POOL ANT", "GK früh ANT"),
    "posterior": ("WB BLOOD POOL POST", "GK früh POST"),
}

# Row and column direction cosines (patient LPS) of each view, head at row 0:
# the anterior view is seen facing the patient (patient's right on image left),
# the posterior view from behind (patient's left on image left).
_IMAGE_ORIENTATION = {
    "anterior": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "posterior": (-1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
}
_PATIENT_ORIENTATION = {"anterior": ("L", "F"), "posterior": ("R", "F")}


@dataclass(frozen=True)
class WrittenStudy:
    """Where :func:`write_study` put one study, and which view is where.

    Attributes:
        study_uid: StudyInstanceUID shared by every file of the study.
        files: The files written, in write order.
        view_locations: For ``"anterior"`` and ``"posterior"``, the file that
            holds the view and the 0-based frame index inside it.
    """

    study_uid: str
    files: tuple[Path, ...]
    view_locations: dict[str, tuple[Path, int]]


def matrix_for_layout(layout: str) -> tuple[int, int]:
    """Return the (rows, columns) a scan must have to be written in ``layout``.

    Raises:
        ValueError: If ``layout`` is not one of :data:`LAYOUTS`.
    """
    _check_layout(layout)
    return _LARGE_MATRIX if layout == "matrix512" else _DEFAULT_MATRIX


def transfer_syntax_for_layout(layout: str) -> UID:
    """Return the transfer syntax UID that ``layout`` is written in."""
    _check_layout(layout)
    return _TRANSFER_SYNTAX_BY_LAYOUT.get(layout, ExplicitVRLittleEndian)


def derive_uid(uid_seed: str, *parts: str | int) -> UID:
    """Derive a reproducible UID from ``uid_seed`` and a path of ``parts``.

    The UID is pydicom's prefix plus a hash of the entropy sources, so the same
    seed and parts always give the same UID and different ones practically never
    collide.
    """
    return generate_uid(entropy_srcs=["spectnode-phantom", uid_seed, *map(str, parts)])


def study_instance_uid(uid_seed: str) -> UID:
    """Return the StudyInstanceUID that :func:`write_study` uses for ``uid_seed``."""
    return derive_uid(uid_seed, "study")


def build_study_datasets(
    scan: PhantomScan,
    layout: str,
    uid_seed: str,
    rng: np.random.Generator,
) -> list[tuple[Dataset, tuple[tuple[str, int], ...]]]:
    """Build the DICOM datasets of one study without writing them.

    Args:
        scan: The synthetic scan (both views, patient, pixel spacing, phase).
        layout: One of :data:`LAYOUTS`.
        uid_seed: String from which every UID of the study is derived.
        rng: Source of every other varying attribute (dates unless the scan
            has them, identifiers, spellings, detector and frame order).

    Returns:
        One ``(dataset, views)`` pair per object, where ``views`` lists
        ``(view, frame_index)`` for the frames of that object. Each dataset has
        its ``file_meta`` set, with pixel data encoded in the layout's transfer
        syntax.

    Raises:
        ValueError: If ``layout`` is unknown, or the scan's matrix does not fit
            the layout.
    """
    _check_layout(layout)
    expected = matrix_for_layout(layout)
    for view, image in (("anterior", scan.anterior), ("posterior", scan.posterior)):
        if image.shape != expected or image.dtype != np.uint16:
            raise ValueError(
                f"layout {layout!r} needs uint16 views of shape {expected}; "
                f"the {view} view is {image.dtype} {image.shape}"
            )

    context = _StudyContext.draw(scan, uid_seed, rng)
    early = scan.phase == "early"
    images = {"anterior": scan.anterior, "posterior": scan.posterior}
    built: list[tuple[Dataset, tuple[tuple[str, int], ...]]] = []

    if layout in MULTIFRAME_LAYOUTS:
        # Mostly detector 1 = anterior with frames in detector order, but real
        # cameras also deliver detector order [2, 1] and heads swapped.
        detector_views = (
            ("posterior", "anterior") if rng.random() < 0.2 else ("anterior", "posterior")
        )
        detector_vector = (2, 1) if rng.random() < 0.3 else (1, 2)
        frame_views = tuple(detector_views[d - 1] for d in detector_vector)
        ds = _base_dataset(context, series_number=1, instance_number=1, series_key=1)
        ds.SeriesDescription = str(rng.choice(_EARLY_SERIES_DESCRIPTIONS if early else _MULTIFRAME_SERIES_DESCRIPTIONS))
        ds.ImageID = "WB"
        ds.PatientOrientation = ""  # two views with different orientations in one object
        _set_nm_frames(ds, detector_vector=detector_vector)
        ds.DetectorInformationSequence = Sequence(
            [_detector_item(view, with_view_code=True) for view in detector_views]
        )
        _set_pixels(
            ds,
            [images[v] for v in frame_views],
            scan.pixel_spacing_mm,
            transfer_syntax_for_layout(layout),
        )
        built.append((ds, tuple((v, i) for i, v in enumerate(frame_views))))

    elif layout == "split-instances":
        order = ("posterior", "anterior") if rng.random() < 0.3 else ("anterior", "posterior")
        series_description = str(rng.choice(_EARLY_SERIES_DESCRIPTIONS if early else _SHARED_SERIES_DESCRIPTIONS))
        with_private_tags = bool(rng.random() < 0.5)
        for instance_number, view in enumerate(order, start=1):
            ds = _base_dataset(
                context, series_number=1, instance_number=instance_number, series_key=1
            )
            ds.SeriesDescription = series_description
            image_id = str(rng.choice(_IMAGE_ID_SPELLINGS[view]))
            ds.ImageID = image_id
            ds.PatientOrientation = list(_PATIENT_ORIENTATION[view])
            _set_nm_frames(ds, detector_vector=(1,))
            # The NM Detector module requires one item per detector; this one
            # deliberately carries no ViewCodeSequence, as in old GE exports.
            ds.DetectorInformationSequence = Sequence([_detector_item(view, with_view_code=False)])
            if with_private_tags:
                block = ds.private_block(0x0009, "GEMS_GENIE_1", create=True)
                block.add_new(0x10, "LO", "WB BONE")  # Study Name
                block.add_new(0x20, "LO", series_description)  # Series Object Name
                block.add_new(0x22, "SH", image_id)  # User Orientation: the view
                dataset_block = ds.private_block(0x0011, "GEMS_GENIE_1", create=True)
                dataset_block.add_new(0x12, "LO", image_id)  # Dataset Name
            _set_pixels(ds, [images[view]], scan.pixel_spacing_mm, ExplicitVRLittleEndian)
            built.append((ds, ((view, 0),)))

    else:  # split-series
        order = ("posterior", "anterior") if rng.random() < 0.3 else ("anterior", "posterior")
        for series_number, view in enumerate(order, start=1):
            ds = _base_dataset(
                context, series_number=series_number, instance_number=1, series_key=series_number
            )
            by_view = _EARLY_SERIES_DESCRIPTIONS_BY_VIEW if early else _SERIES_DESCRIPTIONS_BY_VIEW
            ds.SeriesDescription = str(rng.choice(by_view[view]))
            ds.ImageID = str(rng.choice(_IMAGE_ID_SPELLINGS[view]))
            ds.PatientOrientation = list(_PATIENT_ORIENTATION[view])
            _set_nm_frames(ds, detector_vector=(1,))
            ds.DetectorInformationSequence = Sequence([_detector_item(view, with_view_code=True)])
            _set_pixels(ds, [images[view]], scan.pixel_spacing_mm, ExplicitVRLittleEndian)
            built.append((ds, ((view, 0),)))

    for ds, _ in built:
        if not str(ds.SeriesDescription).isascii():
            ds.SpecificCharacterSet = "ISO_IR 100"
    return built


def write_study(
    scan: PhantomScan,
    out_dir: Path,
    layout: str,
    uid_seed: str,
    rng: np.random.Generator,
) -> WrittenStudy:
    """Write one synthetic scan as a DICOM NM whole-body study.

    Files are named ``IM0001.dcm``, ``IM0002.dcm``, ... in ``out_dir`` (created
    if needed); the names say nothing about the view, as in real exports.

    Args:
        scan: The synthetic scan to write. Its matrix must be
            :func:`matrix_for_layout` of ``layout``.
        out_dir: Folder for the study's files.
        layout: One of :data:`LAYOUTS`.
        uid_seed: String from which every UID is derived (e.g.
            ``"seed=7/study=12"``); :func:`study_instance_uid` gives the study's
            UID for it.
        rng: Source of the other varying attributes.

    Returns:
        The study UID, the files written and where each view is.

    Raises:
        ValueError: If ``layout`` is unknown or the scan does not fit it.
    """
    out_dir = Path(out_dir)
    built = build_study_datasets(scan, layout, uid_seed, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    view_locations: dict[str, tuple[Path, int]] = {}
    for number, (ds, views) in enumerate(built, start=1):
        path = out_dir / f"IM{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        for view, frame in views:
            view_locations[view] = (path, frame)
    return WrittenStudy(
        study_uid=str(built[0][0].StudyInstanceUID),
        files=tuple(files),
        view_locations=view_locations,
    )


# --------------------------------------------------------------------------
# Dataset construction
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _StudyContext:
    """Attributes shared by every object of one study."""

    scan: PhantomScan
    uid_seed: str
    study_datetime: dt.datetime
    injection_datetime: dt.datetime
    birth_date: dt.date
    accession_number: str
    study_id: str
    injected_mbq: float
    scan_velocity_mm_s: float
    energy_window_percent: float

    @classmethod
    def draw(cls, scan: PhantomScan, uid_seed: str, rng: np.random.Generator) -> _StudyContext:
        # a patient's studies carry their own dates (one birth date, later follow-ups)
        study_datetime, birth_date = scan.study_datetime, scan.patient.birth_date
        day = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 4 * 365)))
        seconds = int(rng.integers(8 * 3600, 17 * 3600))
        if study_datetime is None:
            study_datetime = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds)
        # Bone scans are taken 2-4 h after the tracer injection, blood-pool images minutes after.
        minutes = int(rng.integers(120, 240))
        if scan.phase == "early":
            minutes = 2 + minutes % 9
        injection = study_datetime - dt.timedelta(minutes=minutes)
        days_before = int(rng.integers(0, 365))
        if birth_date is None:
            birth_date = birth_date_for_age(study_datetime.date(), scan.patient.age, days_before)
        return cls(
            scan=scan,
            uid_seed=uid_seed,
            study_datetime=study_datetime,
            injection_datetime=injection,
            birth_date=birth_date,
            accession_number=f"PH{int(rng.integers(0, 10**8)):08d}",
            study_id=f"WB{int(rng.integers(0, 10**6)):06d}",
            injected_mbq=float(np.round(rng.uniform(550.0, 800.0), 1)),
            scan_velocity_mm_s=float(rng.choice([1.67, 2.0, 2.33, 2.5])),  # 10-15 cm/min
            energy_window_percent=float(rng.choice([15.0, 20.0])),
        )


def birth_date_for_age(study_day: dt.date, age: int, days_before: int) -> dt.date:
    """A birth date at which the patient is exactly ``age`` on ``study_day``.

    ``days_before`` (0-364) moves the birthday that far back within the year before.
    """
    try:
        birthday = study_day.replace(year=study_day.year - age)
    except ValueError:  # 29 February in a non-leap year
        birthday = study_day.replace(year=study_day.year - age, day=28)
    return birthday - dt.timedelta(days=days_before % 365)


def _code_item(code: _CodeTriple) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _da(value: dt.date) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: dt.datetime) -> str:
    return value.strftime("%H%M%S")


def _base_dataset(
    context: _StudyContext, *, series_number: int, instance_number: int, series_key: int
) -> Dataset:
    """Everything except frames, detectors and pixels, shared by all layouts."""
    scan = context.scan
    patient = scan.patient
    study_dt = context.study_datetime
    # Acquisition starts a few minutes after the study was registered.
    series_dt = study_dt + dt.timedelta(minutes=2 + 3 * (series_number - 1))
    ds = Dataset()

    # SOP Common
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = derive_uid(
        context.uid_seed, "series", series_key, "instance", instance_number
    )
    ds.InstanceCreationDate = _da(study_dt.date())
    ds.InstanceCreationTime = _tm(study_dt)

    # Patient, Patient Study
    ds.PatientName = f"PHANTOM^{patient.patient_id}"
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = _da(context.birth_date)
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.PatientSize = f"{patient.height_cm / 100.0:.2f}"
    ds.PatientWeight = f"{patient.weight_kg:.1f}"

    # General Study
    ds.StudyInstanceUID = study_instance_uid(context.uid_seed)
    ds.StudyDate = _da(study_dt.date())
    ds.StudyTime = _tm(study_dt)
    ds.ReferringPhysicianName = ""
    ds.StudyID = context.study_id
    ds.AccessionNumber = context.accession_number
    ds.StudyDescription = "NM WHOLE BODY BONE SCAN (SYNTHETIC)"

    # General Series, NM/PET Patient Orientation
    ds.Modality = "NM"
    ds.SeriesInstanceUID = derive_uid(context.uid_seed, "series", series_key)
    ds.SeriesNumber = series_number
    ds.SeriesDate = _da(series_dt.date())
    ds.SeriesTime = _tm(series_dt)
    ds.BodyPartExamined = "WHOLEBODY"
    orientation = _code_item(_RECUMBENT_CODE)
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code_item(_SUPINE_CODE)])
    ds.PatientOrientationCodeSequence = Sequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code_item(_HEADFIRST_CODE)])

    # Frame of Reference: both views of one acquisition share it.
    ds.FrameOfReferenceUID = derive_uid(context.uid_seed, "frame-of-reference")
    ds.PositionReferenceIndicator = ""

    # General Equipment
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = _INSTITUTION
    ds.StationName = "PHANTOM"
    ds.ManufacturerModelName = _MODEL
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = f"spectnode {__version__}"

    # General Image, General Acquisition, Acquisition Context
    ds.InstanceNumber = instance_number
    ds.ContentDate = _da(series_dt.date())
    ds.ContentTime = _tm(series_dt)
    ds.AcquisitionDate = _da(series_dt.date())
    ds.AcquisitionTime = _tm(series_dt)
    ds.ImageComments = _SYNTHETIC_NOTICE
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence()

    # NM Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    rows = scan.anterior.shape[0]
    scan_length_mm = int(round(rows * scan.pixel_spacing_mm))
    ds.ScanVelocity = f"{context.scan_velocity_mm_s:.2f}"
    ds.ScanLength = scan_length_mm
    ds.WholeBodyTechnique = ["1PS"]  # one pass, both heads
    ds.ActualFrameDuration = int(round(1000.0 * scan_length_mm / context.scan_velocity_mm_s))
    ds.AcquisitionTerminationCondition = "MANU"
    ds.CorrectedImage = ["UNIF", "LIN", "NRGY"]

    # NM Isotope
    window = Dataset()
    half_width = _TC99M_PHOTOPEAK_KEV * context.energy_window_percent / 200.0
    limits = Dataset()
    limits.EnergyWindowLowerLimit = f"{_TC99M_PHOTOPEAK_KEV - half_width:g}"
    limits.EnergyWindowUpperLimit = f"{_TC99M_PHOTOPEAK_KEV + half_width:g}"
    window.EnergyWindowRangeSequence = Sequence([limits])
    window.EnergyWindowName = "TC99M"
    ds.EnergyWindowInformationSequence = Sequence([window])

    pharmaceutical = Dataset()
    pharmaceutical.RadionuclideCodeSequence = Sequence([_code_item(_TC99M_CODE)])
    pharmaceutical.RadiopharmaceuticalRoute = "IV"
    pharmaceutical.AdministrationRouteCodeSequence = Sequence([_code_item(_INTRAVENOUS_CODE)])
    pharmaceutical.RadiopharmaceuticalStartTime = _tm(context.injection_datetime)
    pharmaceutical.RadionuclideTotalDose = f"{context.injected_mbq:g}"  # MBq in NM
    pharmaceutical.Radiopharmaceutical = "Tc-99m MDP"
    pharmaceutical.RadiopharmaceuticalCodeSequence = Sequence([_code_item(_MEDRONATE_CODE)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([pharmaceutical])
    return ds


def _set_nm_frames(ds: Dataset, *, detector_vector: SequenceOf[int]) -> None:
    """Multi-frame and NM Multi-frame modules for one energy window."""
    ds.NumberOfFrames = len(detector_vector)
    ds.FrameIncrementPointer = [Tag("EnergyWindowVector"), Tag("DetectorVector")]
    ds.EnergyWindowVector = [1] * len(detector_vector)
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = list(detector_vector)
    ds.NumberOfDetectors = len(set(detector_vector))


def _detector_item(view: str, *, with_view_code: bool) -> Dataset:
    """One DetectorInformationSequence item: a LEHR parallel-hole head."""
    item = Dataset()
    item.CollimatorGridName = "LEHR"
    item.CollimatorType = "PARA"
    item.FieldOfViewShape = "RECTANGLE"
    item.FieldOfViewDimensions = [540, 400]
    item.FocalDistance = None  # parallel hole: no focus
    item.XFocusCenter = None
    item.YFocusCenter = None
    item.ZoomFactor = [1.0, 1.0]
    item.ImagePositionPatient = None  # type 2; a planar scan has no known origin
    if with_view_code:
        item.ImageOrientationPatient = list(_IMAGE_ORIENTATION[view])
        item.ViewCodeSequence = Sequence([_code_item(VIEW_CODES[view])])
    else:
        # Old single-view exports leave the geometry empty (type 2).
        item.ImageOrientationPatient = None
    return item


def _set_pixels(
    ds: Dataset, frames: list[np.ndarray], pixel_spacing_mm: float, transfer_syntax: UID
) -> None:
    """Image Pixel, NM Image Pixel and VOI LUT attributes, and the pixel data."""
    stack = np.ascontiguousarray(np.stack(frames).astype(np.uint16, copy=False))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{pixel_spacing_mm:.4f}"] * 2
    # A display window that shows the skeleton rather than the hottest pixel.
    counted = stack[stack > 0]
    upper = float(np.percentile(counted, 99.0)) if counted.size else 1.0
    ds.WindowCenter = f"{upper / 2.0:.1f}"
    ds.WindowWidth = f"{max(upper, 1.0):.1f}"
    counts = int(stack.sum(dtype=np.uint64))
    # Type 2, and IS holds only a signed 32-bit value: empty when it overflows.
    ds.CountsAccumulated = counts if counts <= _IS_MAX else None

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "SPECTNODE_" + __version__.replace(".", "")[:6]

    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.PixelData = stack.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.set_original_encoding(
            is_implicit_vr=transfer_syntax == ImplicitVRLittleEndian, is_little_endian=True
        )
    elif transfer_syntax == JPEGLosslessSV1:
        # pydicom has no JPEG Lossless encoder; spectnode has a small one.
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(frame) for frame in stack])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.set_original_encoding(is_implicit_vr=False, is_little_endian=True)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(transfer_syntax, stack, generate_instance_uid=False)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown phantom layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")


# --------------------------------------------------------------------------
# JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)
# --------------------------------------------------------------------------


def encode_jpeg_lossless_sv1(image: np.ndarray) -> bytes:
    """Encode one greyscale frame as a JPEG Lossless SV1 codestream.

    This is ITU-T T.81 process 14 with selection value 1 (predict from the
    pixel on the left) and point transform 0: the transfer syntax
    1.2.840.10008.1.2.4.70. The Huffman table is optimised for the frame
    (T.81 Annex K.2).

    Args:
        image: 2-D ``uint8`` or ``uint16`` array.

    Returns:
        The codestream from SOI to EOI.
    """
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"need a 2-D uint8 or uint16 frame, got {image.dtype} {image.shape}")
    precision = 8 * image.dtype.itemsize
    rows, cols = image.shape
    x = image.astype(np.int64)

    # Prediction (T.81 H.1.1): the first row predicts from the left, the first
    # column from above, the very first sample from 2**(P-1).
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]
    prediction[1:, 0] = x[:-1, 0]
    prediction[1:, 1:] = x[1:, :-1]
    difference = (x - prediction).ravel() % (1 << 16)
    # Differences are taken modulo 2**16; 32768 is coded as category 16 with
    # no extra bits (T.81 H.1.2.2).
    difference = np.where(difference > 32768, difference - 65536, difference)
    magnitude = np.abs(difference)
    category = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)  # bit length

    frequencies = np.bincount(category, minlength=17)
    code_lengths = _huffman_code_lengths(frequencies)
    bits, huffval = _huffman_bits_and_values(code_lengths)
    code_of, length_of = _canonical_codes(bits, huffval)

    extra = np.where(difference < 0, difference + (1 << category) - 1, difference)
    extra = np.where(category == 16, 0, extra)
    extra_length = np.where(category == 16, 0, category)
    values = (code_of[category] << extra_length) | extra
    lengths = length_of[category] + extra_length
    entropy_coded = _pack_bits(values.astype(np.uint64), lengths)

    out = bytearray(b"\xff\xd8")  # SOI
    out += b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision])  # SOF3
    out += rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    table = bytes(bits) + bytes(huffval)
    out += b"\xff\xc4" + (3 + len(table)).to_bytes(2, "big") + b"\x00" + table  # DHT
    out += b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])  # SOS, Ss=1
    out += entropy_coded
    out += b"\xff\xd9"  # EOI
    return bytes(out)


def _huffman_code_lengths(frequencies: np.ndarray) -> dict[int, int]:
    """Code length of every used symbol, limited to 16 bits (T.81 K.2)."""
    # A reserved symbol with frequency 1 guarantees that no code is all ones.
    reserved = 256
    counts = {int(s): int(f) for s, f in enumerate(frequencies) if f > 0}
    counts[reserved] = 1
    heap: list[tuple[int, int, list[int]]] = [(f, s, [s]) for s, f in counts.items()]
    heapq.heapify(heap)
    depth = dict.fromkeys(counts, 0)
    tie = 1000
    while len(heap) > 1:
        f1, _, group1 = heapq.heappop(heap)
        f2, _, group2 = heapq.heappop(heap)
        for symbol in group1 + group2:
            depth[symbol] += 1
        heapq.heappush(heap, (f1 + f2, tie, group1 + group2))
        tie += 1
    # Limit code lengths to 16 bits (T.81 Figure K.3, Adjust_BITS).
    bits = [0] * 33
    for length in depth.values():
        bits[length] += 1
    i = 32
    while i > 16:
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    # Remove the reserved symbol from the longest codes.
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1
    # Hand the adjusted lengths back to symbols, most frequent first.
    by_frequency = sorted((s for s in counts if s != reserved), key=lambda s: (-counts[s], s))
    lengths: dict[int, int] = {}
    length = 1
    for symbol in by_frequency:
        while bits[length] == 0:
            length += 1
        lengths[symbol] = length
        bits[length] -= 1
    return lengths


def _huffman_bits_and_values(code_lengths: dict[int, int]) -> tuple[list[int], list[int]]:
    """BITS (count of codes of each length 1-16) and HUFFVAL (by length, then symbol)."""
    bits = [0] * 16
    for length in code_lengths.values():
        bits[length - 1] += 1
    huffval = sorted(code_lengths, key=lambda s: (code_lengths[s], s))
    return bits, huffval


def _canonical_codes(bits: list[int], huffval: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Code and code length per category 0-16 (T.81 Annex C)."""
    codes = np.zeros(17, dtype=np.int64)
    lengths = np.zeros(17, dtype=np.int64)
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[huffval[k]] = code
            lengths[huffval[k]] = length
            code += 1
            k += 1
        code <<= 1
    return codes, lengths


def _pack_bits(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate variable-length codes MSB first, pad with ones, stuff 0xFF bytes."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    starts = ends - lengths
    stream = np.ones((total + 7) // 8 * 8, dtype=np.uint8)  # padding bits are ones
    for k in range(int(lengths.max(initial=0))):
        has_bit = lengths > k
        positions = starts[has_bit] + lengths[has_bit] - 1 - k
        stream[positions] = ((values[has_bit] >> np.uint64(k)) & np.uint64(1)).astype(np.uint8)
    packed = np.packbits(stream)
    # A coded 0xFF byte is followed by a stuffed 0x00 (T.81 F.1.2.3).
    ff_positions = np.flatnonzero(packed == 0xFF)
    return np.insert(packed, ff_positions + 1, 0).tobytes()
