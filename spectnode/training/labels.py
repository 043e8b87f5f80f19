"""Class schemes, label files and the patient-wise 7:3 split.

Labels come either from a CSV (``study_uid,patient_id,label``, as written by
``spectnode phantom``) or from LabelMe JSON annotations, the tool both papers
annotated with.  Both end as :class:`LabelledStudy` rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

#: Classes of each scheme, in model-output order.
SCHEMES: Mapping[str, tuple[str, ...]] = {
    # dSPIC: multi-disease reading of whole-body scans.
    "dspic4": ("normal", "metastatic", "arthritic", "both"),
    # Classifier-inRAC: lung-cancer bone metastasis and its histological subclass.
    "lung3": ("no_metastasis", "adenocarcinoma", "non_adenocarcinoma"),
    # inRAC Table 8's two-class reading: metastasis present or not.
    "binary": ("no_metastasis", "metastasis"),
}

# Labels of the other schemes that map onto each scheme; anything else is an error.
_SCHEME_ALIASES: Mapping[str, Mapping[str, str]] = {
    "dspic4": {},
    "lung3": {},
    "binary": {
        "normal": "no_metastasis",
        "arthritic": "no_metastasis",
        "metastatic": "metastasis",
        "both": "metastasis",
        "adenocarcinoma": "metastasis",
        "non_adenocarcinoma": "metastasis",
    },
}


class LabelError(ValueError):
    """A label file that cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class LabelledStudy:
    """One study with its ground-truth class."""

    study_uid: str
    patient_id: str
    label: str


def scheme_classes(scheme: str) -> tuple[str, ...]:
    """Classes of ``scheme`` in output order, or ValueError naming the valid schemes."""
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}") from None


def map_label(label: str, scheme: str) -> str | None:
    """Map a label onto ``scheme``'s classes; None if it has no meaning there."""
    label = label.strip().lower().replace("-", "_").replace(" ", "_")
    if label in scheme_classes(scheme):
        return label
    return _SCHEME_ALIASES[scheme].get(label)


def read_labels_csv(path: Path, scheme: str) -> list[LabelledStudy]:
    """Read ``study_uid,patient_id,label`` rows (extra columns are ignored)."""
    classes = scheme_classes(scheme)
    rows: list[LabelledStudy] = []
    seen: set[str] = set()
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - opened here to report OSError alone
    except OSError as exc:
        raise LabelError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"study_uid", "patient_id", "label"} - set(reader.fieldnames or ())
        if missing:
            raise LabelError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                             "expected a header study_uid,patient_id,label")
        for line, rec in enumerate(reader, start=2):
            study_uid = (rec["study_uid"] or "").strip()
            patient_id = (rec["patient_id"] or "").strip()
            if not study_uid:
                raise LabelError(f"{path}: line {line}: empty study_uid")
            if study_uid in seen:
                raise LabelError(f"{path}: line {line}: study {study_uid} is listed twice")
            seen.add(study_uid)
            mapped = map_label(rec["label"] or "", scheme)
            if mapped is None:
                raise LabelError(f"{path}: line {line}: label {rec['label']!r} is not a class of scheme "
                                 f"{scheme!r} ({', '.join(classes)})")
            rows.append(LabelledStudy(study_uid, patient_id or study_uid, mapped))
    if not rows:
        raise LabelError(f"{path}: no labelled studies")
    return rows


# LabelMe shape labels are free text ("a self-defined code combined with the name of
# disease or body part", dSPIC p. 8). These word stems decide the finding.
_METASTASIS_WORDS = ("metast", "mets", "bone_met")
_ARTHRITIS_WORDS = ("arthr", "oa_", "degenerat")
_ADENO_WORDS = ("non_adeno", "nonadeno", "squamous", "small_cell", "sclc")


def labelme_study_label(shape_labels: Iterable[str], scheme: str) -> str:
    """Class of an image from its LabelMe shape labels, as the papers describe.

    dSPIC: an image is abnormal if at least one lesion is marked; metastasis and
    arthritis shapes together give ``both``.  inRAC: metastasis shapes carry
    the histology (adenocarcinoma or not).  No shapes means normal.
    """
    names = [s.strip().lower().replace("-", "_").replace(" ", "_") for s in shape_labels]
    has_met = any(any(w in n for w in _METASTASIS_WORDS) or "adeno" in n for n in names)
    has_arth = any(any(w in n for w in _ARTHRITIS_WORDS) for n in names)
    if scheme == "dspic4":
        return {(False, False): "normal", (True, False): "metastatic",
                (False, True): "arthritic", (True, True): "both"}[(has_met, has_arth)]
    if scheme == "binary":
        return "metastasis" if has_met else "no_metastasis"
    if scheme == "lung3":
        if not has_met:
            return "no_metastasis"
        non_adeno = any(any(w in n for w in _ADENO_WORDS) for n in names)
        return "non_adenocarcinoma" if non_adeno else "adenocarcinoma"
    raise ValueError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")


def read_labelme_dir(folder: Path, scheme: str, image_keys: Mapping[str, tuple[str, str]]) -> list[LabelledStudy]:
    """Labels from LabelMe JSON files in ``folder``.

    ``image_keys`` maps what a JSON's ``imagePath`` may name (a file stem, a SOP
    Instance UID or a Study Instance UID) to ``(study_uid, patient_id)``.  The
    views of one study are labelled by the union of their shapes.
    """
    scheme_classes(scheme)
    shapes_by_study: dict[str, list[str]] = {}
    patients: dict[str, str] = {}
    files = sorted(folder.glob("*.json"))
    if not files:
        raise LabelError(f"{folder}: no LabelMe .json files")
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            image_path = str(doc["imagePath"])
            shapes = [str(s["label"]) for s in doc.get("shapes", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelError(f"{path}: not a LabelMe annotation ({exc})") from None
        stem = Path(image_path.replace("\\", "/")).name
        for candidate in (stem, stem.rsplit(".", 1)[0]):
            if candidate in image_keys:
                study_uid, patient_id = image_keys[candidate]
                break
        else:
            raise LabelError(f"{path}: imagePath {image_path!r} matches no DICOM file, SOP Instance UID "
                             "or Study Instance UID in the data folder")
        shapes_by_study.setdefault(study_uid, []).extend(shapes)
        patients[study_uid] = patient_id
    return [LabelledStudy(uid, patients[uid], labelme_study_label(shapes, scheme))
            for uid, shapes in shapes_by_study.items()]


def split_by_patient(studies: Sequence[LabelledStudy], train_fraction: float = 0.7,
                     seed: int = 0) -> tuple[list[LabelledStudy], list[LabelledStudy]]:
    """Split 7:3 (by default) so that no patient is on both sides.

    Patients are shuffled within their majority class and dealt to each side
    in proportion, so both sides keep the class mix (stratified by patient).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    by_patient: dict[str, list[LabelledStudy]] = {}
    for s in studies:
        by_patient.setdefault(s.patient_id, []).append(s)
    by_class: dict[str, list[str]] = {}
    for pid, rows in sorted(by_patient.items()):
        labels = [r.label for r in rows]
        majority = max(sorted(set(labels)), key=labels.count)
        by_class.setdefault(majority, []).append(pid)
    rng = np.random.default_rng(seed)
    train_ids: set[str] = set()
    for label in sorted(by_class):
        pids = by_class[label]
        order = rng.permutation(len(pids))
        n_train = int(round(train_fraction * len(pids)))
        if len(pids) > 1:  # keep at least one patient of each class on each side
            n_train = min(max(n_train, 1), len(pids) - 1)
        train_ids.update(pids[i] for i in order[:n_train])
    train = [s for s in studies if s.patient_id in train_ids]
    test = [s for s in studies if s.patient_id not in train_ids]
    return train, test
