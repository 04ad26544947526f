"""The transcoder's header from element bytes gives the data set pydicom's way gives."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from router.spool.element_stream import NotStreamable
from router.transcode import files
from router.transcode.files import transcode_file
from tests.support.images import dcmtk_convert, write_image
from tests.support.peers import have_dcmtk
from tests.support.richgen import write_rich_study

SHAPES = {
    "12-bit signed": dict(bits_stored=12, signed=True),
    "8-bit": dict(bits_stored=8),
    "RGB": dict(bits_stored=8, samples=3),
    "multi-frame 16-bit": dict(bits_stored=16, frames=3),
}


def _pydicom_way(monkeypatch, source, target, syntax) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(files, "_transcode_from_bytes", _not_streamable)
        transcode_file(source, target, syntax)


def _not_streamable(*args):
    raise NotStreamable("the pydicom way, for comparison")


def _taken(monkeypatch) -> list:
    calls: list = []
    stock = files.output_header
    monkeypatch.setattr(files, "output_header", lambda *a: calls.append(a) or stock(*a))
    return calls


def _same_data_set(a, b) -> None:
    first, second = dcmread(a), dcmread(b)
    assert first.file_meta.TransferSyntaxUID == second.file_meta.TransferSyntaxUID
    assert first.file_meta.MediaStorageSOPInstanceUID == second.file_meta.MediaStorageSOPInstanceUID
    assert sorted(first.keys()) == sorted(second.keys())
    for element in first:
        assert element.value == second[element.tag].value, element.keyword


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless], ids=lambda uid: uid.keyword)
def test_encoding_and_decoding_write_the_data_set_pydicom_s_way_writes(tmp_path, monkeypatch, shape, syntax):
    source = tmp_path / "in.dcm"
    write_image(source, **SHAPES[shape])
    taken = _taken(monkeypatch)
    transcode_file(source, tmp_path / "encoded.dcm", syntax)
    transcode_file(tmp_path / "encoded.dcm", tmp_path / "decoded.dcm", ExplicitVRLittleEndian)
    assert len(taken) == 2
    _pydicom_way(monkeypatch, source, tmp_path / "encoded-pydicom.dcm", syntax)
    _pydicom_way(monkeypatch, tmp_path / "encoded.dcm", tmp_path / "decoded-pydicom.dcm", ExplicitVRLittleEndian)
    _same_data_set(tmp_path / "encoded.dcm", tmp_path / "encoded-pydicom.dcm")
    _same_data_set(tmp_path / "decoded.dcm", tmp_path / "decoded-pydicom.dcm")


def test_a_rich_header_with_sequences_and_private_elements_is_carried_over(tmp_path, monkeypatch):
    (source,) = write_rich_study(tmp_path / "rich", series=1, per_series=1)
    taken = _taken(monkeypatch)
    transcode_file(source, tmp_path / "rle.dcm", RLELossless)
    assert len(taken) == 1
    _pydicom_way(monkeypatch, source, tmp_path / "rle-pydicom.dcm", RLELossless)
    _same_data_set(tmp_path / "rle.dcm", tmp_path / "rle-pydicom.dcm")


def test_what_the_bytes_do_not_cover_takes_pydicom_s_way(tmp_path, monkeypatch):
    source = tmp_path / "in.dcm"
    write_image(source, bits_stored=12)
    taken = _taken(monkeypatch)
    transcode_file(source, tmp_path / "implicit.dcm", ImplicitVRLittleEndian)  # element headers change
    assert taken == []
    assert dcmread(tmp_path / "implicit.dcm").file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK's dcmcjpeg")
def test_a_jpeg_baseline_colour_source_is_decoded_with_its_photometric_interpretation_and_lossy_mark(
    tmp_path, monkeypatch
):
    source, jpeg = tmp_path / "in.dcm", tmp_path / "jpeg.dcm"
    write_image(source, bits_stored=8, samples=3)
    dcmtk_convert("dcmcjpeg", source, jpeg, "+eb")
    unmarked = dcmread(jpeg)
    assert unmarked.PhotometricInterpretation == "YBR_FULL_422"
    del unmarked.LossyImageCompression  # DCMTK marks it; the transcoder must mark a lossy source itself
    unmarked.save_as(jpeg, enforce_file_format=True)
    taken = _taken(monkeypatch)
    transcode_file(jpeg, tmp_path / "decoded.dcm", ExplicitVRLittleEndian)
    assert len(taken) == 1
    _pydicom_way(monkeypatch, jpeg, tmp_path / "decoded-pydicom.dcm", ExplicitVRLittleEndian)
    _same_data_set(tmp_path / "decoded.dcm", tmp_path / "decoded-pydicom.dcm")
    decoded = dcmread(tmp_path / "decoded.dcm")
    assert (decoded.PhotometricInterpretation, decoded.LossyImageCompression) == ("RGB", "01")
