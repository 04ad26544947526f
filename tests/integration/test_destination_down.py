"""A destination that is down is described as it is: refused, silent, rejected with its reason, aborted."""

from __future__ import annotations

import socket
import threading

from pynetdicom.sop_class import Verification

from router.backends.dimse import DimseBackend, DimseBackendConfig
from router.engine.application_entity import RouterAE
from tests.conftest import dimse_backend_toml, router_toml
from tests.integration.test_forwarding import send_with_pynetdicom
from tests.support import pdus
from tests.support.peers import free_port, wait_for


def _backend(port: int, ae_title: str = "PACS", **timeouts) -> DimseBackend:
    return DimseBackend(
        "pacs", DimseBackendConfig(host="127.0.0.1", port=port, ae_title=ae_title, **timeouts), "ROUTER"
    )


def test_a_closed_port_is_a_refused_connection():
    port = free_port()
    reason = _backend(port).echo()
    assert reason.startswith("cannot connect to ") and f"{port}: connection refused" in reason
    assert "aborted" not in reason


def test_a_peer_that_rejects_is_named_with_its_reason():
    ae = RouterAE("PACS")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        reason = _backend(server.server_address[1], ae_title="WRONG").echo()
    finally:
        server.shutdown()
    assert reason.startswith("association rejected by WRONG@127.0.0.1:")
    assert "Called AE title not recognised" in reason


def _peer(answer):
    """A listening socket whose every connection gets ``answer(connection)``; (port, stop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            answer(conn)
        for conn in held:
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


def test_a_silent_peer_is_one_that_did_not_answer_within_the_acse_timeout():
    port, stop = _peer(lambda conn: None)
    try:
        reason = _backend(port, acse_timeout=1).echo()
    finally:
        stop.set()
    assert "did not answer it within 1 s" in reason and "connection refused" not in reason


def test_a_peer_that_aborts_the_request_is_not_a_refused_connection():
    def abort(conn):
        pdus.read_pdu(conn, 10)
        conn.sendall(pdus.abort(source=2))

    port, stop = _peer(abort)
    try:
        reason = _backend(port, acse_timeout=5).echo()
    finally:
        stop.set()
    assert "aborted the association request" in reason and "cannot connect" not in reason


def test_queue_shows_a_refused_connection_for_a_destination_that_is_down(
    tmp_path, write_config, start_router, port, small_files
):
    dead = free_port()
    service = start_router(write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(dead), ["pacs"])))
    assert send_with_pynetdicom(port, small_files[:1]) == [0]
    pending = wait_for(
        lambda: [d for d in service.queue.list_state("pending") if d.reason], 30, message="a failed attempt"
    )
    assert "connection refused" in pending[0].reason and "aborted" not in pending[0].reason
    ((reason, count),) = service.queue.waiting_reasons()["pacs"]  # what `queue list` prints
    assert count == 1 and "connection refused" in reason
