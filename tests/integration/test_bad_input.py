"""Bad peers get a reject or an abort and a log line; the router keeps answering."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import router_toml
from tests.support.logs import events
from tests.support.peers import wait_for

A_ASSOCIATE_RJ, A_ABORT = 0x03, 0x07

BACKENDS = """
[backends.archive]
type = "filesystem"
path = "archive"
"""


@pytest.fixture
def guarded_router(tmp_path, write_config, start_router, port):
    text = router_toml(
        tmp_path / "data",
        port,
        BACKENDS,
        ["archive"],
        endpoint_extra='allowed_calling_aets = ["CT_*", "MR01"]\nacse_timeout = 3',
    )
    start_router(write_config(text))
    return port


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        try:
            return s.recv(64)
        except (ConnectionResetError, TimeoutError):
            return b""


def echo(port: int, calling: str = "CT_SCANNER") -> tuple[bool, int | None]:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    if not assoc.is_established:
        return False, None
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return True, status


def test_random_bytes_get_an_abort_and_a_log_line(guarded_router, caplog):
    reply = raw_exchange(guarded_router, os.urandom(4096))
    assert reply[:1] in (bytes([A_ABORT]), b"")
    wait_for(
        lambda: events(caplog, "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)"),
        10,
        message="a log line about the bad connection",
    )
    assert echo(guarded_router) == (True, 0)


def test_malformed_associate_request_gets_an_abort(guarded_router, caplog):
    bogus = b"\x01\x00" + struct.pack(">I", 10) + b"\x00\x01garbage!"
    assert raw_exchange(guarded_router, bogus)[:1] == bytes([A_ABORT])
    wait_for(
        lambda: events(caplog, "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)"),
        10,
        message="a log line about the malformed request",
    )
    assert echo(guarded_router) == (True, 0)


def test_truncated_pdu_is_closed_and_others_still_served(guarded_router):
    with socket.create_connection(("127.0.0.1", guarded_router), timeout=10) as s:
        s.sendall(b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00\x01")
        assert echo(guarded_router) == (True, 0)  # while the bad one is still open


@pytest.mark.parametrize("length", [0xFFFFFFF0, 1024 * 1024 + 1])
def test_an_announced_length_over_the_limit_is_aborted_at_once(guarded_router, caplog, length):
    """No wait for a body that would not be accepted anyway (pynetdicom would read up to 4 GiB)."""
    with socket.create_connection(("127.0.0.1", guarded_router), timeout=10) as s:
        s.sendall(b"\x01\x00" + struct.pack(">I", length) + b"\x00\x01")
        assert s.recv(64)[:1] == bytes([A_ABORT])
    assert events(caplog, "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)") or wait_for(
        lambda: events(caplog, "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)"),
        10,
        message="a log line about the bad connection",
    )
    assert echo(guarded_router) == (True, 0)


def test_a_peer_silent_inside_its_request_is_closed_within_the_acse_timeout(guarded_router, caplog):
    with socket.create_connection(("127.0.0.1", guarded_router), timeout=20) as s:
        s.sendall(b"\x01\x00" + struct.pack(">I", 200) + b"\x00\x01")  # 194 bytes never come
        try:
            rest = s.recv(64)
        except ConnectionResetError:
            rest = b""
        assert rest[:1] in (b"", bytes([A_ABORT]))  # closed by the router (acse_timeout = 3 s), not by our 20 s
    wait_for(
        lambda: events(caplog, "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)"),
        10,
        message="a log line about the silent connection",
    )


def test_calling_aet_outside_allow_list_is_rejected(guarded_router, caplog):
    ae = AE("INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", guarded_router, ae_title="DICOM_ROUTER")
    assert assoc.is_rejected
    rejected = events(caplog, "association rejected")
    assert rejected and rejected[-1]["calling_aet"] == "INTRUDER"
    assert "allowed_calling_aets" in rejected[-1]["reason"]
    assert echo(guarded_router, "MR01") == (True, 0)
    assert echo(guarded_router, "CT_ANY") == (True, 0)


def test_host_outside_allowed_hosts_is_rejected(tmp_path, write_config, start_router, port, caplog):
    text = router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra='allowed_hosts = ["10.0.0.0/8"]')
    start_router(write_config(text))
    assert echo(port) == (False, None)
    assert "allowed_hosts" in events(caplog, "association rejected")[-1]["reason"]


def test_raw_reject_pdu_for_disallowed_aet(guarded_router):
    """The A-ASSOCIATE-RJ on the wire: rejected-permanent, service user, calling AE not recognised."""
    called, calling = b"DICOM_ROUTER".ljust(16), b"INTRUDER".ljust(16)
    app = b"\x10\x00" + struct.pack(">H", 21) + b"1.2.840.10008.3.1.1.1"
    abstract = b"\x30\x00" + struct.pack(">H", 17) + b"1.2.840.10008.1.1"
    ts = b"\x40\x00" + struct.pack(">H", 17) + b"1.2.840.10008.1.2"
    pc_body = b"\x01\x00\x00\x00" + abstract + ts
    pc = b"\x20\x00" + struct.pack(">H", len(pc_body)) + pc_body
    max_len = b"\x51\x00\x00\x04" + struct.pack(">I", 16384)
    user = b"\x50\x00" + struct.pack(">H", len(max_len)) + max_len
    body = struct.pack(">HH", 1, 0) + called + calling + b"\x00" * 32 + app + pc + user
    reply = raw_exchange(guarded_router, b"\x01\x00" + struct.pack(">I", len(body)) + body)
    assert reply[0] == A_ASSOCIATE_RJ
    assert tuple(reply[7:10]) == (0x01, 0x01, 0x03)


def test_association_limit_rejects_the_extra_one(tmp_path, write_config, start_router, port):
    start_router(
        write_config(router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra="max_associations = 1"))
    )
    ae = AE("CT_FIRST")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    assert first.is_established
    try:
        second = AE("CT_SECOND")
        second.add_requested_context(Verification)
        extra = second.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
        assert extra.is_rejected
        assert int(first.send_c_echo().Status) == 0  # the admitted one is unaffected
    finally:
        first.release()
    wait_for(lambda: echo(port) == (True, 0), 10, message="a free association slot after the release")
