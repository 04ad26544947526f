"""systemd's notify protocol (``Type=notify``), without a dependency: READY, WATCHDOG, STOPPING, STATUS.

Messages go to the datagram socket named by ``$NOTIFY_SOCKET``; without it every call is
a no-op, so the same binary runs under systemd, Docker or a terminal.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address
        watchdog_usec = environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(watchdog_usec) / 2e6 if watchdog_usec and watchdog_usec.isdigit() else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode())
            except OSError:
                pass  # systemd went away; nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: letting open associations finish")

    def watchdog(self) -> None:
        """Ping the watchdog if one is set and half its interval has passed."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
