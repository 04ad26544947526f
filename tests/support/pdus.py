"""A scripted DICOM peer on a raw socket: PDUs built byte by byte, for protocol edge cases.

Every PDU is built here by hand (PS3.8 section 9.3), not with pynetdicom's encoder, so a test
can send what pynetdicom itself would never send: contexts without a transfer syntax, even
context IDs, a user identity of type 0, an A-ABORT with a bad source.
"""

from __future__ import annotations

import socket
import struct
import time

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 1, 2, 3, 4, 5, 6, 7

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR = "1.2.840.10008.1.2"
EXPLICIT_VR = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def uid_item(item_type: int, uid: str) -> bytes:
    return item(item_type, uid.encode("ascii"))


def presentation_context(
    context_id: int, abstract: str | None = VERIFICATION, transfer_syntaxes: tuple[str, ...] = (IMPLICIT_VR,)
) -> bytes:
    body = bytes((context_id, 0, 0, 0))
    if abstract is not None:
        body += uid_item(0x30, abstract)
    for ts in transfer_syntaxes:
        body += uid_item(0x40, ts)
    return item(0x20, body)


def user_information(max_pdu: int = 16384, identity_type: int | None = None, extra: bytes = b"") -> bytes:
    body = item(0x51, struct.pack(">I", max_pdu)) + uid_item(0x52, "1.2.826.0.1.3680043.9.3811.1") + extra
    if identity_type is not None:
        primary = b"user"
        body += item(0x58, struct.pack(">BBH", identity_type, 0, len(primary)) + primary + struct.pack(">H", 0))
    return item(0x50, body)


def associate_rq(
    called: str = "DICOM_ROUTER",
    calling: str = "SCRIPTED",
    contexts: list[bytes] | None = None,
    user: bytes | None = None,
) -> bytes:
    if contexts is None:
        contexts = [presentation_context(1)]
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
    body += (
        uid_item(0x10, APPLICATION_CONTEXT) + b"".join(contexts) + (user if user is not None else user_information())
    )
    return pdu(A_ASSOCIATE_RQ, body)


def abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(A_ABORT, bytes((0, 0, source, reason)))


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, b"\0\0\0\0")


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def echo_rq(context_id: int = 1, message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set in one P-DATA-TF PDU (Implicit VR Little Endian)."""
    uid = VERIFICATION.encode() + b"\0"
    rest = (
        _element(0x0000, 0x0002, uid)
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0030))
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
    )
    command = _element(0x0000, 0x0000, struct.pack("<I", len(rest))) + rest
    pdv = struct.pack(">IB", len(command) + 2, context_id) + b"\x03" + command
    return pdu(P_DATA_TF, pdv)


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU as ``(type, body)``; None if the connection ends first."""
    sock.settimeout(timeout)
    header = _read_exact(sock, 6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBI", header)
    body = _read_exact(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except (ConnectionResetError, TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def echo_status(body: bytes) -> int | None:
    """The Status (0000,0900) in a P-DATA-TF body carrying a command set; None if absent."""
    command = body[6:]
    offset = 0
    while offset + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHI", command, offset)
        if (group, elem) == (0x0000, 0x0900):
            return struct.unpack_from("<H", command, offset + 8)[0]
        offset += 8 + length
    return None


def connection_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` within ``timeout`` (anything it sends first is read and dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def echo_over_raw_socket(port: int, calling: str = "SCRIPTED", timeout: float = 10.0) -> int | None:
    """Associate, C-ECHO, release on a raw socket; the C-ECHO status, None if anything failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(associate_rq(calling=calling))
        answer = read_pdu(sock, timeout)
        if answer is None or answer[0] != A_ASSOCIATE_AC:
            return None
        sock.sendall(echo_rq())
        answer = read_pdu(sock, timeout)
        if answer is None or answer[0] != P_DATA_TF:
            return None
        sock.sendall(release_rq())
        read_pdu(sock, timeout)
        return echo_status(answer[1])


def store_rq_command(sop_class: str, sop_instance: str, context_id: int = 1, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (a data set follows) in one P-DATA-TF PDU."""

    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    rest = (
        _element(0x0000, 0x0002, uid(sop_class))
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0001))
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0700, struct.pack("<H", 0))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0000))
        + _element(0x0000, 0x1000, uid(sop_instance))
    )
    command = _element(0x0000, 0x0000, struct.pack("<I", len(rest))) + rest
    return pdu(P_DATA_TF, struct.pack(">IB", len(command) + 2, context_id) + b"\x03" + command)


def data_set_fragment(data: bytes, context_id: int = 1, last: bool = True) -> bytes:
    """One P-DATA-TF PDU carrying ``data`` as a data set fragment."""
    return pdu(P_DATA_TF, struct.pack(">IB", len(data) + 2, context_id) + (b"\x02" if last else b"\x00") + data)


def trickle(sock: socket.socket, data: bytes, step: int, interval: float) -> int:
    """Send ``data`` ``step`` bytes every ``interval`` seconds until the peer closes the connection;
    returns how many bytes were sent (``len(data)``: the peer never closed it)."""
    sent = 0
    while sent < len(data):
        try:
            sock.sendall(data[sent : sent + step])
        except OSError:
            return sent
        sent += len(data[sent : sent + step])
        if connection_closed(sock, interval):
            return sent
    return sent
