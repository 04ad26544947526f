"""Waiting for a socket with ``poll()``: no ``select()`` anywhere in the engine.

``select()`` cannot watch a descriptor numbered 1024 or above; with a few hundred
associations open, every later association's socket is above it, and each ``select()``
on it fails (pynetdicom's ``AssociationSocket.ready`` then reports the connection
closed). ``poll()`` has no such ceiling.
"""

from __future__ import annotations

import select

from router.engine.classes import RouterSocket

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR | select.POLLNVAL


def _wait(sock, events: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


def wait_readable(sock, timeout: float | None) -> bool:
    """Whether ``sock`` (a socket or descriptor) has data or an end of file within ``timeout`` seconds
    (None: no limit; 0: now)."""
    return _wait(sock, _READABLE, timeout)


def wait_writable(sock, timeout: float | None) -> bool:
    """Whether ``sock`` can take more bytes (or failed) within ``timeout`` seconds."""
    return _wait(sock, _WRITABLE, timeout)


def _ready(self) -> bool:
    """pynetdicom 3.0.4 ``AssociationSocket.ready`` with ``poll()`` in place of ``select()``."""
    if self.socket is None or self._is_connected is False:
        return False
    try:
        ready = wait_readable(self.socket, 0)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")
        return False
    if not ready and hasattr(self.socket, "pending"):
        try:
            return bool(self.socket.pending())
        except (OSError, ValueError):
            return False
    return ready


def install_poll_readiness() -> None:
    RouterSocket.ready = property(_ready)
