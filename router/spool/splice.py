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
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filereader import read_dataset, read_partial
from pydicom.filewriter import (
    correct_ambiguous_vr,
    dcmwrite,
    write_dataset,
    write_file_meta_info,
)
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from router.spool.deflated import DEFLATED, file_transfer_syntax, read_deflated
from router.spool.long_sequences import (
    EditableHeader,
    ElementElsewhere,
    SpoolHeader,
    is_long_sequence,
    long_sequence,
)
from router.spool.raw_elements import element_bytes, file_meta_bytes
from router.spool.spans import LONG_VRS, UNDEFINED, element_end, element_header_length

PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
D = TypeVar("D", bound=Dataset)
SOP_CLASS, SOP_INSTANCE = 0x00080016, 0x00080018
MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE = 0x00020002, 0x00020003
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


def read_header_before_pixels(
    path: Path | str, only: list | None = None, transfer_syntax: str | None = None
) -> tuple[Dataset, int]:
    """The elements before the top-level pixel data (``only``: just these tags or keywords, the
    other values skipped), and the offset where that pixel data starts. ``transfer_syntax``:
    the file's, when the caller knows it (else it is read from the file meta).

    This is all that matching needs; :func:`locate_pixel_data` does the rest for an edit.
    An element longer than :data:`DEFER_SIZE` (an Encapsulated Document, a waveform, a
    large sequence, of defined or undefined length) is not read: it is read from the file
    only if something asks for it (by pydicom, or by :mod:`router.spool.long_sequences` for
    a sequence of undefined length), and :func:`write_spliced` copies it byte for byte
    when nothing did. A deflated data set is inflated in memory, up to a ceiling
    (:mod:`router.spool.deflated`).
    """
    with open(path, "rb") as f:
        syntax = transfer_syntax or file_transfer_syntax(f)
        if syntax in DEFLATED:
            return read_deflated(path, stop_when=lambda tag, vr, length: tag in PIXEL_TAGS), 0
        stop = _StopBeforeLongOrPixels(f, UID(syntax) if syntax else None)
        only = [Tag(t) for t in only] if only else None
        ds = read_partial(f, stop_when=stop, defer_size=DEFER_SIZE, specific_tags=only)
        ds.__class__ = SpoolHeader
        _read_elements(f, ds, stop, only)
        return ds, f.tell()


class _StopBeforeLongOrPixels:
    """pydicom's ``stop_when``: stop at the top-level pixel data, and at a top-level element of
    undefined length longer than :data:`DEFER_SIZE` (measured with
    :func:`router.spool.spans.element_end` from the file's position, which is left where it was).

    pydicom defers only elements of defined length; a sequence of undefined length it
    parses whole. Without a transfer syntax (a file whose meta is not plain) nothing is
    measured: the file is read as pydicom reads it.
    """

    def __init__(self, f, syntax: UID | None):
        self.f = f
        self.syntax = syntax
        self.size = os.fstat(f.fileno()).st_size
        self.span: tuple[int, int] | None = None  # of the long element it stopped at

    @property
    def implicit(self) -> bool:
        assert self.syntax is not None  # measured only with a syntax (see _walkable)
        return self.syntax.is_implicit_VR

    @property
    def little(self) -> bool:
        assert self.syntax is not None
        return self.syntax.is_little_endian

    def __call__(self, tag, vr, length) -> bool:
        if tag in PIXEL_TAGS:
            return True
        if length != UNDEFINED or not self._walkable():
            return False
        value_start = self.f.tell()
        end = element_end(
            self.f, value_start, UNDEFINED, implicit=self.implicit, little=self.little, vr=vr, size=self.size
        )
        self.f.seek(value_start)
        if end - value_start <= DEFER_SIZE:
            return False
        self.span = (value_start, end)
        return True

    def _walkable(self) -> bool:
        return self.syntax is not None and self.syntax.is_transfer_syntax and not self.syntax.is_deflated


def _read_elements(f, ds: Dataset, stop: _StopBeforeLongOrPixels, only: list | None = None) -> None:
    """After ``stop`` stopped a read: add each long element of undefined length as a deferred
    one (if ``only`` names it), and the elements after it, up to the top-level pixel data or
    the end of the file."""
    encoding = convert_encodings(ds.get("SpecificCharacterSet", "ISO_IR 6"))
    while stop.span is not None:
        value_start, end = stop.span
        stop.span = None
        group, element = struct.unpack(("<" if stop.little else ">") + "HH", f.read(4))
        tag = BaseTag(group << 16 | element)
        if only is None or tag in only:
            ds[tag] = long_sequence(tag, value_start, stop.implicit, stop.little)
            ds.holds_long_sequences = True
        f.seek(end)
        part = read_dataset(
            f,
            stop.implicit,
            stop.little,
            stop_when=stop,
            defer_size=DEFER_SIZE,
            parent_encoding=encoding,
            specific_tags=only,
        )
        for tag in part.keys():
            ds[tag] = part.get_item(tag, keep_deferred=True)


def locate_pixel_data(path: Path | str, header: Dataset, start: int) -> Layout:
    """Where the pixel data element that starts at ``start`` ends; elements after it are added to
    ``header`` (long ones deferred, as in :func:`read_header_before_pixels`)."""
    size = os.path.getsize(path)
    ts = UID(header.file_meta.TransferSyntaxUID)
    if ts.is_deflated:
        return Layout(None, None, None, size, deflated=True)
    if start >= size:
        return Layout(None, None, None, size)
    with open(path, "rb") as f:
        tag, end = pixel_element_end(f, start, size, ts)
        if end < size:
            f.seek(end)
            stop = _StopBeforeLongOrPixels(f, ts)
            encoding = convert_encodings(header.get("SpecificCharacterSet", "ISO_IR 6"))
            tail = read_dataset(
                f,
                ts.is_implicit_VR,
                ts.is_little_endian,
                stop_when=stop,
                defer_size=DEFER_SIZE,
                parent_encoding=encoding,
            )
            for element_tag in tail.keys():
                header[element_tag] = tail.get_item(element_tag, keep_deferred=True)
            _read_elements(f, header, stop)
    return Layout(tag, start, end, size)


def pixel_element_end(f, start: int, size: int, ts: UID) -> tuple[int, int]:
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
        long_length = f.read(4)
        if len(long_length) < 4:
            raise SpliceError(f"file ends inside the element header at byte {start}")
        (length,) = struct.unpack(endian + "L", long_length)
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


def write_spliced(source: Path | str, header: Dataset, layout: Layout, out, pixel_data=None) -> None:
    """Write ``header`` + the source's pixel data element (verbatim) as a Part-10 file to ``out``.

    ``header`` must not hold a top-level pixel data element; elements after the pixel
    data tag are written after it, in the syntax the header's file meta names. The file
    meta gets the header's SOP class and instance UIDs. ``pixel_data``, if given, writes a
    new pixel data element to ``out`` in place of the source's (a transcoding).
    """
    if any(tag in header for tag in PIXEL_TAGS):
        raise SpliceError("the edited header holds a pixel data element; the pixel data comes from the source")
    for meta_tag, tag in ((MEDIA_SOP_CLASS, SOP_CLASS), (MEDIA_SOP_INSTANCE, SOP_INSTANCE)):
        header.file_meta[meta_tag] = DataElement(meta_tag, "UI", header[tag].value)
    if layout.deflated:
        _write_whole(source, header, out)
        return
    cut = layout.pixel_tag if layout.pixel_tag is not None else 0xFFFFFFFF
    tags = sorted(map(int, header.keys()))
    before, after = [t for t in tags if t < cut], [t for t in tags if t >= cut]
    ts = UID(header.file_meta.TransferSyntaxUID)
    fp = DicomFileLike(out)
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    fp.write((getattr(header, "preamble", None) or b"\0" * 128)[:128].ljust(128, b"\0") + b"DICM")
    meta = file_meta_bytes(header.file_meta)
    if meta is None:
        buffer = _buffer_like(fp)
        write_file_meta_info(buffer, header.file_meta, enforce_standard=True)
        meta = buffer.getvalue()
    fp.write(meta)
    charset = header.get("SpecificCharacterSet", "iso8859")
    with open(source, "rb") as src:
        _write_elements(fp, header, before, src, charset)
        if layout.pixel_start is None:
            return
        if pixel_data is not None:
            pixel_data(out)
        else:
            assert layout.pixel_end is not None  # known with its start
            src.seek(layout.pixel_start)
            copy_range(src, out, layout.pixel_end - layout.pixel_start)
        if after:
            _write_elements(fp, header, after, src, charset)


def _write_elements(fp, header: Dataset, tags: list[int], src, charset) -> None:
    """Write ``header``'s elements ``tags`` (in tag order): those still raw (never changed) as
    they were read, from memory or, when their value was left in the file, copied byte for
    byte from ``src``; simple decoded ones encoded by
    :func:`~router.spool.raw_elements.element_bytes`; the rest (sequences, non-ASCII text) by
    pydicom."""
    implicit = fp.is_implicit_VR
    run: list[int] = []
    for tag in tags:
        element = header.get_item(tag, keep_deferred=True)
        raw = element_bytes(element, implicit=implicit) if fp.is_little_endian else None
        if raw is None and not _is_deferred_as_written(element, fp):
            run.append(tag)
            continue
        _write_encoded(fp, header, run, charset)
        run = []
        if raw is not None:
            fp.write(raw)
        else:
            assert isinstance(element, RawDataElement)  # deferred
            _copy_element(src, element, fp)
    _write_encoded(fp, header, run, charset)


def _write_encoded(fp, part: Dataset, tags: list[int], charset) -> None:
    """Write ``part``'s elements ``tags`` through pydicom's writer, encoded in memory first."""
    if tags:
        encoded = correct_ambiguous_vr(_subset(part, tags), fp.is_little_endian)
        buffer = _buffer_like(fp)
        write_dataset(buffer, encoded, parent_encoding=charset)
        fp.write(buffer.getvalue())


def _buffer_like(fp) -> DicomBytesIO:
    """A memory buffer with ``fp``'s encoding, for pydicom's writer, which seeks back to fill in
    lengths (the file being written only moves forward: see
    :class:`~router.spool.checksum.ChecksummingWriter`)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = fp.is_little_endian, fp.is_implicit_VR
    return buffer


def _is_deferred_as_written(element, fp) -> bool:
    """A deferred element in the encoding ``fp`` writes (one in another, after a transcoding,
    is read and re-encoded by pydicom)."""
    return (
        _is_deferred(element)
        and element.is_implicit_VR == fp.is_implicit_VR
        and element.is_little_endian == fp.is_little_endian
    )


def _is_deferred(element) -> bool:
    return isinstance(element, RawDataElement) and element.value is None and element.length != 0


def _subset(source: Dataset, tags: list) -> Dataset:
    """A dataset holding ``source``'s elements ``tags`` as they are, with its encoding."""
    part = Dataset()
    _copy_encoding(source, part)
    for tag in tags:
        part[tag] = source.get_item(tag, keep_deferred=True)
    return part


def _copy_element(src, element: RawDataElement, fp) -> None:
    """Copy a deferred element's bytes, header included, from its file (``src``, or the scratch
    file of an :class:`~router.spool.long_sequences.ElementElsewhere`) to ``fp``."""
    if isinstance(element, ElementElsewhere):
        src = element.file
    start = element.value_tell - element_header_length(element.is_implicit_VR, element.VR)
    end = element_end(
        src,
        element.value_tell,
        element.length,
        implicit=element.is_implicit_VR,
        little=element.is_little_endian,
        vr=element.VR,
    )
    src.seek(start)
    group, elem = struct.unpack(("<" if element.is_little_endian else ">") + "HH", src.read(4))
    if group << 16 | elem != element.tag:
        raise SpliceError(f"the source no longer holds {element.tag} at byte {start}")
    src.seek(start)
    copy_range(src, fp, end - start)


def _copy_encoding(source: Dataset, target: Dataset) -> None:
    """Carry the encoding a dataset was read with, so pydicom writes its raw elements as they are."""
    implicit, little = source.original_encoding
    if implicit is None:
        ts = UID(source.file_meta.TransferSyntaxUID)
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    target.set_original_encoding(implicit, little, source.original_character_set)


def clone_header(header: Dataset) -> EditableHeader:
    """An independent copy of a header, much cheaper than ``copy.deepcopy``.

    Elements not yet decoded (raw) are immutable and shared; decoded ones are copied, and
    sequences copied item by item, so editing the clone never changes ``header``.
    """
    clone = _clone_elements(header, EditableHeader())
    if hasattr(header, "file_meta"):
        _copy_encoding(header, clone)
        clone.file_meta = _clone_elements(header.file_meta, FileMetaDataset())
        clone.file_meta.set_original_encoding(False, True)
    clone.preamble = getattr(header, "preamble", None)
    for name in ("filename", "fileobj_type", "timestamp", "buffer"):  # what reading a deferred element needs
        if hasattr(header, name):
            setattr(clone, name, getattr(header, name))
    return clone


def _clone_elements(source: Dataset, target: D) -> D:
    """Fill ``target`` with ``source``'s elements. Those that need nothing of what
    ``Dataset.__setitem__`` does (checks, and the private creator of a private element, already
    done for ``source``) go straight into the dataset's element dict: raw ones shared, decoded
    ones copied. Sequences go through ``__setitem__``, which ties their items to ``target``."""
    elements = target._dict
    for tag, element in source._dict.items():
        if isinstance(element, RawDataElement):
            if is_long_sequence(element):
                target.holds_long_sequences = True
            elements[tag] = element
        elif element.VR == "SQ":
            target[tag] = DataElement(element.tag, "SQ", Sequence([clone_header(i) for i in element.value]))
        else:
            elements[tag] = copy.copy(element)
    return target


def _write_whole(source, header: Dataset, out) -> None:
    full = read_deflated(source)
    for tag in [t for t in full.keys() if t not in PIXEL_TAGS]:
        del full[tag]
    for element in header:
        full.add(element)
    full.file_meta = header.file_meta
    buffer = io.BytesIO()
    dcmwrite(buffer, full, enforce_file_format=True)
    out.write(buffer.getvalue())


def copy_range(src, dst, length: int) -> None:
    while length > 0:
        chunk = src.read(min(COPY_CHUNK, length))
        if not chunk:
            raise SpliceError("source file ended while copying its pixel data")
        dst.write(chunk)
        length -= len(chunk)
