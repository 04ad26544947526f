"""P-DATA-TF PDUs read PDV by PDV, data set fragments straight into their file (owned code, declared in router/engine/changes.py).

pynetdicom 3.0.4 reads each PDU whole into a new bytearray, decodes it into a P_DATA_TF
object with an item object per PDV, and queues an event for the state machine, whose DT-2
action turns the PDU into a P-DATA primitive for DIMSE: about 0.25 ms of the socket thread
per 128 KiB PDU here, and four copies of every byte. :func:`_read_pdu_data` keeps that way
for every PDU except a P-DATA-TF PDU on an established association (Sta6) while no event
is waiting, the socket is plain TCP and nothing is bound to EVT_DATA_RECV, EVT_PDU_RECV or
EVT_FSM_TRANSITION (which need the PDU's bytes and objects). Its PDVs are read one at a
time:

- a data fragment of the data set that :mod:`router.engine.store_decode` is writing goes
  from the socket to that file through one reused buffer;
- any other PDV is read into bytes and given to DIMSE as a one-PDV P-DATA primitive. DT-2
  gives DIMSE the whole PDU in one primitive; DIMSE takes messages PDV by PDV either way.

A PDU whose items do not add up to its length is an invalid PDU (Evt19) and a connection
that ends inside one is a closed transport (Evt17), as in pynetdicom; the state stays
Sta6, as after DT-2. While a data set is coming in, the P-DATA-TF PDUs already waiting on
the socket are read in the same pass: those whole within one peek of up to the read
buffer's size from that memory, their fragments written with one ``writev`` and their bytes
then dropped from the socket (on Linux without a copy, ``MSG_TRUNC``), a longer one PDV by
PDV as above. With the 16 KB PDUs many peers send (Orthanc's and DCMTK's default), that is
a few system calls per 256 KiB instead of five per PDU. Anything else, or nothing waiting,
goes back to the reactor loop.

On an association that is over (Sta13) whatever the peer still sends is read as it comes
and dropped, never waited for whole (stock pynetdicom blocked on the rest of a PDU the
peer never finished).

Every PDU's announced length is checked from the peeked header first
(:mod:`router.engine.pdu_limits`); a PDU not read PDV by PDV is read by
:func:`router.engine.pdu_limits.read_pdu_checked`.
"""

from __future__ import annotations

import socket
import struct
import sys

from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

from router.engine.association_log import log_association_error
from router.engine.classes import RouterDUL
from router.engine.pdu_limits import largest_acceptable, read_pdu_checked, refuse_length
from router.engine.progress import TooSlow, note_received
from router.engine.socket_reads import plain_socket
from router.engine.store_decode import complete_data_set

P_DATA_TF = 0x04
ITEM_HEADER = struct.Struct(">LBB")
PDU_LENGTH = struct.Struct(">L")
BUFFER_SIZE = 256 * 1024
DROP_FLAGS = socket.MSG_TRUNC if sys.platform.startswith("linux") else 0  # TCP: drop, do not copy
_NEED_PDU_OBJECTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


class InvalidPDU(Exception):
    """The PDU's items do not add up to its length."""


class TransportClosed(Exception):
    """The connection ended inside a PDU."""


def _read_pdu_data(self) -> None:
    """pynetdicom 3.0.4 ``_read_pdu_data``, with P-DATA-TF PDUs read PDV by PDV when that is safe.

    While a data set is being received, the P-DATA-TF PDUs already waiting on the socket are
    read in the same pass, without going back to the reactor's ``select()``: those whole in
    one peek at the socket from memory (:func:`_read_waiting_pdus`), a longer one as it comes.
    """
    raw = plain_socket(self)
    if raw is not None and self.state_machine.current_state == "Sta13":
        _discard_waiting(self, raw)
        return
    if raw is None:
        read_pdu_checked(self)
        return
    header = _peek_header(raw, 0)
    if len(header) < 6:
        read_pdu_checked(self)
        return
    if not _read_pdu(self, raw, header):
        return
    while _data_set_continues(self):
        header = _peek_header(raw, socket.MSG_DONTWAIT)
        if len(header) < 6 or header[0] != P_DATA_TF:
            return
        if PDU_LENGTH.unpack_from(header, 2)[0] + 6 <= BUFFER_SIZE:
            taken = _read_waiting_pdus(self, raw)
            if taken is None:
                return
            if taken:
                continue
        if not _read_pdu(self, raw, header):
            return


def _read_waiting_pdus(dul, raw: socket.socket) -> int | None:
    """While a data set comes in, the P-DATA-TF PDUs already waiting whole on the socket (see
    the module's docstring): stops before one that is not whole in the peek, not P-DATA-TF or
    too long, and after the data set's last fragment or a PDV that ends the association.
    Returns how many it took (0: the first is not whole yet, for the caller to read as it
    comes), None when nothing was waiting or on an error (already queued as an event)."""
    window = _buffer(dul)
    try:
        size = raw.recv_into(window, len(window), socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing waiting, or the connection failed: the usual path sees to it
        return None
    if not size:
        return None
    limit = largest_acceptable(dul, P_DATA_TF)
    peeked = _Peeked(window)
    taken = pdus = 0
    try:
        while size - taken >= 6 and window[taken] == P_DATA_TF:
            length = PDU_LENGTH.unpack_from(window, taken + 2)[0]
            if length > limit or taken + 6 + length > size or not _can_read_directly(dul):
                break
            peeked.position = taken + 6
            _read_items(dul, peeked, length)
            taken += 6 + length
            pdus += 1
            if not _data_set_continues(dul):
                break
        peeked.write_fragments(last=False)
    except InvalidPDU:
        log_association_error(
            dul.assoc, InvalidPDU("the items do not add up to the PDU length"), "receiving a P-DATA-TF PDU"
        )
        dul.event_queue.put("Evt19")
        return None
    finally:
        if taken:
            _drop(dul, raw, taken)
    return pdus if dul.event_queue.empty() else None


def _buffer(dul) -> memoryview:
    """The association's read buffer (:data:`BUFFER_SIZE`), made at its first data set."""
    buffer = getattr(dul, "_pdv_buffer", None)
    if buffer is None:
        buffer = dul._pdv_buffer = memoryview(bytearray(BUFFER_SIZE))
    return buffer


def _drop(dul, raw: socket.socket, size: int) -> None:
    """Drop ``size`` bytes already peeked from the socket (on Linux without copying them:
    ``MSG_TRUNC``); a connection that fails meanwhile is a closed transport (Evt17)."""
    buffer = _buffer(dul)
    try:
        while size:
            dropped = raw.recv_into(buffer, min(size, len(buffer)), DROP_FLAGS)
            if not dropped:
                raise TransportClosed("the connection ended inside peeked bytes")
            size -= dropped
            note_received(dul, dropped)
    except (OSError, TransportClosed) as exc:
        log_association_error(dul.assoc, exc, "receiving a P-DATA-TF PDU")
        dul.event_queue.put("Evt17")


def _discard_waiting(dul, raw: socket.socket) -> None:
    """Sta13 (the association is over, the connection about to close): drop what the peer sent,
    without waiting for the rest of a PDU it may never finish; the end of the connection is Evt17."""
    try:
        data = raw.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        dul.event_queue.put("Evt17")


def _peek_header(raw: socket.socket, flags: int) -> bytes:
    try:
        return raw.recv(6, socket.MSG_PEEK | flags)
    except OSError:  # nothing waiting (MSG_DONTWAIT), or the connection failed: the usual path sees to it
        return b""


def _read_pdu(self, raw: socket.socket, header: bytes) -> bool:
    """Read the PDU whose header was peeked; True if it was a P-DATA-TF read PDV by PDV without error."""
    length = struct.unpack_from(">L", header, 2)[0]
    limit = largest_acceptable(self, header[0])
    if length > limit:
        raw.recv(6)
        refuse_length(self, header[0], length, limit)
        return False
    if header[0] != P_DATA_TF or not _can_read_directly(self):
        read_pdu_checked(self)
        return False
    reader = _Reader(self, raw)
    try:
        reader.exact(6)
        _read_items(self, reader, length)
        return True
    except InvalidPDU:
        log_association_error(
            self.assoc, InvalidPDU("the items do not add up to the PDU length"), "receiving a P-DATA-TF PDU"
        )
        self.event_queue.put("Evt19")
    except TooSlow as exc:
        log_association_error(self.assoc, exc, "receiving a message")
        self.event_queue.put("Evt17")
    except (OSError, TransportClosed) as exc:
        log_association_error(self.assoc, exc, "receiving a P-DATA-TF PDU")
        self.event_queue.put("Evt17")
    return False


def _data_set_continues(dul) -> bool:
    """A data set is still coming in and the reactor has nothing else to do."""
    return (
        getattr(dul.assoc.dimse, "_incoming_data_set", None) is not None
        and not dul._kill_thread
        and dul.event_queue.empty()
        and dul.to_provider_queue.empty()
    )


def _read_items(dul, reader: _Reader | _Peeked, remaining: int) -> None:
    dimse = dul.assoc.dimse
    while remaining:
        if remaining < 6:
            raise InvalidPDU
        item_length, context_id, control = ITEM_HEADER.unpack(reader.exact(6))
        if item_length < 2 or item_length > remaining - 4:
            raise InvalidPDU
        remaining -= 4 + item_length
        incoming = getattr(dimse, "_incoming_data_set", None)
        if incoming is not None and not control & 1:
            reader.into(incoming, item_length - 2)
            reader.end_fragment(incoming, last=bool(control & 2))
            if control & 2:
                complete_data_set(dimse, incoming)
            continue
        primitive = P_DATA()
        primitive._presentation_data_value_list = [(context_id, bytes((control,)) + reader.exact(item_length - 2))]
        dimse.receive_primitive(primitive)
        if not dul.event_queue.empty():  # DIMSE refused the message: the association is ending
            return


class _Reader:
    """Exact reads from the association's socket into one buffer kept per association."""

    def __init__(self, dul, raw: socket.socket):
        self.buffer = _buffer(dul)
        self.raw = raw
        self.dul = dul

    def exact(self, size: int) -> bytes:
        """The next ``size`` bytes, as bytes."""
        if size <= len(self.buffer):
            self._fill(self.buffer[:size])
            return bytes(self.buffer[:size])
        chunks = bytearray()
        while size:
            part = self.buffer[: min(size, len(self.buffer))]
            self._fill(part)
            chunks += part
            size -= len(part)
        return bytes(chunks)

    def into(self, incoming, size: int) -> None:
        """Pass the next ``size`` bytes to ``incoming.write_part``, a buffer at a time."""
        while size:
            part = self.buffer[: min(size, len(self.buffer))]
            self._fill(part)
            incoming.write_part(part)
            size -= len(part)

    def end_fragment(self, incoming, last: bool) -> None:
        incoming.end_fragment(last)

    def _fill(self, view: memoryview) -> None:
        filled, size = 0, len(view)
        while filled < size:
            n = self.raw.recv_into(view[filled:])
            if not n:
                raise TransportClosed(f"{filled} of {size} bytes")
            filled += n
            note_received(self.dul, n)


class _Peeked:
    """Exact reads from a PDU peeked whole at the socket (:func:`_read_waiting_pdus`), from
    :attr:`position`: a data set's fragments are kept as views of the peek and written
    together, after its last fragment or by :meth:`write_fragments`."""

    __slots__ = ("window", "position", "incoming", "parts")

    def __init__(self, window: memoryview):
        self.window = window
        self.position = 0
        self.incoming = None
        self.parts: list[memoryview] = []

    def exact(self, size: int) -> bytes:
        start = self.position
        self.position += size
        return bytes(self.window[start : self.position])

    def into(self, incoming, size: int) -> None:
        start = self.position
        self.position += size
        self.incoming = incoming
        self.parts.append(self.window[start : self.position])

    def end_fragment(self, incoming, last: bool) -> None:
        if last:
            self.write_fragments(last=True)

    def write_fragments(self, last: bool) -> None:
        """Write the fragments kept (``last``: they end their data set)."""
        if self.parts:
            self.incoming.write_parts(self.parts)
            self.incoming.end_fragment(last)
            self.parts = []


def _can_read_directly(dul) -> bool:
    return (
        dul.state_machine.current_state == "Sta6"
        and dul.event_queue.empty()
        and dul._recv_pdu.empty()
        and not any(dul.assoc.get_handlers(event) for event in _NEED_PDU_OBJECTS)
    )


def install_pdata_reads() -> None:
    _read_pdu_data._reads_pdv_by_pdv = True
    RouterDUL._read_pdu_data = _read_pdu_data
