"""Long values stay in the file: element spans found by walking, long sequences of undefined
length deferred like pydicom defers long values, and copied byte for byte by an edit."""

from __future__ import annotations

import io
import os
import struct

import pytest
from pydicom import dcmread

from router.spool.spans import MAX_DEPTH, SpanError, element_end
from router.spool.splice import (
    DEFER_SIZE,
    clone_header,
    read_header,
    read_header_before_pixels,
    write_spliced,
)
from tests.support.dicomgen import (
    write_deflate_bomb,
    write_large_pdf,
    write_large_sequence,
)

SEQUENCE = 0x52009230
UNDEFINED = 0xFFFFFFFF
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _pixel_element_start(path) -> int:
    return read_header(path)[1].pixel_start


def _span_end(path, data: bytes, *, implicit: bool, vr: str | None) -> int:
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as f:
        return element_end(f, 0, UNDEFINED, implicit=implicit, little=True, vr=vr)


@pytest.mark.parametrize("implicit", [False, True])
def test_the_walk_ends_a_sequence_of_undefined_length_where_the_pixel_data_begins(tmp_path, implicit):
    path = write_large_sequence(tmp_path / "seq.dcm", 50_000, implicit=implicit)
    _, pixel_start = read_header_before_pixels(path)
    value_start = path.read_bytes().index(b"\x00\x52\x30\x92") + (8 if implicit else 12)
    with open(path, "rb") as f:
        assert element_end(f, value_start, UNDEFINED, implicit=implicit, little=True, vr="SQ") == pixel_start
    assert pixel_start == _pixel_element_start(path)


def test_an_unknown_element_of_undefined_length_holds_implicit_vr_items_in_an_explicit_file(tmp_path):
    implicit_element = struct.pack("<HHI", 0x0010, 0x0010, 4) + b"AB^C"
    nested = struct.pack("<HHI", 0x0008, 0x1140, UNDEFINED) + ITEM + implicit_element + ITEM_END + SEQUENCE_END
    data = ITEM + implicit_element + nested + ITEM_END + SEQUENCE_END
    assert _span_end(tmp_path / "un", data, implicit=False, vr="UN") == len(data)


def test_items_of_defined_length_are_stepped_over(tmp_path):
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 10) + b"\x01" * 10
    data = item + item + SEQUENCE_END
    assert _span_end(tmp_path / "defined", data, implicit=True, vr=None) == len(data)


@pytest.mark.parametrize(
    "data,complaint",
    [
        (ITEM + struct.pack("<HHI", 0x0010, 0x0010, 4) + b"AB", "past the end"),
        (ITEM + ITEM_END, "ends inside"),
        (struct.pack("<HHI", 0x0010, 0x0010, 0) + SEQUENCE_END, "where an item belongs"),
        (struct.pack("<HHI", 0xFFFE, 0xE000, 1000) + SEQUENCE_END, "past the end"),
        ((ITEM + struct.pack("<HHI", 0x0008, 0x1140, UNDEFINED)) * (MAX_DEPTH + 1), "deeper than"),
    ],
)
def test_malformed_or_truncated_sequences_are_refused(tmp_path, data, complaint):
    with pytest.raises(SpanError, match=complaint):
        _span_end(tmp_path / "bad", data, implicit=True, vr=None)


@pytest.mark.parametrize("implicit", [False, True])
def test_a_long_sequence_of_undefined_length_is_deferred_and_read_when_asked_for(tmp_path, implicit):
    path = write_large_sequence(tmp_path / "seq.dcm", 2 * DEFER_SIZE, implicit=implicit)
    header, pixel_start = read_header_before_pixels(path)
    assert header.get_item(SEQUENCE, keep_deferred=True).value is None
    assert pixel_start == _pixel_element_start(path)
    assert header.PatientID == "BIGSEQ"
    whole = dcmread(path)
    items = header.PerFrameFunctionalGroupsSequence
    assert len(items) == len(whole.PerFrameFunctionalGroupsSequence) > 60
    assert (
        items[-1].PlanePositionSequence[0].ImagePositionPatient
        == whole.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0].ImagePositionPatient
    )


def test_a_short_sequence_of_undefined_length_is_parsed_as_pydicom_parses_it(tmp_path):
    path = write_large_sequence(tmp_path / "seq.dcm", 20_000)
    header, _ = read_header_before_pixels(path)
    element = header.get_item(SEQUENCE, keep_deferred=True)
    assert element.value is not None and len(element.value) == len(dcmread(path).PerFrameFunctionalGroupsSequence)


def _element_bytes(path, tag: int) -> bytes:
    header, _ = read_header(path)
    element = header.get_item(tag, keep_deferred=True)
    assert element.value is None, "expected a deferred element"
    header_length = 8 if element.is_implicit_VR else 12
    with open(path, "rb") as f:
        end = element_end(
            f, element.value_tell, element.length, implicit=element.is_implicit_VR, little=True, vr=element.VR
        )
        f.seek(element.value_tell - header_length)
        return f.read(end - element.value_tell + header_length)


@pytest.mark.parametrize("implicit", [False, True])
def test_an_edit_copies_a_deferred_sequence_byte_for_byte(tmp_path, implicit):
    path = write_large_sequence(tmp_path / "seq.dcm", 2 * DEFER_SIZE, implicit=implicit)
    header, layout = read_header(path)
    edited = clone_header(header)
    edited.PatientID = "EDITED"
    assert edited.get_item(SEQUENCE, keep_deferred=True).value is None
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(path, edited, layout, f)
    assert _element_bytes(out, SEQUENCE) == _element_bytes(path, SEQUENCE)
    result = dcmread(out)
    assert result.PatientID == "EDITED" and result.PixelData == dcmread(path).PixelData


def test_an_edit_that_reads_the_deferred_sequence_writes_what_it_changed(tmp_path):
    path = write_large_sequence(tmp_path / "seq.dcm", 2 * DEFER_SIZE)
    header, layout = read_header(path)
    edited = clone_header(header)
    edited.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = [9, 9, 9]
    out = io.BytesIO()
    write_spliced(path, edited, layout, out)
    result = dcmread(io.BytesIO(out.getvalue()))
    assert result.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient == [9, 9, 9]
    assert dcmread(path).PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient == [0, 0, 0]


def test_an_edit_copies_a_long_document_without_reading_it(tmp_path):
    path = write_large_pdf(tmp_path / "doc.dcm", 2 * DEFER_SIZE)
    header, layout = read_header(path)
    edited = clone_header(header)
    edited.DocumentTitle = "renamed"
    assert edited.get_item(0x00420011, keep_deferred=True).value is None
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(path, edited, layout, f)
    assert _element_bytes(out, 0x00420011) == _element_bytes(path, 0x00420011)
    assert dcmread(out).DocumentTitle == "renamed"


def test_only_the_named_attributes_are_read_past_a_long_sequence(tmp_path):
    path = write_large_sequence(tmp_path / "seq.dcm", 2 * DEFER_SIZE)
    header, pixel_start = read_header_before_pixels(path, only=["SOPInstanceUID", "Modality"])
    assert set(header.keys()) <= {0x00080005, 0x00080018, 0x00080060}
    assert header.Modality == "CT" and pixel_start == _pixel_element_start(path)


def test_a_long_element_after_the_pixel_data_is_deferred_and_copied(tmp_path):
    path = write_large_sequence(tmp_path / "seq.dcm", 20_000)
    padding = os.urandom(2 * DEFER_SIZE)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, len(padding)) + padding)
    header, layout = read_header(path)
    assert header.get_item(0xFFFCFFFC, keep_deferred=True).value is None
    edited = clone_header(header)
    edited.PatientID = "EDITED"
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(path, edited, layout, f)
    assert dcmread(out)[0xFFFCFFFC].value == padding


def _anonymized_reading_no_deferred_value(tmp_path, monkeypatch, path):
    """The ``anonymize`` stage's result for ``path``; reading any deferred value whole fails the test."""
    import pydicom.filereader

    from tests.support.deid import envelope_for, key_file, stage

    envelope = envelope_for(path)
    envelope.instance.full_header()

    def no_deferred_reads(*args):
        raise AssertionError("a deferred value was read whole")

    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", no_deferred_reads)
    return stage(key_file=key_file(tmp_path))(envelope)


def test_anonymize_replaces_a_long_document_without_reading_it(tmp_path, monkeypatch):
    """PS3.15 replaces the Encapsulated Document (action D): the dummy goes in without the
    document being read from the file first."""
    path = write_large_pdf(tmp_path / "doc.dcm", 2 * DEFER_SIZE)
    result = _anonymized_reading_no_deferred_value(tmp_path, monkeypatch, path)
    header = result.instance.header
    assert header.PatientIdentityRemoved == "YES" and header.EncapsulatedDocument == b"\0\0"
    out = io.BytesIO()
    write_spliced(path, header, result.instance.layout, out)
    assert dcmread(io.BytesIO(out.getvalue())).EncapsulatedDocument == b"\0\0"


def test_anonymize_rewrites_a_long_sequence_item_by_item_without_reading_it_whole(tmp_path, monkeypatch):
    """Frame Comments (X in PS3.15) in every item of a long Per-frame Functional Groups
    Sequence: removed item by item into a scratch file; the sequence is never read whole."""
    from router.spool.long_sequences import ElementElsewhere

    path = write_large_sequence(tmp_path / "seq.dcm", 2 * DEFER_SIZE)
    result = _anonymized_reading_no_deferred_value(tmp_path, monkeypatch, path)
    header = result.instance.header
    assert isinstance(header.get_item(SEQUENCE, keep_deferred=True), ElementElsewhere)
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(path, header, result.instance.layout, f)
    monkeypatch.undo()
    original, anonymized = dcmread(path), dcmread(out)
    items = anonymized.PerFrameFunctionalGroupsSequence
    assert len(items) == len(original.PerFrameFunctionalGroupsSequence) > 60
    assert all("FrameComments" not in item for item in items)
    assert "FrameComments" in original.PerFrameFunctionalGroupsSequence[0]
    assert (
        items[-1].PlanePositionSequence[0].ImagePositionPatient
        == original.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0].ImagePositionPatient
    )
    assert anonymized.PatientIdentityRemoved == "YES" and anonymized.PixelData == original.PixelData
    assert "FrameComments" not in header.PerFrameFunctionalGroupsSequence[0]  # a later stage sees the edit


def test_a_deflate_bomb_is_refused_before_it_inflates_past_the_ceiling(tmp_path):
    import tracemalloc

    from router.spool.deflated import MAX_INFLATED, InflatesTooFar

    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 64 * MAX_INFLATED)
    assert bomb.stat().st_size < MAX_INFLATED // 16
    tracemalloc.start()
    try:
        with pytest.raises(InflatesTooFar):
            read_header_before_pixels(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * MAX_INFLATED


def test_a_deflated_data_set_under_the_ceiling_is_read_and_rewritten(tmp_path):
    from router.spool.deflated import MAX_INFLATED

    small = write_deflate_bomb(tmp_path / "small.dcm", MAX_INFLATED // 4)
    header, layout = read_header(small)
    assert layout.deflated and header.PatientID == "BOMB"
    header.PatientID = "EDITED"
    out = tmp_path / "out.dcm"
    with open(out, "wb") as f:
        write_spliced(small, header, layout, f)
    result = dcmread(out)
    assert result.PatientID == "EDITED" and len(result.PixelData) == len(dcmread(small).PixelData)
