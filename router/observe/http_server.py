"""A small HTTP/1.1 server whose every connection has a deadline and whose resources are fixed.

Made for the admin server (and the bar every HTTP surface of the router must meet):

- one thread waits on every connection with ``epoll`` and reads requests as they come;
  a request is handed to a fixed pool of ``workers`` threads only once it is complete,
  so slow or idle clients never hold a worker;
- each request must arrive whole within ``request_timeout`` of its connection (headers
  and body: one deadline, not one per read); a connection past it is answered 408 and
  closed;
- at most ``max_connections`` are open: a new one over the cap closes the oldest that
  is still sending its request (a real client sends a request in milliseconds), or is
  answered 503 at once when every open connection is already being served;
- a request (headers and body) is limited to ``max_request_bytes`` (431 or 413 past it); every response
  closes its connection (``Connection: close``), and is written within
  ``request_timeout`` or the connection is dropped.

So the server holds at most ``max_connections`` + 2 descriptors and ``workers`` + 1
threads, whatever its clients do. HTTP parsing is h11's (a well-kept sans-I/O HTTP/1.1
implementation): this module owns only the sockets, the deadlines and the limits.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import structlog

log = structlog.get_logger("router.http")

SWEEP_INTERVAL = 0.25


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Response]


class _Connection:
    __slots__ = ("sock", "peer", "deadline", "http", "request", "body", "received")

    def __init__(self, sock: socket.socket, peer: str, deadline: float, max_request_bytes: int):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_bytes)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.received = 0


class GuardedHTTPServer:
    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        name: str = "http",
        max_connections: int = 32,
        request_timeout: float = 10.0,
        workers: int = 2,
        max_request_bytes: int = 16384,
    ):
        self.handler, self.name = handler, name
        self.max_connections, self.request_timeout = max_connections, request_timeout
        self.max_request_bytes = max_request_bytes
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(address)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._reading: OrderedDict[socket.socket, _Connection] = OrderedDict()
        self._served = 0
        self._served_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    @property
    def open_connections(self) -> int:
        return len(self._reading) + self._served

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in list(self._reading.values()):
            self._close(conn)
        self._selector.close()
        self.listener.close()

    # -- the loop thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while not self._stop.is_set():
            try:
                ready = self._selector.select(SWEEP_INTERVAL)
            except OSError:
                continue
            for key, _ in ready:
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._read(self._reading.get(key.fileobj))  # type: ignore[call-overload]  # keyed by socket
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + SWEEP_INTERVAL

    def _accept(self) -> None:
        try:
            sock, address = self.listener.accept()
        except OSError as exc:  # out of descriptors, or the client gave up: the next accept may work
            log.warning("HTTP accept failed", server=self.name, error=repr(exc))
            return
        peer = f"{address[0]}:{address[1]}"
        if self.open_connections >= self.max_connections:
            if not self._reading:
                log.warning(
                    "HTTP connection refused: every connection is being served",
                    server=self.name,
                    peer=peer,
                    max_connections=self.max_connections,
                )
                self._reply_and_close(sock, Response(503, b'{"error": "busy"}'))
                return
            oldest = next(iter(self._reading.values()))
            log.warning(
                "HTTP connection closed to make room",
                server=self.name,
                peer=oldest.peer,
                max_connections=self.max_connections,
            )
            self._close(oldest)
        sock.setblocking(False)
        conn = _Connection(sock, peer, time.monotonic() + self.request_timeout, self.max_request_bytes)
        self._reading[sock] = conn
        self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, conn: _Connection | None) -> None:
        if conn is None:
            return
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.received += len(data)
        try:
            if conn.received > self.max_request_bytes:
                raise h11.RemoteProtocolError(
                    "request too large", error_status_hint=431 if conn.request is None else 413
                )
            conn.http.receive_data(data)
            self._advance(conn)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            log.info("bad HTTP request", server=self.name, peer=conn.peer, status=status, error=str(exc))
            self._detach(conn)
            self._reply_and_close(conn.sock, Response(status, b'{"error": "bad request"}'))

    def _advance(self, conn: _Connection) -> None:
        while True:
            event = conn.http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self._close(conn)
                return
            if isinstance(event, h11.Request):
                conn.request = event
            elif isinstance(event, h11.Data):
                conn.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch(conn)
                return

    def _dispatch(self, conn: _Connection) -> None:
        event = conn.request
        assert event is not None  # dispatched once the request line and headers are in
        self._detach(conn)
        with self._served_lock:
            self._served += 1
        request = Request(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("ascii", "replace"),
            headers={k.decode("ascii", "replace").lower(): v.decode("latin-1") for k, v in event.headers},
            body=bytes(conn.body),
            peer=conn.peer,
        )
        self._pool.submit(self._serve, conn, request)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._reading.values() if c.deadline <= now]:
            log.info(
                "HTTP request not complete within request_timeout",
                server=self.name,
                peer=conn.peer,
                request_timeout=self.request_timeout,
            )
            self._detach(conn)
            self._reply_and_close(conn.sock, Response(408, b'{"error": "request timeout"}'))

    def _detach(self, conn: _Connection) -> None:
        self._reading.pop(conn.sock, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, conn: _Connection) -> None:
        self._detach(conn)
        conn.sock.close()

    # -- a worker thread ----------------------------------------------------------------

    def _serve(self, conn: _Connection, request: Request) -> None:
        try:
            try:
                response = self.handler(request)
            except Exception as exc:  # a failing handler must not take the worker down
                log.exception(
                    "HTTP handler failed", server=self.name, peer=conn.peer, target=request.target, error=repr(exc)
                )
                response = Response(500, b'{"error": "internal error; see the router\'s log"}')
            self._reply_and_close(conn.sock, response)
        finally:
            with self._served_lock:
                self._served -= 1

    def _reply_and_close(self, sock: socket.socket, response: Response) -> None:
        """Write the whole response within request_timeout (a client that stops reading is dropped)."""
        head = [
            f"HTTP/1.1 {response.status} {_reason(response.status)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in response.headers),
        ]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body
        try:
            sock.settimeout(self.request_timeout)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
