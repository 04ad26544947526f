"""STOW-RS deliveries: queued instances go out in ``multipart/related`` requests, streamed
from their spool files, and each one's outcome is read from the answer (PS3.18 10.5.3).

An instance is delivered when the answer lists it in ReferencedSOPSequence (with a
WarningReason: delivered with a warning), or when a 200 answer lists nothing at all. One in
FailedSOPSequence is classified by its FailureReason as a C-STORE status would be (0xA7xx and
0x0110 retried, 0xA9xx and 0xCxxx quarantined). A request that fails as a whole is retried (a
timeout, 408, 429, 5xx), postpones the backend's queue (no connection, 401, 403), or, for an
answer that says the request was wrong (400, 413, 415, or 409 without a list), is sent again
one instance per request, so one bad instance never takes its neighbours with it.

The transfer syntax policy (:mod:`router.transcode.policy`) applies without negotiation:
``always`` sends each instance in the first syntax of ``transfer_syntaxes`` (transcoded once
into the spool, :mod:`router.transcode.variants`); ``when-refused`` sends it as received
and, when the archive fails it with FailureReason 0xC122 (transfer syntax not supported),
once more in the first other syntax of the list (Explicit VR Little Endian without a list);
``never`` sends it as received only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import aiohttp
import structlog

from router.backends.dicomweb.session import HttpSession, failure_reason
from router.backends.status import DeliveryResult, Outcome, classify_store_status
from router.spool.queue import Delivery
from router.spool.splice import read_header_before_pixels
from router.transcode.syntaxes import CannotTranscode, describe
from router.transcode.variants import ensure_variant

log = structlog.get_logger("router.backends.dicomweb")

MAX_ANSWER_BYTES = 16 * 1024 * 1024
SYNTAX_NOT_SUPPORTED = 0xC122  # PS3.18 FailureReason: Referenced Transfer Syntax not supported
RETRIED_STATUSES = {408, 429}
POSTPONING_STATUSES = {401, 403}
REFERENCED, FAILED, WARNING_REASON, FAILURE_REASON, SOP_INSTANCE = (
    "00081199",
    "00081198",
    "00081196",
    "00081197",
    "00081155",
)


class StowDeliverer:
    def __init__(self, backend):
        self.backend = backend
        self.config = backend.config
        self.url = f"{self.config.url}/studies"
        self.session = HttpSession(self.config)

    def group(self, deliveries: list[Delivery]) -> list[list[Delivery]]:
        """The requests to send them in: at most ``max_instances_per_request`` each, and at most
        ``max_request_mb`` unless one instance alone is larger."""
        limit = self.config.max_request_mb * 1024 * 1024
        groups: list[list[Delivery]] = []
        size = 0
        for delivery in deliveries:
            delivery_size = delivery.size or 0
            if groups and len(groups[-1]) < self.config.max_instances_per_request and size + delivery_size <= limit:
                groups[-1].append(delivery)
                size += delivery_size
            else:
                groups.append([delivery])
                size = delivery_size
        return groups

    def deliver(self, delivery: Delivery) -> DeliveryResult:
        return self.deliver_many([delivery])[0]

    def deliver_many(self, deliveries: list[Delivery]) -> list[DeliveryResult]:
        policy = self.config
        if policy.transcode == "always":
            return self._in_syntax(deliveries, policy.transfer_syntaxes)
        results = self._send(deliveries)
        if policy.transcode == "when-refused":
            for index, result in enumerate(results):
                if result.status == SYNTAX_NOT_SUPPORTED:
                    delivery = deliveries[index]
                    others = [s for s in policy.proposed_syntaxes() if s != delivery.transfer_syntax]
                    if others:
                        results[index] = self._in_syntax([delivery], others)[0]
        return results

    def _in_syntax(self, deliveries: list[Delivery], syntaxes: list[str]) -> list[DeliveryResult]:
        """Send ``deliveries`` each in the first of ``syntaxes`` it can be written in (transcoded
        first where it is in another)."""
        results: list[DeliveryResult | None] = [None] * len(deliveries)
        ready: list[tuple[int, Delivery]] = []
        for index, delivery in enumerate(deliveries):
            version = self._version(delivery, syntaxes)
            if isinstance(version, DeliveryResult):
                results[index] = version
            else:
                ready.append((index, version))
        if ready:
            for (index, _), result in zip(ready, self._send([d for _, d in ready]), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def _version(self, delivery: Delivery, syntaxes: list[str]) -> Delivery | DeliveryResult:
        problems = []
        for syntax in syntaxes:
            if delivery.transfer_syntax == syntax:
                return delivery
            source = describe(delivery.transfer_syntax or "")
            log.info("transcoding", source=source, target=describe(syntax), **delivery.log_context())
            try:
                path = ensure_variant(
                    delivery.path,
                    delivery.transfer_syntax or "",
                    syntax,
                    keep_uid_on_lossy=self.config.keep_uid_on_lossy,
                )
                uid = str(read_header_before_pixels(path, only=["SOPInstanceUID"])[0].SOPInstanceUID)
            except CannotTranscode as exc:
                problems.append(f"cannot transcode to {describe(syntax)}: {exc}")
                continue
            except OSError as exc:
                return DeliveryResult(Outcome.TRANSIENT, None, f"cannot write the transcoded instance: {exc}")
            return replace(delivery, path=str(path), transfer_syntax=syntax, sop_instance_uid=uid)
        return DeliveryResult(Outcome.PERMANENT, None, "; ".join(problems))

    def _send(self, deliveries: list[Delivery]) -> list[DeliveryResult]:
        try:
            headers = self.session.headers(Accept="application/dicom+json")
        except OSError as exc:  # the secret's file: the backend's problem, not the instances'
            reason = f"cannot read the credentials for {self.url}: {exc.strerror or exc}"
            return [DeliveryResult(Outcome.UNREACHABLE, None, reason)] * len(deliveries)
        try:
            status, answer, text = self.session.run(lambda session: self._post(session, deliveries, headers))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            unreached, reason = failure_reason(self.url, exc)
            outcome = Outcome.UNREACHABLE if unreached else Outcome.TRANSIENT
            return [DeliveryResult(outcome, None, reason)] * len(deliveries)
        return self._outcomes(deliveries, status, answer, text)

    async def _post(self, session: aiohttp.ClientSession, deliveries: list[Delivery], headers: dict[str, str]):
        boundary = uuid.uuid4().hex
        files = []
        try:
            with aiohttp.MultipartWriter("related", boundary=boundary) as body:
                body.headers[aiohttp.hdrs.CONTENT_TYPE] = (
                    f'multipart/related; type="application/dicom"; boundary={boundary}'
                )
                for delivery in deliveries:
                    file = open(delivery.path, "rb")
                    files.append(file)
                    body.append(file, {aiohttp.hdrs.CONTENT_TYPE: "application/dicom"})
            async with session.post(self.url, data=body, headers=headers) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                return response.status, _json(raw), raw[:300].decode("utf-8", "replace").strip()
        finally:
            for file in files:
                file.close()

    def _outcomes(self, deliveries: list[Delivery], status: int, answer, text: str) -> list[DeliveryResult]:
        said = f"STOW-RS to {self.url} answered {status}"
        if status in POSTPONING_STATUSES:
            return [DeliveryResult(Outcome.UNREACHABLE, None, f"{said}: credentials refused")] * len(deliveries)
        if status in RETRIED_STATUSES or status >= 500:
            return [DeliveryResult(Outcome.TRANSIENT, None, f"{said}{_detail(text)}")] * len(deliveries)
        referenced, failed = _listed(answer)
        if not referenced and not failed:
            if status == 200:
                return [DeliveryResult(Outcome.SUCCESS, None, said)] * len(deliveries)
            if len(deliveries) > 1:
                return [result for d in deliveries for result in self._send([d])]
            return [DeliveryResult(Outcome.PERMANENT, None, f"{said}{_detail(text)}")]
        results = []
        for delivery in deliveries:
            uid = delivery.sop_instance_uid
            if uid in failed:
                reason = failed[uid]
                results.append(
                    DeliveryResult(classify_store_status(reason), reason, f"{said}: FailureReason 0x{reason:04X}")
                )
            elif uid in referenced:
                warning = referenced[uid]
                results.append(
                    DeliveryResult(Outcome.WARNING, warning, f"{said}: WarningReason 0x{warning:04X}")
                    if warning
                    else DeliveryResult(Outcome.SUCCESS, 0, said)
                )
            else:
                results.append(DeliveryResult(Outcome.TRANSIENT, None, f"{said} without this instance in its lists"))
        return results

    def idle(self) -> None:
        pass

    def close(self) -> None:
        self.session.close()


def _json(raw: bytes):
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def _listed(answer) -> tuple[dict[str, int | None], dict[str, int]]:
    """(referenced UID -> WarningReason or None, failed UID -> FailureReason) from a DICOM JSON answer."""
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, dict):
        return {}, {}
    referenced: dict[str, int | None] = {}
    failed: dict[str, int] = {}
    for item in _items(answer, REFERENCED):
        uid = _first(item, SOP_INSTANCE)
        if uid:
            referenced[uid] = _first(item, WARNING_REASON)
    for item in _items(answer, FAILED):
        uid = _first(item, SOP_INSTANCE)
        if uid:
            failed[uid] = int(_first(item, FAILURE_REASON) or 0x0110)
    return referenced, failed


def _items(answer: dict, tag: str) -> list[dict]:
    value = answer.get(tag) or {}
    return [i for i in value.get("Value") or [] if isinstance(i, dict)] if isinstance(value, dict) else []


def _first(item: dict, tag: str):
    element = item.get(tag)
    if isinstance(element, dict) and element.get("Value"):
        return element["Value"][0]
    return None


def _detail(text: str) -> str:
    return f": {text}" if text else ""
