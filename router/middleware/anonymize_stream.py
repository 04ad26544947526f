"""The anonymize stage's fast way: PS3.15 de-identification over the raw element stream.

For an instance as it was received (no earlier stage edited it), the header's bytes up to
the pixel data are read once and walked as offsets (:mod:`router.spool.element_stream`).
Each element is decided by the same :class:`~router.deid.deidentify.Run` as the data set
walk; a value is decoded (by pydicom's own converters) only where an action needs it, or
where the data set walk would have decoded it, and the result is encoded directly: elements
kept as they were copied as their bytes, the others encoded as pydicom encodes them
(:mod:`router.spool.raw_elements`). Output and report are those of
:meth:`~router.deid.deidentify.Deidentifier.apply` on a pydicom data set, byte for byte
(``tests/unit/test_anonymize_stream.py`` compares both), at a fraction of the cost.

:class:`~router.spool.element_stream.NotStreamable` means "take the data set way", and is
raised for what this does not cover: a big-endian or deflated file, a header over
:data:`MAX_HEADER` bytes, elements after the pixel data, text that is not ASCII where a
value must be decoded, a kept element of VR UN, a group length, a repeated tag, or a
value pydicom's writer would encode differently from its bytes.
"""

from __future__ import annotations

import os
import struct
from operator import itemgetter

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.values import convert_value

from router.deid.deidentify import (
    BIRTH_DATE,
    CLEAN,
    FILE_META_AE_TAGS,
    IDENTIFIER_TAGS,
    IMPLEMENTATION_CLASS,
    IMPLEMENTATION_VERSION,
    NAME_TAGS,
    PATIENT_ID,
    PATIENT_NAME,
    WALK,
    Deidentifier,
    Report,
    Run,
    pattern_for,
    removes_group,
    value_text,
)
from router.spool.element_stream import Element, NotStreamable, parse_elements, parse_items
from router.spool.encoded_versions import EncodedHeader
from router.spool.raw_elements import encode_element, encode_value
from router.spool.spans import ITEM_DELIMITER, SEQUENCE_DELIMITER, UNDEFINED
from router.spool.splice import DEFER_SIZE, Layout
from router.spool.stream_header import TRANSFER_SYNTAX, StreamHeader, read_stream_header

SOP_CLASS, SOP_INSTANCE = 0x00080016, 0x00080018
MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE = 0x00020002, 0x00020003
BURNED_IN_ANNOTATION = 0x00280301
META_UIDS = {MEDIA_SOP_CLASS: SOP_CLASS, MEDIA_SOP_INSTANCE: SOP_INSTANCE}
_NUMBERS = {"AT": "<HH", "SV": "<q", "UV": "<Q"}
# What the data set walk decodes although it may keep the element (the identifying pattern,
# the burned-in check, the file meta UIDs): kept, they are written from their decoded value.
_READ_AT_TOP = frozenset(IDENTIFIER_TAGS + NAME_TAGS + (BIRTH_DATE, BURNED_IN_ANNOTATION, SOP_CLASS, SOP_INSTANCE))


def open_stream(path: os.PathLike | str) -> StreamedFile:
    """The header of the Part-10 file at ``path``, ready to de-identify without a pydicom data
    set; raises :class:`NotStreamable` (take the data set way)."""
    return StreamedFile(*read_stream_header(path))


class StreamedFile:
    """One file's header bytes and elements; :meth:`deidentify` may be called more than once
    (with another de-identifier after an :class:`~router.deid.deidentify.UnmappedPatient`)."""

    def __init__(self, buf: bytes, header: StreamHeader, layout: Layout):
        self.buf = buf
        self.header = header
        self.layout = layout
        self.top = {e.tag: e for e in header.elements}
        if len(self.top) != len(header.elements):
            raise NotStreamable("a tag appears twice")
        if any(e.undefined_length and e.end - e.value_start > DEFER_SIZE for e in header.elements):
            raise NotStreamable("a long sequence (the data set way rewrites it item by item)")
        self.implicit = header.implicit
        self.decoded: dict[int, object] = {}

    @property
    def burned_in_annotation(self) -> str | None:
        """The original's Burned In Annotation (0028,0301), None when it has none."""
        return self._text(BURNED_IN_ANNOTATION)

    @property
    def sop_class_uid(self) -> str | None:
        return self._text(SOP_CLASS)

    def top_value(self, tag: int):
        """The decoded value of the original's top-level element ``tag`` (None when absent), decoded once."""
        if tag not in self.decoded:
            element = self.top.get(tag)
            self.decoded[tag] = None if element is None else _value(self.buf, element, self.implicit)
        return self.decoded[tag]

    @property
    def pixel_data(self) -> bytes | None:
        """The file's bytes from its pixel data element to its end, when they were read with the header."""
        start = self.layout.pixel_start
        if start is None or len(self.buf) < self.layout.size:
            return None
        return self.buf[start : self.layout.size]

    def _text(self, tag: int) -> str | None:
        return None if tag not in self.top else value_text(self.top_value(tag))

    def deidentify(self, deidentifier: Deidentifier) -> tuple[EncodedHeader, Report]:
        """The de-identified header, encoded, and the report; raises :class:`NotStreamable` or
        :class:`~router.deid.deidentify.UnmappedPatient`."""
        return DeidentifyingWalk(deidentifier, self).run()


class DeidentifyingWalk:
    def __init__(self, deidentifier: Deidentifier, file: StreamedFile):
        self.deid = deidentifier
        self.buf = file.buf
        self.header = file.header
        self.layout = file.layout
        self.implicit = file.implicit
        self.top = file.top
        self.file = file
        self.decoded = dict(file.decoded)  # this walk's values: an edit replaces some

    def run(self) -> tuple[EncodedHeader, Report]:
        original_id = value_text(self.top_value(PATIENT_ID))
        original_name = value_text(self.top_value(PATIENT_NAME))
        pattern = pattern_for(
            tuple(value_text(self.top_value(t)) for t in IDENTIFIER_TAGS),
            tuple(value_text(self.top_value(t)) for t in NAME_TAGS),
            value_text(self.top_value(BIRTH_DATE)),
        )
        self.top_value(BURNED_IN_ANNOTATION)
        self.top_value(SOP_CLASS)
        run = self.deid.begin(original_id, original_name, pattern)
        body = self.dataset(run, self.header.elements, cleaning=False, lazy=False, top=True)
        self.deid.conclude(run, original_id, original_name, PATIENT_ID in self.top, PATIENT_NAME in self.top)
        marks = self.deid.marks(run.report, self.implicit, True)
        body = _merged(body, [(tag, self.mark(tag, vr, value)) for tag, vr, value in marks])
        uids = {tag: value for tag, value in self.decoded.items() if tag in (SOP_CLASS, SOP_INSTANCE)}
        meta = self.meta(uids)
        body_bytes = b"".join(part for _, part in body)
        encoded = EncodedHeader(meta, body_bytes, self.layout, str(uids[SOP_INSTANCE]), pixel_data=self.file.pixel_data)
        return encoded, run.report

    def top_value(self, tag: int):
        """The value of the top-level element ``tag`` as this walk left it (decoded once)."""
        if tag not in self.decoded:
            self.decoded[tag] = self.file.top_value(tag)
        return self.decoded[tag]

    def dataset(
        self, run: Run, elements: list[Element], cleaning: bool, lazy: bool, top: bool = False
    ) -> list[tuple[int, bytes]]:
        """The encoded elements of one data set (the top level or an item), in tag order; ``lazy``:
        see :meth:`sequence`."""
        creator_values = {
            e.tag: self.value(e) for e in elements if e.tag >> 16 & 1 and 0x0010 <= e.tag & 0xFFFF <= 0x00FF
        }
        creators = {tag: value_text(value) for tag, value in creator_values.items()}
        out: list[tuple[int, bytes]] = []
        removed_groups = set()
        seen = set()
        for e in elements:
            tag, vr = e.tag, e.vr
            if tag in seen or tag & 0xFFFF == 0:
                raise NotStreamable("a repeated tag or a group length")
            seen.add(tag)
            if tag >> 16 & 1:
                if run.keeps_private(tag, vr, creators):
                    if vr == "SQ" and tag & 0xFF00:
                        out.append((tag, self.sequence(run, e, False, lazy)))
                    elif tag in creator_values:
                        out.append((tag, self.encoded(e, creator_values[tag])))
                    else:
                        out.append((tag, self.original(e)))
                else:
                    run.report.actions["private removed"] += 1
                continue
            if tag in (PATIENT_ID, PATIENT_NAME):
                value = self.top_value(tag) if top else self.value(e)
                out.append((tag, self.encoded(e, run.pseudonym_value(tag, value))))
                continue
            action = run.decide(tag, vr, cleaning)
            if action == WALK:
                out.append((tag, self.sequence(run, e, cleaning, lazy)))
            elif action == CLEAN:
                out.append((tag, self.cleaned(run, e, top)))
            elif action is None or action == "K":
                if action == "K":
                    run.report.actions["kept"] += 1
                if vr == "SQ":
                    out.append((tag, self.sequence(run, e, False, lazy)))
                elif top and tag in _READ_AT_TOP:
                    out.append((tag, self.encoded(e, self.top_value(tag))))
                else:
                    out.append((tag, self.original(e)))
            else:
                if removes_group(tag, action):
                    removed_groups.add(tag >> 16)
                encoded = self.act(run, e, action, lazy, top)
                if encoded is not None:
                    out.append((tag, encoded))
        if removed_groups:
            kept = [(tag, part) for tag, part in out if tag >> 16 not in removed_groups]
            run.report.actions["removed"] += len(out) - len(kept)
            out = kept
        out.sort(key=itemgetter(0))
        return out

    def act(self, run: Run, e: Element, action: str, lazy: bool, top: bool) -> bytes | None:
        vr = e.vr
        if action == "X":
            run.count("removed", vr)
            return None
        if vr == "SQ":
            if action in ("Z", "D"):
                run.report.actions["emptied"] += 1
                return self.sequence_bytes(e.tag, [], lazy and e.undefined_length)
            if action in ("U", "U*"):
                run.report.actions["kept"] += 1
                return self.sequence(run, e, False, lazy)
            run.report.actions["cleaned"] += 1
            return self.sequence(run, e, True, lazy)
        if action == "Z":
            run.count("emptied", vr)
            return self.encoded(e, None)
        if action == "D" or action == "U":
            if vr == "UI":
                value = self.top_value(e.tag) if top else self.value(e)
                new = run.dummy_value(vr, value)
                if top and e.tag in (SOP_CLASS, SOP_INSTANCE):
                    self.decoded[e.tag] = new
                return self.encoded(e, new)
            return self.encoded(e, run.dummy_value(vr, None))
        return self.cleaned(run, e, top)

    def cleaned(self, run: Run, e: Element, top: bool) -> bytes:
        value = self.top_value(e.tag) if top else self.value(e)
        new = run.cleaned_value(e.vr, value)
        if top and e.tag in self.decoded:
            self.decoded[e.tag] = new
        return self.encoded(e, new)

    def sequence(self, run: Run, e: Element, cleaning: bool, lazy: bool) -> bytes:
        """The sequence ``e`` with its items walked, its lengths as the data set way writes them.

        That way reads a header with every sequence of undefined length parsed, and copies it
        for the edit: a copy's sequence and its items get defined lengths. A sequence of defined
        length is parsed only when first walked, after the copy, so below it (``lazy``) every
        sequence and item keeps the length form it had in the file.
        """
        items = []
        child_lazy = lazy or not e.undefined_length
        for item in parse_items(self.buf, e, self.implicit):
            elements, _ = parse_elements(self.buf, item.value_start, item.value_end, self.implicit, depth=1)
            body = b"".join(part for _, part in self.dataset(run, elements, cleaning, child_lazy))
            if item.undefined_length and child_lazy:
                items.append(struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + _ITEM_END)
            else:
                items.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body)
        return self.sequence_bytes(e.tag, items, lazy and e.undefined_length)

    def sequence_bytes(self, tag: int, items: list[bytes], undefined: bool) -> bytes:
        value = b"".join(items)
        length = UNDEFINED if undefined else len(value)
        if self.implicit:
            head = struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
        else:
            head = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, length)
        return head + value + (_SEQUENCE_END if undefined else b"")

    def value(self, e: Element):
        return _value(self.buf, e, self.implicit)

    def original(self, e: Element, implicit: bool | None = None) -> bytes:
        """The element's bytes as they were: what pydicom writes for a raw element (``implicit``:
        the encoding it is in, the data set's unless given)."""
        implicit = self.implicit if implicit is None else implicit
        if e.vr == "UN" and not implicit:
            raise NotStreamable("a kept element of VR UN (pydicom may give it another VR)")
        if (e.value_end - e.value_start) % 2 or e.undefined_length:
            raise NotStreamable("an odd length")
        if not implicit and e.value_start - e.start == 12 and self.buf[e.start + 6 : e.start + 8] != b"\0\0":
            raise NotStreamable("reserved bytes set")
        return self.buf[e.start : e.end]

    def encoded(self, e: Element, value) -> bytes:
        return self.encode(e.tag, e.vr, value)

    def encode(self, tag: int, vr: str, value) -> bytes:
        """``value`` as pydicom's writer encodes it (raises :class:`NotStreamable` where that is not sure)."""
        if vr == "UN":
            raise NotStreamable("an edited element of VR UN")
        raw: bytes | None
        if isinstance(value, bytes):
            raw = value
        elif vr in _NUMBERS and value is not None:
            raw = struct.pack(_NUMBERS[vr], 0, 0) if vr == "AT" else struct.pack(_NUMBERS[vr], value)
        elif value is None and vr not in ("SQ",):
            raw = b""
        else:
            raw = encode_value(vr, value)
        if raw is None or len(raw) % 2:
            raise NotStreamable(f"a {vr} value pydicom would encode")
        encoded = encode_element(tag, vr, raw, self.implicit)
        if encoded is None:
            raise NotStreamable(f"a {vr} value too long for its length field")
        return encoded

    def mark(self, tag: int, vr: str, value) -> bytes:
        if isinstance(value, RawDataElement):
            encoded = encode_element(tag, "SQ", value.value or b"", self.implicit)
            assert encoded is not None
            return encoded
        return self.encode(tag, vr, value)

    def meta(self, uids: dict[int, object]) -> bytes:
        """The file meta the data set walk leaves: the sender's AE titles (unless Retain Device
        Identity), private and unlisted elements gone, the router's implementation, and the
        header's (new) SOP Class and Instance UIDs."""
        options = self.deid.options
        parts: dict[int, bytes] = {}
        for e in self.header.meta:
            if e.tag == 0x00020000 or e.tag >= 0x00020100 or e.tag >> 16 & 1:
                continue
            if e.tag in FILE_META_AE_TAGS and "retain_device_identity" not in options:
                continue
            if e.tag == TRANSFER_SYNTAX:
                parts[e.tag] = self.meta_text(e.tag, "UI", self.value(e))
            else:
                parts[e.tag] = self.original(e, implicit=False)
        settings = self.deid.settings
        parts[IMPLEMENTATION_CLASS] = self.meta_text(IMPLEMENTATION_CLASS, "UI", settings.implementation_uid)
        parts[IMPLEMENTATION_VERSION] = self.meta_text(IMPLEMENTATION_VERSION, "SH", settings.implementation_version)
        for meta_tag, tag in META_UIDS.items():
            if tag not in uids or uids[tag] is None:
                raise NotStreamable("no SOP Class or Instance UID")
            parts[meta_tag] = self.meta_text(meta_tag, "UI", uids[tag])
        if any(tag not in parts for tag in (0x00020001, TRANSFER_SYNTAX)):
            raise NotStreamable("a file meta without its version or transfer syntax")
        data = b"".join(parts[tag] for tag in sorted(parts))
        return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(data)) + data

    def meta_text(self, tag: int, vr: str, value) -> bytes:
        raw = encode_value(vr, value)
        encoded = None if raw is None else encode_element(tag, vr, raw, False)
        if encoded is None:
            raise NotStreamable("a file meta value pydicom would encode")
        return encoded


_ITEM_END = struct.pack("<HHI", ITEM_DELIMITER >> 16, ITEM_DELIMITER & 0xFFFF, 0)
_SEQUENCE_END = struct.pack("<HHI", SEQUENCE_DELIMITER >> 16, SEQUENCE_DELIMITER & 0xFFFF, 0)


def _merged(body: list[tuple[int, bytes]], marks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """``body`` with ``marks`` added, a mark replacing an element of the same tag, in tag order."""
    replaced = {tag for tag, _ in marks}
    return sorted([item for item in body if item[0] not in replaced] + marks, key=itemgetter(0))


def _value(buf: bytes, e: Element, implicit: bool):
    """The element's value as pydicom decodes it."""
    raw = buf[e.value_start : e.value_end]
    if not raw.isascii() or b"\x1b" in raw:
        raise NotStreamable("a value to decode is not ASCII")
    vr = e.vr
    if vr in ("UN", "SQ"):
        raise NotStreamable(f"a value of VR {vr} to decode")
    element = RawDataElement(BaseTag(e.tag), vr, len(raw), raw, e.value_start, implicit, True)
    try:
        return convert_value(vr, element, None)
    except Exception as exc:  # a value pydicom cannot read either: its way decides what to do
        raise NotStreamable(f"a {vr} value pydicom cannot decode: {exc}") from None
