"""Explicit <-> Implicit VR Little Endian, streamed: every value kept, sequences included."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from router.spool.transcode import CannotConvert, convert_file
from tests.support.richgen import write_rich_study


def _same_values(original, converted, raw=None) -> None:
    """Every element of ``original`` in ``converted``; ``raw``: ``original`` read again, whose
    elements are still undecoded (a private element becomes UN: its bytes are compared)."""
    for element in original:
        if element.tag.element == 0:
            continue  # group lengths are left out
        other = converted[element.tag]
        if element.VR == "SQ":
            assert len(other.value) == len(element.value)
            for item, other_item in zip(element.value, other.value, strict=True):
                _same_values(item, other_item)
        elif other.VR == "UN" and element.tag.is_private and raw is not None:  # no private dictionary
            assert other.value == raw.get_item(element.tag).value
        else:
            assert other.value == element.value, element.tag


def test_a_round_trip_keeps_every_value(tmp_path):
    for path in write_rich_study(tmp_path / "rich", "P001", series=1, per_series=2):
        original = dcmread(path)
        convert_file(path, tmp_path / "implicit.dcm", ImplicitVRLittleEndian)
        implicit = dcmread(tmp_path / "implicit.dcm")
        assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert implicit.SOPInstanceUID == original.SOPInstanceUID
        _same_values(original, implicit, dcmread(path))
        convert_file(tmp_path / "implicit.dcm", tmp_path / "explicit.dcm", ExplicitVRLittleEndian)
        explicit = dcmread(tmp_path / "explicit.dcm")
        assert explicit.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        _same_values(original, explicit, dcmread(path))


def test_a_compressed_or_truncated_file_is_refused(tmp_path):
    (path,) = write_rich_study(tmp_path / "rich", "P002", series=1, per_series=1)
    with pytest.raises(CannotConvert):
        convert_file(path, tmp_path / "out.dcm", JPEG2000Lossless)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 100])
    with pytest.raises(CannotConvert):
        convert_file(tmp_path / "cut.dcm", tmp_path / "out.dcm", ImplicitVRLittleEndian)
