"""Every PDU's announced length checked before it is read, in every engine mode (a fix).

pynetdicom 3.0.4 reads a PDU by its announced length: a peer announcing 4 GiB holds the
association's socket thread and grows its buffer for as long as it keeps sending. Here a
P-DATA-TF PDU longer than the maximum the association offered (plus :data:`PDATA_SLACK`
for peers that count the length differently), or any other PDU over
:data:`OTHER_PDU_LIMIT`, is an invalid PDU (Evt19), which aborts the association at once.

The same wrapper restarts the read deadline by progress (:mod:`router.engine.progress`)
before each PDU, so the deadline covers one DIMSE message, not the association's life.

:func:`read_pdu_checked` is pynetdicom 3.0.4's ``_read_pdu_data`` with the check; the owned
engine's PDV-by-PDV read (:mod:`router.engine.pdata_reads`) checks the peeked header itself
and hands every PDU it does not read to :func:`read_pdu_checked`.
"""

from __future__ import annotations

import struct

import structlog
from pynetdicom.dul import DULServiceProvider

from router.engine.association_log import association_fields, log_association_error
from router.engine.classes import RouterDUL
from router.engine.progress import TooSlow, restart_between_messages
from router.engine.socket_reads import MAX_BUFFER

P_DATA_TF = 0x04
PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
OTHER_PDU_LIMIT = 1024 * 1024
PDATA_SLACK = 64

log = structlog.get_logger("router.engine")

STOCK_READ_PDU_DATA = DULServiceProvider._read_pdu_data


def largest_acceptable(dul, pdu_type: int) -> int:
    """The longest PDU of this type the association takes."""
    if pdu_type != P_DATA_TF:
        return OTHER_PDU_LIMIT
    limit = getattr(dul, "_pdata_limit", None)
    if limit is None:  # fixed once negotiated, and P-DATA only comes after that
        assoc = dul.assoc
        try:
            offered = (assoc.acceptor if assoc.is_acceptor else assoc.requestor).maximum_length
        except AttributeError:
            offered = None
        limit = dul._pdata_limit = min(offered + PDATA_SLACK, MAX_BUFFER) if offered else MAX_BUFFER
    return limit


def refuse_length(dul, pdu_type: int, length: int, limit: int) -> None:
    """Log a PDU announcing more than ``limit`` bytes and queue its abort (Evt19)."""
    log.error(
        "PDU announces more bytes than the association accepts; aborting",
        pdu_type=f"0x{pdu_type:02X}",
        length=length,
        limit=limit,
        **association_fields(dul.assoc),
    )
    dul.event_queue.put("Evt19")


def read_pdu_checked(dul) -> None:
    """pynetdicom 3.0.4 ``DULServiceProvider._read_pdu_data``, refusing an over-long PDU before reading it."""
    try:
        header = bytes(dul.socket.recv(6))
    except TooSlow as exc:
        log_association_error(dul.assoc, exc, "receiving a message")
        dul.event_queue.put("Evt17")
        return
    except (OSError, TimeoutError):
        dul.event_queue.put("Evt17")
        return
    if len(header) != 6:
        dul.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in PDU_TYPES:
        log.error("unknown PDU type received", pdu_type=f"0x{pdu_type:02X}", **association_fields(dul.assoc))
        dul.event_queue.put("Evt19")
        return
    limit = largest_acceptable(dul, pdu_type)
    if length > limit:
        refuse_length(dul, pdu_type, length, limit)
        return
    try:
        data = bytearray(header)
        data += dul.socket.recv(length)
    except TooSlow as exc:
        log_association_error(dul.assoc, exc, "receiving a message")
        dul.event_queue.put("Evt17")
        return
    except (OSError, TimeoutError) as exc:
        log.warning("connection closed inside a PDU", error=repr(exc), **association_fields(dul.assoc))
        dul.event_queue.put("Evt17")
        return
    if len(data) != 6 + length:
        dul.event_queue.put("Evt17")
        return
    try:
        pdu, event = dul._decode_pdu(data)
    except Exception as exc:
        log.error("a PDU could not be decoded", error=repr(exc), **association_fields(dul.assoc))
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _is_transport_event(self) -> bool:
    """pynetdicom's check for a PDU to read, which first lets the state machine act on every queued
    event: stock pynetdicom reads the socket before acting on what it queued, so the abort of an
    over-long or invalid PDU waited while the socket thread blocked reading whatever came after it."""
    if not self.event_queue.empty():
        return False
    return _stock_is_transport_event(self)


_stock_is_transport_event = DULServiceProvider._is_transport_event


def install_events_before_reads() -> None:
    RouterDUL._is_transport_event = _is_transport_event


def install_pdu_limits() -> None:
    """Check every PDU's length before reading it and restart the read deadline between messages,
    around the owned PDV-by-PDV read when that is installed, else instead of pynetdicom's read."""
    owned = RouterDUL._read_pdu_data
    inner = owned if getattr(owned, "_reads_pdv_by_pdv", False) else read_pdu_checked

    def _read_pdu_data(self) -> None:
        restart_between_messages(self)
        inner(self)

    RouterDUL._read_pdu_data = _read_pdu_data
