"""Compare DICOM files by what travels on the wire: the data set after the file meta."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_offset(path: Path | str) -> int:
    """Byte offset where the data set starts, after the preamble and the group 0002 meta."""
    with open(path, "rb") as f:
        f.seek(128)
        if f.read(4) != b"DICM":
            raise ValueError(f"{path}: not a Part-10 file")
        while True:
            pos = f.tell()
            head = f.read(8)
            if len(head) < 8:
                return pos
            group, _elem = struct.unpack("<HH", head[:4])
            if group != 0x0002:
                return pos
            vr = head[4:6]
            if vr in LONG_VRS:
                (length,) = struct.unpack("<I", f.read(4))
            else:
                (length,) = struct.unpack("<H", head[6:8])
            f.seek(length, 1)


def dataset_digest(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(dataset_offset(path))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digests_by_uid(paths) -> dict[str, str]:
    from pydicom import dcmread

    out = {}
    for p in paths:
        uid = str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        out[uid] = dataset_digest(p)
    return out
