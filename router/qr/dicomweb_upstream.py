"""A ``dicomweb`` backend as an upstream: C-FIND identifiers asked by QIDO-RS (``query = true``),
and retrievals fetched by WADO-RS (``retrieve = "wado"``, :func:`wado_fetch`).

Searches:
The level picks the resource (STUDY: ``/studies``; SERIES: ``/studies/{uid}/series`` when one
study is named, else ``/series``; IMAGE likewise down to ``.../instances``); keys with a value
become matching parameters (a DICOM list ``a\\b`` the QIDO-RS list ``a,b``), keys without one
``includefield``. Answers are read a page at a time (``limit``/``offset``), so a large result
is never held whole and a cancelled search stops after the current page. Patient-level
queries have no QIDO-RS resource and fail with a clear reason.

Retrievals: the instances are listed by QIDO-RS (as a C-FIND plans a C-GET) and fetched with
one WADO-RS request for the study, series or instance asked for, ``transfer-syntax=*`` (as
stored); each part of the answer streams to its own file as it arrives.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from pydicom import Dataset

from router.backends.dicomweb.backend import DicomwebBackend
from router.backends.dicomweb.session import HttpSession, failure_reason
from router.engine.part10 import META_READ, NotPlainPart10, read_file_meta
from router.qr.upstream import UpstreamError

PAGE = 500
PENDING, SUCCESS = 0xFF00, 0x0000
SKIPPED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


class DicomwebUpstream:
    def __init__(self, name: str, backend: DicomwebBackend):
        self.name = name
        self.backend = backend

    def answers(self, flag: str) -> bool:
        """Whether it answers "query", "worklist" or "retrieve" (the flags of a dimse backend)."""
        if flag == "query":
            return self.backend.config.query
        return flag == "retrieve" and self.backend.config.retrieve == "wado"

    def describe(self) -> str:
        return f"{self.name} ({self.backend.describe()})"

    def find(self, model: str, identifier: Dataset, msg_id: int = 1) -> QidoCall:
        return QidoCall(self, identifier)


class QidoCall:
    def __init__(self, upstream: DicomwebUpstream, identifier: Dataset):
        self.upstream = upstream
        self.identifier = identifier
        self.cancelled = False

    def responses(self) -> Iterator[tuple[int, Dataset | None]]:
        level = str(self.identifier.get("QueryRetrieveLevel", "")).upper()
        resource, params = qido_request(level, self.identifier)
        url = f"{self.upstream.backend.config.url}{resource}"
        session = HttpSession(self.upstream.backend.config, connections=1)
        try:
            offset = 0
            while not self.cancelled:
                page = session_get(
                    session, url, params + [("limit", str(PAGE)), ("offset", str(offset))], self.upstream.describe()
                )
                for item in page:
                    answer = Dataset.from_json(item)
                    answer.QueryRetrieveLevel = level
                    yield PENDING, answer
                if len(page) < PAGE:
                    break
                offset += len(page)
        finally:
            session.close()
        yield SUCCESS, None

    def cancel(self) -> None:
        self.cancelled = True


def qido_request(level: str, identifier: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """(resource path, query parameters) asking QIDO-RS what ``identifier`` asks C-FIND."""
    study = _single(identifier, "StudyInstanceUID")
    series = _single(identifier, "SeriesInstanceUID")
    in_path: set[str]
    if level == "STUDY":
        resource, in_path = "/studies", set()
    elif level == "SERIES":
        resource, in_path = (f"/studies/{study}/series", {"StudyInstanceUID"}) if study else ("/series", set())
    elif level == "IMAGE":
        if study and series:
            resource, in_path = f"/studies/{study}/series/{series}/instances", {"StudyInstanceUID", "SeriesInstanceUID"}
        elif study:
            resource, in_path = f"/studies/{study}/instances", {"StudyInstanceUID"}
        else:
            resource, in_path = "/instances", set()
    else:
        raise UpstreamError(
            f"QIDO-RS has no {level or 'unnamed'}-level search (patient-level C-FIND cannot go to a dicomweb backend)"
        )
    params: list[tuple[str, str]] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in SKIPPED or keyword in in_path:
            continue
        value = "" if element.VR == "SQ" else _text(element.value)
        params.append((keyword, value) if value else ("includefield", keyword))
    return resource, params


def session_get(session: HttpSession, url: str, params: list[tuple[str, str]], who: str) -> list[dict]:
    """GET a QIDO-RS page: the JSON array (empty for 204); UpstreamError with the reason otherwise."""
    full = f"{url}?{urlencode(params)}"

    async def get(client: aiohttp.ClientSession):
        async with client.get(full, headers=session.headers(Accept="application/dicom+json")) as response:
            return response.status, await response.read()

    try:
        status, body = session.run(get)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise UpstreamError(f"{who}: {failure_reason(url, exc)[1]}") from None
    if status == 204 or (200 <= status < 300 and not body.strip()):
        return []
    if status != 200:
        detail = body[:200].decode("utf-8", "replace").strip()
        raise UpstreamError(f"{who}: QIDO-RS answered {status}" + (f": {detail}" if detail else ""))
    try:
        answer = json.loads(body)
    except ValueError:
        raise UpstreamError(f"{who}: QIDO-RS answer is not JSON") from None
    if not isinstance(answer, list):
        raise UpstreamError(f"{who}: QIDO-RS answer is not a JSON array")
    return [item for item in answer if isinstance(item, dict)]


def _single(identifier: Dataset, keyword: str) -> str | None:
    value = identifier.get(keyword)
    if not value or "\\" in str(value) or "*" in str(value) or "?" in str(value):
        return None
    return str(value)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return ",".join(str(v) for v in value)
    return str(value)


WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 256 * 1024


def wado_fetch(upstream: DicomwebUpstream, identifier: Dataset, incoming: Path, accept, stopped) -> None:
    """Fetch what ``identifier`` (a retrieve identifier) names by WADO-RS; ``accept(uid, sop class,
    transfer syntax, path)`` each instance as its part ends. Stops reading when ``stopped()``."""
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    path = [
        ("studies", identifier.get("StudyInstanceUID")),
        ("series", identifier.get("SeriesInstanceUID")),
        ("instances", identifier.get("SOPInstanceUID")),
    ][: {"STUDY": 1, "SERIES": 2, "IMAGE": 3}.get(level, 0)]
    if not path or any(not _single_value(value) for _, value in path):
        raise UpstreamError(f"{upstream.describe()}: WADO-RS needs one study (and series, instance) UID per level")
    url = upstream.backend.config.url + "".join(f"/{name}/{value}" for name, value in path)
    session = HttpSession(upstream.backend.config, connections=1)

    async def fetch(client: aiohttp.ClientSession):
        async with client.get(url, headers=session.headers(Accept=WADO_ACCEPT)) as response:
            if response.status != 200:
                detail = (await response.content.read(200)).decode("utf-8", "replace").strip()
                raise UpstreamError(
                    f"{upstream.describe()}: WADO-RS answered {response.status}" + (f": {detail}" if detail else "")
                )
            reader = aiohttp.MultipartReader(response.headers, response.content)
            while not stopped() and (part := await reader.next()) is not None:
                target = incoming / f"retrieved-{uuid.uuid4().hex}.dcm"
                head = await _save_part(part, target)
                try:
                    meta, _ = read_file_meta(head)
                except NotPlainPart10 as exc:
                    target.unlink(missing_ok=True)
                    raise UpstreamError(f"{upstream.describe()}: a WADO-RS part is not a DICOM file: {exc}") from None
                accept(
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.TransferSyntaxUID),
                    target,
                )

    try:
        session.run(fetch)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        raise UpstreamError(f"{upstream.describe()}: {failure_reason(url, exc)[1]}") from None
    finally:
        session.close()


async def _save_part(part, target: Path) -> bytes:
    head = bytearray()
    try:
        with open(target, "wb") as out:
            while chunk := await part.read_chunk(CHUNK):
                if len(head) < META_READ:
                    head += chunk[: META_READ - len(head)]
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return bytes(head)


def _single_value(value) -> bool:
    return bool(value) and "\\" not in str(value) and "*" not in str(value)
