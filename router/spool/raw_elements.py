"""Encode header elements without pydicom's general writer, byte for byte as it would.

An edited header is mostly elements nobody touched: pydicom keeps them as
:class:`~pydicom.dataelem.RawDataElement` (the value's bytes as read). Writing those back
needs only their tag, VR and length packed in front of the bytes. The elements an edit set
are mostly short ASCII text (dates, UIDs, pseudonyms) or binary numbers, just as simple to
encode. :func:`element_bytes` does both; pydicom's :func:`~pydicom.filewriter.write_dataset`
costs tens of microseconds per element for the same bytes. :func:`file_meta_bytes` does the
same for the file meta group. Both return ``None`` for anything they do not cover (a decoded
sequence, an undefined length, big endian, text that is not ASCII, a value too long for a
short length field), and the caller then lets pydicom encode it.
"""

from __future__ import annotations

import struct

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from router.spool.spans import LONG_VRS, UNDEFINED

REQUIRED_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)
TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT", "PN"}
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def element_bytes(element, *, implicit: bool) -> bytes | None:
    """The little-endian encoding of ``element``, header included: a raw one as it was read, a
    decoded one of a text or number VR encoded here."""
    if element.tag & 0xFFFF == 0:
        return None  # pydicom leaves group lengths out
    if isinstance(element, RawDataElement):
        return raw_element_bytes(element, implicit=implicit)
    if not isinstance(element, DataElement) or element.is_undefined_length:
        return None
    value = encode_value(element.VR, element.value)
    return None if value is None else encode_element(element.tag, element.VR, value, implicit)


def encode_value(vr: str, value) -> bytes | None:
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [] if value is None else [value]
    if vr in TEXT_VRS:
        if not all(isinstance(v, (str, PersonName)) for v in values):
            return None
        text = "\\".join(str(v) for v in values)
        if not text.isascii():
            return None
        raw = text.encode("ascii")
        return raw + (b"\0" if vr == "UI" else b" ") if len(raw) % 2 else raw
    form = NUMBER_FORMATS.get(vr)
    if form is None or not all(type(v) in (int, float) for v in values):
        return None
    try:
        return struct.pack(f"<{len(values)}{form}", *values)
    except struct.error:
        return None


def raw_element_bytes(element, *, implicit: bool) -> bytes | None:
    """The encoding of a raw little-endian element whose value is in memory, header included."""
    if not isinstance(element, RawDataElement) or not element.is_little_endian:
        return None
    if element.is_implicit_VR != implicit or element.length == UNDEFINED or element.VR == "UN":
        return None  # pydicom gives a UN element its dictionary VR when it knows the tag
    if element.tag & 0xFFFF == 0:
        return None  # pydicom leaves group lengths out
    value = element.value
    if value is None:
        if element.length:
            return None  # deferred: the value is still in the file
        value = b""
    return encode_element(element.tag, element.VR, value, implicit)


def file_meta_bytes(meta: Dataset) -> bytes | None:
    """Group 0002 (Explicit VR Little Endian, with its group length) as pydicom's
    ``write_file_meta_info(enforce_standard=True)`` writes it, when every element is a plain
    value of a VR covered here and the required ones are present."""
    if any(tag not in meta for tag in REQUIRED_META):
        return None
    body = []
    for tag in sorted(meta.keys()):
        if tag == 0x00020000:
            continue
        encoded = _meta_element(meta.get_item(tag, keep_deferred=True))
        if encoded is None:
            return None
        body.append(encoded)
    data = b"".join(body)
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(data)) + data


def _meta_element(element) -> bytes | None:
    """A file meta element: as :func:`element_bytes` encodes it, OB values included."""
    if isinstance(element, DataElement) and element.VR == "OB" and isinstance(element.value, bytes):
        raw = element.value + b"\0" * (len(element.value) % 2)
        return encode_element(element.tag, "OB", raw, False)
    return element_bytes(element, implicit=False)


def encode_element(tag: int, vr: str | None, value: bytes, implicit: bool) -> bytes | None:
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, number, len(value)) + value
    if vr is None:
        return None
    code = vr.encode("ascii")
    if code in LONG_VRS:
        return struct.pack("<HH2sHI", group, number, code, 0, len(value)) + value
    if len(value) > 0xFFFF:
        return None
    return struct.pack("<HH2sH", group, number, code, len(value)) + value
