"""Deflated data sets, inflated in memory up to a ceiling: a deflate bomb is refused, never inflated.

A data set in Deflated Explicit VR Little Endian is one zlib stream after the file meta: it
cannot be read in place, skipped through or spliced, so reading its header means inflating
it. pydicom inflates the whole stream at once, and a few megabytes sent by a peer can
inflate to gigabytes. Here the stream is inflated piece by piece and given up with
:class:`InflatesTooFar` once the data set passes :data:`MAX_INFLATED` (the router reads a
deflated data set only to match or edit it, and deflate is used for small objects).
"""

from __future__ import annotations

import zlib
from io import BytesIO
from pathlib import Path

from pydicom.dataset import FileDataset
from pydicom.filereader import read_dataset, read_file_meta_info

from router.engine.part10 import NotPlainPart10, read_file_meta

DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205")
MAX_INFLATED = 16 * 1024 * 1024
META_READ = 16 * 1024
CHUNK = 256 * 1024


class InflatesTooFar(ValueError):
    """The deflated data set inflates past :data:`MAX_INFLATED`."""


def file_transfer_syntax(f) -> str | None:
    """The transfer syntax named by the file meta of the Part-10 file open as ``f`` (left at its
    start); None when the meta is not plain (pydicom then reads the file its own way)."""
    head = f.read(META_READ)
    f.seek(0)
    try:
        return read_file_meta(head)[0].TransferSyntaxUID
    except (NotPlainPart10, AttributeError):
        return None


def read_deflated(path: Path | str, stop_when=None) -> FileDataset:
    """The data set of a deflated Part-10 file, read from its inflated bytes (``stop_when`` as
    for pydicom's ``read_dataset``); raises :class:`InflatesTooFar`."""
    meta = read_file_meta_info(path)
    with open(path, "rb") as f:
        preamble = f.read(128)
        f.seek(132 + 12 + meta.FileMetaInformationGroupLength)
        inflated = inflate(f, MAX_INFLATED)
    dataset = read_dataset(BytesIO(inflated), False, True, stop_when=stop_when)
    return FileDataset(
        str(path), dataset, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True
    )


def inflate(f, limit: int) -> bytes:
    """The raw deflate stream from ``f``'s position, inflated; :class:`InflatesTooFar` past ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or f.read(CHUNK)
            piece = inflater.decompress(data, min(CHUNK, limit + 1 - size))
            if not data and not piece:
                raise ValueError("the deflated data set ends before its deflate stream does")
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                raise InflatesTooFar(f"the deflated data set inflates past {limit // (1024 * 1024)} MiB")
    except zlib.error as exc:
        raise ValueError(f"the deflated data set does not inflate: {exc}") from None
    return b"".join(pieces)
