"""An aiohttp HTTP server on its own event-loop thread, behind a :class:`ConnectionPool`.

aiohttp's low-level ``web.Server`` parses HTTP/1.1 and streams request bodies with flow
control (reading from the socket pauses while a handler has not consumed what arrived), so
memory per request stays bounded. Its keep-alive timer, armed when a connection opens and
after each response and never reset by incoming bytes, is the header deadline; the handler
bounds the rest of the request. The socket is bound here, with SO_REUSEPORT, so receiving
processes and a reload's replacement listener can share the port.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from router.endpoints.dicomweb.connections import ConnectionPool, GuardedConnection

log = structlog.get_logger("router.dicomweb")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
MAX_HEADER_LINE = 8190
MAX_HEADERS = 100


class HttpListener:
    def __init__(
        self,
        endpoint: str,
        handler: Handler,
        bind: str,
        port: int,
        pool: ConnectionPool,
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 5.0,
    ):
        self.endpoint = endpoint
        self.handler = handler
        self.bind, self.port = bind, port
        self.pool = pool
        self.header_timeout = header_timeout
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.guards: dict = {}
        self.in_progress = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.address: tuple[str, int] = (bind, port)
        self._server: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and listen; returns once the port accepts connections (or raises why it cannot)."""
        sock = _listening_socket(self.bind, self.port)
        self.address = sock.getsockname()[:2]
        loop = self.loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_exception)
        opened = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open(sock))
            except BaseException as exc:
                failure.append(exc)
                opened.set()
                return
            opened.set()
            try:
                loop.run_forever()
            except BaseException:
                log.exception("HTTP event loop failed", endpoint=self.endpoint)
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"http-{self.endpoint}", daemon=True)
        self._thread.start()
        opened.wait()
        if failure:
            raise failure[0]

    async def _open(self, sock: socket.socket) -> None:
        server = self._server = web.Server(
            self._counted,
            keepalive_timeout=self.header_timeout,
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
            access_log=None,
            logger=MalformedRequestLog(self.endpoint),
        )
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: GuardedConnection(server(), self.pool, self.guards, self.ssl_context, self.handshake_timeout),
            sock=sock,
            backlog=512,
        )

    async def _counted(self, request: web.BaseRequest) -> web.StreamResponse:
        self.in_progress += 1
        try:
            return await self.handler(request)
        finally:
            self.in_progress -= 1

    def guard_of(self, request: web.BaseRequest) -> GuardedConnection | None:
        return self.guards.get(request.transport)

    def close(self) -> None:
        """Stop accepting connections; requests in progress go on."""
        if self.loop is None or self._listener is None or self.loop.is_closed():
            return
        listener, self._listener = self._listener, None
        self.loop.call_soon_threadsafe(listener.close)
        log.info("endpoint closed", endpoint=self.endpoint, open_connections=len(self.guards))

    def drain(self, deadline: float) -> int:
        """Let requests in progress finish until ``deadline`` (monotonic), then close every
        connection and stop the loop; how many requests were cut short."""
        if self.loop is None or self.loop.is_closed():
            return 0
        self.close()
        remaining = max(0.0, deadline - time.monotonic())
        future = asyncio.run_coroutine_threadsafe(self._shutdown(remaining), self.loop)
        try:
            cut = future.result(timeout=remaining + 10)
        except Exception:
            cut = 0
            log.exception("HTTP shutdown failed", endpoint=self.endpoint)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        return cut

    async def _shutdown(self, timeout: float) -> int:
        server = self._server
        if server is None:
            return 0
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end and self.in_progress:
            await asyncio.sleep(0.05)
        cut = self.in_progress
        await server.shutdown(0.1)
        for transport in list(self.guards):
            transport.abort()
        await _cancel_what_is_left()
        return cut

    def _on_loop_exception(self, loop, context) -> None:
        exc = context.get("exception")
        log.error(
            "unhandled error on the HTTP event loop",
            endpoint=self.endpoint,
            message=context.get("message"),
            error=repr(exc) if exc else None,
        )


async def _cancel_what_is_left(timeout: float = 2.0) -> None:
    """Cancel the loop's tasks still pending once every connection is aborted (handlers of
    requests cut short, aiohttp's own per-connection tasks) and wait for them, so that closing
    the loop destroys none still pending."""
    await asyncio.sleep(0)  # the aborted transports' connection_lost callbacks run first
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=timeout)


class MalformedRequestLog:
    """aiohttp's server logger: a request it cannot parse (it answers 400 itself) is hostile input,
    logged as one warning with the reason, never as an error with a traceback."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def exception(self, message: str, *args, exc_info=None, **kwargs) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        log.warning(
            "malformed HTTP request",
            endpoint=self.endpoint,
            detail=str(message) % args if args else message,
            error=str(error)[:300] if error is not None else None,
        )

    def warning(self, message: str, *args, **kwargs) -> None:
        log.warning(str(message) % args if args else message, endpoint=self.endpoint)

    def debug(self, *args, **kwargs) -> None:
        pass

    info = error = warning


def _listening_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind, port))
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
