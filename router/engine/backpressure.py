"""Bound pynetdicom's outgoing PDU queue.

Stock pynetdicom 3.0.4 reads a file being sent ahead of the network into an unbounded
queue (``DULServiceProvider.to_provider_queue``): 200-260 MiB to send a 300 MB instance.
:func:`install_backpressure` makes the sending thread wait while ``limit`` P-DATA PDUs are
queued, which keeps memory at a few PDUs whatever the instance size. The reactor that
drains the queue never waits here: the only P-DATA it queues itself is a C-STORE response
(:mod:`router.engine.store_scp`), and only into an empty queue, so this cannot deadlock.
A-ABORT and A-RELEASE are never held back.
"""

from __future__ import annotations

import time

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from router.engine.classes import RouterDUL

DEFAULT_LIMIT = 64
_original_send_pdu = DULServiceProvider.send_pdu


def install_backpressure(limit: int = DEFAULT_LIMIT) -> None:
    def send_pdu(self, primitive):
        if isinstance(primitive, P_DATA):
            _wait_for_room(self, limit)
        _original_send_pdu(self, primitive)

    send_pdu.__wrapped__ = _original_send_pdu
    RouterDUL.send_pdu = send_pdu


def _wait_for_room(dul, limit: int) -> None:
    """Wait while the queue is full; raise TimeoutError if the peer drains nothing for
    the association's network timeout; return at once if the reactor has stopped."""
    queue = dul.to_provider_queue
    timeout = getattr(dul.assoc, "network_timeout", None) or 60.0
    with queue.not_full:
        deadline = time.monotonic() + timeout
        while queue._qsize() >= limit:
            if dul._kill_thread or not dul.is_alive():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peer has not taken a PDU for {timeout:g} s")
            before = queue._qsize()
            queue.not_full.wait(0.1)
            if queue._qsize() < before:
                deadline = time.monotonic() + timeout
