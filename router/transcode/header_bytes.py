"""A transcoded file's header made from the source's element bytes, without pydicom's data set.

For the common case (a little-endian source whose header :func:`~router.spool.stream_header.read_stream_header`
takes, a lossless target with the same VR encoding, as every compressed syntax and Explicit VR
Little Endian share), the header is read as offsets, the Image Pixel values decoded from their
bytes, and the output header written as the source's elements copied byte for byte, except the
few a new encoding changes: the file meta's Transfer Syntax UID (and its group length),
Photometric Interpretation, Planar Configuration, Lossy Image Compression for a source that
was lossy, and the Extended Offset Table left out. Reading and rewriting a CT header this way
costs a fraction of pydicom's way (docs/benchmarks.md, transcoding).

:class:`~router.spool.element_stream.NotStreamable` means "take pydicom's way"
(:mod:`router.transcode.files`): a lossy target (its ratio and new SOP Instance UID are
written by that way), an implicit source for an explicit target or the reverse, a header
without pixel data or with float pixel data, a file meta missing a required element, or a
value decoded here that pydicom would read differently.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from router.spool.element_stream import Element, NotStreamable
from router.spool.raw_elements import REQUIRED_META, encode_element, encode_value
from router.spool.stream_header import TRANSFER_SYNTAX, StreamHeader
from router.transcode.syntaxes import LOSSY

PIXEL_DATA = 0x7FE00010
OFFSET_TABLES = (0x7FE00001, 0x7FE00002)
PHOTOMETRIC, PLANAR, LOSSY_COMPRESSION = 0x00280004, 0x00280006, 0x00282110
_US = struct.Struct("<H")


def check_streamable(header: StreamHeader, pixel_tag: int | None, syntax: UID) -> None:
    """Raise :class:`NotStreamable` unless this module can write ``header`` in ``syntax``."""
    if syntax in LOSSY:
        raise NotStreamable("a lossy target")
    if UID(header.syntax).is_implicit_VR != syntax.is_implicit_VR:
        raise NotStreamable("the target encodes elements otherwise (implicit and explicit VR)")
    if pixel_tag != PIXEL_DATA:
        raise NotStreamable("no pixel data, or float pixel data")
    present = {e.tag for e in header.meta}
    if any(tag not in present for tag in REQUIRED_META):
        raise NotStreamable("a file meta without a required element")


IMAGE_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
)


def image_pixel_values(buf: bytes, header: StreamHeader) -> dict[str, Any]:
    """The Image Pixel values the header holds (US, CS and IS, one value each), by keyword, as
    ``Dataset.get`` gives them (None for an empty one), for
    :meth:`~router.transcode.frames.PixelFormat.of_values`."""
    wanted = {tag_for_keyword(keyword): keyword for keyword in IMAGE_PIXEL_KEYWORDS}
    values: dict[str, Any] = {}
    for e in header.elements:
        keyword = wanted.get(e.tag)
        if keyword is not None:
            values[keyword] = _decoded(buf, e, keyword)
    return values


def _decoded(buf: bytes, e: Element, keyword: str) -> Any:
    raw = buf[e.value_start : e.value_end]
    if not raw:
        return None
    if e.vr == "US":
        if len(raw) != 2:
            raise NotStreamable(f"{keyword} holds {len(raw) // 2} values")
        return _US.unpack(raw)[0]
    if e.vr in ("CS", "IS"):
        text = raw.decode("ascii", "replace").strip("\0 ")
        if "\\" in text:
            raise NotStreamable(f"{keyword} holds more than one value")
        return text or None
    raise NotStreamable(f"{keyword} of VR {e.vr}")


def output_header(buf: bytes, header: StreamHeader, syntax: UID, photometric: str, samples_per_pixel: int) -> bytes:
    """The output file's first bytes up to its pixel data element: preamble, ``DICM``, the file
    meta naming ``syntax``, and the data set's elements as described above."""
    meta = [(e.tag, _original(buf, e)) for e in header.meta if e.tag != 0x00020000 and e.tag != TRANSFER_SYNTAX]
    meta.append((TRANSFER_SYNTAX, _text(TRANSFER_SYNTAX, "UI", str(syntax), implicit=False)))
    meta_bytes = b"".join(part for _, part in sorted(meta))
    implicit = header.implicit
    body = {e.tag: _original(buf, e) for e in header.elements if e.tag not in OFFSET_TABLES}
    body[PHOTOMETRIC] = _text(PHOTOMETRIC, "CS", photometric, implicit)
    if samples_per_pixel > 1:
        body[PLANAR] = encode_element(PLANAR, "US", _US.pack(0), implicit) or b""
    else:
        body.pop(PLANAR, None)
    if UID(header.syntax) in LOSSY:
        body[LOSSY_COMPRESSION] = _text(LOSSY_COMPRESSION, "CS", "01", implicit)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta_bytes))
    return buf[:128] + b"DICM" + group_length + meta_bytes + b"".join(body[tag] for tag in sorted(body))


def _original(buf: bytes, e: Element) -> bytes:
    if e.undefined_length and e.vr != "SQ":
        raise NotStreamable("an element of undefined length that is not a sequence")
    return buf[e.start : e.end]


def _text(tag: int, vr: str, value: str, implicit: bool) -> bytes:
    encoded = encode_value(vr, value)
    element = None if encoded is None else encode_element(tag, vr, encoded, implicit)
    if element is None:
        raise NotStreamable(f"a {vr} value not encoded here")
    return element
