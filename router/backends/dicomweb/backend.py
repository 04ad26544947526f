"""The ``dicomweb`` backend: what the delivery workers, the command line and the query proxy use."""

from __future__ import annotations

import asyncio

import aiohttp

from router.backends.dicomweb.config import DicomwebBackendConfig
from router.backends.dicomweb.session import HttpSession, failure_reason
from router.backends.dicomweb.stow import StowDeliverer


class DicomwebBackend:
    def __init__(self, name: str, config: DicomwebBackendConfig):
        self.name = name
        self.config = config

    def describe(self) -> str:
        return self.config.url

    def open_deliverer(self) -> StowDeliverer:
        return StowDeliverer(self)

    def echo(self) -> tuple[int | None, str]:
        """Ask ``GET {url}/studies?limit=1`` (QIDO-RS): (HTTP status, what answered), or (None,
        why nothing did). Any HTTP answer shows the server is reachable; 2xx that it serves QIDO-RS."""
        session = HttpSession(self.config, connections=1)
        url = f"{self.config.url}/studies?limit=1"

        async def ask(client: aiohttp.ClientSession):
            async with client.get(url, headers=session.headers(Accept="application/dicom+json")) as response:
                return response.status, response.headers.get("Server", "")

        try:
            status, server = session.run(ask)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return None, failure_reason(url, exc)[1]
        finally:
            session.close()
        return status, server
