"""A Part-10 file's header as offsets into its bytes, read once: the file meta, the data set's
elements up to the pixel data, and where the pixel data lies.

:func:`read_stream_header` reads the first :data:`FIRST_READ` bytes (more, up to
:data:`MAX_HEADER`, only when the header is longer) and walks them with
:func:`~router.spool.element_stream.parse_elements`; nothing is decoded. The stages that
edit a header without pydicom's data set (anonymize, coerce) and the transcoder build on
it. :class:`~router.spool.element_stream.NotStreamable` means "read it with pydicom
instead": a big-endian or deflated file, a header over :data:`MAX_HEADER` bytes, elements
after the pixel data, bytes the walk does not take.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from pydicom.uid import UID

from router.spool.element_stream import Element, NotStreamable, parse_elements
from router.spool.splice import Layout, SpliceError, pixel_element_end

MAX_HEADER = 1024 * 1024
FIRST_READ = 64 * 1024
EXPLICIT_LITTLE, IMPLICIT_LITTLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
BIG_ENDIAN, DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
TRANSFER_SYNTAX = 0x00020010


@dataclass(frozen=True)
class StreamHeader:
    """``meta``: the file meta group's elements; ``elements``: the data set's, up to the pixel
    data; ``syntax``: the transfer syntax UID; ``pixel_start``: where the pixel data element
    starts (None when there is none)."""

    meta: list[Element]
    elements: list[Element]
    syntax: str
    pixel_start: int | None

    @property
    def implicit(self) -> bool:
        return self.syntax == IMPLICIT_LITTLE

    @classmethod
    def parse(cls, buf: bytes, size: int) -> StreamHeader | None:
        """The file meta and the data set's elements up to the pixel data; None when ``buf``
        ends before them (and the file does not)."""
        if len(buf) < 144 or buf[128:132] != b"DICM" or buf[132:136] != b"\x02\x00\x00\x00":
            raise NotStreamable("no plain file meta")
        (group_length,) = struct.unpack_from("<I", buf, 140)
        meta_end = 144 + group_length
        if meta_end > len(buf):
            return None
        meta, _ = parse_elements(buf, 144, meta_end, False)
        if any(e.tag >> 16 != 0x0002 for e in meta):
            raise NotStreamable("the file meta group length does not match its elements")
        syntax = next((text_of(buf, e) for e in meta if e.tag == TRANSFER_SYNTAX), "")
        if syntax in (BIG_ENDIAN, DEFLATED) or not UID(syntax).is_transfer_syntax:
            raise NotStreamable(f"transfer syntax {syntax!r}")
        try:
            elements, stop = parse_elements(buf, meta_end, len(buf), syntax == IMPLICIT_LITTLE)
        except NotStreamable:
            if len(buf) < size:
                return None
            raise
        if elements and elements[0].tag >> 16 <= 0x0002:
            raise NotStreamable("file meta elements after the file meta group")
        if stop < len(buf):
            return cls(meta, elements, syntax, stop)
        if len(buf) < size:
            return None
        return cls(meta, elements, syntax, None)


def read_stream_header(path: os.PathLike | str) -> tuple[bytes, StreamHeader, Layout]:
    """The bytes read from the start of the Part-10 file at ``path`` (its header, and more up
    to :data:`FIRST_READ`), its :class:`StreamHeader` and the pixel data's :class:`Layout`;
    raises :class:`NotStreamable`."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = f.read(min(size, FIRST_READ))
        header = StreamHeader.parse(buf, size)
        if header is None and size > len(buf):
            buf += f.read(min(size, MAX_HEADER) - len(buf))
            header = StreamHeader.parse(buf, size)
        if header is None:
            raise NotStreamable("the header is longer than the stream walk takes")
        layout = Layout(None, None, None, size)
        if header.pixel_start is not None:
            try:
                tag, end = pixel_element_end(f, header.pixel_start, size, UID(header.syntax))
            except SpliceError as exc:
                raise NotStreamable(str(exc)) from None
            if end != size or any(e.tag >= tag for e in header.elements):
                raise NotStreamable("elements follow the pixel data")
            layout = Layout(tag, header.pixel_start, end, size)
    return buf, header, layout


def text_of(buf: bytes, e: Element) -> str:
    """An ASCII value's text, padding removed."""
    return buf[e.value_start : e.value_end].decode("ascii", "replace").rstrip("\0 ")
