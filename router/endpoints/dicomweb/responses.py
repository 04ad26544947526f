"""HTTP answers of the DICOMweb endpoint that are not DICOM: plain-text problems."""

from __future__ import annotations

from aiohttp import web

from router.observe.printable import printable

DICOM_JSON = "application/dicom+json"


def problem(status: int, text: str, headers: dict | None = None) -> web.Response:
    """An error answer: ``text`` says what was wrong, for the operator reading the client's log
    (whatever of it came from the client escaped to printable ASCII)."""
    return web.Response(
        status=status, text=printable(text).encode("ascii", "backslashreplace").decode() + "\n", headers=headers
    )
