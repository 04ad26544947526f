"""Header-only rewrites of Part-10 files: the pixel data is copied byte for byte, never decoded.

:func:`read_header` parses everything except the top-level pixel data element: the
elements before it, and any elements after it (trailing padding, private groups,
signatures), merged into one dataset. Matching needs only the first part
(:func:`read_header_before_pixels`); :func:`locate_pixel_data` adds the rest. :func:`write_spliced` writes an edited header,
then the original pixel data element copied verbatim from the source file, then the
edited trailing elements. Memory stays at the size of the header whatever the size of
the pixel data. Deflated files are one zlib stream and cannot be spliced; they are
rewritten whole (they are small in practice).
"""

from __future__ import annotations

import copy
import os
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import UID

PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
COPY_CHUNK = 1024 * 1024
DEFER_SIZE = 256 * 1024


class SpliceError(ValueError):
    """The file cannot be split into header and pixel data."""


@dataclass(frozen=True)
class Layout:
    """Where the top-level pixel data element sits in its file (absolute byte offsets)."""

    pixel_tag: int | None
    pixel_start: int | None
    pixel_end: int | None
    size: int
    deflated: bool = False


def read_header(path: Path | str) -> tuple[Dataset, Layout]:
    """The dataset without its top-level pixel data (trailing elements included), and where that pixel data is."""
    header, start = read_header_before_pixels(path)
    return header, locate_pixel_data(path, header, start)


def read_header_before_pixels(path: Path | str) -> tuple[Dataset, int]:
    """The elements before the top-level pixel data, and the offset where that pixel data starts.

    This is all that matching needs; :func:`locate_pixel_data` does the rest for an edit.
    Values longer than :data:`DEFER_SIZE` (an Encapsulated Document, a waveform) are not
    read: pydicom reads one from the file only if something asks for it.
    """
    with open(path, "rb") as f:
        ds = dcmread(f, stop_before_pixels=True, defer_size=DEFER_SIZE)
        return ds, f.tell()


def locate_pixel_data(path: Path | str, header: Dataset, start: int) -> Layout:
    """Where the pixel data element that starts at ``start`` ends; elements after it are added to ``header``."""
    size = os.path.getsize(path)
    ts = UID(header.file_meta.TransferSyntaxUID)
    if ts.is_deflated:
        return Layout(None, None, None, size, deflated=True)
    if start >= size:
        return Layout(None, None, None, size)
    with open(path, "rb") as f:
        tag, end = _pixel_element_end(f, start, size, ts)
        if end < size:
            f.seek(end)
            tail = read_dataset(BytesIO(f.read(size - end)), ts.is_implicit_VR, ts.is_little_endian)
            for element in tail:
                header.add(element)
    return Layout(tag, start, end, size)


def _pixel_element_end(f, start: int, size: int, ts: UID) -> tuple[int, int]:
    endian = "<" if ts.is_little_endian else ">"
    f.seek(start)
    head = f.read(8)
    if len(head) < 8:
        raise SpliceError(f"file ends inside the element header at byte {start}")
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        raise SpliceError(f"expected pixel data at byte {start}, found ({group:04X},{elem:04X})")
    if ts.is_implicit_VR:
        (length,) = struct.unpack(endian + "L", head[4:8])
        value_start = start + 8
    elif head[4:6] in LONG_VRS:
        (length,) = struct.unpack(endian + "L", f.read(4))
        value_start = start + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        value_start = start + 8
    if length != 0xFFFFFFFF:
        end = value_start + length
    else:
        end = _encapsulated_end(f, value_start, endian)
    if end > size:
        raise SpliceError("pixel data runs past the end of the file (truncated)")
    return tag, end


def _encapsulated_end(f, position: int, endian: str) -> int:
    """Walk the items of encapsulated pixel data to its sequence delimiter."""
    f.seek(position)
    while True:
        item = f.read(8)
        if len(item) < 8:
            raise SpliceError("file ends inside encapsulated pixel data")
        group, elem, length = struct.unpack(endian + "HHL", item)
        if (group, elem) == (0xFFFE, 0xE000):
            f.seek(length, os.SEEK_CUR)
        elif (group, elem) == (0xFFFE, 0xE0DD):
            return f.tell()
        else:
            raise SpliceError(f"unexpected ({group:04X},{elem:04X}) inside encapsulated pixel data")


def write_spliced(source: Path | str, header: Dataset, layout: Layout, out) -> None:
    """Write ``header`` + the source's pixel data element (verbatim) as a Part-10 file to ``out``.

    ``header`` must not hold a top-level pixel data element; elements after the pixel
    data tag are written after it. The file meta gets the header's SOP class and
    instance UIDs.
    """
    if any(tag in header for tag in PIXEL_TAGS):
        raise SpliceError("the edited header holds a pixel data element; the pixel data comes from the source")
    header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    if layout.deflated:
        _write_whole(source, header, out)
        return
    cut = layout.pixel_tag if layout.pixel_tag is not None else 0xFFFFFFFF
    before, after = _split(header, cut)
    ts = UID(header.file_meta.TransferSyntaxUID)
    fp = DicomFileLike(out)
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    fp.write((getattr(header, "preamble", None) or b"\0" * 128)[:128].ljust(128, b"\0") + b"DICM")
    write_file_meta_info(fp, header.file_meta, enforce_standard=True)
    charset = header.get("SpecificCharacterSet", "iso8859")
    write_dataset(fp, correct_ambiguous_vr(before, ts.is_little_endian), parent_encoding=charset)
    if layout.pixel_start is None:
        return
    with open(source, "rb") as src:
        src.seek(layout.pixel_start)
        _copy_range(src, out, layout.pixel_end - layout.pixel_start)
    if len(after):
        write_dataset(fp, correct_ambiguous_vr(after, ts.is_little_endian), parent_encoding=charset)


def _split(header: Dataset, cut: int) -> tuple[Dataset, Dataset]:
    """The elements before and after ``cut``; unconverted (raw) elements stay raw, to be written as read."""
    before, after = Dataset(), Dataset()
    before.file_meta = header.file_meta
    for part in (before, after):
        _copy_encoding(header, part)
    for element in header.elements():
        (before if element.tag < cut else after)[element.tag] = element
    return before, after


def _copy_encoding(source: Dataset, target: Dataset) -> None:
    """Carry the encoding a dataset was read with, so pydicom writes its raw elements as they are."""
    implicit, little = source.original_encoding
    if implicit is None:
        ts = UID(source.file_meta.TransferSyntaxUID)
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    target.set_original_encoding(implicit, little, source.original_character_set)


def clone_header(header: Dataset) -> Dataset:
    """An independent copy of a header, much cheaper than ``copy.deepcopy``.

    Elements not yet decoded (raw) are immutable and shared; decoded ones are copied, and
    sequences copied item by item, so editing the clone never changes ``header``.
    """
    clone = _clone_elements(header, Dataset())
    if hasattr(header, "file_meta"):
        _copy_encoding(header, clone)
        clone.file_meta = _clone_elements(header.file_meta, FileMetaDataset())
        clone.file_meta.set_original_encoding(False, True)
    clone.preamble = getattr(header, "preamble", None)
    return clone


def _clone_elements(source: Dataset, target: Dataset) -> Dataset:
    for element in source.elements():
        if isinstance(element, RawDataElement):
            target[element.tag] = element
        elif element.VR == "SQ":
            target[element.tag] = DataElement(element.tag, "SQ", Sequence([clone_header(i) for i in element.value]))
        else:
            target[element.tag] = copy.copy(element)
    return target


def _write_whole(source, header: Dataset, out) -> None:
    full = dcmread(source)
    for tag in [t for t in full.keys() if t not in PIXEL_TAGS]:
        del full[tag]
    for element in header:
        full.add(element)
    full.file_meta = header.file_meta
    dcmwrite(out, full, enforce_file_format=True)


def _copy_range(src, dst, length: int) -> None:
    while length > 0:
        chunk = src.read(min(COPY_CHUNK, length))
        if not chunk:
            raise SpliceError("source file ended while copying its pixel data")
        dst.write(chunk)
        length -= len(chunk)
