"""C-STOREs sent and answered on a socket lent by the DUL thread (owned code, declared in router/engine/changes.py).

Queued the pynetdicom way, a delivery took three threads per instance: the delivering
thread queued the request's P-DATA and waited on the DIMSE queue; the DUL thread woke to
send it, woke again for the response, decoded it into PDU, P-DATA and DIMSE message
objects, and queued it back; the association thread polled beside them. On a lent socket
the delivering thread sends the request and reads the response itself, and the DUL thread
sleeps on its wake-up socket only.

How the loan works (:mod:`router.engine.reactors` keeps the DUL side):

- Every DUL reactor pass holds ``dul._socket_lock``; a borrower holds it for a whole
  request and response, so the two never use the socket at once.
- While ``dul._socket_lent`` is set the DUL neither waits on the socket nor reads it. It
  takes the socket back as soon as anything is queued for its state machine (a release,
  an abort, a message sent the queued way), so the rest of pynetdicom never sees a loan.
- A borrower only reads whole P-DATA-TF PDUs. Anything else on a lent socket (an A-ABORT,
  an A-RELEASE-RQ, a closed connection) is left unread for the DUL thread: the borrower
  gives the socket back and waits, up to :data:`SETTLE_SECONDS`, until the association
  has taken it in (:func:`settle_lent_socket`).
- The borrower gives the socket back whenever it goes idle (:func:`end_loan`), so between
  batches the DUL thread answers the peer as it always did.
- A socket is lent only on a plain TCP association in Sta6, with nothing bound to the
  events that need pynetdicom's PDU or message objects (:func:`lendable_socket`).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable

from pynetdicom import evt

from router.engine.pdata_sends import P_DATA_TF_TYPE, FileFragments, send_fragments
from router.engine.readiness import wait_readable
from router.engine.socket_reads import MAX_BUFFER, plain_socket

SETTLE_SECONDS = 2.0
ESTABLISHED = "Sta6"
C_STORE_RSP_FIELD = 0x8001
NO_DATA_SET = 0x0101
PDU_HEADER = struct.Struct(">BBL")
PDV_HEADER = struct.Struct(">LBB")
ELEMENT_HEADER = struct.Struct("<HHL")
_NEED_PYNETDICOM_OBJECTS = (
    evt.EVT_PDU_SENT,
    evt.EVT_PDU_RECV,
    evt.EVT_DATA_SENT,
    evt.EVT_DATA_RECV,
    evt.EVT_DIMSE_SENT,
    evt.EVT_DIMSE_RECV,
    evt.EVT_FSM_TRANSITION,
)


class PeerSpoke(Exception):
    """The peer sent a PDU other than P-DATA-TF, or closed the connection, on a lent socket."""


class NoAnswer(Exception):
    """The peer did not answer within the DIMSE timeout."""


class InvalidResponse(Exception):
    """The peer's answer on a lent socket is not a C-STORE-RSP command set."""


def lendable_socket(assoc) -> socket.socket | None:
    """The association's TCP socket if it can be lent (see the module's rules), else None."""
    dul = assoc.dul
    if not hasattr(dul, "_socket_lock"):
        return None
    raw = plain_socket(dul)
    if raw is None or any(assoc.get_handlers(event) for event in _NEED_PYNETDICOM_OBJECTS):
        return None
    return raw


def exchange_on_loan(
    assoc, raw: socket.socket, request: bytes, data_set: Iterable[FileFragments], timeout: float | None
) -> bytes | None:
    """Send a request (its encoded command PDU, then its data set's fragments) on the lent
    socket and return the command set of the peer's answer.

    None: the socket could not be lent (the DUL has work queued, or the association is not
    in Sta6); nothing was sent. Raises :class:`PeerSpoke` (the socket stays lent with the
    peer's PDU unread: call :func:`settle_lent_socket`), :class:`InvalidResponse`, :class:`NoAnswer` when no answer
    came within ``timeout`` seconds (None: no limit), and OSError when sending or reading failed.
    """
    dul = assoc.dul
    with dul._socket_lock:
        if dul.state_machine.current_state != ESTABLISHED or not (
            dul.to_provider_queue.empty() and dul.event_queue.empty()
        ):
            return None
        dul._socket_lent = True
        deadline = None if timeout is None else time.monotonic() + timeout
        raw.sendall(request)
        for fragments in data_set:
            send_fragments(raw, fragments)
        command = read_command_set(raw, deadline)
    dul._idle_timer.restart()
    return command


def end_loan(assoc) -> None:
    """Give a lent socket back to the DUL thread, which reads the peer's PDUs again: call it
    when the borrower goes idle, so a peer that releases or aborts an idle association is
    answered at once."""
    dul = assoc.dul
    if getattr(dul, "_socket_lent", False):
        dul._socket_lent = False
        dul.wake()


def settle_lent_socket(assoc) -> None:
    """Hand whatever the peer sent on a lent socket to the DUL thread, and wait until the
    association has taken it in: it is no longer established, or the DUL has read it and
    has nothing queued (at most :data:`SETTLE_SECONDS`).

    A peer that releases or aborts an idle association, or closes its connection, is then
    seen before the next request is sent, as it was without the loan.
    """
    dul = assoc.dul
    if not getattr(dul, "_socket_lent", False):
        return
    if not _has_input(plain_socket(dul)):
        return
    end_loan(assoc)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline and assoc.is_established and not _taken_in(dul):
        time.sleep(0.001)


def _taken_in(dul) -> bool:
    return (
        dul.state_machine.current_state == ESTABLISHED and dul.event_queue.empty() and not _has_input(plain_socket(dul))
    )


def _has_input(raw: socket.socket | None) -> bool:
    """Whether ``raw`` is readable (data or end of file); True for a closed socket."""
    if raw is None:
        return True
    try:
        return wait_readable(raw, 0)
    except (OSError, ValueError):
        return True


def read_command_set(raw: socket.socket, deadline: float | None) -> bytes:
    """Read P-DATA-TF PDUs until a command set's last fragment, and return the command set.

    Only whole P-DATA-TF PDUs are taken off the socket (each header is peeked first); any
    other PDU raises :class:`PeerSpoke` with it still unread.
    """
    command = bytearray()
    while True:
        pdu_type, _, length = PDU_HEADER.unpack(_peek_header(raw, deadline))
        if pdu_type != P_DATA_TF_TYPE:
            raise PeerSpoke(f"the peer sent a PDU of type 0x{pdu_type:02X}")
        if length > MAX_BUFFER:
            raise InvalidResponse(f"the peer announced a PDU of {length} bytes")
        body = memoryview(_read_exactly(raw, PDU_HEADER.size + length))[PDU_HEADER.size :]
        position = 0
        while position < len(body):
            if position + PDV_HEADER.size > len(body):
                raise InvalidResponse("a P-DATA-TF item runs past its PDU")
            item_length, _, control = PDV_HEADER.unpack_from(body, position)
            end = position + 4 + item_length
            if item_length < 2 or end > len(body):
                raise InvalidResponse("a P-DATA-TF item runs past its PDU")
            if not control & 0x01:
                raise InvalidResponse("the answer carries a data set")
            command += body[position + PDV_HEADER.size : end]
            position = end
            if control & 0x02:
                if position != len(body):
                    raise InvalidResponse("more PDVs follow the command set's last fragment")
                return bytes(command)


def _peek_header(raw: socket.socket, deadline: float | None) -> bytes:
    """The next PDU's 6-byte header, left on the socket."""
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise NoAnswer("no answer from the peer within the DIMSE timeout")
        if not wait_readable(raw, remaining):
            continue
        header = raw.recv(PDU_HEADER.size, socket.MSG_PEEK)
        if not header:
            raise PeerSpoke("the peer closed the connection")
        if len(header) == PDU_HEADER.size:
            return header
        time.sleep(0.001)  # part of a header: wait for the rest


def _read_exactly(raw: socket.socket, size: int) -> bytearray:
    """``size`` bytes from a blocking socket (its kernel receive timeout bounds each wait)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = raw.recv_into(view[received:])
        if not n:
            raise ConnectionError("the peer closed the connection inside a PDU")
        received += n
    return buffer


def parse_store_rsp(command: bytes) -> tuple[int, str | None]:
    """The Status and Error Comment of a C-STORE-RSP command set (Implicit VR Little Endian).

    Raises :class:`InvalidResponse` for anything else, or one without a Message ID Being
    Responded To or a Status (what pynetdicom counts as an invalid response).
    """
    elements = {}
    position = 0
    while position < len(command):
        if position + ELEMENT_HEADER.size > len(command):
            raise InvalidResponse("the command set ends inside an element header")
        group, element, length = ELEMENT_HEADER.unpack_from(command, position)
        position += ELEMENT_HEADER.size
        if group != 0x0000 or position + length > len(command):
            raise InvalidResponse("the command set has an element outside group 0000 or past its end")
        elements[element] = command[position : position + length]
        position += length
    if _us(elements.get(0x0100)) != C_STORE_RSP_FIELD:
        raise InvalidResponse("the answer is not a C-STORE-RSP")
    if _us(elements.get(0x0800)) != NO_DATA_SET:
        raise InvalidResponse("the C-STORE-RSP announces a data set")
    status = _us(elements.get(0x0900))
    if status is None or _us(elements.get(0x0120)) is None:
        raise InvalidResponse("the C-STORE-RSP has no Status or no Message ID Being Responded To")
    raw_comment = elements.get(0x0902)
    comment = raw_comment.decode("ascii", "replace").rstrip(" \x00") if raw_comment is not None else None
    return status, comment


def _us(value: bytes | None) -> int | None:
    if value is None or len(value) != 2:
        return None
    return int.from_bytes(value, "little")
