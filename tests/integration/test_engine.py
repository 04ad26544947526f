"""The event-driven reactors: no lost responses, no leaks, timeouts and aborts still work."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

from router import engine
from router.engine import reactors
from router.engine.application_entity import RouterAE
from tests.support.dicomgen import write_large
from tests.support.peers import (
    StorageSCP,
    free_port,
    have_dcmtk,
    start_storescp,
    stop_process,
    wait_for,
    wait_for_port,
)

pytestmark = pytest.mark.owned_engine


def test_reactors_are_installed_on_the_routers_classes_only():
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    from router.engine.classes import RouterAssociation, RouterDUL

    engine.configure()
    assert RouterDUL.run_reactor is reactors._dul_run_reactor
    assert RouterAssociation._run_reactor is reactors._assoc_run_reactor
    assert DULServiceProvider.run_reactor is not reactors._dul_run_reactor
    assert Association._run_reactor is not reactors._assoc_run_reactor


def requestor(ae_title="SOAK", dimse_timeout=20):
    engine.configure()
    ae = RouterAE(ae_title)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    ae.dimse_timeout = dimse_timeout
    return ae


@pytest.mark.slow
def test_soak_no_send_waits_for_a_lost_response(tmp_path, small_files):
    """20 x 1000 C-STOREs: every one answered (the stock reactor loses about 1 in 12,500,
    and 1 in 2,900 with a faster DUL alone; a lost one shows as an empty status after
    ``dimse_timeout``). The SCP answers without filing, so the disk stays out of it."""
    answered = []
    scp_ae = RouterAE("STORE_SCP")
    scp_ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    scp_ae.dimse_timeout = 20
    server = scp_ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: answered.append(1) or 0x0000)]
    )
    try:
        ae = requestor()
        missing = 0
        for _ in range(20):
            assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="STORE_SCP")
            assert assoc.is_established
            for _ in range(1000):
                rsp = assoc.send_c_store(small_files[0])
                if rsp is None or "Status" not in rsp:
                    missing += 1
                    faulthandler.dump_traceback(all_threads=True)  # where each thread waits, for the log
                    break
            assoc.release()
        assert missing == 0
        assert len(answered) == 20_000
    finally:
        server.shutdown()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_or_thread_leak_across_100_associations(tmp_path):
    with StorageSCP(tmp_path / "dest") as scp:
        ae = requestor()
        for _ in range(3):  # warm up lazily created resources
            a = ae.associate("127.0.0.1", scp.port, ae_title="STORE_SCP")
            a.send_c_echo()
            a.release()
        time.sleep(0.2)
        fds, threads = open_fds(), threading.active_count()
        for _ in range(100):
            a = ae.associate("127.0.0.1", scp.port, ae_title="STORE_SCP")
            assert int(a.send_c_echo().Status) == 0
            a.release()
        wait_for(lambda: threading.active_count() <= threads, 10, message="association threads to end")
        wait_for(lambda: open_fds() <= fds, 10, message="sockets to close")


def test_idle_association_is_closed_by_network_timeout(tmp_path):
    engine.configure()
    ended = threading.Event()
    ae = RouterAE("IDLE_SCP")
    ae.add_supported_context(Verification)
    ae.network_timeout = 1
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_CONN_CLOSE, lambda e: ended.set())])
    try:
        client = requestor()
        assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="IDLE_SCP")
        assert assoc.is_established
        assert ended.wait(10), "the idle association was not closed"
        wait_for(lambda: not assoc.is_established, 10, message="the requestor to see the end")
    finally:
        server.shutdown()


def test_abort_from_the_requestor_is_seen_by_the_acceptor(tmp_path):
    aborted = threading.Event()
    ae = RouterAE("ABORT_SCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())])
    try:
        assoc = requestor().associate("127.0.0.1", server.server_address[1], ae_title="ABORT_SCP")
        assert assoc.is_established
        assoc.abort()
        assert assoc.is_aborted
        assert aborted.wait(10)
    finally:
        server.shutdown()


def test_release_returns_promptly_and_cleanly(tmp_path):
    with StorageSCP(tmp_path / "dest") as scp:
        assoc = requestor().associate("127.0.0.1", scp.port, ae_title="STORE_SCP")
        assoc.release()
        assert assoc.is_released and not assoc.is_established
        assert not assoc.dul.is_alive()


def test_every_association_socket_has_nagle_off(tmp_path):
    import socket as socketlib

    with StorageSCP(tmp_path / "dest") as scp:
        assoc = requestor().associate("127.0.0.1", scp.port, ae_title="STORE_SCP")
        try:
            raw = assoc.dul.socket.socket
            assert raw.getsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY) == 1
        finally:
            assoc.release()


def test_a_connection_closed_before_its_request_leaves_no_thread_behind(tmp_path, write_config, start_router, port):
    """Stock pynetdicom waits out acse_timeout (30 s) for the A-ASSOCIATE-RQ of a closed connection."""
    import socket

    from tests.conftest import dimse_backend_toml, router_toml
    from tests.support.peers import free_port, wait_for

    service = start_router(
        write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"]))
    )
    endpoint = service.endpoints["ingest"]
    for _ in range(5):
        socket.create_connection(("127.0.0.1", port)).close()
    wait_for(
        lambda: not endpoint._closed_server_or_server().active_associations,
        10,
        message="the association threads of closed connections to end",
    )


def test_accepted_associations_share_the_supported_contexts_instead_of_copying_them():
    engine.configure()
    seen = []
    scp_ae = RouterAE("ECHO_SCP")
    scp_ae.add_supported_context(Verification)
    scp_ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = scp_ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, lambda event: seen.append(list(event.assoc.acceptor.supported_contexts)))],
    )
    try:
        for _ in range(2):
            assoc = requestor().associate("127.0.0.1", server.server_address[1], ae_title="ECHO_SCP")
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0x0000
            assoc.release()
        first, second = seen
        assert all(a is b for a, b in zip(first, second, strict=True))
        assert [cx.abstract_syntax for cx in first] == [cx.abstract_syntax for cx in server.contexts]
    finally:
        server.shutdown()


def test_a_p_data_queued_after_the_release_began_is_dropped_not_fatal(caplog):
    """Stock pynetdicom ends the socket thread with InvalidEventError (Evt9 in Sta7)."""
    ae = RouterAE("LATE_SCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        assoc = requestor().associate("127.0.0.1", server.server_address[1], ae_title="LATE_SCP")
        assert assoc.is_established
        dul = assoc.dul
        with dul.assoc.lock:
            dul.state_machine.current_state = "Sta7"  # as if our A-RELEASE-RQ had just gone out
            late = P_DATA()
            late.presentation_data_value_list.append([1, b"\x03" + b"\x00" * 8])
            dul.to_provider_queue.put(late)
        wait_for(lambda: dul.to_provider_queue.empty(), 10, message="the late P-DATA to be dropped")
        assert dul.is_alive()
        assert any("dropped a P-DATA queued after" in r.getMessage() for r in caplog.records)
        dul.state_machine.current_state = "Sta6"
        assert int(assoc.send_c_echo().Status) == 0  # nothing was sent, the association carries on
        assoc.release()
        assert assoc.is_released
    finally:
        server.shutdown()


def test_a_store_arriving_before_the_acceptor_counts_itself_established_is_answered(small_files):
    """pynetdicom sends the A-ASSOCIATE-AC, runs the EVT_ACCEPTED handlers and only then sets
    ``is_established``; a fast peer's first C-STORE arrives in between. Stop 3's socket-thread
    SCP answered it there, saw ``is_established`` False and sent no response (5 lost in 5 with
    a 0.3 s accept handler): the lost response of its soak runs. Now the association thread
    serves that first request, and the socket thread the ones after establishment."""
    from pynetdicom.dul import DULServiceProvider

    served_by = []
    scp_ae = RouterAE("SLOW_ACCEPT")
    scp_ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = scp_ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda event: served_by.append(threading.current_thread()) or 0x0000),
            (evt.EVT_ACCEPTED, lambda event: time.sleep(0.3)),
        ],
    )
    try:
        ae = requestor(dimse_timeout=5)
        for _ in range(3):
            assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="SLOW_ACCEPT")
            assert assoc.is_established
            for _ in range(2):
                rsp = assoc.send_c_store(small_files[0])
                assert rsp is not None and int(rsp.Status) == 0x0000
            assoc.release()
        on_socket_thread = [isinstance(thread, DULServiceProvider) for thread in served_by]
        assert on_socket_thread == [False, True] * 3
    finally:
        server.shutdown()


def store_scp(handler, extra_handlers=()):
    engine.configure()
    ae = RouterAE("STORE_SCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handler), *extra_handlers])


def store_once(server, path):
    """One C-STORE on a new association: (status or None, the association)."""
    assoc = requestor(dimse_timeout=5).associate("127.0.0.1", server.server_address[1], ae_title="STORE_SCP")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return (int(rsp.Status) if rsp is not None and "Status" in rsp else None), assoc
    finally:
        if assoc.is_established:
            assoc.release()


def test_a_plain_c_store_is_served_on_the_socket_thread_with_its_file(small_files):
    from pynetdicom.dul import DULServiceProvider

    seen = []

    def on_store(event):
        seen.append((threading.current_thread(), os.path.exists(event.dataset_path), event.dataset_path))
        return 0x0000

    server = store_scp(on_store)
    try:
        status, _ = store_once(server, small_files[0])
        assert status == 0x0000
        ((thread, file_there, path),) = seen
        assert isinstance(thread, DULServiceProvider) and file_there
        assert not os.path.exists(path)  # removed after the handler, as pynetdicom does
    finally:
        server.shutdown()


def test_with_a_dimse_sent_handler_the_association_thread_serves(small_files):
    from pynetdicom.dul import DULServiceProvider

    seen = []
    server = store_scp(
        lambda event: seen.append(threading.current_thread()) or 0x0000, [(evt.EVT_DIMSE_SENT, lambda event: None)]
    )
    try:
        status, _ = store_once(server, small_files[0])
        assert status == 0x0000
        assert not isinstance(seen[0], DULServiceProvider)
    finally:
        server.shutdown()


def test_a_handler_that_raises_is_answered_c211_and_its_file_removed(small_files):
    paths = []

    def on_store(event):
        paths.append(event.dataset_path)
        raise RuntimeError("bug in a handler")

    server = store_scp(on_store)
    try:
        status, _ = store_once(server, small_files[0])
        assert status == 0xC211
        assert not os.path.exists(paths[0])
    finally:
        server.shutdown()


def test_a_handler_status_pynetdicom_refuses_is_answered_as_pynetdicom_would(small_files):
    server = store_scp(lambda event: "not a status")
    try:
        status, _ = store_once(server, small_files[0])
        assert status == 0xC002  # validate_status: an invalid status object
    finally:
        server.shutdown()


def test_a_handler_that_aborts_gets_no_response_and_no_deadlock(small_files):
    server = store_scp(lambda event: event.assoc.abort() or 0x0000)
    try:
        status, assoc = store_once(server, small_files[0])
        assert status is None
        wait_for(lambda: assoc.is_aborted, 10, message="the abort to reach the requestor")
        status, _ = store_once(server, small_files[0])  # the server still serves
        assert status is None
    finally:
        server.shutdown()


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK storescp")
def test_a_peer_that_stops_reading_ends_the_association_at_the_network_timeout(tmp_path):
    """A real peer (DCMTK storescp) stopped with SIGSTOP mid-association: the data set's send
    blocks once the socket buffers are full, the kernel's send timeout armed by
    ``arm_socket_timeout`` (1 s here) fails it, and the association ends with a transport
    error instead of the socket thread waiting for ever."""
    big = write_large(tmp_path / "big.dcm", 64 * 1024 * 1024)
    port = free_port()
    scp = start_storescp(tmp_path / "out", port)
    sender = None
    try:
        wait_for_port(port)
        assoc = requestor(dimse_timeout=120).associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_established
        engine.arm_socket_timeout(assoc, 1.0)
        os.kill(scp.pid, signal.SIGSTOP)
        sender = threading.Thread(target=assoc.send_c_store, args=(big,), daemon=True)
        sender.start()
        wait_for(lambda: not assoc.dul.is_alive(), 60, message="the socket thread to give up on the stalled peer")
        wait_for(lambda: not assoc.is_established, 30, message="the association to end")
        sender.join(30)
        assert not sender.is_alive()
    finally:
        os.kill(scp.pid, signal.SIGCONT)
        stop_process(scp)


def test_a_rejection_that_arrives_before_the_requestor_looks_is_reported_as_a_rejection():
    """The requestor's association thread checks the connection only after its EVT_REQUESTED
    handlers; by then a fast peer may have rejected the association and the DUL closed the
    connection. Stock pynetdicom reported that as an abort (always, with this 0.3 s handler;
    0.3 % of rejections under load with the event-driven DUL)."""

    def reject(event):
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()

    scp_ae = RouterAE("REJECTING")
    scp_ae.add_supported_context(Verification)
    server = scp_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_REQUESTED, reject)])
    try:
        ae = requestor()
        for _ in range(3):
            assoc = ae.associate(
                "127.0.0.1",
                server.server_address[1],
                ae_title="REJECTING",
                evt_handlers=[(evt.EVT_REQUESTED, lambda event: time.sleep(0.3))],
            )
            assert assoc.is_rejected and not assoc.is_aborted
    finally:
        server.shutdown()
