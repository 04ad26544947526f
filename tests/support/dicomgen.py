"""Generate synthetic DICOM instances for tests and benchmarks (no patient data).

``write_series(directory, count, kind="ct")`` writes Part-10 files: ``ct`` is a 512x512
16-bit slice (about 0.5 MB), ``small`` a 64x64 one (about 10 KB), ``large`` a multi-frame
instance of a requested size written in chunks (never held in memory whole).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

IMPL_UID = "1.2.826.0.1.3680043.10.1338.1"


def make_dataset(
    kind: str,
    patient: str,
    study: str,
    series: str,
    index: int,
    modality: str = "CT",
    rows: int | None = None,
    frames: int = 1,
) -> Dataset:
    rows = rows or {"ct": 512, "small": 64}.get(kind, 512)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = f"TEST^{patient}"
    ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"ACC{patient}"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPL_UID
    return ds


def write_series(
    directory: Path | str, count: int, kind: str = "ct", patient: str = "P001", modality: str = "CT", seed: int = 0
) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        ds = make_dataset(kind, patient, study, series, i, modality)
        ds.PixelData = _pixels(ds.Rows * ds.Columns * 2, seed + i)
        path = directory / f"{kind}-{patient}-{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_large(path: Path | str, size_bytes: int, rows: int = 512) -> Path:
    """A multi-frame instance of about ``size_bytes``; pixel data is written in 1 MiB chunks."""
    path = Path(path)
    frame = rows * rows * 2
    frames = max(1, size_bytes // frame)
    ds = make_dataset("large", "BIG", generate_uid(), generate_uid(), 0, rows=rows, frames=frames)
    ds.save_as(path, enforce_file_format=True)
    total = frame * frames
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, total))
        chunk = os.urandom(1 << 20)
        left = total
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return path


def write_large_pdf(path: Path | str, size_bytes: int) -> Path:
    """An Encapsulated PDF instance (no pixel data) whose document is about ``size_bytes``,
    written in 1 MiB chunks."""
    path = Path(path)
    ds = make_dataset("pdf", "BIGDOC", generate_uid(), generate_uid(), 0, modality="DOC")
    for keyword in (
        "ImageType",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.DocumentTitle = "large"
    ds.save_as(path, enforce_file_format=True)
    total = size_bytes + size_bytes % 2
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x0042, 0x0011, b"OB", 0, total))
        chunk = b"%PDF" + os.urandom((1 << 20) - 4)
        left = total
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        mime = b"application/pdf "
        f.write(struct.pack("<HH2sH", 0x0042, 0x0012, b"LO", len(mime)) + mime)
    return path


def write_large_sequence(path: Path | str, size_bytes: int, implicit: bool = False) -> Path:
    """An Enhanced CT instance whose Per-frame Functional Groups Sequence (5200,9230) is about
    ``size_bytes``, written in undefined-length form (sequence, items and a nested sequence in
    each item, as many modalities write them), followed by a small pixel data element.
    Streamed to the file item by item."""
    path = Path(path)
    ds = make_dataset("small", "BIGSEQ", generate_uid(), generate_uid(), 0)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPL_UID
    ds.save_as(path, enforce_file_format=True)
    undefined = 0xFFFFFFFF

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            return head + struct.pack("<I", len(value)) + value
        if vr in (b"SQ", b"OW", b"OB", b"UT"):
            return head + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        return head + vr + struct.pack("<H", len(value)) + value

    def undefined_sequence(tag: int) -> bytes:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        return head + (b"" if implicit else b"SQ\0\0") + struct.pack("<I", undefined)

    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, undefined)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    comment = element(0x00209158, b"LT", b"frame " * 1333 + b"  ")  # 8,000 bytes
    with open(path, "ab") as f:
        f.write(undefined_sequence(0x52009230))
        written = 0
        frame = 0
        while written < size_bytes:
            position = f"0\\0\\{frame}".encode()
            position += b" " * (len(position) % 2)
            item = (
                item_start
                + comment
                + undefined_sequence(0x00209113)
                + item_start
                + element(0x00200032, b"DS", position)
                + item_end
                + sequence_end
                + item_end
            )
            f.write(item)
            written += len(item)
            frame += 1
        f.write(sequence_end)
        f.write(element(0x7FE00010, b"OW", _pixels(ds.Rows * ds.Columns * 2, 0)))
    return path


def write_deflate_bomb(path, inflated_size: int):
    """A deflated Part-10 file about a thousandth of ``inflated_size``, whose data set inflates to that size."""
    ds = make_dataset("small", "BOMB", "1.2.3", "1.2.3.4", 0)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    dataset_start = 132 + 12 + dcmread(path).file_meta.FileMetaInformationGroupLength
    plain = DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False
    write_dataset(plain, ds)
    body = plain.getvalue() + struct.pack(
        "<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_size - len(plain.getvalue()) - 12
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body)
    zeros = bytes(1 << 20)
    left = inflated_size - len(body)
    while left > 0:
        deflated += compressor.compress(zeros[: min(left, len(zeros))])
        left -= len(zeros)
    deflated += compressor.flush()
    with open(path, "r+b") as f:
        f.seek(dataset_start)
        f.write(deflated)
        f.truncate()
    return path


def _pixels(n: int, seed: int) -> bytes:
    block = (seed.to_bytes(4, "little") * 16)[:64]
    pattern = bytes((b ^ (i * 7)) & 0x0F for i, b in enumerate(block * 8))
    return (pattern * (n // len(pattern) + 1))[:n]
