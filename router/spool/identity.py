"""The UIDs that identify an instance, read from the start of its Part-10 file without pydicom.

Every received instance is checked before it is routed: one without a SOP Class UID or a
SOP Instance UID cannot be delivered anywhere, and the sender is told so at once (a
failure status) instead of being acknowledged or asked to retry. Parsing the header with
pydicom for this costs about 1 ms per instance; this scan reads the file meta and the data
set's elements up to (0020,000D) Study Instance UID, which the log line of every received
instance names, a few hundred bytes, with ``struct`` (the file meta with
:func:`router.engine.part10.read_file_meta`; a sequence of undefined length on the way
with :func:`router.spool.spans.element_end`).
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

from router.engine.part10 import NotPlainPart10, read_file_meta
from router.spool.deflated import DEFLATED
from router.spool.spans import LONG_VRS, UNDEFINED, SpanError, element_end

SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID = 0x00080016, 0x00080018, 0x0020000D
WANTED = {
    SOP_CLASS_UID: "sop_class_uid",
    SOP_INSTANCE_UID: "sop_instance_uid",
    STUDY_INSTANCE_UID: "study_instance_uid",
}
IMPLICIT_VR_LE, EXPLICIT_VR_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
SCAN_BYTES = 8 * 1024


class UnreadableIdentity(ValueError):
    """The file's start cannot be read as a Part-10 header and data set."""


class Identity(NamedTuple):
    """The identifying UIDs of an instance (None for one absent, empty or past the scanned bytes)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None


def identifying_uids(path: str, transfer_syntax: str) -> Identity | None:
    """The :class:`Identity` of the data set in the Part-10 file at ``path``; None when the data
    set is deflated (not scanned)."""
    if transfer_syntax in DEFLATED:
        return None
    with open(path, "rb") as f:
        head = f.read(SCAN_BYTES)
    try:
        offset = read_file_meta(head)[1]
    except NotPlainPart10 as exc:
        raise UnreadableIdentity(str(exc)) from None
    little = transfer_syntax != EXPLICIT_VR_BE
    implicit = transfer_syntax == IMPLICIT_VR_LE
    found: dict[str, str | None] = {}
    end = "<" if little else ">"
    while offset + 8 <= len(head):
        group, element = struct.unpack_from(end + "HH", head, offset)
        tag = group << 16 | element
        if tag > STUDY_INSTANCE_UID:
            break
        vr = None if implicit else head[offset + 4 : offset + 6]
        if implicit:
            length, header = struct.unpack_from("<I", head, offset + 4)[0], 8
        elif vr in LONG_VRS:
            length, header = struct.unpack_from(end + "I", head, offset + 8)[0], 12
        else:
            length, header = struct.unpack_from(end + "H", head, offset + 6)[0], 8
        if length == UNDEFINED:
            try:
                offset = element_end(
                    io.BytesIO(head),
                    offset + header,
                    UNDEFINED,
                    implicit=implicit,
                    little=little,
                    vr=None if vr is None else vr.decode("ascii", "replace"),
                    size=len(head),
                )
            except SpanError:
                break  # a sequence longer than the scanned bytes: the UIDs after it stay unknown
            continue
        if tag in WANTED:
            value = head[offset + header : offset + header + length]
            found[WANTED[tag]] = value.rstrip(b"\0 ").decode("ascii", "replace") or None
        offset += header + length
    return Identity(found.get("sop_class_uid"), found.get("sop_instance_uid"), found.get("study_instance_uid"))
