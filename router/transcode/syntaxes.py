"""Transfer syntaxes by name: which the router decodes, which it encodes, which lose information.

A configuration names a syntax by its UID or by pydicom's keyword for it
(``"ExplicitVRLittleEndian"``, ``"JPEG2000Lossless"``, ``"JPEGLSLossless"``, ...);
:func:`parse_syntax` turns either into the UID and says what is wrong with anything else.
"""

from __future__ import annotations

import re

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from router.spool.variants import TRANSCODE_TARGETS

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
DECODABLE = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        RLELossless,
    }
)
ENCODABLE = TRANSCODE_TARGETS
LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000})
# PS3.3 C.7.6.1.1.5.1: the Lossy Image Compression Method of each lossy syntax.
LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGLSNearLossless: "ISO_14495_1", JPEG2000: "ISO_15444_1"}
_UID_FORM = re.compile(r"[0-9]+(\.[0-9]+)*")
_BY_KEYWORD = {UID(uid).keyword: UID(uid) for uid in DECODABLE | ENCODABLE}


class CannotTranscode(ValueError):
    """The instance cannot be written in the syntax asked for (the reason says why)."""


def parse_syntax(text: str) -> UID:
    """The UID ``text`` names (a UID or a keyword); raises ValueError naming what can be used."""
    uid = _BY_KEYWORD.get(text) or (UID(text) if _UID_FORM.fullmatch(text) else None)
    if uid is None or uid not in ENCODABLE:
        known = uid.name if uid is not None and uid.is_transfer_syntax else None
        what = f"{known} ({text})" if known and known != text else repr(text)
        choices = ", ".join(sorted(UID(u).keyword for u in ENCODABLE))
        raise ValueError(f"the router cannot write {what}; it writes {choices}")
    return uid


def describe(uid: str) -> str:
    """A short name for log lines and reasons."""
    return UID(uid).keyword or str(uid)
