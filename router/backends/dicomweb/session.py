"""An aiohttp client session on a private event loop, used from one thread at a time.

The delivery workers and the command line are threads that wait for each answer, so each
:class:`HttpSession` owns an event loop that runs only while one of its requests does. Idle
keep-alive connections a server closed in the meantime are noticed on their next use; a
request that meets one is sent once more on a new connection (:data:`STALE_CONNECTION`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from router.backends.dicomweb.config import DicomwebBackendConfig
from router.engine.connect_errors import connect_problem
from router.tls import client_context

STALE_CONNECTION = (aiohttp.ServerDisconnectedError,)


class HttpSession:
    def __init__(self, config: DicomwebBackendConfig, connections: int = 2):
        self.config = config
        self.connections = connections
        self.loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None

    def run(self, request: Callable[[aiohttp.ClientSession], Awaitable[Any]]) -> Any:
        """Run ``request(session)`` to its end and return its result; once more on a fresh
        connection if a kept-alive one turned out closed."""
        try:
            return self.loop.run_until_complete(self._with_session(request))
        except STALE_CONNECTION:
            return self.loop.run_until_complete(self._with_session(request))

    async def _with_session(self, request):
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ssl=self._ssl(), keepalive_timeout=4.0),
                timeout=aiohttp.ClientTimeout(
                    total=self.config.request_timeout,
                    connect=self.config.connect_timeout,
                    sock_read=self.config.read_timeout,
                ),
                raise_for_status=False,
            )
        return await request(self._session)

    def _ssl(self) -> ssl.SSLContext | bool:
        return client_context(self.config.tls) if self.config.tls is not None else True

    def headers(self, **extra: str) -> dict[str, str]:
        """The request headers every call sends: authentication (read from its file now) and ``extra``."""
        return {**self.config.auth.header(), **extra}

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self._session is not None and not self._session.closed:
            self.loop.run_until_complete(self._session.close())
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def failure_reason(url: str, exc: BaseException) -> tuple[bool, str]:
    """(whether the server was never reached, what happened) for an exception of a request."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return True, f"cannot connect to {url}: {connect_problem(exc.os_error)}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return False, f"{url} did not answer in time"
    if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
        return False, f"cannot read a file to send: {exc}"
    return False, f"request to {url} failed: {exc.__class__.__name__}: {exc}"
