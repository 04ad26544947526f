"""Explicit VR Little Endian <-> Implicit VR Little Endian, streamed from file to file.

For a peer that refuses the syntax an uncompressed instance came in. Only the element
headers change (both syntaxes are little endian, so every value's bytes stay as they are):
the file is read element by element and written as it is read, never held whole, so a
300 MB instance converts in a few megabytes of memory. Every sequence and item is written
with undefined length and its delimiter, so no length has to be computed ahead; group
length elements, which those lengths would make stale, are left out. Going to
Explicit VR, each element's VR comes from the DICOM dictionary (a private or unknown one is
``UN``; pixel data is ``OW``; an ambiguous VR takes its first choice: the bytes are the same).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.engine.part10 import FileMetaValues, encode_file_meta, read_file_meta
from router.engine.store_decode import PREAMBLE
from router.spool.spans import ITEM, LONG_VRS, UNDEFINED
from router.spool.spans import ITEM_DELIMITER as ITEM_END
from router.spool.spans import SEQUENCE_DELIMITER as SEQUENCE_END

CHUNK = 1024 * 1024
META_READ = 64 * 1024
CONVERTIBLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class CannotConvert(ValueError):
    """The file is not a plain Part-10 file in one of the two syntaxes, or its elements do not parse."""


def convert_file(source: Path | str, target: Path | str, transfer_syntax: str) -> None:
    """Write ``source`` (Explicit or Implicit VR Little Endian) to ``target`` in ``transfer_syntax``."""
    if transfer_syntax not in CONVERTIBLE:
        raise CannotConvert(f"cannot convert to {transfer_syntax}")
    with open(source, "rb") as fin:
        meta, offset = read_file_meta(fin.read(META_READ))
        if meta.TransferSyntaxUID not in CONVERTIBLE:
            raise CannotConvert(f"cannot convert from {meta.TransferSyntaxUID}")
        fin.seek(offset)
        with open(target, "wb") as fout:
            fout.write(
                PREAMBLE
                + encode_file_meta(
                    FileMetaValues(meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, transfer_syntax)
                )
            )
            _Converter(
                fin, fout, meta.TransferSyntaxUID == ImplicitVRLittleEndian, os.fstat(fin.fileno()).st_size
            ).elements(None)


class _Converter:
    def __init__(self, fin, fout, implicit_in: bool, size: int):
        self.fin, self.fout, self.implicit_in, self.size = fin, fout, implicit_in, size

    def elements(self, end: int | None, until: int | None = None) -> None:
        """Convert elements up to file offset ``end`` (None: the end of the file), or up to
        and including the delimiter tag ``until`` (an undefined-length item or sequence)."""
        while end is None or self.fin.tell() < end:
            head = self.fin.read(8)
            if not head:
                if end is None and until is None:
                    return
                raise CannotConvert("the file ends inside a sequence")
            if len(head) < 8:
                raise CannotConvert("the file ends inside an element header")
            group, element = struct.unpack_from("<HH", head)
            tag = group << 16 | element
            if tag in (ITEM_END, SEQUENCE_END):
                if tag != until:
                    raise CannotConvert(f"unexpected delimiter ({group:04X},{element:04X})")
                return
            vr, length = self._header(head, tag)
            if element == 0x0000 and length != UNDEFINED:  # a group length: stale once lengths change
                self._skip(length)
            elif vr == b"SQ" or (length == UNDEFINED and vr != b"OB"):
                self._write_header(group, element, b"SQ", UNDEFINED)
                self._sequence(length)
            elif length == UNDEFINED:
                raise CannotConvert(f"encapsulated ({group:04X},{element:04X}) cannot be converted")
            else:
                self._write_header(group, element, vr, length)
                self._copy(length)

    def _header(self, head: bytes, tag: int) -> tuple[bytes, int]:
        if self.implicit_in:
            return _vr_of(tag), struct.unpack_from("<I", head, 4)[0]
        vr = head[4:6]
        if vr in LONG_VRS:
            return vr, struct.unpack("<I", self._read(4))[0]
        return vr, struct.unpack_from("<H", head, 6)[0]

    def _write_header(self, group: int, element: int, vr: bytes, length: int) -> None:
        if not self.implicit_in:  # explicit in, implicit out
            self.fout.write(struct.pack("<HHI", group, element, length))
        elif vr in LONG_VRS:
            self.fout.write(struct.pack("<HH2sHI", group, element, vr, 0, length))
        elif length > 0xFFFF:
            self.fout.write(struct.pack("<HH2sHI", group, element, b"UN", 0, length))
        else:
            self.fout.write(struct.pack("<HH2sH", group, element, vr, length))

    def _sequence(self, length: int) -> None:
        end = None if length == UNDEFINED else self.fin.tell() + length
        while end is None or self.fin.tell() < end:
            tag, item_length = struct.unpack("<II", self._read(8))
            tag = (tag & 0xFFFF) << 16 | tag >> 16
            if tag == SEQUENCE_END and end is None:
                break
            if tag != ITEM:
                raise CannotConvert("a sequence holds something other than items")
            self.fout.write(struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED))
            if item_length == UNDEFINED:
                self.elements(None, until=ITEM_END)
            else:
                self.elements(self.fin.tell() + item_length)
            self.fout.write(struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
        self.fout.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))

    def _copy(self, length: int) -> None:
        if self.fin.tell() + length > self.size:
            raise CannotConvert("an element runs past the end of the file")
        while length:
            chunk = self.fin.read(min(length, CHUNK))
            self.fout.write(chunk)
            length -= len(chunk)

    def _skip(self, length: int) -> None:
        self.fin.seek(length, os.SEEK_CUR)

    def _read(self, size: int) -> bytes:
        data = self.fin.read(size)
        if len(data) < size:
            raise CannotConvert("the file ends inside an element")
        return data


def _vr_of(tag: int) -> bytes:
    if tag == 0x7FE00010:
        return b"OW"
    if tag & 0xFFFF == 0x0000:
        return b"UL"  # group length
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return b"UN"
    return vr.split(" or ")[0].encode("ascii")[:2] if vr else b"UN"
