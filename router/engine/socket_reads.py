"""Socket reads into a reused buffer (owned code, declared in router/engine/changes.py).

Stock ``AssociationSocket.recv`` reads at most 4 KiB per ``recv()`` call and grows a new
bytearray: about 32 system calls and as many copies for each 128 KiB PDU. This version
reads with ``recv_into`` straight into a buffer kept per socket and returns a view of it,
valid until the next read; pynetdicom's only caller (``DULServiceProvider._read_pdu_data``)
copies it at once. A read above :data:`MAX_BUFFER` (a PDU larger than anything the router
accepts: a hostile or garbled length) fails as a closed connection, so a peer cannot make
the router allocate whatever it announces. Every read counts towards the association's
deadline by progress (:mod:`router.engine.progress`).
"""

from __future__ import annotations

import socket

from router.engine.classes import RouterSocket
from router.engine.progress import note_received

MAX_BUFFER = 4 * 1024 * 1024


def _recv(self, nr_bytes: int):
    if nr_bytes > MAX_BUFFER:
        raise ConnectionError(f"the peer announced a PDU of {nr_bytes} bytes; the limit is {MAX_BUFFER}")
    buffer = getattr(self, "_read_buffer", None)
    if buffer is None or len(buffer) < nr_bytes:
        buffer = self._read_buffer = bytearray(max(nr_bytes, 65536))
    view = memoryview(buffer)
    nr_read = 0
    dul = self._assoc.dul
    while nr_read < nr_bytes:
        n = self.socket.recv_into(view[nr_read:nr_bytes])
        if not n:
            break
        nr_read += n
        note_received(dul, n)
    return view[:nr_read]


def plain_socket(dul) -> socket.socket | None:
    """The association's TCP socket, or None (no socket, or TLS: the engine's shortcuts then stand aside)."""
    raw = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if raw is None or type(raw) is not socket.socket:
        return None
    return raw


def install_fast_recv() -> None:
    RouterSocket.recv = _recv
