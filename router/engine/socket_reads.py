"""Socket reads into reused buffers (owned code, version-guarded).

Stock ``AssociationSocket.recv`` reads at most 4 KiB per ``recv()`` call and grows a new
bytearray: about 32 system calls and as many copies for each 128 KiB PDU. :func:`_recv`
reads with ``recv_into`` straight into a buffer kept per socket and returns a view of it,
valid until the next read; pynetdicom's only caller (``DULServiceProvider._read_pdu_data``)
copies it at once. Reads above :data:`MAX_BUFFER` (a PDU larger than anything we accept,
or a hostile length) go through the stock code, so a peer cannot make us allocate.

Each received P-DATA-TF PDU was then copied three more times (into the PDU's bytearray,
into ``bytes``, into each PDV item) and went round the state machine's queues before its
fragments reached DIMSE. :func:`_read_pdu_data` is pynetdicom 3.0.4's PDU read with one
shortcut: on an established association (Sta6) with no event waiting and nothing bound
to the data, PDU or transition events, a P-DATA-TF PDU is read into a buffer kept per
association and handed to DIMSE at once as views of that buffer, which is what the
state machine's DT-2 action would have done next. Every other PDU, and a P-DATA-TF PDU in
any other situation, takes pynetdicom's way.
"""

from __future__ import annotations

import logging
import struct

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

MAX_BUFFER = 4 * 1024 * 1024
P_DATA_TF = 0x04
PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
LOGGER = logging.getLogger("pynetdicom.dul")
_DIRECT_BLOCKERS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)

_stock_recv = AssociationSocket.recv


def _recv(self, nr_bytes: int):
    if nr_bytes > MAX_BUFFER:
        return _stock_recv(self, nr_bytes)
    buffer = getattr(self, "_read_buffer", None)
    if buffer is None or len(buffer) < nr_bytes:
        buffer = self._read_buffer = bytearray(max(nr_bytes, 65536))
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        n = self.socket.recv_into(view[nr_read:nr_bytes])
        if not n:
            break
        nr_read += n
    return view[:nr_read]


def _read_pdu_data(self) -> None:
    """pynetdicom 3.0.4 ``_read_pdu_data``, with P-DATA-TF PDUs handed to DIMSE directly when safe."""
    try:
        header = bytes(self.socket.recv(6))
    except (OSError, TimeoutError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received")
        LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    try:
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    except struct.error:
        self.event_queue.put("Evt17")
        return
    if pdu_type not in PDU_TYPES:
        LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    if pdu_type == P_DATA_TF and pdu_length <= MAX_BUFFER and _can_deliver_directly(self):
        _deliver_p_data(self, pdu_length)
        return
    try:
        body = bytes(self.socket.recv(pdu_length))
    except (OSError, TimeoutError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received")
        LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of "
                     f"{6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
        self.event_queue.put(event)
    except Exception as exc:
        LOGGER.error("Unable to decode the received PDU data")
        LOGGER.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def _can_deliver_directly(self) -> bool:
    return (
        self.state_machine.current_state == "Sta6"
        and self.event_queue.empty()
        and self._recv_pdu.empty()
        and not any(self.assoc.get_handlers(event) for event in _DIRECT_BLOCKERS)
    )


def _deliver_p_data(self, pdu_length: int) -> None:
    """Read a P-DATA-TF body into the association's buffer and give its PDVs to DIMSE (DT-2)."""
    buffer = getattr(self, "_pdata_buffer", None)
    if buffer is None or len(buffer) < pdu_length:
        buffer = self._pdata_buffer = bytearray(max(pdu_length, 65536))
    view = memoryview(buffer)[:pdu_length]
    raw = self.socket.socket
    nr_read = 0
    try:
        while nr_read < pdu_length:
            n = raw.recv_into(view[nr_read:])
            if not n:
                break
            nr_read += n
    except (OSError, TimeoutError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received")
        LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if nr_read != pdu_length:
        LOGGER.error(f"The received PDU is shorter than expected ({6 + nr_read} of {6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    pdvs = presentation_data_values(view)
    if pdvs is None:
        LOGGER.error("Unable to decode the received PDU data")
        self.event_queue.put("Evt19")
        return
    primitive = P_DATA()
    primitive._presentation_data_value_list = pdvs
    self.assoc.dimse.receive_primitive(primitive)


def presentation_data_values(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The (context ID, value) pairs of a P-DATA-TF body; None if an item does not fit.

    Each value starts with its message control header, as pynetdicom gives it to DIMSE.
    """
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or length > end - offset - 4:
            return None
        items.append((body[offset + 4], body[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return items


def install_fast_recv() -> None:
    AssociationSocket.recv = _recv
    DULServiceProvider._read_pdu_data = _read_pdu_data
