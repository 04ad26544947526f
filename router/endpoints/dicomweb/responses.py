"""HTTP answers of the DICOMweb endpoint: DICOM JSON bodies (PS3.18 F.2, pydicom's JSON model)
and plain-text problems."""

from __future__ import annotations

import json

from aiohttp import web
from pydicom import Dataset

from router.observe.printable import printable

DICOM_JSON = "application/dicom+json"


def dicom_json_response(status: int, body: Dataset | list[Dataset]) -> web.Response:
    if isinstance(body, Dataset):
        payload = body.to_json_dict()
    else:
        payload = [d.to_json_dict() for d in body]
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=DICOM_JSON)


def problem(status: int, text: str, headers: dict | None = None) -> web.Response:
    """An error answer: ``text`` says what was wrong, for the operator reading the client's log
    (whatever of it came from the client escaped to printable ASCII)."""
    return web.Response(status=status, text=printable(text).encode("ascii", "backslashreplace").decode() + "\n",
                        headers=headers)
