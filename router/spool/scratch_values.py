"""Long sequences rewritten item by item into a scratch file, never held in memory whole.

A top-level sequence longer than :data:`router.spool.splice.DEFER_SIZE` stays in the
spooled file (deferred). A stage that must look into every item of it (de-identification)
calls :func:`rewrite_sequence_items`: the items are read from the file one at a time,
edited, and written to an anonymous scratch file beside the spooled file; the header then
holds an :class:`ElementElsewhere` instead of the deferred element. Writing the edited
instance copies it from the scratch file byte for byte (:func:`router.spool.splice.write_spliced`);
a stage that reads it afterwards gets the edited items (:class:`EditableHeader`). The
scratch file has no name: it is gone once the last header holding it is.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Callable

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset, read_sequence_item
from pydicom.filewriter import write_sequence_item
from pydicom.tag import BaseTag, Tag

from router.spool.spans import UNDEFINED, element_header_length

SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


class ElementElsewhere(RawDataElement):
    """A deferred element whose bytes (header included) are the whole of ``self.file``, not the spooled file."""


class EditableHeader(Dataset):
    """A header being edited: reading an :class:`ElementElsewhere` reads it from its scratch file.

    ``holds_elsewhere`` is set once it holds one (most headers never do, and their reads
    take pydicom's path at once)."""

    holds_elsewhere = False

    def __getitem__(self, key):
        if self.holds_elsewhere and not isinstance(key, slice):
            try:
                tag = Tag(key)
            except (ValueError, TypeError, OverflowError):
                return super().__getitem__(key)
            element = self._dict.get(tag)
            if isinstance(element, ElementElsewhere):
                self[tag] = _read_elsewhere(element, convert_encodings(self.get("SpecificCharacterSet", "ISO_IR 6")))
        return super().__getitem__(key)


def is_long_sequence(element) -> bool:
    """Whether a top-level element is a sequence left unread in a file (deferred or elsewhere)."""
    return isinstance(element, RawDataElement) and element.value is None and element.length == UNDEFINED


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
    source = element.file if isinstance(element, ElementElsewhere) else open(source_path, "rb")
    try:
        if not implicit and _vr_in_file(source, element) != b"SQ":
            return False  # an undefined-length UN holds Implicit VR items: left to pydicom
        directory = Path(source_path).parent if source_path else None
        scratch = tempfile.TemporaryFile(dir=directory)
        out = DicomFileLike(scratch)
        out.is_little_endian, out.is_implicit_VR = little, implicit
        head = _sequence_header(tag, implicit, little)
        out.write(head)
        source.seek(element.value_tell)
        while (item := read_sequence_item(source, implicit, little, encoding)) is not None:
            edit(item)
            write_sequence_item(out, item, encoding)
        out.write(SEQUENCE_END if little else struct.pack(">HHI", 0xFFFE, 0xE0DD, 0))
        scratch.flush()
    finally:
        if not isinstance(element, ElementElsewhere):
            source.close()
    rewritten = ElementElsewhere(BaseTag(tag), "SQ", UNDEFINED, None, len(head), implicit, little, True, True)
    rewritten.file = scratch
    header[tag] = rewritten
    header.holds_elsewhere = True
    return True


def _vr_in_file(source, element: RawDataElement) -> bytes:
    source.seek(element.value_tell - element_header_length(False, "SQ") + 4)
    return source.read(2)


def _sequence_header(tag: int, implicit: bool, little: bool) -> bytes:
    endian = "<" if little else ">"
    head = struct.pack(endian + "HH", tag >> 16, tag & 0xFFFF)
    return head + (b"" if implicit else b"SQ\0\0") + struct.pack(endian + "I", UNDEFINED)


def _read_elsewhere(element: ElementElsewhere, encoding) -> object:
    """The sequence an :class:`ElementElsewhere` holds, parsed."""
    scratch = element.file
    size = scratch.seek(0, 2)
    scratch.seek(0)
    part = read_dataset(scratch, element.is_implicit_VR, element.is_little_endian, bytelength=size,
                        parent_encoding=encoding)
    return part[element.tag]
