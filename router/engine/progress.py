"""A deadline by progress for what an established association receives (owned code).

The kernel's receive timeout (the endpoint's ``network_timeout``) bounds each read, so a
peer that goes silent inside a PDU is cut off; but a peer sending 100 bytes every 2 s
makes every read succeed and would keep a C-STORE, and its association slot, alive for
ever. Here every association's reads share one deadline: it starts when a PDU begins
while no DIMSE message is in progress, and moves ``network_timeout`` ahead each time
:data:`PROGRESS_BYTES` more have arrived. A read that finds the deadline passed fails
with :class:`TooSlow`, which ends the connection like any failed read (the association
is aborted). So a message must arrive at :data:`PROGRESS_BYTES` per ``network_timeout``
at least (about 550 bytes/s at the default 120 s), however its bytes are split.
"""

from __future__ import annotations

import time

PROGRESS_BYTES = 64 * 1024


class TooSlow(TimeoutError):
    """The peer sent less than PROGRESS_BYTES within network_timeout, inside a message."""


class ReadProgress:
    __slots__ = ("timeout", "deadline", "count")

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.restart()

    def restart(self) -> None:
        self.deadline = time.monotonic() + self.timeout
        self.count = 0

    def received(self, size: int) -> None:
        """Count ``size`` bytes just read; raise :class:`TooSlow` if the deadline has passed."""
        self.count += size
        if self.count >= PROGRESS_BYTES:
            self.restart()
        elif time.monotonic() > self.deadline:
            raise TooSlow(f"less than {PROGRESS_BYTES} bytes of a message arrived in {self.timeout:g} s")


def arm_read_progress(dul, timeout: float | None) -> None:
    """Give the association's reads a deadline by progress (None or 0: none)."""
    dul._read_progress = ReadProgress(timeout) if timeout else None


def note_received(dul, size: int) -> None:
    progress = getattr(dul, "_read_progress", None)
    if progress is not None:
        progress.received(size)


def restart_between_messages(dul) -> None:
    """A PDU begins: restart the deadline unless a DIMSE message is still coming in."""
    progress = getattr(dul, "_read_progress", None)
    if progress is None:
        return
    dimse = dul.assoc.dimse
    if dimse.message is None and getattr(dimse, "_incoming_data_set", None) is None:
        progress.restart()
