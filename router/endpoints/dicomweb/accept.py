"""The transfer syntax a WADO-RS client asks for in its Accept header (PS3.18 8.7.3).

``multipart/related; type="application/dicom"; transfer-syntax=UID`` asks for instances in
that syntax; ``transfer-syntax=*``, no parameter, ``*/*`` or no Accept header leave them as
they are stored (the router's default, as Orthanc's: a viewer that cannot take a syntax
names the one it wants). Media ranges are taken in order of their ``q``, then as listed;
the first the router can produce wins. None it can produce is a 406.
"""

from __future__ import annotations

from router.transcode.syntaxes import ENCODABLE

AS_STORED = "*"


class NotAcceptable(ValueError):
    """No media range of the Accept header names something the router can send."""


def media_ranges(accept: str | None) -> list[tuple[str, dict[str, str], float]]:
    """The Accept header's media ranges (media type, parameters, quality), best first, those of
    quality 0 left out; an empty list for no header."""
    if not accept or not accept.strip():
        return []
    ranges = [_media_range(text) for text in accept.split(",") if text.strip()]
    ranges.sort(key=lambda r: -r[2])
    return [r for r in ranges if r[2] > 0]


def requested_syntax(accept: str | None) -> str:
    """The transfer syntax UID to send instances in, or :data:`AS_STORED`."""
    if not accept or not accept.strip():
        return AS_STORED
    named = []
    for media, params, _ in media_ranges(accept):
        if media in ("*/*", "multipart/*", "application/*") and "transfer-syntax" not in params:
            return AS_STORED
        if media not in ("multipart/related", "application/dicom"):
            continue
        if media == "multipart/related" and params.get("type", "application/dicom") != "application/dicom":
            continue
        syntax = params.get("transfer-syntax", AS_STORED)
        if syntax == AS_STORED or syntax in ENCODABLE:
            return syntax
        named.append(syntax)
    raise NotAcceptable(
        f"cannot send instances as {', '.join(named) or accept.strip()}: the router sends them as stored "
        f"(transfer-syntax=*) or in {', '.join(sorted(ENCODABLE))}"
    )


def _media_range(text: str) -> tuple[str, dict[str, str], float]:
    media, *params = (part.strip() for part in text.split(";"))
    values = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    try:
        quality = float(values.pop("q", "1"))
    except ValueError:
        quality = 0.0
    return media.lower(), values, quality
