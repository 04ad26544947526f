"""WADO-RS frames (PS3.18 10.4.1.1.4): ``.../instances/{uid}/frames/{list}``, what a
zero-footprint viewer asks for to draw an image.

The instance is fetched like a WADO-RS instance (:meth:`router.qr.service.QueryRetrieveService.retrieve_files`,
through the pipeline's stages) and the frames asked for, in the order asked (1 is the first),
are written one part each of a ``multipart/related`` answer, one frame in memory at a time:

- uncompressed (``type="application/octet-stream"``, the default for frames, or no Accept):
  little-endian bytes as Explicit VR Little Endian holds them; a compressed instance's
  frames are decoded (:mod:`router.transcode.frames`, colour as RGB, interleaved);
- as stored (``transfer-syntax=*``, ``type="*/*"`` as dicomweb-client asks by default, or an
  image media type such as ``image/jls``): a compressed frame's own codestream, its part typed by its syntax (``image/jpeg``,
  ``image/jls``, ``image/jp2``, ``image/dicom-rle``) with a ``transfer-syntax`` parameter.

400: a frame list that is not comma-separated numbers from 1; 404: no such instance, or a
frame beyond the instance's Number of Frames (the text says how many it has); 406: an Accept
header the router cannot answer, or frames that cannot be decoded (the codec's reason).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from router.endpoints.dicomweb.accept import media_ranges
from router.endpoints.dicomweb.bridge import ThreadedStream
from router.endpoints.dicomweb.responses import problem, started
from router.endpoints.dicomweb.streamed_answer import close_multipart, streamed_answer, write_part
from router.envelope import AssociationInfo
from router.qr.service import QueryRetrieveService, RetrievalRefused
from router.qr.upstream import UpstreamError
from router.spool.splice import SpliceError, read_header
from router.transcode.files import value_start
from router.transcode.syntaxes import NATIVE, CannotTranscode, describe

OCTET_STREAM = "application/octet-stream"
IMAGE_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
MEDIA_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}
IN_FLIGHT = 2
MAX_FRAMES_LISTED = 10_000


class FrameRequestError(Exception):
    """A frames request answered with ``status`` and this text instead of frames."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class Wanted:
    """How frames are to be sent: decoded to uncompressed bytes, or as stored (when its syntax's
    media type is one of ``media``, None meaning any)."""

    uncompressed: bool
    media: frozenset[str] | None = None


def frame_numbers(text: str) -> list[int]:
    """The frame numbers of a frame list (``1,3,2``), in the order given; raises FrameRequestError (400)."""
    parts = text.split(",")
    if len(parts) > MAX_FRAMES_LISTED or not all(p.strip().isdigit() for p in parts):
        raise FrameRequestError(400, f"the frame list {text!r} is not comma-separated frame numbers")
    numbers = [int(p) for p in parts]
    if min(numbers) < 1:
        raise FrameRequestError(400, "frame numbers start at 1")
    return numbers


def wanted_frames(accept: str | None) -> Wanted:
    """What the Accept header asks for (PS3.18 8.7.3.5: uncompressed by default); raises FrameRequestError (406)."""
    ranges = media_ranges(accept)
    if not ranges:
        return Wanted(uncompressed=True)
    named = []
    for media, params, _ in ranges:
        if media in ("*/*", "multipart/*"):
            return Wanted(uncompressed=True)
        if media != "multipart/related":
            named.append(media)
            continue
        part_type = MEDIA_ALIASES.get(
            params.get("type", OCTET_STREAM).lower(), params.get("type", OCTET_STREAM).lower()
        )
        syntax = params.get("transfer-syntax")
        if part_type == OCTET_STREAM and syntax in (None, ExplicitVRLittleEndian):
            return Wanted(uncompressed=True)
        if (part_type == OCTET_STREAM and syntax == "*") or part_type == "*/*":
            return Wanted(uncompressed=False)
        if part_type in IMAGE_MEDIA.values() and syntax in (None, "*"):
            return Wanted(uncompressed=False, media=frozenset({part_type}))
        if part_type in IMAGE_MEDIA.values() and IMAGE_MEDIA.get(str(syntax)) == part_type:
            return Wanted(uncompressed=False, media=frozenset({part_type}))
        named.append(f"{part_type} ({syntax or 'no transfer syntax'})")
    raise FrameRequestError(
        406,
        f"cannot send frames as {', '.join(named) or accept}: the router sends them uncompressed "
        f'(multipart/related; type="{OCTET_STREAM}") or as stored (transfer-syntax=*)',
    )


def frame_parts(path: Path, numbers: list[int], wanted: Wanted) -> Iterator[tuple[str, bytes]]:
    """(content type, bytes) of each frame asked for, read from the instance's file one at a time;
    raises FrameRequestError before the first part when the request cannot be answered."""
    try:
        header, layout = read_header(path)
    except (SpliceError, OSError, ValueError) as exc:
        raise FrameRequestError(406, f"cannot read the instance: {exc}") from None
    from router.transcode.frames import PixelFormat  # numpy: when used

    if layout.pixel_start is None or layout.pixel_tag != 0x7FE00010:
        raise FrameRequestError(404, "the instance has no pixel data frames")
    if layout.deflated:
        raise FrameRequestError(406, "frames of a deflated instance are not served")
    try:
        fmt = PixelFormat.of(header)
    except CannotTranscode as exc:
        raise FrameRequestError(406, str(exc)) from None
    beyond = [n for n in numbers if n > fmt.number_of_frames]
    if beyond:
        raise FrameRequestError(404, f"frame {beyond[0]} asked for; the instance has {fmt.number_of_frames}")
    syntax = UID(header.file_meta.TransferSyntaxUID)
    if syntax in NATIVE:
        yield from _native_frames(path, layout.pixel_start, syntax, fmt, numbers)
    elif wanted.uncompressed or not syntax.is_compressed:  # big endian: frames go little endian
        yield from _decoded_frames(path, layout.pixel_start, syntax, fmt, numbers)
    else:
        media = IMAGE_MEDIA.get(str(syntax), OCTET_STREAM)
        if wanted.media is not None and media not in wanted.media:
            raise FrameRequestError(406, f"the instance is {describe(syntax)} ({media}), not {', '.join(wanted.media)}")
        for frame in _encapsulated_frames(path, layout.pixel_start, syntax, fmt, numbers):
            yield f"{media}; transfer-syntax={syntax}", frame


def _native_frames(path: Path, pixel_start: int, syntax: UID, fmt, numbers: list[int]):
    size = fmt.frame_bytes
    with open(path, "rb") as f:
        start = value_start(f, pixel_start, syntax)
        for number in numbers:
            f.seek(start + (number - 1) * size)
            frame = f.read(size)
            if len(frame) != size:
                raise CannotTranscode(f"the pixel data ends inside frame {number}")
            yield f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}", frame


def _decoded_frames(path: Path, pixel_start: int, syntax: UID, fmt, numbers: list[int]):
    from router.transcode.frames import decoded_frames, encode_frame

    for number, frames in _passes(numbers):
        with open(path, "rb") as f:
            f.seek(value_start(f, pixel_start, syntax))
            for index, (array, decoded) in enumerate(decoded_frames(f, syntax, fmt, native=True), 1):
                if index in frames:
                    data = (
                        array if isinstance(array, bytearray) else encode_frame(array, decoded, ExplicitVRLittleEndian)
                    )
                    for _ in range(frames.count(index)):
                        yield f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}", bytes(data)
                if index >= number:
                    break


def _encapsulated_frames(path: Path, pixel_start: int, syntax: UID, fmt, numbers: list[int]):
    for number, frames in _passes(numbers):
        with open(path, "rb") as f:
            f.seek(value_start(f, pixel_start, syntax))
            for index, frame in enumerate(generate_frames(f, number_of_frames=fmt.number_of_frames), 1):
                for _ in range(frames.count(index)):
                    yield frame
                if index >= number:
                    break


def _passes(numbers: list[int]) -> Iterator[tuple[int, list[int]]]:
    """The frame list cut into runs that one pass through the pixel data can serve in order
    (increasing numbers, repeats together): (the run's last frame, its frames)."""
    run: list[int] = []
    for number in numbers:
        if run and number < run[-1]:
            yield run[-1], run
            run = []
        run.append(number)
    if run:
        yield run[-1], run


async def retrieve_frames(
    request: web.BaseRequest,
    qr: QueryRetrieveService | None,
    executor: Executor,
    origin: AssociationInfo,
    endpoint: str,
    endpoint_ae: str,
    uids: dict[str, str],
    frame_list: str,
) -> web.StreamResponse:
    if qr is None or "retrieve" not in qr.offered(endpoint):
        return problem(503, "no backend of this endpoint's pipelines retrieves instances (retrieve = ...)")
    try:
        numbers = frame_numbers(frame_list)
        wanted = wanted_frames(request.headers.get(hdrs.ACCEPT))
    except FrameRequestError as exc:
        return problem(exc.status, str(exc))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    for keyword, value in uids.items():
        setattr(identifier, keyword, value)

    def produce(cancelled):
        instances = qr.retrieve_files(origin, identifier, endpoint_ae, cancelled)
        try:
            for _, path in instances:
                assert isinstance(path, Path)  # not asked for in memory
                yield from frame_parts(path, numbers, wanted)
                return
        finally:
            instances.close()

    stream = ThreadedStream(asyncio.get_running_loop(), executor, capacity=IN_FLIGHT)
    stream.start(produce)
    return await streamed_answer(
        request, stream, _FrameParts(uuid.uuid4().hex), _failure_answer, origin, "WADO-RS frames"
    )


def _failure_answer(exc: Exception) -> web.Response | None:
    if isinstance(exc, RetrievalRefused):
        return problem(403, f"the retrieval was {exc}")
    if isinstance(exc, FrameRequestError):
        return problem(exc.status, str(exc))
    if isinstance(exc, UpstreamError):
        return problem(502, f"no upstream could retrieve the instance: {exc}")
    if isinstance(exc, CannotTranscode):
        return problem(406, f"cannot send the frames: {exc}")
    return None


class _FrameParts:
    """Each frame a ``multipart/related`` part, the answer typed by the first part's media type."""

    def __init__(self, boundary: str):
        self.boundary = boundary

    async def start(self, request: web.BaseRequest, first: tuple[str, bytes]) -> web.StreamResponse:
        media = first[0].split(";")[0]
        return await started(request, f'multipart/related; type="{media}"; boundary={self.boundary}')

    async def write(self, response: web.StreamResponse, item: tuple[str, bytes]) -> None:
        content_type, frame = item
        await write_part(response, self.boundary, frame, content_type)

    async def finish(self, response: web.StreamResponse) -> None:
        await close_multipart(response, self.boundary)

    def release(self, item) -> None:
        pass
