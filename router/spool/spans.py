"""Where a data element's bytes end in a file, found by walking its encoding, never by decoding it.

An element of defined length ends where its length says. One of undefined length (a
sequence, an element of VR UN holding one, or encapsulated pixel data) is a run of items up
to a sequence delimiter; each item is either of defined length or a data set up to an item
delimiter, whose elements may hold further undefined-length sequences. :func:`element_end`
walks that structure with ``struct``, reading a few bytes per element and skipping every
value, so finding the end of a 200 MB sequence costs what its element headers cost, and
memory stays flat. The content of a UN element of undefined length is Implicit VR Little
Endian whatever the file's syntax (PS3.5 6.2.2).

Nesting deeper than :data:`MAX_DEPTH`, an element running past the end of the file or an
unexpected tag where an item or delimiter belongs raises :class:`SpanError`.
"""

from __future__ import annotations

import os
import struct

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 64
WINDOW = 256 * 1024
FIRST_WINDOW = 4096


class SpanError(ValueError):
    """The bytes are not a well-formed element encoding."""


def element_header_length(implicit: bool, vr: str | None) -> int:
    """The bytes before the value: tag and length (implicit), or tag, VR and length (explicit)."""
    if implicit:
        return 8
    return 12 if vr is not None and vr.encode("ascii", "replace") in LONG_VRS else 8


def element_end(
    f, value_start: int, length: int, *, implicit: bool, little: bool, vr: str | None, size: int | None = None
) -> int:
    """The offset just past the element whose value starts at ``value_start`` in file ``f``
    (``size``: the file's, if the caller knows it)."""
    size = os.fstat(f.fileno()).st_size if size is None else size
    if length != UNDEFINED:
        if value_start + length > size:
            raise SpanError(f"the element at byte {value_start} runs past the end of the file")
        return value_start + length
    return _Walk(f, little, size).items_end(value_start, implicit or vr == "UN")


class _Walk:
    """One walk over nested undefined-length structures (an explicit stack, not recursion),
    reading the file through a window that starts at :data:`FIRST_WINDOW` bytes (most
    sequences are short) and doubles with each refill up to :data:`WINDOW`."""

    def __init__(self, f, little: bool, size: int):
        self.f = f
        self.endian = "<" if little else ">"
        self.size = size
        self.window = b""
        self.window_start = 0
        self.window_size = FIRST_WINDOW

    def _at(self, position: int, count: int) -> int:
        """The index in :attr:`window` of the ``count`` bytes at file offset ``position``."""
        index = position - self.window_start
        if index < 0 or index + count > len(self.window):
            self.f.seek(position)
            self.window, self.window_start, index = self.f.read(max(self.window_size, count)), position, 0
            self.window_size = min(self.window_size * 2, WINDOW)
            if len(self.window) < count:
                raise SpanError(f"the file ends inside an element at byte {position}")
        return index

    def items_end(self, position: int, implicit: bool) -> int:
        """The offset past the sequence delimiter of the items starting at ``position``."""
        tag_and_length = struct.Struct(self.endian + "HHI").unpack_from
        stack: list[tuple[bool, bool]] = [(True, implicit)]  # (walking items, implicit VR)
        while stack:
            if len(stack) > MAX_DEPTH:
                raise SpanError(f"sequences nested deeper than {MAX_DEPTH} levels")
            items, implicit = stack[-1]
            index = self._at(position, 8)
            group, element, length = tag_and_length(self.window, index)
            tag = group << 16 | element
            if items:
                if tag == SEQUENCE_DELIMITER:
                    stack.pop()
                elif tag != ITEM:
                    raise SpanError(f"({group:04X},{element:04X}) where an item belongs, byte {position}")
                elif length == UNDEFINED:
                    stack.append((False, implicit))
                else:
                    position += length
                position += 8
            elif tag == ITEM_DELIMITER:
                position += 8
                stack.pop()
            else:
                position = self._element(position, implicit, stack)
            if position > self.size:
                raise SpanError("a sequence runs past the end of the file")
        return position

    def _element(self, position: int, implicit: bool, stack: list) -> int:
        """Step over one element of an item's data set; push its items if it has undefined length."""
        index = self._at(position, 12) if position + 12 <= self.size else self._at(position, 8)
        window = self.window
        if implicit:
            header, length = 8, struct.unpack_from(self.endian + "I", window, index + 4)[0]
            vr = None
        else:
            vr = window[index + 4 : index + 6]
            if vr in LONG_VRS:
                header, length = 12, struct.unpack_from(self.endian + "I", window, index + 8)[0]
            else:
                header, length = 8, struct.unpack_from(self.endian + "H", window, index + 6)[0]
        if length != UNDEFINED:
            return position + header + length
        stack.append((True, implicit or vr == b"UN"))
        return position + header
