"""QIDO-RS (PS3.18 10.6): searches answered by the pipelines' query-capable backends.

The request becomes a Study Root C-FIND identifier (:mod:`.qido_query`) and goes through
the same query proxy as a C-FIND (:meth:`router.qr.service.QueryRetrieveService.find`):
the pipeline's stages, every capable backend at once, answers merged and de-duplicated,
``response_middleware`` on each. Matches stream to the client as a JSON array as they
arrive, ``offset`` skipped and ``limit`` honoured (the upstream queries are cancelled once
it is reached). A request no stage or upstream could answer gets 403 (refused by a stage),
502 (every upstream failed, with their reasons) or 503 (no backend of the endpoint's
pipelines answers queries).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor

import structlog
from aiohttp import web
from pydicom import Dataset

from router.endpoints.dicomweb.bridge import END, ThreadedStream
from router.endpoints.dicomweb.qido_query import BadQuery, qido_query
from router.endpoints.dicomweb.responses import DICOM_JSON, problem, started
from router.envelope import AssociationInfo
from router.qr.models import STUDY_FIND
from router.qr.service import QueryRetrieveService

log = structlog.get_logger("router.dicomweb")

PENDING = (0xFF00, 0xFF01)


async def search(
    request: web.BaseRequest,
    endpoint: str,
    qr: QueryRetrieveService | None,
    executor: Executor,
    origin: AssociationInfo,
    level: str,
    path_uids: dict[str, str],
) -> web.StreamResponse:
    try:
        query = qido_query(level, path_uids, list(request.query.items()))
    except BadQuery as exc:
        return problem(400, f"invalid query parameter: {exc}")
    if qr is None or "find" not in qr.offered(endpoint):
        return problem(503, "no backend of this endpoint's pipelines answers queries (query = true)")
    stream = ThreadedStream(asyncio.get_running_loop(), executor)
    stream.start(lambda cancelled: qr.find(origin, STUDY_FIND, 1, query.identifier, cancelled))
    response: web.StreamResponse | None = None
    written = skipped = 0
    try:
        while (item := await stream.next()) is not END:
            status, answer = item
            if isinstance(status, Dataset):  # a failure: status and comment in one data set
                status, answer = int(status.Status), status
            if status in PENDING and answer is not None:
                if skipped < query.offset:
                    skipped += 1
                    continue
                if response is None:
                    response = await started(request, DICOM_JSON)
                await response.write((b"[" if written == 0 else b",") + _json(answer))
                written += 1
                if query.limit is not None and written >= query.limit:
                    break
            elif status not in PENDING and status not in (0x0000, 0xFE00):
                comment = str(answer.get("ErrorComment", "")) if isinstance(answer, Dataset) else ""
                if response is None:
                    return _failure(status, comment)
                log.warning(
                    "QIDO-RS search ended with a failure after some matches",
                    status=f"0x{status:04X}",
                    reason=comment,
                    request_id=origin.association_id,
                )
    finally:
        await stream.stop()
    if response is None:
        return web.Response(status=200, body=b"[]", content_type=DICOM_JSON)
    await response.write(b"]")
    await response.write_eof()
    return response


def _json(answer: Dataset) -> bytes:
    answer = Dataset(answer)
    if "QueryRetrieveLevel" in answer:
        del answer.QueryRetrieveLevel
    return json.dumps(answer.to_json_dict()).encode()


def _failure(status: int, comment: str) -> web.Response:
    if comment.startswith("refused by "):
        return problem(403, f"the search was {comment} (status 0x{status:04X})")
    return problem(502, f"no upstream answered the search (status 0x{status:04X}): {comment}")
