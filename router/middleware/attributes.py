"""Naming, reading and writing attributes for the stages that edit datasets.

Selectors name what an operation touches: a keyword (``PatientID``), a tag
(``"(0010,0020)"`` or ``"00100020"``), a whole group (``"(0009,xxxx)"``) or ``"private"``
(every private attribute, in sequences too). Templates are text with ``{Keyword}`` or
``{envelope_field}`` placeholders (``"{calling_aet}-{Modality}"``); a placeholder for
an absent attribute renders as an empty string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import Tag

from router.envelope import RequestEnvelope
from router.middleware.match import ENVELOPE_FIELDS

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_GROUP_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?[xX]{4}\)?$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PROTECTED = ("file meta (group 0002)", "pixel data (7FE0,0010)")


class AttributeSpecError(ValueError):
    """A selector, tag or template that cannot be used; the message says why."""


def parse_attribute(key: str) -> int:
    """The tag of a keyword or (gggg,eeee); raises for groups, envelope fields and unknown names."""
    m = _TAG_RE.match(key)
    if m:
        tag = int(m.group(1) + m.group(2), 16)
    else:
        found = tag_for_keyword(key)
        if found is None:
            raise AttributeSpecError(f"{key!r} is not a DICOM keyword or a (gggg,eeee) tag")
        tag = found
    if tag >> 16 == 0x0002 or tag >= 0x7FE00000 and tag >> 16 == 0x7FE0:
        raise AttributeSpecError(f"{key!r}: {' and '.join(PROTECTED)} cannot be edited")
    return tag


def attribute_vr(tag: int, explicit: str | None = None) -> str:
    """The VR to write ``tag`` with: the given one, else the data dictionary's."""
    if explicit:
        return explicit
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise AttributeSpecError(
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the data dictionary; give its vr"
        ) from None
    return vr.split(" or ")[0]


def attribute_name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{keyword} {text}" if keyword else text


@dataclass(frozen=True)
class Selector:
    """What a ``delete`` names: one tag, a whole group, or every private attribute."""

    text: str
    tag: int | None = None
    group: int | None = None
    private: bool = False

    @classmethod
    def parse(cls, text: str) -> Selector:
        if text == "private":
            return cls(text, private=True)
        m = _GROUP_RE.match(text)
        if m:
            group = int(m.group(1), 16)
            if group in (0x0002, 0x7FE0):
                raise AttributeSpecError(f"{text!r}: {' and '.join(PROTECTED)} cannot be edited")
            return cls(text, group=group)
        return cls(text, tag=parse_attribute(text))

    def delete_from(self, ds: Dataset) -> list[int]:
        """Remove what this selector names from the top level of ``ds`` (private: at every level)."""
        if self.private:
            return remove_private(ds)
        removed: list[int]
        if self.group is not None:
            removed = [int(tag) for tag in ds.keys() if tag >> 16 == self.group]
        else:
            removed = [self.tag] if self.tag is not None and self.tag in ds else []
        for tag in removed:
            del ds[tag]
        return removed


def remove_private(ds: Dataset) -> list[int]:
    """Remove every private element of ``ds``, at every level; returns the top-level tags removed.

    Only sequences are decoded (to reach their items): every other element stays as it was
    read, to be written back byte for byte. A streamed header
    (:class:`~router.middleware.coerce_stream.StreamedHeader`) removes them itself."""
    if not isinstance(ds, Dataset):
        return ds.remove_private()
    removed: list[int] = []
    for tag in list(ds.keys()):
        if tag >> 16 & 1:
            del ds[tag]
            removed.append(int(tag))
        elif _is_sequence(ds, tag):
            for item in ds[tag].value or ():
                remove_private(item)
    return removed


def _is_sequence(ds: Dataset, tag: int) -> bool:
    vr = ds.get_item(tag, keep_deferred=True).VR
    if vr is None:  # implicit VR, still raw
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"


def check_template(template: str) -> None:
    for name in _PLACEHOLDER.findall(template):
        if name not in ENVELOPE_FIELDS and tag_for_keyword(name) is None:
            raise AttributeSpecError(f"template placeholder {{{name}}} is not a DICOM keyword or an envelope field")


def render_template(template: str, envelope: RequestEnvelope, ds: Dataset) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1)
        if name in ENVELOPE_FIELDS:
            return str(ENVELOPE_FIELDS[name](envelope) or "")
        tag = tag_for_keyword(name)
        element = ds.get(tag) if tag is not None else None
        if element is None or element.value is None:
            return ""
        v = element.value
        return (
            "\\".join(str(x) for x in v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else str(v)
        )

    return _PLACEHOLDER.sub(value, template)


def set_attribute(ds: Dataset, tag: int, value: Any, vr: str | None = None) -> None:
    """Set ``tag`` to ``value`` (text is split on backslashes for multi-valued VRs)."""
    vr = attribute_vr(tag, vr)
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT", "UR"):
        value = value.split("\\")
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        value = [int(v) for v in value] if isinstance(value, list) else int(value)
    elif vr in ("FL", "FD"):
        value = [float(v) for v in value] if isinstance(value, list) else float(value)
    ds[Tag(tag)] = DataElement(tag, vr, value)


def text_value(ds: Dataset, tag: int) -> str | None:
    """The value of ``tag`` as text (multi-values joined with backslashes), None when absent."""
    if tag not in ds:
        return None
    v = ds[tag].value
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)
