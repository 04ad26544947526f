"""WADO-RS (PS3.18 10.4): studies, series and instances, and their metadata, fetched through
the pipelines' retrieve-capable backends.

The request becomes a retrieval like a C-GET's (:meth:`router.qr.service.QueryRetrieveService.retrieve_files`):
the upstream lists the instances with C-FIND and sends them by C-GET or C-MOVE, each goes
through the pipeline's stages (an ``anonymize`` stage de-identifies what a research viewer
gets), and each is written to the client as it arrives, one part of a
``multipart/related; type="application/dicom"`` answer (aiohttp's multipart writer, one part
at a time). An instance of up to a mebibyte fetched by C-GET for an answer as stored, with no
stage to run on it, goes from the C-GET to the answer in memory; any other is read from its
file, a large one in chunks. ``/metadata`` answers the same instances' headers as a
DICOM JSON array, bulk data (pixel data, long binary values) left out, read from memory or
the file the same way. The instances are sent
as they are stored, unless the Accept header names a ``transfer-syntax``
(:mod:`.accept`): then each is transcoded frame by frame (:mod:`router.transcode.files`)
into a scratch file beside it, and each part says which syntax it is in. An instance that
cannot be transcoded is left out of the answer, with a log line saying why.

406: the Accept header names only syntaxes the router cannot send; 404: nothing matches;
403: a stage refused the request; 502: no upstream could list or send
the instances (with the reasons). An upstream that breaks off after some instances were sent
ends the answer early: its status cannot change any more, and the log says what was missing.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from concurrent.futures import Executor
from pathlib import Path

import structlog
from aiohttp import hdrs, web
from pydicom import Dataset, dcmread

from router.endpoints.dicomweb.accept import AS_STORED, NotAcceptable, requested_syntax
from router.endpoints.dicomweb.bridge import ThreadedStream
from router.endpoints.dicomweb.responses import DICOM_JSON, problem, started
from router.endpoints.dicomweb.streamed_answer import close_multipart, streamed_answer, write_part
from router.envelope import AssociationInfo
from router.qr.service import QueryRetrieveService, RetrievalRefused
from router.qr.upstream import UpstreamError
from router.spool.splice import read_header_before_pixels
from router.transcode.files import transcode_file
from router.transcode.syntaxes import CannotTranscode

log = structlog.get_logger("router.dicomweb")

BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_BYTES = 1024
IN_FLIGHT = 4
READ_WHOLE = 1024 * 1024  # an instance up to this size is read into memory for its part (IN_FLIGHT at most)


async def retrieve(
    request: web.BaseRequest,
    endpoint: str,
    qr: QueryRetrieveService | None,
    executor: Executor,
    origin: AssociationInfo,
    endpoint_ae: str,
    uids: dict[str, str],
    metadata: bool,
):
    if qr is None or "retrieve" not in qr.offered(endpoint):
        return problem(503, "no backend of this endpoint's pipelines retrieves instances (retrieve = ...)")
    try:
        syntax = AS_STORED if metadata else requested_syntax(request.headers.get(hdrs.ACCEPT))
    except NotAcceptable as exc:
        return problem(406, str(exc))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = (
        "IMAGE" if "SOPInstanceUID" in uids else "SERIES" if "SeriesInstanceUID" in uids else "STUDY"
    )
    for keyword, value in uids.items():
        setattr(identifier, keyword, value)

    def produce(cancelled):
        for fetched, path in qr.retrieve_files(origin, identifier, endpoint_ae, cancelled, syntax == AS_STORED):
            if isinstance(path, bytes):
                yield fetched.sop_instance_uid, _metadata_json(path) if metadata else (path, fetched.transfer_syntax)
            elif metadata:
                yield fetched.sop_instance_uid, _metadata_json(path)
            elif syntax in (AS_STORED, fetched.transfer_syntax):
                yield fetched.sop_instance_uid, (_readable(path), fetched.transfer_syntax)
            else:
                transcoded = _transcoded(path, syntax, fetched.sop_instance_uid, origin)
                if transcoded is not None:
                    yield fetched.sop_instance_uid, (transcoded, syntax)

    stream = ThreadedStream(asyncio.get_running_loop(), executor, capacity=IN_FLIGHT)
    stream.start(produce)
    writer = _MetadataArray() if metadata else _InstanceParts(uuid.uuid4().hex)
    return await streamed_answer(request, stream, writer, _failure_answer, origin, "WADO-RS answer")


def _failure_answer(exc: Exception) -> web.Response | None:
    if isinstance(exc, RetrievalRefused):
        return problem(403, f"the retrieval was {exc}")
    if isinstance(exc, UpstreamError):
        return problem(502, f"no upstream could retrieve the instances: {exc}")
    return None


class _InstanceParts:
    """Each instance a ``multipart/related; type="application/dicom"`` part, naming its syntax."""

    def __init__(self, boundary: str):
        self.boundary = boundary

    async def start(self, request: web.BaseRequest, first) -> web.StreamResponse:
        return await started(request, f'multipart/related; type="application/dicom"; boundary={self.boundary}')

    async def write(self, response: web.StreamResponse, item) -> None:
        _, (payload, transfer_syntax) = item
        try:
            await write_part(response, self.boundary, payload, f"application/dicom; transfer-syntax={transfer_syntax}")
        finally:
            self.release(item)

    async def finish(self, response: web.StreamResponse) -> None:
        await close_multipart(response, self.boundary)

    def release(self, item) -> None:
        _, (payload, _) = item
        if not isinstance(payload, bytes):
            payload.close()


class _MetadataArray:
    """The instances' DICOM JSON objects, one JSON array."""

    def __init__(self) -> None:
        self.sent = 0

    async def start(self, request: web.BaseRequest, first) -> web.StreamResponse:
        return await started(request, DICOM_JSON)

    async def write(self, response: web.StreamResponse, item) -> None:
        await response.write((b"[" if self.sent == 0 else b",") + item[1])
        self.sent += 1

    async def finish(self, response: web.StreamResponse) -> None:
        await response.write(b"]")

    def release(self, item) -> None:
        pass


def _readable(path):
    """The instance's bytes, read on the worker thread, when it is at most :data:`READ_WHOLE`;
    else its file, open, which the answer reads chunk by chunk (so memory stays flat for a
    large instance and a small one costs one write instead of a read per chunk)."""
    f = open(path, "rb")
    if os.fstat(f.fileno()).st_size > READ_WHOLE:
        return f
    with f:
        return f.read()


def _transcoded(path, syntax: str, sop_instance_uid: str, origin: AssociationInfo):
    """The instance at ``path`` in ``syntax``: a scratch file beside it, open for reading and
    already unlinked (so it goes when it is closed); None, logged, when it cannot be made."""
    scratch = f"{path}.{syntax}.wado"
    try:
        transcode_file(path, scratch, syntax)
        file = open(scratch, "rb")
    except (CannotTranscode, OSError) as exc:
        log.warning(
            "WADO-RS instance left out: it cannot be sent in the syntax asked for",
            reason=str(exc),
            request_id=origin.association_id,
            peer=f"{origin.peer_host}:{origin.peer_port}",
            sop_instance_uid=sop_instance_uid,
        )
        return None
    finally:
        try:
            os.unlink(scratch)
        except FileNotFoundError:
            pass
    return file


def _metadata_json(instance: Path | bytes) -> bytes:
    """An instance's header in DICOM JSON, bulk data left out; ``instance``: its file or its bytes."""
    header: Dataset
    if isinstance(instance, bytes):
        header = dcmread(io.BytesIO(instance), stop_before_pixels=True, force=True)
    else:
        header, _ = read_header_before_pixels(instance)
    for element in list(header):
        if element.VR in BULK_VRS and element.value is not None and len(element.value) > BULK_BYTES:
            del header[element.tag]
    return json.dumps(header.to_json_dict()).encode()
