"""A seeded corpus of over 200 bad objects, sent as raw bytes to one real ``spectnode serve`` (issue 15, point 4).

The corpus is built from one valid whole-body NM phantom (shrunk to 256 x 64 so
that each case is cheap), serialised once, and then damaged at the byte level:
truncations; VR, length and encoding lies; missing, short and oversized
PixelData; lying Rows, Columns and NumberOfFrames; odd BitsAllocated; signed
and float pixels; non-NM objects; bad UIDs and names; and bombs. Each case is
sent exactly as built (pynetdicom's chunked sending streams the file's bytes;
its own encoder would repair them), many cases per association.

For every case the node must answer a C-STORE status (never drop the
association or hang): a failure (0xA700, 0xA900, 0xC000-0xCFFF), or Success
after which the study ends with a result or "not assessable" with its reason,
never in ``error``. Every case leaves a receipt in the job store with that
status, the node still answers C-ECHO afterwards, its peak memory stays under
a bound, and its JSON log holds neither the base object's patient name nor its ID.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from spectnode.phantom.generate import generate_phantoms
from spectnode.store import END_STATES, ERROR, JobStore

from dicomtools import STATUS_DOES_NOT_MATCH_SOP_CLASS, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from nodetools import NodeProcess, echoscu, free_port, tiny_bundle, wait_for, write_config

SEED = 15
SUCCESS, OUT_OF_RESOURCES = STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES
DOES_NOT_MATCH_SOP_CLASS = STATUS_DOES_NOT_MATCH_SOP_CLASS
FAILURES = (OUT_OF_RESOURCES, DOES_NOT_MATCH_SOP_CLASS)
MAX_PEAK_RSS_BYTES = 3 * 1024**3
SECRET_NAME = "FUZZ^SECRET^PATIENT"
SECRET_ID = "PID-SECRET-4711"
NM_IMAGE = "1.2.840.10008.5.1.4.1.1.20"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass
class Case:
    """One bad object: its category, what was done, and its bytes."""

    category: str
    what: str
    study_uid: str
    sop_uid: str
    sop_class: str
    syntax: str
    body: bytes


# ------------------------------------------------------------------ the base object


def _small_scan(tmp_path: Path) -> Dataset:
    """A valid two-view multi-frame NM whole-body scan, area-averaged from 1024 x 256 to 256 x 64."""
    (record,) = generate_phantoms(tmp_path, n=1, seed=SEED, layout="multiframe")
    ds = pydicom.dcmread(record.files[0])
    frames = ds.pixel_array.astype(np.float64)
    small = frames.reshape(frames.shape[0], 256, 4, 64, 4).mean(axis=(2, 4))
    ds.PixelData = np.clip(small, 0, 65535).astype(np.uint16).tobytes()
    ds.Rows, ds.Columns = 256, 64
    ds.PixelSpacing = [float(v) * 4 for v in ds.PixelSpacing]
    ds.PatientName, ds.PatientID = SECRET_NAME, SECRET_ID
    return ds


def _encode(ds: Dataset, implicit: bool = False) -> bytes:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    write_dataset(body, ds)
    return body.getvalue()


def _spans(body: bytes) -> list[tuple[int, int, int, bytes]]:
    """(start, end, tag, VR) of each top-level element of an explicit VR little endian body."""
    fp = BytesIO(body)
    spans, start = [], 0
    for element in data_element_generator(fp, False, True, defer_size=None):
        end = fp.tell()
        spans.append((start, end, int(element.tag), body[start + 4:start + 6]))
        start = end
    return spans


def _header_size(vr: bytes) -> int:
    return 12 if vr in _LONG_VRS else 8


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """An explicit VR little endian element, its length field ``length`` (default: the value's)."""
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    head += struct.pack("<HL", 0, length) if vr in _LONG_VRS else struct.pack("<H", length & 0xFFFF)
    return head + value


class _Builder:
    """Makes the cases, deterministically, from the base scan."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.rng = random.Random(SEED)
        self.cases: list[Case] = []
        self._uids = 0

    def uid(self) -> str:
        """The next UID of the corpus (the same every run)."""
        self._uids += 1
        return str(generate_uid(entropy_srcs=["spectnode fuzz corpus", str(SEED), str(self._uids)]))

    def fresh(self) -> Dataset:
        ds = copy.deepcopy(self.base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = self.uid(), self.uid(), self.uid()
        return ds

    def add(self, category: str, what: str, ds: Dataset, body: bytes | None = None,
            syntax: str = ExplicitVRLittleEndian, sop_class: str = NM_IMAGE) -> None:
        study = str(ds.get("StudyInstanceUID", "") or "")
        sop = self.uid()  # the request's Affected SOP Instance UID: how each case is found again
        self.cases.append(Case(category, what, study, sop, sop_class, syntax,
                               _encode(ds) if body is None else body))

    def dataset(self, category: str, what: str, change: object, **kwargs: object) -> None:
        ds = self.fresh()
        change(ds)  # type: ignore[operator]
        self.add(category, what, ds, **kwargs)  # type: ignore[arg-type]

    def bytes_of(self, category: str, what: str, change: object, syntax: str = ExplicitVRLittleEndian) -> None:
        ds = self.fresh()
        body = _encode(ds)
        self.add(category, what, ds, change(body, _spans(body)), syntax=syntax)  # type: ignore[operator]

    # ------------------------------------------------------------ the categories

    def truncations(self) -> None:
        for _ in range(15):
            cut = self.rng.uniform(0.0, 1.0)
            self.bytes_of("truncation", f"cut at {cut:.0%}", lambda b, _s, c=cut: b[:max(1, int(len(b) * c))])
        for i in range(5):
            def inside_pixels(b: bytes, spans: list, i: int = i) -> bytes:
                start, end, _tag, _vr = spans[-1]
                return b[:start + 12 + (end - start - 12) * (i + 1) // 7]
            self.bytes_of("truncation", f"inside PixelData ({i + 1}/7)", inside_pixels)
        for i in range(5):
            def at_boundary(b: bytes, spans: list, i: int = i) -> bytes:
                return b[:spans[len(spans) * (i + 1) // 6][0]]
            self.bytes_of("truncation", f"at an element boundary ({i + 1}/6)", at_boundary)
        self.bytes_of("truncation", "inside an element header", lambda b, s: b[:s[5][0] + 5])

    def vr_lies(self) -> None:
        vrs = [b"AE", b"AS", b"CS", b"DA", b"DS", b"FD", b"FL", b"IS", b"LO", b"OB", b"OW", b"SQ", b"UL", b"UN",
               b"US", b"UT", b"ZZ", b"\0\0", b"ab"]
        for _ in range(30):
            index, vr = self.rng.randrange(1, 60), self.rng.choice(vrs)

            def lie(b: bytes, spans: list, index: int = index, vr: bytes = vr) -> bytes:
                start = spans[min(index, len(spans) - 1)][0]
                return b[:start + 4] + vr + b[start + 6:]
            self.bytes_of("VR lie", f"element {index} VR {vr!r}", lie)

    def length_lies(self) -> None:
        for _ in range(30):
            index = self.rng.randrange(1, 60)
            pick = self.rng.choice(["zero", "one", "odd", "+2", "-2", "undefined", "0xFFFF", "past the end",
                                    "huge"])

            def lie(b: bytes, spans: list, index: int = index, pick: str = pick) -> bytes:
                start, end, _tag, vr = spans[min(index, len(spans) - 1)]
                size = _header_size(vr)
                actual = end - start - size
                new = {"zero": 0, "one": 1, "odd": actual + 1, "+2": actual + 2, "-2": max(actual - 2, 0),
                       "undefined": 0xFFFFFFFF, "0xFFFF": 0xFFFF, "past the end": len(b) - start,
                       "huge": 0x7FFFFFFF}[pick]
                if size == 8:
                    field = struct.pack("<H", new & 0xFFFF)
                    return b[:start + 6] + field + b[start + 8:]
                return b[:start + 8] + struct.pack("<L", new) + b[start + 12:]
            self.bytes_of("length lie", f"element {index} length {pick}", lie)

    def encoding_lies(self) -> None:
        for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
            for i in range(3):
                self.bytes_of("encoding lie", f"explicit VR LE sent as {syntax.name} ({i})",
                              lambda b, _s: b, syntax=syntax)
        for i in range(2):
            ds = self.fresh()
            self.add("encoding lie", f"implicit VR sent as explicit ({i})", ds, _encode(ds, implicit=True))
        for i in range(2):
            ds = self.fresh()
            self.add("encoding lie", f"not deflated, sent as deflate ({i})", ds, syntax=DeflatedExplicitVRLittleEndian)
        ds = self.fresh()
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.add("encoding lie", "deflated stream cut short", ds, (packer.compress(_encode(ds)) + packer.flush())[:500],
                 syntax=DeflatedExplicitVRLittleEndian)

    def pixel_data(self) -> None:
        pixels = self.base.PixelData
        variants: dict[str, object] = {
            "missing": None, "empty": b"", "half": pixels[:len(pixels) // 2], "two bytes short": pixels[:-2],
            "one frame": pixels[:len(pixels) // 2], "one byte longer (odd)": pixels + b"\0", "double": pixels * 2,
            "100 times": pixels * 100, "all zero": bytes(len(pixels)), "all 0xFFFF": b"\xff" * len(pixels),
        }
        for what, value in variants.items():
            def change(ds: Dataset, value: object = value) -> None:
                if value is None:
                    del ds.PixelData
                else:
                    ds[0x7FE00010] = RawDataElement(Tag(0x7FE00010), "OW", len(value), value, 0, False, True)  # type: ignore[arg-type]
            self.dataset("PixelData", what, change)
        for vr in (b"UN", b"OB", b"SQ", b"OF"):
            def as_vr(b: bytes, spans: list, vr: bytes = vr) -> bytes:
                start, end, tag, _ = spans[-1]
                return b[:start] + _element(tag, vr, b[start + 12:end])
            self.bytes_of("PixelData", f"PixelData with VR {vr.decode()}", as_vr)
        self.bytes_of("PixelData", "PixelData undefined length in a native syntax",
                      lambda b, s: b[:s[-1][0]] + _element(0x7FE00010, b"OB", b"\xfe\xff\x00\xe0\x00\x00\x00\x00",
                                                           0xFFFFFFFF) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")

    def geometry(self) -> None:
        for rows in (0, 1, 2, 255, 257, 1024, 65535):
            self.dataset("geometry lie", f"Rows {rows}", lambda ds, v=rows: setattr(ds, "Rows", v))
        for cols in (0, 1, 63, 65, 256, 65535):
            self.dataset("geometry lie", f"Columns {cols}", lambda ds, v=cols: setattr(ds, "Columns", v))
        for frames in ("0", "1", "3", "-1", "abc", "1000000", "", "2.5", "99999999999"):
            def set_frames(ds: Dataset, v: str = frames) -> None:
                ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(v) + len(v) % 2,
                                                (v + " " * (len(v) % 2)).encode(), 0, False, True)
            self.dataset("geometry lie", f"NumberOfFrames {frames!r}", set_frames)
        self.dataset("geometry lie", "Rows and Columns swapped", lambda ds: (setattr(ds, "Rows", 64),
                                                                            setattr(ds, "Columns", 256)))
        self.dataset("geometry lie", "no Rows", lambda ds: delattr(ds, "Rows"))
        self.dataset("geometry lie", "no NumberOfFrames", lambda ds: delattr(ds, "NumberOfFrames"))

    def bits(self) -> None:
        for bits in (0, 1, 7, 8, 9, 12, 24, 32, 64):
            self.dataset("BitsAllocated", f"BitsAllocated {bits}", lambda ds, v=bits: setattr(ds, "BitsAllocated", v))
        self.dataset("BitsAllocated", "BitsStored 17 of 16", lambda ds: setattr(ds, "BitsStored", 17))
        self.dataset("BitsAllocated", "HighBit 20", lambda ds: setattr(ds, "HighBit", 20))
        self.dataset("BitsAllocated", "SamplesPerPixel 3", lambda ds: setattr(ds, "SamplesPerPixel", 3))
        self.dataset("BitsAllocated", "SamplesPerPixel 0", lambda ds: setattr(ds, "SamplesPerPixel", 0))
        self.dataset("BitsAllocated", "PhotometricInterpretation RGB",
                     lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"))
        self.dataset("BitsAllocated", "PALETTE COLOR without a palette",
                     lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"))

    def signed_and_float(self) -> None:
        def signed(ds: Dataset, negate: bool) -> None:
            values = np.frombuffer(ds.PixelData, dtype=np.uint16).astype(np.int32)
            ds.PixelRepresentation = 1
            ds.PixelData = (-values if negate else values - 2000).clip(-32768, 32767).astype(np.int16).tobytes()
        self.dataset("signed/float", "signed, some negative", lambda ds: signed(ds, False))
        self.dataset("signed/float", "signed, all negative", lambda ds: signed(ds, True))
        self.dataset("signed/float", "PixelRepresentation 2", lambda ds: setattr(ds, "PixelRepresentation", 2))
        for kind, tag, dtype, vr in (("FloatPixelData", 0x7FE00008, np.float32, "OF"),
                                     ("DoubleFloatPixelData", 0x7FE00009, np.float64, "OD")):
            for fill in ("counts", "NaN and inf"):
                def floats(ds: Dataset, tag: int = tag, dtype: type = dtype, vr: str = vr, fill: str = fill) -> None:
                    values = np.frombuffer(ds.PixelData, dtype=np.uint16).astype(dtype)
                    if fill != "counts":
                        values[::7], values[1::7] = np.nan, np.inf
                    del ds.PixelData
                    raw = values.tobytes()
                    ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
                    ds.BitsAllocated = 32 if vr == "OF" else 64
                    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
                        delattr(ds, keyword)
                self.dataset("signed/float", f"{kind} ({fill})", floats)
        self.dataset("signed/float", "signed with 32-bit words",
                     lambda ds: (setattr(ds, "PixelRepresentation", 1), setattr(ds, "BitsAllocated", 32)))

    def non_nm(self) -> None:
        self.dataset("non-NM", "Modality CT on NM content", lambda ds: setattr(ds, "Modality", "CT"))
        self.dataset("non-NM", "CT SOP class and Modality", lambda ds: (setattr(ds, "Modality", "CT"),
                                                                       setattr(ds, "SOPClassUID", CT_IMAGE)),
                     sop_class=CT_IMAGE)
        self.dataset("non-NM", "Modality OT", lambda ds: setattr(ds, "Modality", "OT"))
        self.dataset("non-NM", "Modality PT", lambda ds: setattr(ds, "Modality", "PT"))
        self.dataset("non-NM", "no Modality", lambda ds: delattr(ds, "Modality"))
        self.dataset("non-NM", "Modality nm (lower case)", lambda ds: setattr(ds, "Modality", "nm"))
        self.dataset("non-NM", "Modality NM\\CT", lambda ds: setattr(ds, "Modality", ["NM", "CT"]))
        self.dataset("non-NM", "no ImageType", lambda ds: delattr(ds, "ImageType"))
        sr = Dataset()
        sr.SOPClassUID, sr.Modality = COMPREHENSIVE_SR, "SR"
        sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID = self.uid(), self.uid(), self.uid()
        sr.ValueType = "CONTAINER"
        self.add("non-NM", "a bare SR", sr, sop_class=COMPREHENSIVE_SR)
        bare = Dataset()
        bare.SOPClassUID = SC_IMAGE
        bare.StudyInstanceUID, bare.SeriesInstanceUID, bare.SOPInstanceUID = self.uid(), self.uid(), self.uid()
        self.add("non-NM", "only the UIDs (secondary capture)", bare, sop_class=SC_IMAGE)

    def uids_and_names(self) -> None:
        bad_uids = ["1.2.ABC", "1." + "1" * 70, "1..2", "1.2.", ".1.2", "1.2\0.3", "1.2 3", "", "1.2\\3.4",
                    "1.2\n3"]
        for keyword, tag in (("StudyInstanceUID", "0020000D"), ("SOPInstanceUID", "00080018"),
                             ("SeriesInstanceUID", "0020000E")):
            for value in (bad_uids if keyword == "StudyInstanceUID" else bad_uids[:4]):
                def set_uid(ds: Dataset, tag: str = tag, value: str = value) -> None:
                    raw = value.encode() + (b"\0" if len(value) % 2 else b"")
                    ds[int(tag, 16)] = RawDataElement(Tag(tag), "UI", len(raw), raw, 0, False, True)
                self.dataset("bad UID/name", f"{keyword} {value!r}", set_uid)
        names = {"6 components": b"A^B^C^D^E^F", "1 MB": b"A" * 1024 * 1024, "escape sequence": b"\x1b[31mRED",
                 "newline": b"DOE^JOHN\n2030 ERROR forged", "UTF-8 without a character set": "M\u00fcller".encode(),
                 "four = groups": b"A=B=C=D", "backslash values": b"A\\B\\C", "empty": b""}
        for what, raw in names.items():
            def set_name(ds: Dataset, raw: bytes = raw) -> None:
                raw = raw + (b" " if len(raw) % 2 else b"")
                ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(raw), raw, 0, False, True)
            self.dataset("bad UID/name", f"PatientName {what}", set_name)
        self.dataset("bad UID/name", "ISO_IR 192 with invalid UTF-8", lambda ds: (
            setattr(ds, "SpecificCharacterSet", "ISO_IR 192"),
            ds.__setitem__(0x00100010, RawDataElement(Tag(0x00100010), "PN", 4, b"\xff\xfe\xc3(", 0, False, True))))
        self.dataset("bad UID/name", "PatientID 1 kB", lambda ds: setattr(ds, "PatientID", "9" * 1024))

    def bombs(self) -> None:
        def deflated(size: int) -> tuple[Dataset, bytes]:
            ds = self.fresh()
            ds[0x00091010] = RawDataElement(Tag(0x00091010), "OB", size, bytes(size), 0, False, True)
            packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            return ds, packer.compress(_encode(ds)) + packer.flush()
        for size in (200 * 1024**2, 16 * 1024**2):
            ds, body = deflated(size)
            self.add("bomb", f"deflate bomb ({size // 1024**2} MB inflated)", ds, body,
                     syntax=DeflatedExplicitVRLittleEndian)
        self.bytes_of("bomb", "private OB declaring 4 GB", lambda b, s: b[:s[3][0]] + _element(
            0x00091010, b"OB", b"\0" * 16, 0xFFFFFFF0) + b[s[3][0]:])

        def nested(depth: int) -> Dataset:
            ds = self.fresh()
            inner = Dataset()
            for _ in range(depth):
                outer = Dataset()
                outer.ReferencedSOPSequence = Sequence([inner])
                inner = outer
            ds.ReferencedSOPSequence = Sequence([inner])
            return ds
        self.add("bomb", "sequences nested 200 deep", nested(200))
        ds = self.fresh()
        for i in range(20000):
            ds[0x00110000 | (0x1000 + i % 0xEFFF)] = RawDataElement(Tag(0x00110000 | (0x1000 + i % 0xEFFF)), "OB", 2,
                                                                    b"\0\0", 0, False, True)
        self.add("bomb", "20,000 private elements", ds)
        ds = self.fresh()
        ds.ReferencedImageSequence = Sequence([Dataset() for _ in range(10000)])
        self.add("bomb", "a sequence of 10,000 items", ds)
        self.dataset("bomb", "65535 x 65535 x 1,000,000 frames on 64 kB of pixels",
                     lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535),
                                 setattr(ds, "NumberOfFrames", 1000000)))
        self.dataset("bomb", "an 8 MB private element", lambda ds: ds.__setitem__(
            0x00091010, RawDataElement(Tag(0x00091010), "OB", 8 * 1024**2, bytes(8 * 1024**2), 0, False, True)))

    def build(self) -> list[Case]:
        for make in (self.truncations, self.vr_lies, self.length_lies, self.encoding_lies, self.pixel_data,
                     self.geometry, self.bits, self.signed_and_float, self.non_nm, self.uids_and_names, self.bombs):
            make()
        return self.cases


def _part10(case: Case, path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = case.sop_class
    meta.MediaStorageSOPInstanceUID = case.sop_uid
    meta.TransferSyntaxUID = case.syntax
    header = BytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)
    path.write_bytes(header.getvalue() + case.body)
    return path


# ------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    return _Builder(_small_scan(tmp_path_factory.mktemp("fuzz-base"))).build()


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory, corpus, monkeypatch_module):
    root = tmp_path_factory.mktemp("fuzz-node")
    port = free_port()
    config = write_config(root / "spectnode.yaml", {
        "node": {"ae_title": "SPECTNODE", "port": port, "allowed_calling_ae_titles": ["CAMERA"],
                 "max_object_bytes": 64 * 1024 * 1024},
        "storage": {"data_dir": str(root / "data"), "min_free_bytes": 0},
        "model": {"bundles": [str(tiny_bundle(tmp_path_factory))]},
        "completion": {"timeout_seconds": 3},
        "logging": {"level": "INFO", "format": "json", "file": str(root / "node.log")},
    })
    node = NodeProcess(config, port, root / "stdout.log").start()
    monkeypatch_module.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = root / "cases"
    files.mkdir()
    answers: dict[str, int | None] = {}
    ae = AE(ae_title="CAMERA")
    ae.dimse_timeout = ae.network_timeout = 120
    for sop_class in (NM_IMAGE, CT_IMAGE, SC_IMAGE, COMPREHENSIVE_SR):
        for syntax in SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    associations = 0
    assoc = None
    try:
        for case in corpus:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="SPECTNODE")
                associations += 1
                assert assoc.is_established
            path = _part10(case, files / f"{len(answers)}.dcm")
            status = assoc.send_c_store(path)
            answers[case.sop_uid] = int(status.Status) if status and "Status" in status else None
            path.unlink()
        assoc.release()
        store = JobStore(root / "data" / "spectnode.sqlite")
        yield {"node": node, "port": port, "store": store, "answers": answers, "log": root / "node.log",
               "associations": associations}
        store.close()
    finally:
        assert node.stop() == 0


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_corpus_has_over_200_cases_in_every_category_and_is_deterministic(corpus, tmp_path_factory):
    counts = Counter(case.category for case in corpus)
    print(json.dumps(counts))
    assert len(corpus) >= 200, counts
    assert set(counts) == {"truncation", "VR lie", "length lie", "encoding lie", "PixelData", "geometry lie",
                           "BitsAllocated", "signed/float", "non-NM", "bad UID/name", "bomb"}
    again = _Builder(_small_scan(tmp_path_factory.mktemp("fuzz-base-again"))).build()
    assert [(c.what, c.sop_uid, hashlib.sha256(c.body).digest()) for c in again] == \
        [(c.what, c.sop_uid, hashlib.sha256(c.body).digest()) for c in corpus]


def test_every_case_is_answered_and_none_ends_in_error(fuzz_run, corpus):
    answers, store = fuzz_run["answers"], fuzz_run["store"]
    assert fuzz_run["associations"] <= 3, "the node dropped associations"
    unanswered = [c.what for c in corpus if answers[c.sop_uid] is None]
    assert not unanswered, unanswered
    odd = [(c.what, hex(answers[c.sop_uid])) for c in corpus
           if answers[c.sop_uid] not in (SUCCESS, *FAILURES) and not 0xC000 <= answers[c.sop_uid] <= 0xCFFF]
    assert not odd, odd
    accepted = [c for c in corpus if answers[c.sop_uid] == SUCCESS]
    studies = {c.study_uid for c in accepted}
    ended = wait_for(lambda: (found := {uid: store.study(uid) for uid in studies}) and all(
        s is not None and s.state in END_STATES and not s.report_pending for s in found.values()) and found,
        600, "every accepted study to end")
    failed = {uid: (s.state, s.reason) for uid, s in ended.items() if s.state == ERROR}
    assert not failed, failed
    outcomes = Counter(s.state for s in ended.values())
    summary = {"cases": len(corpus), "accepted": len(accepted),
               "refused": dict(Counter(hex(answers[c.sop_uid]) for c in corpus if answers[c.sop_uid] != SUCCESS)),
               "accepted studies ended": dict(outcomes)}
    print(json.dumps(summary))
    assert outcomes["not_assessable"] + outcomes["dispatched"] == len(studies)


def test_every_case_leaves_a_receipt_with_its_answer(fuzz_run, corpus):
    answers, store = fuzz_run["answers"], fuzz_run["store"]
    receipts = store.receipts()
    by_sop = {r.sop_instance_uid: r for r in receipts}
    by_study = {}
    for r in receipts:
        by_study.setdefault(r.study_uid, r)
    missing = []
    for case in corpus:
        receipt = by_sop.get(case.sop_uid) or (by_study.get(case.study_uid) if case.study_uid else None)
        if receipt is None or receipt.status != answers[case.sop_uid]:
            missing.append(case.what)
    assert not missing, missing
    assert all(r.calling_ae == "CAMERA" and r.peer_address == "127.0.0.1" and r.outcome for r in receipts)


def test_the_node_stays_up_with_bounded_memory_and_no_patient_data_in_its_log(fuzz_run):
    assert echoscu(fuzz_run["port"])
    status = Path(f"/proc/{fuzz_run['node'].proc.pid}/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    print(f"peak RSS of the node: {peak / 1024**2:.0f} MiB")
    assert peak < MAX_PEAK_RSS_BYTES
    log = fuzz_run["log"].read_text()
    for line in log.splitlines():
        json.loads(line)  # JSON lines, one object each
    assert SECRET_NAME not in log and "SECRET" not in log and SECRET_ID not in log
