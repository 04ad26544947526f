"""The coerce stage's fast way: its operations over the raw element stream.

For an instance as it was received, the header's elements are read as offsets
(:func:`~router.middleware.anonymize_stream.open_stream`) and the operations run on
:class:`StreamedHeader`, which answers them as a pydicom data set would: a value is decoded
only when an operation reads it, and the result is encoded directly. An element nobody
touched is copied as its bytes; one an operation read or set is encoded from its value, as
pydicom's writer encodes it; sequences keep the lengths the data set way gives them
(:meth:`~router.middleware.anonymize_stream.DeidentifyingWalk.sequence`). The output is the
data set way's, byte for byte (``tests/unit/test_coerce_stream.py`` compares both).

:class:`~router.spool.element_stream.NotStreamable` means "take the data set way": it is
raised for what :func:`open_stream` does not cover, for a group length, for an operation
with its own ``match`` (matching reads the data set), and wherever an encoding is not certain.
"""

from __future__ import annotations

from operator import itemgetter

from pydicom.dataelem import DataElement
from pydicom.tag import Tag

from router.middleware.anonymize_stream import (
    MEDIA_SOP_CLASS,
    MEDIA_SOP_INSTANCE,
    SOP_CLASS,
    SOP_INSTANCE,
    TRANSFER_SYNTAX,
    DeidentifyingWalk,
    StreamedFile,
)
from router.spool.element_stream import Element, NotStreamable
from router.spool.encoded_versions import EncodedHeader
from router.spool.raw_elements import REQUIRED_META


class StreamedHeader:
    """The top level of a streamed header, with the part of pydicom's ``Dataset`` interface that
    coerce's operations use (``in``, ``get``, ``[]``, assignment, ``del``, ``keys``)."""

    def __init__(self, file: StreamedFile):
        if any(tag & 0xFFFF == 0 for tag in file.top):
            raise NotStreamable("a group length (the data set way leaves it out)")
        self.file = file
        self.tags = set(file.top)
        self.values: dict[int, DataElement] = {}  # read or set: written from the value
        self.drop_private = False

    def keys(self) -> list[int]:
        return sorted(self.tags)

    def __contains__(self, tag) -> bool:
        return int(tag) in self.tags

    def __getitem__(self, tag) -> DataElement:
        tag = int(tag)
        if tag not in self.tags:
            raise KeyError(Tag(tag))
        if tag not in self.values:
            e = self.file.top[tag]
            if e.vr in ("SQ", "UN"):
                raise NotStreamable(f"an operation reads an element of VR {e.vr}")
            self.values[tag] = DataElement(tag, e.vr, self.file.top_value(tag))
        return self.values[tag]

    def get(self, tag, default=None):
        return self[tag] if tag is not None and int(tag) in self.tags else default

    def __setitem__(self, tag, element: DataElement) -> None:
        self.tags.add(int(tag))
        self.values[int(tag)] = element

    def __delitem__(self, tag) -> None:
        tag = int(tag)
        self.tags.remove(tag)
        self.values.pop(tag, None)

    def remove_private(self) -> list[int]:
        """``delete = ["private"]``: every private element goes, in sequences too."""
        removed = [tag for tag in self.keys() if tag >> 16 & 1]
        for tag in removed:
            del self[tag]
        self.drop_private = True
        return removed

    def encoded(self) -> EncodedHeader:
        """The header as the data set way writes it."""
        uids = {tag: self._uid(tag) for tag in (SOP_CLASS, SOP_INSTANCE)}  # read first: written from their value
        walk = _KeepingWalk(self.file, self.drop_private)
        body: list[tuple[int, bytes]] = []
        for tag in self.tags:
            if tag in self.values:
                element = self.values[tag]
                body.append((tag, walk.encode(tag, element.VR, element.value)))
            else:
                body.append((tag, walk.kept(self.file.top[tag])))
        body.sort(key=itemgetter(0))
        meta = walk.meta_of(uids)
        body_bytes = b"".join(part for _, part in body)
        return EncodedHeader(
            meta, body_bytes, self.file.layout, uids[SOP_INSTANCE], self.file.buf[:128], self.file.pixel_data
        )

    def _uid(self, tag: int) -> str:
        if tag not in self.tags:
            raise NotStreamable("no SOP Class or Instance UID")
        value = self[tag].value  # the data set way reads them for the file meta: written from their value
        if not value:
            raise NotStreamable("an empty SOP Class or Instance UID")
        return str(value)


class _KeepingWalk(DeidentifyingWalk):
    """The element stream written back with nothing changed but private elements (when
    ``drop_private``), in the lengths the data set way gives it."""

    def __init__(self, file: StreamedFile, drop_private: bool):
        super().__init__(None, file)  # type: ignore[arg-type]  # no de-identifier: nothing is decided
        self.drop_private = drop_private

    def kept(self, e: Element) -> bytes:
        """A top-level element no operation touched. A sequence of undefined length was parsed
        when the data set was read and is written from the copy an edit takes (defined lengths);
        one of defined length is parsed only if private elements are removed from it."""
        if e.vr == "SQ" and (e.undefined_length or self.drop_private):
            return self.sequence(None, e, False, False)  # type: ignore[arg-type]
        return self.original(e)

    def dataset(self, run, elements: list[Element], cleaning: bool, lazy: bool, top: bool = False):
        out: list[tuple[int, bytes]] = []
        seen = set()
        for e in elements:
            if e.tag in seen or e.tag & 0xFFFF == 0:
                raise NotStreamable("a repeated tag or a group length")
            seen.add(e.tag)
            if self.drop_private and e.tag >> 16 & 1:
                continue
            out.append((e.tag, self.sequence(run, e, False, lazy) if e.vr == "SQ" else self.original(e)))
        return out

    def meta_of(self, uids: dict[int, str]) -> bytes:
        """The original file meta, with the header's SOP Class and Instance UIDs (as
        :func:`~router.spool.splice.write_spliced` sets them)."""
        parts: dict[int, bytes] = {}
        for e in self.header.meta:
            if e.tag == 0x00020000:
                continue
            if e.tag == TRANSFER_SYNTAX:
                parts[e.tag] = self.meta_text(e.tag, "UI", self.value(e))
            else:
                parts[e.tag] = self.original(e, implicit=False)
        parts[MEDIA_SOP_CLASS] = self.meta_text(MEDIA_SOP_CLASS, "UI", uids[SOP_CLASS])
        parts[MEDIA_SOP_INSTANCE] = self.meta_text(MEDIA_SOP_INSTANCE, "UI", uids[SOP_INSTANCE])
        if any(tag not in parts for tag in REQUIRED_META):
            raise NotStreamable("a file meta without a required element")
        data = b"".join(parts[tag] for tag in sorted(parts))
        return b"\x02\x00\x00\x00UL\x04\x00" + len(data).to_bytes(4, "little") + data
