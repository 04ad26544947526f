"""Transcoding file to file: lossless round trips, the header each syntax needs, DCMTK's
codecs as a second opinion, lossy bookkeeping and damaged input."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from router.transcode.files import transcode_file
from router.transcode.policy import TranscodePolicy
from router.transcode.syntaxes import CannotTranscode, parse_syntax
from tests.support.deid import dciodvfy_errors, have_dciodvfy
from tests.support.images import dcmtk_convert, write_image
from tests.support.peers import have_dcmtk
from tests.support.richgen import write_rich_study

LOSSLESS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]
SHAPES = {
    "8-bit": dict(bits_stored=8),
    "12-bit signed": dict(bits_stored=12, signed=True),
    "12-bit": dict(bits_stored=12),
    "16-bit": dict(bits_stored=16),
    "16-bit signed": dict(bits_stored=16, signed=True),
    "RGB": dict(bits_stored=8, samples=3),
    "multi-frame 16-bit": dict(bits_stored=16, frames=3),
    "multi-frame RGB": dict(bits_stored=8, samples=3, frames=2),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("syntax", LOSSLESS[1:], ids=lambda uid: uid.keyword)
def test_lossless_round_trip_keeps_every_pixel(tmp_path, shape, syntax):
    source = tmp_path / "in.dcm"
    original = write_image(source, **SHAPES[shape])
    encoded, decoded = tmp_path / "encoded.dcm", tmp_path / "decoded.dcm"
    transcode_file(source, encoded, syntax)
    transcode_file(encoded, decoded, ExplicitVRLittleEndian)
    for path in (encoded, decoded):
        ds, before = dcmread(path), dcmread(source)
        np.testing.assert_array_equal(ds.pixel_array, original)
        for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "Rows"):
            assert ds[keyword].value == before[keyword].value, keyword
        assert ds.get("PlanarConfiguration", 0) == 0
        assert ds.SOPInstanceUID == before.SOPInstanceUID
    assert dcmread(encoded).file_meta.TransferSyntaxUID == syntax


def test_the_rest_of_the_header_is_kept_and_trailing_elements_follow_the_pixel_data(tmp_path):
    (source,) = write_rich_study(tmp_path / "rich", series=1, per_series=1)
    target = tmp_path / "out.dcm"
    transcode_file(source, target, JPEG2000Lossless)
    before, after = dcmread(source), dcmread(target)
    assert {e.tag for e in before if e.tag != 0x7FE00010} == {e.tag for e in after if e.tag != 0x7FE00010}
    assert after.PatientName == before.PatientName and after.StudyInstanceUID == before.StudyInstanceUID
    np.testing.assert_array_equal(after.pixel_array, before.pixel_array)


@pytest.mark.skipif(not have_dciodvfy(), reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize("syntax", LOSSLESS[1:] + [JPEG2000], ids=lambda uid: uid.keyword)
def test_outputs_validate_as_well_as_inputs(tmp_path, syntax):
    (source,) = write_rich_study(tmp_path / "rich", series=1, per_series=1)
    target = tmp_path / "out.dcm"
    transcode_file(source, target, syntax)
    assert dciodvfy_errors(target) <= dciodvfy_errors(source)


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [
        ("dcmcjpls", [], JPEGLSLossless),
        ("dcmcrle", [], RLELossless),
        ("dcmcjpeg", ["+e1"], JPEGLosslessSV1),
    ],
)
@pytest.mark.parametrize("shape", ["12-bit", "16-bit signed", "RGB", "multi-frame 16-bit"])
def test_what_dcmtk_compressed_is_decoded_to_the_same_pixels(tmp_path, tool, options, syntax, shape):
    source = tmp_path / "in.dcm"
    original = write_image(source, **SHAPES[shape])
    compressed, decoded = tmp_path / "dcmtk.dcm", tmp_path / "router.dcm"
    dcmtk_convert(tool, source, compressed, *options)
    assert dcmread(compressed).file_meta.TransferSyntaxUID == syntax
    transcode_file(compressed, decoded, ExplicitVRLittleEndian)
    np.testing.assert_array_equal(dcmread(decoded).pixel_array, original)


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
@pytest.mark.parametrize(("syntax", "tool"), [(JPEGLSLossless, "dcmdjpls"), (RLELossless, "dcmdrle")])
@pytest.mark.parametrize("shape", ["12-bit", "16-bit signed", "RGB", "multi-frame RGB"])
def test_what_the_router_compressed_dcmtk_decodes_to_the_same_pixels(tmp_path, syntax, tool, shape):
    source = tmp_path / "in.dcm"
    original = write_image(source, **SHAPES[shape])
    compressed, decoded = tmp_path / "router.dcm", tmp_path / "dcmtk.dcm"
    transcode_file(source, compressed, syntax)
    dcmtk_convert(tool, compressed, decoded)
    np.testing.assert_array_equal(dcmread(decoded).pixel_array, original)


@pytest.mark.parametrize("keep", [False, True])
def test_a_lossy_target_says_so_and_gets_a_new_uid_unless_kept(tmp_path, keep):
    source = tmp_path / "in.dcm"
    write_image(source, rows=64, columns=64, bits_stored=8, samples=3)
    target = tmp_path / "out.dcm"
    result = transcode_file(source, target, JPEGBaseline8Bit, keep_uid_on_lossy=keep)
    before, after = dcmread(source), dcmread(target)
    assert after.LossyImageCompression == "01"
    assert after.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(after.LossyImageCompressionRatio) > 1
    assert after.PhotometricInterpretation == "YBR_FULL_422"
    assert (after.SOPInstanceUID == before.SOPInstanceUID) is keep
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID == result.sop_instance_uid
    assert np.abs(after.pixel_array.astype(int) - before.pixel_array.astype(int)).mean() < 12


def test_lossy_after_lossy_appends_to_the_ratio_and_method_already_there(tmp_path):
    source = tmp_path / "in.dcm"
    write_image(source, rows=64, columns=64, bits_stored=8, samples=3)
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    transcode_file(source, first, JPEGBaseline8Bit)
    transcode_file(first, second, JPEG2000)
    ds = dcmread(second)
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    assert len(ds.LossyImageCompressionRatio) == 2 and ds.LossyImageCompression == "01"


def test_a_corrupt_frame_is_refused_with_the_codecs_reason(tmp_path):
    source = tmp_path / "in.dcm"
    write_image(source, rows=64, columns=64, bits_stored=16)
    compressed = tmp_path / "j2k.dcm"
    transcode_file(source, compressed, JPEG2000Lossless)
    data = bytearray(compressed.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    data[start + 4 : start + 40] = b"\x00" * 36
    compressed.write_bytes(bytes(data))
    with pytest.raises(CannotTranscode, match="cannot decode JPEG2000Lossless"):
        transcode_file(compressed, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    assert not (tmp_path / "out.dcm").exists()


def test_an_rle_frame_larger_than_its_header_says_is_refused_not_a_codec_panic(tmp_path):
    """pylibjpeg-rle (Rust) panics on a frame that decodes to more than Rows x Columns: pyo3's
    PanicException is a BaseException, which would end a delivery worker's thread."""
    source = tmp_path / "in.dcm"
    write_image(source, rows=16, columns=16, bits_stored=16)
    ds = dcmread(source)
    ds.PixelData = bytes(len(ds.PixelData))  # one replicate run per segment, which the panic needs
    ds.save_as(source)
    compressed = tmp_path / "rle.dcm"
    transcode_file(source, compressed, RLELossless)
    ds = dcmread(compressed)
    ds.Rows = 8
    ds.save_as(compressed)
    with pytest.raises(CannotTranscode, match="cannot decode RLELossless: .*index out of bounds"):
        transcode_file(compressed, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    assert not (tmp_path / "out.dcm").exists()


@pytest.mark.parametrize(
    "bits_stored,signed,frames", [(12, False, 1), (12, True, 2), (16, True, 1), (7, False, 1), (7, True, 3)]
)
def test_rle_frames_decoded_without_pydicom_s_decoder_give_the_same_bytes(
    tmp_path, monkeypatch, bits_stored, signed, frames
):
    """RLE Lossless monochrome frames go from the codec to a native file as bytes; bits above
    Bits Stored (junk here, as another encoder may leave them) are set as pydicom's decoder sets them."""
    import os

    from pydicom.encaps import encapsulate
    from rle.rle import encode_frame

    from router.transcode import frames as frame_module

    source = tmp_path / "in.dcm"
    write_image(source, rows=9, columns=11, bits_stored=bits_stored, signed=signed, frames=frames)
    ds = dcmread(source)
    size = ds.BitsAllocated // 8 * 9 * 11
    ds.PixelData = encapsulate([encode_frame(os.urandom(size), 9, 11, 1, ds.BitsAllocated, "<") for _ in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(source, enforce_file_format=True)
    transcode_file(source, tmp_path / "fast.dcm", ExplicitVRLittleEndian)
    direct = frame_module.decoded_frames
    monkeypatch.setattr(frame_module, "decoded_frames", lambda f, syntax, fmt, native: direct(f, syntax, fmt))
    transcode_file(source, tmp_path / "pydicom.dcm", ExplicitVRLittleEndian)
    assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "pydicom.dcm").read_bytes()


def test_what_cannot_be_encoded_is_refused_not_crashed(tmp_path):
    source = tmp_path / "in.dcm"
    write_image(source, rows=16, columns=16, bits_stored=16)
    with pytest.raises(CannotTranscode, match="JPEG Baseline holds only"):
        transcode_file(source, tmp_path / "jpeg.dcm", JPEGBaseline8Bit)
    with pytest.raises(CannotTranscode, match="cannot encode JPEG2000Lossless"):  # OpenJPEG: at least 32 x 32
        transcode_file(source, tmp_path / "j2k.dcm", JPEG2000Lossless)


def test_syntax_names_and_the_policy():
    assert parse_syntax("JPEG2000Lossless") == JPEG2000Lossless == parse_syntax(str(JPEG2000Lossless))
    with pytest.raises(ValueError, match="cannot write JPEG Lossless"):
        parse_syntax(str(JPEGLosslessSV1))
    with pytest.raises(ValueError, match="cannot write 'J2K'"):
        parse_syntax("J2K")
    policy = TranscodePolicy(transfer_syntaxes=["JPEG2000Lossless", "ExplicitVRLittleEndian"])
    explicit, j2k, jls = str(ExplicitVRLittleEndian), str(JPEG2000Lossless), str(JPEGLSLossless)
    assert policy.choose(jls, {jls, explicit}) == jls
    assert policy.choose(jls, {explicit, j2k}) == j2k
    assert policy.choose(jls, {str(RLELossless)}) is None
    always = TranscodePolicy(transfer_syntaxes=["JPEG2000Lossless"], transcode="always")
    assert always.choose(jls, {jls, j2k}) == j2k
    never = TranscodePolicy(transcode="never")
    assert never.choose(jls, {explicit}) is None and "never" in never.refusal(jls, {explicit})
    assert TranscodePolicy().choose(j2k, {str(ImplicitVRLittleEndian)}) == str(ImplicitVRLittleEndian)
    both = TranscodePolicy(transfer_syntaxes=["JPEG2000Lossless", "ExplicitVRLittleEndian"], transcode="always")
    assert both.candidates(explicit, {explicit, j2k}) == [j2k, explicit]
