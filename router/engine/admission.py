"""The listener: connections that have not sent their A-ASSOCIATE-RQ yet live in their own bounded pool.

A connection is *pending* from ``accept()`` until its whole A-ASSOCIATE-RQ has been read
(the endpoint calls :meth:`AdmittingServer.admitted` from its EVT_REQUESTED handler), and
only then competes for an association slot. The pending pool:

- gives every connection one deadline for the whole request, counted from ``accept()``:
  the TLS handshake (if any) and the A-ASSOCIATE-RQ must both be in by
  ``request_timeout`` (the endpoint's ``acse_timeout``, plus the TLS handshake timeout on
  TLS). Each byte does not buy more time: a peer trickling its request is cut off at the
  deadline like a silent one. The accept thread checks the deadlines every
  ``poll_interval``;
- holds at most ``max_pending`` connections, and at most ``max_pending_per_address`` from
  one address. A new connection over either cap closes the *oldest* pending one (from that
  address for the address cap): a legitimate sender sends its request within milliseconds,
  so the oldest pending connections are the idle and trickling ones, and a flood of them
  cannot keep a real sender out;
- cuts a connection off by shutting its socket down: the connection's threads see the end
  of the connection and finish the usual way.

The TLS handshake runs in the connection's own thread, never on the accept thread, so a
silent TLS client delays nobody.

A connection the process cannot take (no descriptor left for it or for its association,
no thread) is answered with an A-ASSOCIATE-RJ (rejected transient, service provider,
local limit exceeded) and closed, with a log line that names the limit; one descriptor is
kept in reserve so that the refusal can still be made when ``accept()`` itself fails.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections import OrderedDict

import structlog
from pynetdicom.transport import ThreadedAssociationServer

log = structlog.get_logger("router.admission")

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
LOCAL_LIMIT_EXCEEDED = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x02, 0x03, 0x02)  # A-ASSOCIATE-RJ PDU


class _Pending:
    __slots__ = ("host", "port", "deadline")

    def __init__(self, host: str, port: int, deadline: float):
        self.host, self.port, self.deadline = host, port, deadline


class AdmittingServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with a bounded pool of pending connections.

    The listening socket has SO_REUSEPORT, so a reload binds the new listener before
    closing the old, and extra receiving processes share the port.
    """

    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # socketserver's 5 dropped SYNs in a burst: 1 s retransmits
    request_timeout = 30.0
    handshake_timeout = 5.0
    max_pending = 64
    max_pending_per_address = 16
    endpoint = ""

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._reserve = _reserve_descriptor()
        super().server_bind()

    def server_close(self) -> None:
        super().server_close()
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1

    # -- the pending pool ------------------------------------------------------------

    def get_request(self):
        try:
            sock, address = self.socket.accept()
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                self._refuse_with_reserve()
            raise
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request, client_address) -> bool:
        """Admit the connection to the pending pool, making room by closing the oldest pending ones."""
        host, port = client_address[0], client_address[1]
        timeout = self.request_timeout + (self.handshake_timeout if self.ssl_context else 0.0)
        with self._pending_lock:
            self._forget_closed()
            from_host = [s for s, p in self._pending.items() if p.host == host]
            if len(from_host) >= self.max_pending_per_address:
                self._cut_off(
                    from_host[0],
                    "more pending connections from this address than "
                    f"max_pending_per_address ({self.max_pending_per_address})",
                )
            if len(self._pending) >= self.max_pending:
                self._cut_off(
                    next(iter(self._pending)), f"more pending connections than max_pending ({self.max_pending})"
                )
            self._pending[request] = _Pending(host, port, time.monotonic() + timeout)
        return True

    def admitted(self, sock) -> None:
        """The connection's A-ASSOCIATE-RQ is in: it leaves the pending pool."""
        with self._pending_lock:
            self._pending.pop(sock, None)

    def forget(self, sock) -> None:
        """The connection ended."""
        self.admitted(sock)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def service_actions(self) -> None:
        """Every ``poll_interval`` (and after each connection) on the accept thread: cut off
        pending connections past their deadline. pynetdicom's own ``service_actions`` (a full
        ``gc.collect()`` each time) is not called: the interpreter's collector frees ended
        associations without a full collection per connection."""
        now = time.monotonic()
        with self._pending_lock:
            self._forget_closed()
            late = [s for s, p in self._pending.items() if p.deadline <= now]
            for sock in late:
                self._cut_off(sock, "no complete A-ASSOCIATE-RQ within acse_timeout of the connection")

    def _forget_closed(self) -> None:
        """Drop the entries of connections already closed (a peer that hung up before its request)."""
        for sock in [s for s in self._pending if s.fileno() == -1]:
            del self._pending[sock]

    def _cut_off(self, sock, reason: str) -> None:
        """Shut a pending connection down (the caller holds the lock); its own threads then end."""
        pending = self._pending.pop(sock)
        log.warning(
            "pending connection closed",
            endpoint=self.endpoint,
            peer=f"{pending.host}:{pending.port}",
            reason=reason,
            pending=len(self._pending),
        )
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    # -- refusals at a process limit -----------------------------------------------------

    def _refuse_with_reserve(self) -> None:
        """``accept()`` found no descriptor: free the reserve, accept, refuse, take the reserve back."""
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        try:
            sock, address = self.socket.accept()
        except OSError:
            return
        finally:
            self._reserve = _reserve_descriptor()
        _refuse(sock)
        log.warning(
            "association refused: the process has no descriptor left (raise LimitNOFILE)",
            endpoint=self.endpoint,
            peer=f"{address[0]}:{address[1]}",
        )

    def handle_error(self, request, client_address) -> None:
        """A connection the server could not set up (no descriptor or no thread for its association):
        refuse it politely and log why; never a traceback on stderr."""
        exc = sys.exc_info()[1]
        limit = isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS or isinstance(exc, RuntimeError)
        peer = f"{client_address[0]}:{client_address[1]}"
        if limit:
            log.warning(
                "association refused: a process limit was reached", endpoint=self.endpoint, peer=peer, error=repr(exc)
            )
            _refuse(request, close=False)
        else:
            log.error("connection set-up failed", endpoint=self.endpoint, peer=peer, error=repr(exc), exc_info=exc)

    # -- the connection's own thread ----------------------------------------------------

    def process_request_thread(self, request, client_address):
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.forget(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request_thread(request, client_address)
        except BaseException:
            self.forget(request)
            raise

    def _handshake(self, request: ssl.SSLSocket, client_address) -> bool:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
            return True
        except (OSError, ValueError) as exc:
            log.warning(
                "TLS handshake failed",
                endpoint=self.endpoint,
                peer=f"{client_address[0]}:{client_address[1]}",
                error=str(exc),
            )
            return False

    def shutdown_request(self, request) -> None:
        self.forget(request)
        super().shutdown_request(request)


def _reserve_descriptor() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _refuse(sock, close: bool = True) -> None:
    """Answer a connection whose request was not read with A-ASSOCIATE-RJ (local limit exceeded)."""
    try:
        sock.setblocking(False)
        sock.send(LOCAL_LIMIT_EXCEEDED)
        socket.socket.shutdown(sock, socket.SHUT_WR)
        sock.recv(65536)  # what the peer already sent, so that closing sends no reset
    except (OSError, ValueError):
        pass
    if close:
        sock.close()
