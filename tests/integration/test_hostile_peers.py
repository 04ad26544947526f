"""Hostile and broken peers never lock out senders, never leave a thread or a socket behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import router_toml
from tests.support import pdus
from tests.support.logs import events
from tests.support.peers import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
ACSE_TIMEOUT = 2
NETWORK_TIMEOUT = 2

BACKENDS = """
[backends.archive]
type = "filesystem"
path = "archive"
"""


@pytest.fixture
def router(tmp_path, write_config, start_router, port):
    extra = (
        f"acse_timeout = {ACSE_TIMEOUT}\nnetwork_timeout = {NETWORK_TIMEOUT}\nmax_associations = 4\n"
        "max_pending = 12\nmax_pending_per_address = 6"
    )
    start_router(write_config(router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra=extra)))
    return port


def echo(port: int) -> int | None:
    ae = AE("SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    if not assoc.is_established:
        return None
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return status


def test_idle_and_trickling_connections_never_lock_out_a_sender(router):
    """More idle and trickling connections than association slots and pending places: every
    legitimate C-ECHO is still answered, and every hostile connection is closed by its deadline."""
    idle = [socket.create_connection(("127.0.0.1", router), timeout=10) for _ in range(12)]
    tricklers = [socket.create_connection(("127.0.0.1", router), timeout=10) for _ in range(6)]
    request = pdus.associate_rq()
    sent: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i, s=s: sent.__setitem__(i, pdus.trickle(s, request, 1, 0.3)))
        for i, s in enumerate(tricklers)
    ]
    try:
        for thread in threads:
            thread.start()
        assert [echo(router) for _ in range(6)] == [0] * 6
        assert all(pdus.connection_closed(s, ACSE_TIMEOUT + 5) for s in idle)
        for thread in threads:
            thread.join(ACSE_TIMEOUT + 10)
        assert all(sent[i] < len(request) for i in range(len(tricklers)))  # cut off, not served
    finally:
        for s in idle + tricklers:
            s.close()
    assert echo(router) == 0


def test_a_request_trickled_one_byte_at_a_time_is_cut_off_at_the_acse_timeout(router, caplog):
    request = pdus.associate_rq()
    with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
        sent = pdus.trickle(sock, request, 1, 0.2)  # would take 0.2 s x ~200 bytes without a whole deadline
    assert sent < len(request)
    closed = events(caplog, "pending connection closed")
    assert closed and "acse_timeout" in closed[-1]["reason"] and closed[-1]["endpoint"] == "ingest"


def test_a_data_set_trickled_is_dropped_at_the_network_timeout(router, caplog):
    """Each read succeeds, but less than a progress step arrives within network_timeout: aborted."""
    contexts = [pdus.presentation_context(1, CT, (EXPLICIT,))]
    with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
        sock.sendall(pdus.associate_rq(calling="TRICKLER", contexts=contexts))
        assert pdus.read_pdu(sock)[0] == pdus.A_ASSOCIATE_AC
        sock.sendall(pdus.store_rq_command(CT, "1.2.826.0.1.3680043.8.498.77"))
        data = pdus.data_set_fragment(b"\x08\x00\x16\x00UI\x1a\x00" + b"1" * 30000)
        sent = pdus.trickle(sock, data, 100, 0.2)  # 500 bytes/s: 12 s for the whole PDU
    assert sent < len(data)
    ended = wait_for(
        lambda: events(caplog, "association ended after an unexpected error"),
        10,
        message="a log line about the slow peer",
    )
    assert ended[-1]["calling_aet"] == "TRICKLER" and "TooSlow" in ended[-1]["error"]
    assert echo(router) == 0


BAD_REQUESTS = {
    "a context without a transfer syntax": pdus.associate_rq(
        contexts=[pdus.presentation_context(1, transfer_syntaxes=())]
    ),
    "a context without an abstract syntax": pdus.associate_rq(contexts=[pdus.presentation_context(1, abstract=None)]),
    "an even context ID": pdus.associate_rq(contexts=[pdus.presentation_context(2)]),
    "a user identity of type 0": pdus.associate_rq(user=pdus.user_information(identity_type=0)),
    "a valid context beside one without a transfer syntax": pdus.associate_rq(
        contexts=[pdus.presentation_context(1), pdus.presentation_context(3, transfer_syntaxes=())]
    ),
}


def _router_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(("AcceptorThread", "Thread-")))


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_request_pynetdicom_cannot_negotiate_is_answered_and_closed(router, caplog, case):
    before = _router_threads()
    with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
        sock.sendall(BAD_REQUESTS[case])
        answer = pdus.read_pdu(sock)
        assert answer is not None and answer[0] in (pdus.A_ASSOCIATE_RJ, pdus.A_ABORT)
        assert pdus.connection_closed(sock, 10)
    wait_for(lambda: _router_threads() <= before, 10, message="the connection's threads to end")
    assert events(caplog, "association ended after an unexpected error")
    assert not events(caplog, "a thread ended with an unhandled error")
    assert echo(router) == 0


@pytest.mark.parametrize(
    "pdu",
    [pdus.abort(source=7, reason=9), pdus.pdu(0x09, b"\0\0\0\0")],
    ids=["an A-ABORT with a bad source", "an unknown PDU type"],
)
def test_a_bad_pdu_on_an_established_association_ends_it(router, caplog, pdu):
    before = _router_threads()
    with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
        sock.sendall(pdus.associate_rq())
        assert pdus.read_pdu(sock)[0] == pdus.A_ASSOCIATE_AC
        sock.sendall(pdu)
        assert pdus.connection_closed(sock, 10)
    wait_for(lambda: _router_threads() <= before, 10, message="the association's threads to end")
    assert not events(caplog, "a thread ended with an unhandled error")
    assert echo(router) == 0


def test_a_peer_that_keeps_talking_after_its_rejection_is_closed(router, caplog):
    """Sta13 (waiting for the close): further requests, data and releases end nothing badly."""
    before = _router_threads()
    with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
        sock.sendall(
            pdus.associate_rq(called="SOMEONE_ELSE", contexts=[pdus.presentation_context(2)])
            + pdus.associate_rq()
            + pdus.echo_rq()
            + pdus.release_rq()
            + pdus.abort()
        )
        assert pdus.connection_closed(sock, 10)
    wait_for(lambda: _router_threads() <= before, 10, message="the connection's threads to end")
    assert not events(caplog, "a thread ended with an unhandled error")
    assert echo(router) == 0


def test_the_association_limit_counts_associations_not_pending_connections(router):
    idle = [socket.create_connection(("127.0.0.1", router), timeout=10) for _ in range(5)]
    held = []
    try:
        for _ in range(4):
            ae = AE("HOLDER")
            ae.add_requested_context(Verification)
            held.append(ae.associate("127.0.0.1", router, ae_title="DICOM_ROUTER"))
        assert all(a.is_established for a in held)
        with socket.create_connection(("127.0.0.1", router), timeout=10) as sock:
            sock.sendall(pdus.associate_rq())
            answer = pdus.read_pdu(sock)
        assert answer[0] == pdus.A_ASSOCIATE_RJ
        assert tuple(answer[1][1:4]) == (0x02, 0x03, 0x02)  # transient, service provider, local limit exceeded
    finally:
        for assoc in held:
            assoc.release()
        for s in idle:
            s.close()


def test_an_unhandled_thread_error_is_one_structured_line():
    """In a router process (pytest replaces threading.excepthook in its own), a thread's
    unhandled error reaches stderr as one JSON line with the traceback as a field."""
    script = (
        "import threading\n"
        "from router import engine\n"
        "from router.observe.logging import setup_logging\n"
        "setup_logging('info', 'json')\n"
        "engine.configure()\n"
        "def fail():\n"
        "    raise RuntimeError('boom in a helper thread')\n"
        "t = threading.Thread(target=fail, name='doomed-helper')\n"
        "t.start(); t.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line is JSON
    failure = [line for line in lines if line.get("event") == "a thread ended with an unhandled error"]
    assert failure and failure[0]["thread"] == "doomed-helper"
    assert "RuntimeError: boom in a helper thread" in failure[0]["exception"]
