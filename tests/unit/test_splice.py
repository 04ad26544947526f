"""Header-only rewrites: every transfer syntax and layout keeps its pixel data byte for byte."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from router.spool.splice import SpliceError, read_header, write_spliced
from tests.support.dicomgen import make_dataset


def _raw_pixel_element(path) -> bytes:
    """The bytes of the top-level pixel data element, found without pydicom's help."""
    header, layout = read_header(path)
    with open(path, "rb") as f:
        f.seek(layout.pixel_start)
        return f.read(layout.pixel_end - layout.pixel_start)


def _write(tmp_path, ts, *, pixels="native", trailing=False, name="in.dcm"):
    ds = make_dataset("small", "SPL", "1.2.3.4", "1.2.3.4.5", 0)
    ds.file_meta.TransferSyntaxUID = ts
    if pixels == "native":
        ds.PixelData = bytes(range(256)) * 32
    elif pixels == "encapsulated":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.NumberOfFrames = 2
        ds.PixelData = encapsulate([b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-two-\xff\xd9"])
        ds["PixelData"].VR = "OB"
    if trailing:
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


CASES = [
    (ExplicitVRLittleEndian, "native", False),
    (ImplicitVRLittleEndian, "native", False),
    (ExplicitVRBigEndian, "native", False),
    (JPEGBaseline8Bit, "encapsulated", False),
    (RLELossless, "encapsulated", False),
    (ExplicitVRLittleEndian, "native", True),
    (ImplicitVRLittleEndian, "native", True),
    (ExplicitVRLittleEndian, None, False),
]


@pytest.mark.parametrize("ts,pixels,trailing", CASES)
def test_header_edit_keeps_pixel_bytes(tmp_path, ts, pixels, trailing):
    src = _write(tmp_path, ts, pixels=pixels, trailing=trailing)
    header, layout = read_header(src)
    assert (0x7FE00010 in header) is False
    header.PatientName = "EDITED^NAME"
    header.SOPInstanceUID = "1.2.3.999"
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(src, header, layout, f)
    result = dcmread(out)
    assert result.PatientName == "EDITED^NAME"
    assert result.file_meta.MediaStorageSOPInstanceUID == "1.2.3.999"
    assert result.file_meta.TransferSyntaxUID == ts
    if pixels is None:
        assert "PixelData" not in result
        return
    assert _raw_pixel_element(out) == _raw_pixel_element(src)
    assert result.PixelData == dcmread(src).PixelData
    if trailing:
        assert result[0xFFFCFFFC].value == b"\0" * 16


def test_trailing_elements_are_editable(tmp_path):
    src = _write(tmp_path, ExplicitVRLittleEndian, trailing=True)
    header, layout = read_header(src)
    del header[0xFFFCFFFC]
    out = io.BytesIO()
    write_spliced(src, header, layout, out)
    assert 0xFFFCFFFC not in dcmread(io.BytesIO(out.getvalue()))


def test_deflated_is_rewritten_whole(tmp_path):
    src = _write(tmp_path, DeflatedExplicitVRLittleEndian)
    header, layout = read_header(src)
    assert layout.deflated
    header.PatientID = "NEW"
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(src, header, layout, f)
    result = dcmread(out)
    assert result.PatientID == "NEW"
    assert result.PixelData == dcmread(src).PixelData


def test_an_edit_cannot_bring_its_own_pixel_data(tmp_path):
    src = _write(tmp_path, ExplicitVRLittleEndian)
    header, layout = read_header(src)
    header.PixelData = b"\0\0"
    with pytest.raises(SpliceError, match="pixel data comes from the source"):
        write_spliced(src, header, layout, io.BytesIO())


def test_truncated_pixel_data_is_refused(tmp_path):
    src = _write(tmp_path, ExplicitVRLittleEndian)
    data = src.read_bytes()
    src.write_bytes(data[:-100])
    with pytest.raises(SpliceError, match="truncated"):
        read_header(src)


def test_broken_encapsulation_is_refused(tmp_path):
    src = _write(tmp_path, JPEGBaseline8Bit, pixels="encapsulated")
    data = bytearray(src.read_bytes())
    at = data.rfind(struct.pack("<HH", 0xFFFE, 0xE0DD))
    data[at : at + 4] = struct.pack("<HH", 0x1234, 0x5678)
    src.write_bytes(bytes(data[: at + 8]))
    with pytest.raises(SpliceError):
        read_header(src)


@pytest.mark.parametrize("ts,pixels,trailing", CASES)
def test_unedited_header_writes_the_same_bytes(tmp_path, ts, pixels, trailing):
    """Elements nobody changed are written back as read: no decode, no re-encode."""
    src = _write(tmp_path, ts, pixels=pixels, trailing=trailing)
    header, layout = read_header(src)
    out = io.BytesIO()
    write_spliced(src, header, layout, out)
    assert out.getvalue() == src.read_bytes()
