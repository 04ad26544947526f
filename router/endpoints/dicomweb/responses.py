"""HTTP answers of the DICOMweb endpoint: plain-text problems, and the start of a streamed 200."""

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


async def started(request: web.BaseRequest, content_type: str) -> web.StreamResponse:
    """A 200 answer of ``content_type`` whose body is written as it is produced, its headers sent."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    await response.prepare(request)
    return response
