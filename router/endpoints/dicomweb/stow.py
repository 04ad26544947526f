"""STOW-RS (PS3.18 10.5): store instances posted as ``multipart/related; type="application/dicom"``.

Each part streams to its own file in the spool as it arrives (flow control keeps at most a
few chunks of the body in memory) and then goes through the same intake as a C-STORE, on a
worker thread, while the next part is read. The response is sent once every part has been
decided: an instance is listed in ReferencedSOPSequence only when its file is fsynced and its
queue rows are committed, in FailedSOPSequence with the C-STORE status as FailureReason
otherwise. 200: all stored; 202: some failed; 409: none stored.

Retrieve URL (0008,1190), Type 2 at the top and in each ReferencedSOPSequence item, is sent
empty: a router keeps an instance only until its backends have it, so it has no URL where the
study stays retrievable (its WADO-RS fetches from the backends, which may not have it yet).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError

from router.endpoints.dicomweb.responses import DICOM_JSON, problem
from router.engine.part10 import META_READ, NotPlainPart10, new_checksum, read_file_meta
from router.envelope import AssociationInfo, Command, RequestEnvelope
from router.intake import CANNOT_UNDERSTAND, Intake, IntakeResult
from router.observe.metrics import Metrics
from router.spool.identity import UnreadableIdentity, identifying_uids
from router.spool.store import Spool

log = structlog.get_logger("router.dicomweb")

CHUNK = 256 * 1024
PROCESSING_FAILURE = 0x0110
STUDY_MISMATCH = 0xA900  # PS3.18 10.5.3: "the Study Instance UID does not match"
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE, RETRIEVE_URL = "00081199", "00081198", "00081190"


class RequestTooLarge(Exception):
    pass


@dataclass(frozen=True)
class StowTarget:
    """What a STOW-RS request stores through."""

    endpoint: str
    intake: Intake
    spool: Spool
    executor: Executor
    metrics: Metrics
    max_request_bytes: int
    parallel_instances: int


@dataclass
class PartOutcome:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int
    reason: str = ""


async def store_instances(
    request: web.BaseRequest, target: StowTarget, origin: AssociationInfo, study_uid: str | None
) -> web.StreamResponse:
    """Answer one STOW-RS request (headers already checked for access)."""
    media_type, params = _content_type(request.headers.get("Content-Type", ""))
    if media_type != "multipart/related":
        return problem(415, f"STOW-RS takes multipart/related, not {media_type or 'no content type'}")
    if params.get("type", "application/dicom").lower() != "application/dicom":
        return problem(415, f"STOW-RS parts of type {params['type']} are not supported; send application/dicom")
    if not params.get("boundary"):
        return problem(400, "the multipart/related content type has no boundary")
    length = request.content_length
    if length is not None and length > target.max_request_bytes:
        return problem(413, f"the request body ({length} bytes) is over the endpoint's max_request_mb")
    if not target.spool.has_free_space():
        log.error(
            "refusing STOW-RS request: free space in the data directory is under the floor",
            endpoint=target.endpoint,
            request_id=origin.association_id,
            peer=_peer(origin),
        )
        return problem(507, "the router's free space is under its floor; try again later")

    outcomes: list[PartOutcome | asyncio.Future] = []
    pending: list[asyncio.Future] = []
    loop = asyncio.get_running_loop()
    received = 0
    try:
        reader = MultipartReader(request.headers, request.content)
        index = 0
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                outcomes.append(PartOutcome(None, None, CANNOT_UNDERSTAND, "a nested multipart part"))
                await part.release()
                continue
            index += 1
            part_type, _ = _content_type(part.headers.get("Content-Type", "application/dicom"))
            if part_type != "application/dicom":
                outcomes.append(
                    PartOutcome(None, None, CANNOT_UNDERSTAND, f"part {index} is {part_type}, not application/dicom")
                )
                await part.release()
                continue
            spooled = await _spool_part(part, target, received)
            received += spooled.size
            while len(pending) >= target.parallel_instances:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending = [f for f in pending if not f.done()]
            future = loop.run_in_executor(target.executor, _take_part, target, spooled, origin, index, study_uid)
            pending.append(future)
            outcomes.append(future)
    except RequestTooLarge:
        await _settle(pending)
        return problem(413, "the request body is over the endpoint's max_request_mb")
    except ConnectionError as exc:
        await _settle(pending)  # parts already taken stay durable and queued; none is acknowledged
        log.warning(
            "STOW-RS client went away before the end of its request",
            endpoint=target.endpoint,
            request_id=origin.association_id,
            peer=_peer(origin),
            error=str(exc),
            instances_taken=sum(isinstance(o, asyncio.Future) for o in outcomes),
        )
        return problem(400, "the request ended before its body did")
    except (HttpProcessingError, ValueError, AssertionError, RuntimeError) as exc:
        await _settle(pending)
        log.warning(
            "malformed STOW-RS body",
            endpoint=target.endpoint,
            request_id=origin.association_id,
            peer=_peer(origin),
            error=str(exc),
        )
        return problem(400, f"malformed multipart body: {exc}")
    except BaseException:
        await _settle(pending)  # parts already taken stay durable and queued; none is acknowledged
        raise
    await _settle(pending)
    decided = [o.result() if isinstance(o, asyncio.Future) else o for o in outcomes]
    if not decided:
        return problem(400, "the multipart body has no parts")
    for outcome in decided:
        if outcome.status != 0:
            log.warning(
                "STOW-RS instance not stored",
                endpoint=target.endpoint,
                request_id=origin.association_id,
                peer=_peer(origin),
                sop_instance_uid=outcome.sop_instance_uid,
                status=f"0x{outcome.status:04X}",
                reason=outcome.reason,
            )
    return _response(decided)


@dataclass
class SpooledPart:
    path: Path
    file: BinaryIO
    size: int
    checksum: str
    head: bytes


async def _spool_part(part: BodyPartReader, target: StowTarget, received_before: int) -> SpooledPart:
    """Stream one part's bytes to a new file, left open for the intake: a spare made ahead in
    ``objects/`` (spooled where it is written, no rename or directory fsync before the answer),
    else a new one in ``incoming/``."""
    name, file = target.spool.spares.take()
    path = Path(name)
    checksum = new_checksum()
    head = bytearray()
    size = 0
    try:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if received_before + size > target.max_request_bytes:
                raise RequestTooLarge()
            if len(head) < META_READ:
                head += chunk[: META_READ - len(head)]
            checksum.update(chunk)
            file.write(chunk)
    except BaseException:
        file.close()
        target.spool.discard(path)
        raise
    target.spool.spares.refill()
    return SpooledPart(path, file, size, checksum.hexdigest(), bytes(head))


def _take_part(
    target: StowTarget, part: SpooledPart, origin: AssociationInfo, index: int, study_uid: str | None
) -> PartOutcome:
    """On a worker thread: identify the part's instance and hand it to the intake."""
    try:
        meta, _ = read_file_meta(part.head)
        syntax = str(meta.TransferSyntaxUID) if "TransferSyntaxUID" in meta else ""
        sop_class = str(meta.MediaStorageSOPClassUID) if "MediaStorageSOPClassUID" in meta else None
        sop_instance = str(meta.MediaStorageSOPInstanceUID) if "MediaStorageSOPInstanceUID" in meta else None
    except NotPlainPart10 as exc:
        _discard(target, part)
        return PartOutcome(None, None, CANNOT_UNDERSTAND, f"part {index} is not a DICOM PS3.10 file: {exc}")
    if not syntax:
        _discard(target, part)
        return PartOutcome(
            sop_class, sop_instance, CANNOT_UNDERSTAND, f"part {index} has no Transfer Syntax UID in its file meta"
        )
    if study_uid is not None:
        problem_text: str | None = None
        try:
            identity = identifying_uids(str(part.path), syntax)
        except (UnreadableIdentity, OSError, ValueError) as exc:
            identity, problem_text = None, str(exc)
        found = identity.study_instance_uid if identity is not None else None
        if found != study_uid:
            _discard(target, part)
            return PartOutcome(
                sop_class,
                sop_instance,
                STUDY_MISMATCH,
                problem_text or f"Study Instance UID {found} is not the {study_uid} of the request",
            )
    envelope = RequestEnvelope(origin, Command("store", sop_class or "", index, affected_sop_instance_uid=sop_instance))
    try:
        result: IntakeResult = target.intake.receive_store(
            envelope, part.path, syntax, part.size, part.file, part.checksum
        )
    except Exception as exc:
        log.exception("STOW-RS instance failed in the intake", endpoint=target.endpoint, **envelope.log_context())
        return PartOutcome(sop_class, sop_instance, PROCESSING_FAILURE, f"processing failure: {exc}")
    if result.status == 0:
        target.metrics.instances_received.labels(target.endpoint).inc()
        target.metrics.bytes_received.labels(target.endpoint).inc(part.size)
    return PartOutcome(sop_class, sop_instance, result.status, result.reason)


def _discard(target: StowTarget, part: SpooledPart) -> None:
    part.file.close()
    target.spool.discard(part.path)


async def _settle(pending: list[asyncio.Future]) -> None:
    if pending:
        await asyncio.wait(pending)


def _response(outcomes: list[PartOutcome]) -> web.Response:
    """The PS3.18 answer in DICOM JSON (built as plain JSON: these few UIDs need no data set)."""
    stored = [o for o in outcomes if o.status == 0]
    failed = [o for o in outcomes if o.status != 0]
    body: dict[str, dict] = {RETRIEVE_URL: {"vr": "UR"}}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_item(o, failure=True) for o in failed]}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=DICOM_JSON)


def _item(outcome: PartOutcome, failure: bool = False) -> dict:
    item = {"00081150": _uid(outcome.sop_class_uid), "00081155": _uid(outcome.sop_instance_uid)}
    if failure:
        item["00081197"] = {"vr": "US", "Value": [outcome.status]}
    else:
        item[RETRIEVE_URL] = {"vr": "UR"}
    return item


def _uid(value: str | None) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header as (lower-case media type, parameters); ("", {}) when it cannot be read."""
    try:
        mime = parse_mimetype(value)
    except Exception:
        return "", {}
    if not mime.type:
        return "", {}
    media = f"{mime.type}/{mime.subtype}" + (f"+{mime.suffix}" if mime.suffix else "")
    return media.lower(), {k.lower(): v for k, v in mime.parameters.items()}


def _peer(origin: AssociationInfo) -> str:
    return f"{origin.peer_host}:{origin.peer_port}"
