"""A WADO-RS answer written as a worker thread produces it (:class:`~router.endpoints.dicomweb.bridge.ThreadedStream`).

The status is known only with the first item: a failure before it is answered with the
problem :func:`streamed_answer`'s ``failures`` gives for it (403, 404, 406, 502...); a failure
after it cannot change the status any more, so the answer ends there, short, and a log line
says why. Nothing produced is 404. What the answer looks like (multipart parts, a JSON array)
is its :class:`AnswerWriter`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import MultipartWriter, web

from router.endpoints.dicomweb.bridge import END, ThreadedStream
from router.endpoints.dicomweb.responses import problem
from router.envelope import AssociationInfo

log = structlog.get_logger("router.dicomweb")


class AnswerWriter(Protocol):
    async def start(self, request: web.BaseRequest, first: Any) -> web.StreamResponse:
        """The response, prepared, for an answer whose first item is ``first``."""

    async def write(self, response: web.StreamResponse, item: Any) -> None: ...

    async def finish(self, response: web.StreamResponse) -> None:
        """What closes the answer (a multipart's last boundary, a JSON array's bracket)."""

    def release(self, item: Any) -> None:
        """An item produced and never written (the answer ended first): close what it holds."""


async def streamed_answer(
    request: web.BaseRequest,
    stream: ThreadedStream,
    writer: AnswerWriter,
    failures: Callable[[Exception], web.Response | None],
    origin: AssociationInfo,
    what: str,
) -> web.StreamResponse:
    """Write what ``stream`` produces with ``writer``; ``failures(exc)`` is the answer for an
    exception the producer raised, or None for one that is not an expected failure (raised on)."""
    response: web.StreamResponse | None = None
    try:
        while True:
            try:
                item = await stream.next()
            except Exception as exc:
                answer = failures(exc)
                if answer is None:
                    raise
                if response is None:
                    return answer
                log.warning(
                    f"{what} cut short",
                    reason=str(exc),
                    request_id=origin.association_id,
                    peer=f"{origin.peer_host}:{origin.peer_port}",
                )
                break
            if item is END:
                break
            if response is None:
                response = await writer.start(request, item)
            await writer.write(response, item)
    finally:
        await stream.stop()
        for item in stream.leftovers():
            writer.release(item)
    if response is None:
        return problem(404, "no instance matches")
    await writer.finish(response)
    await response.write_eof()
    return response


async def close_multipart(response: web.StreamResponse, boundary: str) -> None:
    """Write a ``multipart/related`` answer's closing boundary."""
    closing = MultipartWriter("related", boundary=boundary)
    await closing.write(response)  # type: ignore[arg-type]  # a StreamResponse has the writer's write()


async def write_part(response: web.StreamResponse, boundary: str, payload, content_type: str) -> None:
    """One part of a ``multipart/related`` answer (the boundary before it, its headers and ``payload``)."""
    part = MultipartWriter("related", boundary=boundary)
    part.append(payload, {"Content-Type": content_type})
    await part.write(response, close_boundary=False)  # type: ignore[arg-type]  # as above
