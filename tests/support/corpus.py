"""Files from pydicom's test data that the byte-for-byte writer comparisons run on."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file

PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose_rle.dcm",
    "693_J2KI.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_small_odd.dcm",
    "MR_small_implicit.dcm",
]
# Nested, private and empty sequences, waveforms, SR, RT structures, overlays, padding, deflate.
MORE_PYDICOM_FILES = [
    "waveform_ecg.dcm",
    "MR_small_padded.dcm",
    "UN_sequence.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "reportsi.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "image_dfl.dcm",
    "empty_charset_LEI.dcm",
    "examples_overlay.dcm",
    "liver_1frame.dcm",
]


def pydicom_files(names: list[str]) -> list[Path]:
    return [Path(get_testdata_file(name)) for name in names]


def charset_files() -> list[Path]:
    """pydicom's files in many character sets (those that are instances)."""
    return [Path(p) for p in get_charset_files("chr*.dcm") if "SOPInstanceUID" in dcmread(p)]
