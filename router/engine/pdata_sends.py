"""Data sets sent from their files with ``sendfile()`` (owned code, declared in router/engine/changes.py).

For a C-STORE-RQ whose data set is in a file (every send the router makes: deliveries,
C-MOVE and C-GET sub-operations), :func:`file_fragments` queues :class:`FileFragments`
primitives (which bytes of which file) instead of the bytes. The DT-1 and AR-7 actions
send each fragment as its P-DATA-TF and PDV headers followed by ``socket.sendfile()``, so
the kernel copies the file straight from the page cache to the socket. Before, every
128 KiB fragment was read into Python, copied into its PDV, encoded into a PDU and copied
again on each partial send: about 1 ms of the sending process per 0.5 MB instance here.

Any other P-DATA (command sets, responses, data sets in memory) is encoded with ``struct``
and sent in one call, instead of building pynetdicom's PDU and item objects.

The bytes on the wire are the ones pynetdicom sends (a test holds them identical). On a
TLS association, or while something is bound to EVT_PDU_SENT or EVT_DATA_SENT (which get
the PDU object and its bytes), P-DATA is sent through pynetdicom's own action instead. A
file is held open by the primitives that still have to send from it.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from pynetdicom import evt, fsm
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from router.engine.classes import RouterStateMachine
from router.engine.readiness import wait_writable
from router.engine.socket_reads import plain_socket

P_DATA_TF_TYPE = 0x04
LAST_FRAGMENT = 0x02
HEADERS = struct.Struct(">BBLLBB")
PDU_HEADER = struct.Struct(">BBL")
ITEM_HEADER = struct.Struct(">LB")
GROUP_BYTES = 4 * 1024 * 1024
_NEED_PDU_OBJECTS = (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)

_stock_actions: dict[str, Any] = {name: fsm.ACTIONS[name] for name in ("DT-1", "AR-7")}


class SourceFile:
    """A data set's file, open for as long as a primitive may still send from it."""

    def __init__(self, path):
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed when the last primitive is gone

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.file.fileno(), length, offset)

    def __del__(self):
        file = getattr(self, "file", None)  # None when open() failed
        if file is not None:
            file.close()


class FileFragments(P_DATA):
    """Consecutive data set fragments of one presentation context, read from a file when sent.

    ``fragments`` holds ``(offset, length, last)`` for each fragment: one P-DATA-TF PDU each.
    """

    def __init__(self, source: SourceFile, context_id: int, fragments: list[tuple[int, int, bool]]):
        super().__init__()
        self.source = source
        self.context_id = context_id
        self.fragments = fragments

    def as_p_data(self) -> list[P_DATA]:
        """The same fragments as ordinary P-DATA primitives, one per PDU."""
        out = []
        for offset, length, last in self.fragments:
            primitive = P_DATA()
            control = LAST_FRAGMENT if last else 0
            primitive.presentation_data_value_list.append(
                (self.context_id, bytes((control,)) + self.source.read(offset, length))
            )
            out.append(primitive)
        return out


def fragment_bounds(start: int, end: int, max_pdu: int):
    """``(offset, length, last)`` of each fragment of the data set in ``[start, end)``, cut as
    pynetdicom cuts it for a peer that takes PDUs of ``max_pdu`` bytes (0: no limit). An
    empty data set is one empty last fragment."""
    size = max_pdu - 6 if max_pdu else max(end - start, 0)
    position = start
    while True:
        length = max(min(size, end - position), 0)
        last = position + length >= end
        yield position, length, last
        if last:
            return
        position += length


def file_fragments(path, offset: int, context_id: int, max_pdu: int, source: SourceFile | None = None):
    """FileFragments for the data set stored in ``path`` (open in ``source``, if given) from
    ``offset`` to its end, at most :data:`GROUP_BYTES` of fragments each."""
    source = source or SourceFile(path)
    group: list[tuple[int, int, bool]] = []
    grouped = 0
    for fragment in fragment_bounds(offset, os.fstat(source.file.fileno()).st_size, max_pdu):
        group.append(fragment)
        grouped += fragment[1]
        if fragment[2] or grouped >= GROUP_BYTES:
            yield FileFragments(source, context_id, group)
            group, grouped = [], 0


def _send_p_data(dul, action: str) -> str:
    """DT-1 / AR-7: send the P-DATA at the head of the queue; file fragments with sendfile()."""
    primitive = dul.to_provider_queue.queue[0]
    raw = plain_socket(dul)
    direct = raw is not None and not any(dul.assoc.get_handlers(event) for event in _NEED_PDU_OBJECTS)
    if not isinstance(primitive, FileFragments):
        if not direct:
            return _stock_actions[action][1](dul)
        dul.to_provider_queue.get(False)
        try:
            raw.sendall(encode_p_data_tf(primitive.presentation_data_value_list))
        except (OSError, ValueError):
            dul.event_queue.put("Evt17")
        return _stock_actions[action][2]
    dul.to_provider_queue.get(False)
    if not direct:
        for p_data in primitive.as_p_data():
            dul._send(P_DATA_TF(p_data))
        return _stock_actions[action][2]
    assert raw is not None  # direct: the socket is plain
    try:
        send_fragments(raw, primitive)
    except (OSError, ValueError):
        dul.event_queue.put("Evt17")  # as pynetdicom's AssociationSocket.send does
    return _stock_actions[action][2]


def send_fragments(raw: socket.socket, primitive: FileFragments) -> None:
    """Send each fragment as a P-DATA-TF PDU: its headers, then the file's bytes with sendfile()."""
    fd = primitive.source.file.fileno()
    for offset, length, last in primitive.fragments:
        headers = HEADERS.pack(
            P_DATA_TF_TYPE, 0, length + 6, length + 2, primitive.context_id, LAST_FRAGMENT if last else 0
        )
        if not length:
            raw.sendall(headers)
            continue
        raw.sendall(headers, socket.MSG_MORE)
        send_file_range(raw, fd, offset, length)


def send_file_range(raw: socket.socket, fd: int, offset: int, length: int) -> None:
    """Send ``length`` bytes of the file open on ``fd`` from ``offset`` with ``os.sendfile()``.

    ``socket.sendfile()`` polls before every call and, on a blocking socket whose kernel send
    timeout ran out, waits in ``poll()`` with no limit; here a blocking socket's timeout is a
    TimeoutError, and a socket with a Python timeout waits for room up to that timeout.
    """
    out = raw.fileno()
    end = offset + length
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, end - offset)
        except BlockingIOError:
            timeout = raw.gettimeout()
            if timeout is None:
                raise TimeoutError("the peer took nothing for the socket's send timeout") from None
            if not wait_writable(raw, timeout):
                raise TimeoutError(f"the peer took nothing for {timeout:g} s") from None
            continue
        if not sent:
            raise OSError("the file being sent is shorter than when it was queued")
        offset += sent


def encode_p_data_tf(pdvs) -> bytes:
    """The P-DATA-TF PDU pynetdicom encodes for these ``(context ID, control header + data)`` PDVs."""
    items = b"".join(ITEM_HEADER.pack(len(data) + 1, context_id) + data for context_id, data in pdvs)
    return PDU_HEADER.pack(P_DATA_TF_TYPE, 0, len(items)) + items


def _dt_1(dul) -> str:
    return _send_p_data(dul, "DT-1")


def _ar_7(dul) -> str:
    return _send_p_data(dul, "AR-7")


def install_pdata_sends() -> None:
    for name, function in (("DT-1", _dt_1), ("AR-7", _ar_7)):
        description, _, next_state = _stock_actions[name]
        RouterStateMachine.actions[name] = (description, function, next_state)
