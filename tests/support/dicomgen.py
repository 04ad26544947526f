"""Generate synthetic DICOM instances for tests and benchmarks (no patient data).

``write_series(directory, count, kind="ct")`` writes Part-10 files: ``ct`` is a 512x512
16-bit slice (about 0.5 MB), ``small`` a 64x64 one (about 10 KB), ``large`` a multi-frame
instance of a requested size written in chunks (never held in memory whole).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

IMPL_UID = "1.2.826.0.1.3680043.10.1338.1"


def make_dataset(kind: str, patient: str, study: str, series: str, index: int, modality: str = "CT",
                 rows: int | None = None, frames: int = 1) -> Dataset:
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


def write_series(directory: Path | str, count: int, kind: str = "ct", patient: str = "P001",
                 modality: str = "CT", seed: int = 0) -> list[Path]:
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
    for keyword in ("ImageType", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation"):
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


def _pixels(n: int, seed: int) -> bytes:
    block = (seed.to_bytes(4, "little") * 16)[:64]
    pattern = bytes((b ^ (i * 7)) & 0x0F for i, b in enumerate(block * 8))
    return (pattern * (n // len(pattern) + 1))[:n]
