"""The Part-10 header of files, written and read with ``struct`` (owned code, declared in router/engine/changes.py).

With STORE_RECV_CHUNKED_DATASET, pynetdicom 3.0.4 starts every received file with a file
meta group built as a pydicom FileMetaDataset and written by pydicom: 0.67 ms per instance
on the receiving association, measured here. ``decode_msg`` looks both functions up as
module globals of ``pynetdicom.dimse_messages``; :func:`install_fast_file_meta` swaps them
for a pair that carries the three values through and writes the same bytes directly
(a test holds it byte-identical to pydicom's writer).

On the way out, ``send_c_store(path)`` reads the file meta of every file it sends with
pydicom (``split_dataset``: 0.3 ms per instance). :func:`split_part10` reads the three
values it needs and the data set's offset directly; a file it does not recognise as plain
Part-10 (no preamble, a file meta that is not Explicit VR, or an unusually long one) goes
to pynetdicom's reader.
"""

from __future__ import annotations

import inspect
import struct
from pathlib import Path
from typing import NamedTuple

import xxhash
from pydicom import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import association, dimse_messages
from pynetdicom.dsutils import create_file_meta, split_dataset


def new_checksum():
    """A running checksum of a Part-10 file's bytes, as the spool records it (xxHash XXH3, 64
    bits; see :mod:`router.spool.checksum`)."""
    return xxhash.xxh3_64()


_defaults = inspect.signature(create_file_meta).parameters
IMPLEMENTATION_UID = str(_defaults["implementation_uid"].default)
IMPLEMENTATION_VERSION = str(_defaults["implementation_version"].default)


class FileMetaValues(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str = IMPLEMENTATION_UID
    implementation_version: str = IMPLEMENTATION_VERSION


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = str(value).encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_file_meta(meta: FileMetaValues) -> bytes:
    """Group 0002 in Explicit VR Little Endian, as pydicom's ``write_file_meta_info`` writes it."""
    version = meta.implementation_version.encode("ascii")
    if len(version) % 2:
        version += b" "
    body = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
    body += _short(0x0002, b"UI", _uid(meta.sop_class_uid))
    body += _short(0x0003, b"UI", _uid(meta.sop_instance_uid))
    body += _short(0x0010, b"UI", _uid(meta.transfer_syntax))
    body += _short(0x0012, b"UI", _uid(meta.implementation_uid))
    body += _short(0x0013, b"SH", version)
    return _short(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _create(
    sop_class_uid,
    sop_instance_uid,
    transfer_syntax,
    implementation_uid=IMPLEMENTATION_UID,
    implementation_version=IMPLEMENTATION_VERSION,
) -> FileMetaValues:
    return FileMetaValues(
        str(sop_class_uid),
        str(sop_instance_uid),
        str(transfer_syntax),
        str(implementation_uid),
        str(implementation_version),
    )


def _write(fp, file_meta, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, FileMetaValues):
        fp.write(encode_file_meta(file_meta))
    else:
        write_file_meta_info(fp, file_meta, enforce_standard)


META_READ = 4096
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_KEYWORDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID", 0x0010: "TransferSyntaxUID"}


class FileMetaSummary:
    """The file meta values ``send_c_store`` reads, answering ``keyword in meta`` like a Dataset."""

    TransferSyntaxUID: UID
    MediaStorageSOPClassUID: UID
    MediaStorageSOPInstanceUID: UID

    def __init__(self, values: dict[str, UID]):
        self.__dict__.update(values)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.__dict__


class NotPlainPart10(Exception):
    pass


def read_file_meta(head: bytes) -> tuple[FileMetaSummary, int]:
    """The UIDs of a Part-10 file's meta and the offset of its data set, from the file's first bytes."""
    if head[128:132] != b"DICM":
        raise NotPlainPart10("no DICM prefix")
    values: dict[str, UID] = {}
    position = 132
    while True:
        if position + 8 > len(head):
            raise NotPlainPart10("file meta longer than expected")
        group, element, vr = struct.unpack_from("<HH2s", head, position)
        if group != 0x0002:
            return FileMetaSummary(values), position
        if not vr.isalpha() or not vr.isupper():
            raise NotPlainPart10("file meta is not Explicit VR")
        if vr in LONG_LENGTH_VRS:
            if position + 12 > len(head):
                raise NotPlainPart10("file meta longer than expected")
            (length,) = struct.unpack_from("<I", head, position + 8)
            position += 12
        else:
            (length,) = struct.unpack_from("<H", head, position + 6)
            position += 8
        if length == 0xFFFFFFFF or position + length > len(head):
            raise NotPlainPart10("file meta with an undefined or long element")
        keyword = _KEYWORDS.get(element)
        if keyword is not None:
            values[keyword] = UID(head[position : position + length].decode("iso8859").rstrip("\0 "))
        position += length


def split_part10(path) -> tuple[FileMetaSummary | Dataset, int]:
    """``pynetdicom.dsutils.split_dataset`` for plain Part-10 files, falling back to it for the rest."""
    with open(path, "rb") as f:
        head = f.read(META_READ)
    try:
        return read_file_meta(head)
    except NotPlainPart10:
        return split_dataset(Path(path))


def install_fast_file_meta() -> None:
    dimse_messages.create_file_meta = _create
    dimse_messages.write_file_meta_info = _write
    association.split_dataset = split_part10
