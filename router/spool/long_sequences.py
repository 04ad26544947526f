"""Top-level sequences too long to parse whole: left in their file, read or rewritten on demand.

pydicom defers long values of defined length, but parses a sequence of undefined length
whole. :func:`router.spool.splice.read_header_before_pixels` leaves such a sequence, when
longer than :data:`router.spool.splice.DEFER_SIZE`, in the spooled file as an unread raw
element (:func:`is_long_sequence`); the header classes here (:class:`SpoolHeader`,
:class:`EditableHeader`) parse it from the file if something asks for it, and
:func:`router.spool.splice.write_spliced` copies it byte for byte if nothing did.

A stage that must look into every item (de-identification) calls
:func:`rewrite_sequence_items`: the items are read from the file one at a time, edited, and
written to an anonymous scratch file beside the spooled file; the header then holds an
:class:`ElementElsewhere`, read and copied from that file instead. The scratch file has no
name: it is gone once the last header holding it is.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeGuard

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset, read_sequence_item
from pydicom.filewriter import write_sequence_item
from pydicom.tag import BaseTag, Tag

from router.spool.spans import UNDEFINED, element_end, element_header_length


class ElementElsewhere(RawDataElement):
    """An unread sequence whose bytes (element header included) are the whole of ``self.file``,
    a scratch file, not the spooled file."""

    file: IO[bytes]


def is_long_sequence(element) -> TypeGuard[RawDataElement]:
    """Whether a top-level element is a sequence of undefined length left unread in a file."""
    return isinstance(element, RawDataElement) and element.value is None and element.length == UNDEFINED


def long_sequence(tag: int, value_start: int, implicit: bool, little: bool) -> RawDataElement:
    """The unread element standing for the sequence ``tag`` whose items start at ``value_start``."""
    return RawDataElement(BaseTag(tag), "SQ", UNDEFINED, None, value_start, implicit, little, True, True)


class _ReadsLongSequences:
    """Dataset behaviour: reading a long sequence parses it from its file. ``holds_long_sequences``
    is set once the header holds one (most never do, and their reads take pydicom's path at once)."""

    holds_long_sequences = False

    def __getitem__(self, key):
        if self.holds_long_sequences and not isinstance(key, slice):
            try:
                tag = Tag(key)
            except (ValueError, TypeError, OverflowError):
                return super().__getitem__(key)
            element = self._dict.get(tag)
            if is_long_sequence(element):
                self[tag] = _parse(
                    element,
                    getattr(self, "filename", None),
                    convert_encodings(self.get("SpecificCharacterSet", "ISO_IR 6")),
                )
        return super().__getitem__(key)


class SpoolHeader(_ReadsLongSequences, FileDataset):
    """A header as read from a spooled file."""


class EditableHeader(_ReadsLongSequences, Dataset):
    """A copy of a header, to edit."""


def _parse(element: RawDataElement, path, encoding) -> DataElement:
    """The sequence an unread element stands for, parsed from its file."""
    if isinstance(element, ElementElsewhere):
        return _parse_from(element.file, element, encoding)
    with open(path, "rb") as f:
        return _parse_from(f, element, encoding)


def _parse_from(f, element: RawDataElement, encoding) -> DataElement:
    start = element.value_tell - element_header_length(element.is_implicit_VR, "SQ")
    f.seek(start + 4)
    vr = None if element.is_implicit_VR else f.read(2).decode("ascii", "replace")
    end = element_end(
        f, element.value_tell, UNDEFINED, implicit=element.is_implicit_VR, little=element.is_little_endian, vr=vr
    )
    f.seek(start)
    part = read_dataset(
        f, element.is_implicit_VR, element.is_little_endian, bytelength=end - start, parent_encoding=encoding
    )
    return part[element.tag]


def rewrite_sequence_items(header: Dataset, tag: int, edit: Callable[[Dataset], None]) -> bool:
    """Apply ``edit`` to each item of the long sequence ``tag`` of ``header``, one item in memory
    at a time, and put the result in a scratch file in its place. False (nothing done) when
    the sequence is not a long one this can rewrite: the caller reads it whole instead."""
    if not isinstance(header, EditableHeader):
        return False
    element = header.get_item(tag, keep_deferred=True)
    if not is_long_sequence(element):
        return False
    source_path = getattr(header, "filename", None)
    if source_path is None and not isinstance(element, ElementElsewhere):
        return False
    implicit, little = element.is_implicit_VR, element.is_little_endian
    encoding = convert_encodings(header.get("SpecificCharacterSet", "ISO_IR 6"))
    source: Any = element.file if isinstance(element, ElementElsewhere) else open(str(source_path), "rb")
    try:
        if not implicit and _vr_in_file(source, element) != b"SQ":
            return False  # an undefined-length UN holds Implicit VR items: parsed whole instead
        scratch = tempfile.TemporaryFile(dir=Path(source_path).parent if source_path else None)
        out = DicomFileLike(scratch)
        out.is_little_endian, out.is_implicit_VR = little, implicit
        head = _sequence_header(tag, implicit, little)
        out.write(head)
        source.seek(element.value_tell)
        while (item := read_sequence_item(source, implicit, little, encoding)) is not None:
            edit(item)
            write_sequence_item(out, item, encoding)
        out.write_tag(0xFFFEE0DD)
        out.write_UL(0)
        scratch.flush()
    finally:
        if not isinstance(element, ElementElsewhere):
            source.close()
    rewritten = ElementElsewhere(BaseTag(tag), "SQ", UNDEFINED, None, len(head), implicit, little, True, True)
    rewritten.file = scratch
    header[tag] = rewritten
    header.holds_long_sequences = True
    return True


def _vr_in_file(source, element: RawDataElement) -> bytes:
    source.seek(element.value_tell - element_header_length(False, "SQ") + 4)
    return source.read(2)


def _sequence_header(tag: int, implicit: bool, little: bool) -> bytes:
    endian = "<" if little else ">"
    head = struct.pack(endian + "HH", tag >> 16, tag & 0xFFFF)
    return head + (b"" if implicit else b"SQ\0\0") + struct.pack(endian + "I", UNDEFINED)
