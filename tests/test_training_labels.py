"""Label files, LabelMe mapping and the patient-wise split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from spectnode.training.labels import (
    LabelError,
    LabelledStudy,
    labelme_study_label,
    read_labelme_dir,
    read_labels_csv,
    split_by_patient,
)


def test_csv_round_trip_and_binary_mapping(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("study_uid,patient_id,label,layout\n1.2.3,P1,metastatic,multiframe\n"
                    "1.2.4,P2,arthritic,rle\n1.2.5,P3,both,rle\n", encoding="utf-8")
    rows = read_labels_csv(path, "dspic4")
    assert [r.label for r in rows] == ["metastatic", "arthritic", "both"]
    binary = read_labels_csv(path, "binary")
    assert [r.label for r in binary] == ["metastasis", "no_metastasis", "metastasis"]


@pytest.mark.parametrize("text, message", [
    ("study,label\n1,normal\n", "missing column"),
    ("study_uid,patient_id,label\n1.2,P,cancer\n", "line 2: label 'cancer' is not a class"),
    ("study_uid,patient_id,label\n1.2,P,normal\n1.2,P,normal\n", "line 3: study 1.2 is listed twice"),
    ("study_uid,patient_id,label\n", "no labelled studies"),
])
def test_csv_errors(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelError, match=message):
        read_labels_csv(path, "dspic4")


@pytest.mark.parametrize("shapes, scheme, expected", [
    ([], "dspic4", "normal"),
    (["L3 vertebra metastasis"], "dspic4", "metastatic"),
    (["knee arthritis", "knee arthritis"], "dspic4", "arthritic"),
    (["rib metastasis", "Knee-Arthritis"], "dspic4", "both"),
    (["rib metastasis", "Knee-Arthritis"], "binary", "metastasis"),
    (["knee arthritis"], "binary", "no_metastasis"),
    (["rib metastasis adenocarcinoma"], "lung3", "adenocarcinoma"),
    (["rib metastasis squamous"], "lung3", "non_adenocarcinoma"),
    ([], "lung3", "no_metastasis"),
])
def test_labelme_mapping(shapes, scheme, expected):
    assert labelme_study_label(shapes, scheme) == expected


def test_labelme_dir_unions_views(tmp_path):
    def annotation(name, image, labels):
        (tmp_path / name).write_text(json.dumps({
            "version": "5.2.1", "flags": {}, "imagePath": image, "imageData": None,
            "shapes": [{"label": lab, "points": [[1, 2], [3, 4]], "shape_type": "rectangle"} for lab in labels]}))
    annotation("a.json", "..\\images\\1.2.3.4.png", ["spine metastasis"])
    annotation("b.json", "1.2.3.5.png", ["knee arthritis"])
    keys = {"1.2.3.4": ("1.9", "P1"), "1.2.3.5": ("1.9", "P1")}
    rows = read_labelme_dir(tmp_path, "dspic4", keys)
    assert rows == [LabelledStudy("1.9", "P1", "both")]
    annotation("c.json", "unknown.png", [])
    with pytest.raises(LabelError, match="matches no DICOM file"):
        read_labelme_dir(tmp_path, "dspic4", keys)


def test_split_keeps_patients_apart_and_is_stratified():
    labels = ["normal", "metastatic", "arthritic", "both"]
    studies = [LabelledStudy(f"1.{i}.{j}", f"P{i}", labels[i % 4]) for i in range(200) for j in range(2)]
    train, test = split_by_patient(studies, 0.7, seed=3)
    assert not {s.patient_id for s in train} & {s.patient_id for s in test}
    assert len(train) + len(test) == len(studies)
    assert abs(len(train) / len(studies) - 0.7) < 0.02
    train_mix, test_mix = Counter(s.label for s in train), Counter(s.label for s in test)
    for label in labels:
        assert abs(train_mix[label] / len(train) - 0.25) < 0.03
        assert abs(test_mix[label] / len(test) - 0.25) < 0.03
    assert split_by_patient(studies, 0.7, seed=3) == (train, test)
    assert split_by_patient(studies, 0.7, seed=4) != (train, test)
