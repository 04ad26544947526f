"""The data elements of a little-endian header held in memory, as offsets into its bytes.

:func:`parse_elements` walks a data set's encoding with ``struct`` and returns, per element,
its tag, VR and where its header, value and end lie; nothing is decoded. A sequence's items
are walked by :func:`parse_items` when someone needs them. What this does not cover raises
:class:`NotStreamable`, and the caller takes pydicom's way instead: big endian, an element of
undefined length that is not a sequence (UN holding one, encapsulated data inside a
header), an item or delimiter out of place, or bytes that end inside an element.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pydicom.datadict import dictionary_VR

from router.spool.spans import ITEM, ITEM_DELIMITER, LONG_VRS, SEQUENCE_DELIMITER, UNDEFINED

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
VRS = frozenset(
    code.encode("ascii")
    for code in "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
MAX_DEPTH = 32
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


class NotStreamable(ValueError):
    """The bytes hold something this walk does not cover; read them with pydicom."""


class Element(NamedTuple):
    """One element of a data set: ``buf[start:end]`` is its whole encoding, ``buf[value_start:value_end]``
    its value (for a sequence of undefined length: its items, without the sequence delimiter).

    A named tuple, as :class:`Item`: a header walk makes one per element, and a frozen
    dataclass took three times as long to make."""

    tag: int
    vr: str
    start: int
    value_start: int
    value_end: int
    end: int
    undefined_length: bool


class Item(NamedTuple):
    """One item of a sequence: ``buf[value_start:value_end]`` holds its elements."""

    value_start: int
    value_end: int
    undefined_length: bool


def implicit_vr(tag: int) -> str:
    """The VR an Implicit VR element gets: LO for a private creator, else the dictionary's (the
    first of "US or SS"), else UN."""
    if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
        return "LO"
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def parse_elements(
    buf: bytes, start: int, end: int, implicit: bool, *, in_item: bool = False, depth: int = 0
) -> tuple[list[Element], int]:
    """The elements from ``start`` up to ``end``, the top-level pixel data, or (``in_item``) an
    item delimiter; and the offset where the walk stopped (the pixel data's, or past the delimiter)."""
    if depth > MAX_DEPTH:
        raise NotStreamable("sequences nested too deep")
    elements: list[Element] = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise NotStreamable(f"the bytes end inside an element header at {pos}")
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | number
        if group == 0xFFFE:
            if in_item and tag == ITEM_DELIMITER:
                return elements, pos + 8
            raise NotStreamable(f"({group:04X},{number:04X}) where an element belongs, at {pos}")
        if tag in PIXEL_TAGS and depth == 0:
            return elements, pos
        if implicit:
            vr, value_start = implicit_vr(tag), pos + 8
        else:
            _, _, code, short = _TAG_VR_SHORT.unpack_from(buf, pos)
            if code in LONG_VRS:
                if pos + 12 > end:
                    raise NotStreamable(f"the bytes end inside an element header at {pos}")
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                value_start = pos + 12
            else:
                length, value_start = short, pos + 8
            if code not in VRS:
                raise NotStreamable(f"no VR at {pos}")
            vr = code.decode("ascii")
        if length == UNDEFINED:
            if vr != "SQ":
                raise NotStreamable(f"({group:04X},{number:04X}) has undefined length but is not a sequence")
            value_end = _items_end(buf, value_start, end, implicit, depth + 1)
            element_end = value_end + 8
        else:
            value_end = element_end = value_start + length
        if element_end > end:
            raise NotStreamable(f"({group:04X},{number:04X}) runs past the end of the header")
        elements.append(Element(tag, vr, pos, value_start, value_end, element_end, length == UNDEFINED))
        pos = element_end
    if in_item:
        raise NotStreamable("an item of undefined length without its delimiter")
    return elements, pos


def parse_items(buf: bytes, element: Element, implicit: bool, depth: int = 0) -> list[Item]:
    """The items of the sequence ``element``."""
    items = []
    pos, end = element.value_start, element.value_end
    while pos < end:
        if pos + 8 > end:
            raise NotStreamable(f"the bytes end inside an item header at {pos}")
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        if group << 16 | number != ITEM:
            raise NotStreamable(f"({group:04X},{number:04X}) where an item belongs, at {pos}")
        if length == UNDEFINED:
            _, stop = parse_elements(buf, pos + 8, end, implicit, in_item=True, depth=depth + 1)
            items.append(Item(pos + 8, stop - 8, True))
            pos = stop
        else:
            if pos + 8 + length > end:
                raise NotStreamable(f"an item runs past its sequence at {pos}")
            items.append(Item(pos + 8, pos + 8 + length, False))
            pos += 8 + length
    return items


def _items_end(buf: bytes, pos: int, end: int, implicit: bool, depth: int) -> int:
    """Where the sequence delimiter of the items starting at ``pos`` is."""
    while True:
        if pos + 8 > end:
            raise NotStreamable("a sequence of undefined length without its delimiter")
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag == SEQUENCE_DELIMITER:
            return pos
        if tag != ITEM:
            raise NotStreamable(f"({group:04X},{number:04X}) where an item belongs, at {pos}")
        if length == UNDEFINED:
            _, pos = parse_elements(buf, pos + 8, end, implicit, in_item=True, depth=depth)
        else:
            pos += 8 + length
