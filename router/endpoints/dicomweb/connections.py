"""Who is let in: a bounded pool for HTTP connections that have not yet shown a request.

A connection is *pending* from the moment it is accepted until its first request has complete
headers and passes the endpoint's access checks (:meth:`ConnectionPool.let_in`); then it is
*let in*. Pending connections are capped in total and per peer address, so idle or trickling
sockets cannot take the places of working clients; the let-in ones are capped separately.
A connection over a cap is closed at once, with a log line. Every method runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter

import structlog

log = structlog.get_logger("router.dicomweb")


class ConnectionPool:
    def __init__(self, endpoint: str, max_pending: int, max_pending_per_address: int, max_connections: int):
        self.endpoint = endpoint
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.max_connections = max_connections
        self.pending: Counter[str] = Counter()
        self.let_in_count = 0

    def refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` is not taken, or None (it is then pending)."""
        if sum(self.pending.values()) >= self.max_pending:
            return f"{self.max_pending} connections are waiting for their first request already"
        if self.pending[host] >= self.max_pending_per_address:
            return f"{self.max_pending_per_address} connections from this address are waiting already"
        self.pending[host] += 1
        return None

    def let_in(self, host: str) -> bool:
        """Move a pending connection in; False when ``max_connections`` are in already."""
        if self.let_in_count >= self.max_connections:
            return False
        self._forget_pending(host)
        self.let_in_count += 1
        return True

    def release(self, host: str, was_let_in: bool) -> None:
        if was_let_in:
            self.let_in_count -= 1
        else:
            self._forget_pending(host)

    def _forget_pending(self, host: str) -> None:
        self.pending[host] -= 1
        if self.pending[host] <= 0:
            del self.pending[host]


class GuardedConnection(asyncio.Protocol):
    """The HTTP server's protocol for one connection, behind the pool: a refused connection is
    closed before the server sees it. ``guards`` maps each open transport to its guard, so a
    request handler can let its connection in.

    With ``ssl_context``, the TLS handshake runs here, after the connection was counted as
    pending (``asyncio``'s own handshake, given to ``create_server``, would run before this
    protocol is called, so sockets that never finish a handshake were outside the pool): it
    must end within ``handshake_timeout``, and a failure is logged with the peer and releases
    the place.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        pool: ConnectionPool,
        guards: dict,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 5.0,
    ):
        self.inner = inner
        self.pool = pool
        self.guards = guards
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.host = ""
        self.peer = ""
        self.transport: asyncio.BaseTransport | None = None
        self.was_let_in = False
        self._handshake: asyncio.Task | None = None
        self._early: list[bytes] = []  # decrypted before the secured transport was handed over

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername") or ("", 0)
        self.host, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        refusal = self.pool.refusal(self.host)
        if refusal is not None:
            log.warning("connection refused", endpoint=self.pool.endpoint, peer=self.peer, reason=refusal)
            transport.abort()
            return
        if self.ssl_context is None:
            self._open(transport)
            return
        self.guards[transport] = self
        transport.pause_reading()  # until the handshake takes the socket over
        self._handshake = asyncio.get_running_loop().create_task(self._secure(transport, self.ssl_context))

    async def _secure(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secured = await asyncio.get_running_loop().start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except Exception as exc:
            log.warning(
                "TLS handshake failed",
                endpoint=self.pool.endpoint,
                peer=self.peer,
                error=str(exc) or type(exc).__name__,
            )
            self.guards.pop(raw, None)
            raw.abort()
            self.pool.release(self.host, False)
            return
        self.guards.pop(raw, None)
        if secured is None:  # the connection went away as the handshake ended
            self.pool.release(self.host, False)
            return
        self._open(secured)

    def _open(self, transport) -> None:
        self.transport = transport
        self.guards[transport] = self
        self.inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.inner.data_received(data)

    def let_in(self) -> bool:
        if not self.was_let_in:
            self.was_let_in = self.pool.let_in(self.host)
        return self.was_let_in

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)
        elif self._handshake is not None:
            self._early.append(data)  # the client's first bytes, arrived with its last handshake message

    def eof_received(self):
        if self.transport is not None:
            return self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self.transport is None:
            return  # refused, or its handshake failed (released there)
        self.guards.pop(self.transport, None)
        self.pool.release(self.host, self.was_let_in)
        self.transport = None
        self.inner.connection_lost(exc)
