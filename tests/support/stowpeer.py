"""A scripted STOW-RS server (aiohttp, on its own loop thread) for the answers real archives
give rarely: per-instance failures, 5xx, 401, a 400 for a whole request.

``answer(uids)`` decides each request from the SOP Instance UIDs it carried: it returns
(HTTP status, {uid: FailureReason} for failed ones) or (status, None) for a bare answer.
Every request's UIDs are recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from aiohttp import MultipartReader, web
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from tests.support.peers import free_port

HEAD = 64 * 1024


class ScriptedStowServer:
    def __init__(self, answer, port: int | None = None, keep: Path | None = None):
        """``keep``: a folder to write each received part into (streamed); otherwise only its
        header is parsed and the rest read and dropped, so any size passes in little memory."""
        self.answer = answer
        self.keep = keep
        self.port = port or free_port()
        self.requests: list[list[str]] = []
        self.sizes: list[int] = []
        self.headers: list[dict] = []
        self._loop = asyncio.new_event_loop()
        self._runner = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self):
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/dicom-web/studies", self._stow)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stow(self, request: web.Request) -> web.Response:
        uids = []
        reader = MultipartReader(request.headers, request.content)
        while (part := await reader.next()) is not None:
            head, size = bytearray(), 0
            out = open(self.keep / f"part-{len(self.requests)}-{len(uids)}.dcm", "wb") if self.keep else None
            try:
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if len(head) < HEAD:
                        head += chunk[: HEAD - len(head)]
                    if out is not None:
                        out.write(chunk)
            finally:
                if out is not None:
                    out.close()
            ds = dcmread(
                DicomBytesIO(bytes(head)), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
            uids.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
            self.sizes.append(size)
        self.requests.append([u for _, u in uids])
        self.headers.append(dict(request.headers))
        status, failed = self.answer([u for _, u in uids])
        if failed is None:
            return web.Response(status=status)
        body = {}
        stored = [
            {"00081150": {"vr": "UI", "Value": [c]}, "00081155": {"vr": "UI", "Value": [u]}}
            for c, u in uids
            if u not in failed
        ]
        failures = [
            {
                "00081150": {"vr": "UI", "Value": [c]},
                "00081155": {"vr": "UI", "Value": [u]},
                "00081197": {"vr": "US", "Value": [failed[u]]},
            }
            for c, u in uids
            if u in failed
        ]
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failures:
            body["00081198"] = {"vr": "SQ", "Value": failures}
        return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/dicom+json")
