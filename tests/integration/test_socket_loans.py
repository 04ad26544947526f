"""Deliveries sent and answered on the socket the DUL thread lends (``engine.socket_loans``):
the peer's answers, aborts, releases and closes, at every point, against pynetdicom peers."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import evt

from router import engine
from router.backends.dimse import DimseBackend, DimseBackendConfig
from router.backends.status import Outcome
from router.engine import socket_loans
from router.engine.application_entity import RouterAE
from router.engine.fast_store import encode_store_rsp, send_c_store_file
from router.engine.pdata_sends import encode_p_data_tf
from router.spool.queue import Delivery
from tests.integration.test_store_sends import associate, store_scp
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
from tests.support.primitives import store_response

pytestmark = pytest.mark.owned_engine


def test_a_lent_socket_carries_the_store_and_the_dul_takes_it_back_for_the_release(small_files):
    received = []
    server = store_scp(lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0x0000)
    try:
        assoc = associate(server)
        for path in small_files[:5]:
            assert send_c_store_file(assoc, str(path)).status == 0x0000
            assert assoc.dul._socket_lent
        assoc.release()
        assert assoc.is_released
        assert not assoc.dul._socket_lent
    finally:
        server.shutdown()
    assert received == [dcmread(path).SOPInstanceUID for path in small_files[:5]]


def test_with_a_pdu_handler_bound_the_store_is_queued_for_the_dul_as_before(small_files):
    server = store_scp(lambda event: 0x0000)
    try:
        assoc = associate(server)
        received = []
        assoc.bind(evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))
        assert send_c_store_file(assoc, str(small_files[0])).status == 0x0000
        assert not assoc.dul._socket_lent
        assert received, "the DUL thread read the response"
        assoc.release()
    finally:
        server.shutdown()


@pytest.mark.parametrize("end", ["abort", "close"])
def test_a_peer_that_ends_the_association_instead_of_answering_gives_no_status(small_files, end, caplog):
    def on_store(event):
        if end == "abort":
            event.assoc.abort()
        else:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        return 0x0000

    server = store_scp(on_store)
    try:
        assoc = associate(server)
        assert send_c_store_file(assoc, str(small_files[0])).status is None
        wait_for(lambda: not assoc.is_established, 10, message="the association to end")
        assert not assoc.is_released
        wait_for(lambda: not assoc.dul.is_alive(), 10, message="the socket thread to end")
    finally:
        server.shutdown()
    assert "DIMSE timeout" not in caplog.text  # the peer's end was taken in before reporting


def raw_answer(command: bytes, context_id: int = 1) -> bytes:
    return encode_p_data_tf([(context_id, b"\x03" + command)])


def echo_rsp() -> bytes:
    body = b"".join(
        struct.pack("<HHI", 0, element, len(value)) + value
        for element, value in (
            (0x0100, struct.pack("<H", 0x8030)),
            (0x0120, struct.pack("<H", 1)),
            (0x0800, struct.pack("<H", 0x0101)),
            (0x0900, struct.pack("<H", 0)),
        )
    )
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(raw_answer(echo_rsp()), id="c-echo-rsp"),
        pytest.param(encode_p_data_tf([(1, b"\x02" + b"\x00" * 8)]), id="a-data-set"),
        pytest.param(raw_answer(encode_store_rsp(store_response(0))[:-3]), id="cut-command"),
    ],
)
def test_an_answer_that_is_not_a_c_store_rsp_aborts_and_gives_no_status(small_files, answer, caplog):
    def on_store(event):
        event.assoc.dul.socket.socket.sendall(answer)
        time.sleep(0.5)  # the requestor aborts before the real answer would go out
        return 0x0000

    server = store_scp(on_store)
    try:
        assoc = associate(server)
        assert send_c_store_file(assoc, str(small_files[0])).status is None
        assert assoc.is_aborted
    finally:
        server.shutdown()
    assert "invalid C-STORE-RSP" in caplog.text


def test_a_response_in_several_pdus_and_pdvs_is_assembled(small_files):
    command = encode_store_rsp(store_response(0xB000, comment="coerced"))
    answer = encode_p_data_tf([(1, b"\x01" + command[:10]), (1, b"\x01" + command[10:20])]) + encode_p_data_tf(
        [(1, b"\x03" + command[20:])]
    )
    answered = threading.Event()

    def on_store(event):
        event.assoc.dul.socket.socket.sendall(answer)
        answered.wait(5)
        event.assoc.abort()  # instead of a second answer
        return 0x0000

    server = store_scp(on_store)
    try:
        assoc = associate(server)
        response = send_c_store_file(assoc, str(small_files[0]))
        answered.set()
        assert (response.status, response.error_comment) == (0xB000, "coerced")
        socket_loans.end_loan(assoc)
        wait_for(lambda: not assoc.is_established, 10, message="the requestor to see the abort")
    finally:
        server.shutdown()


def test_no_answer_within_the_dimse_timeout_aborts_on_the_lent_socket(small_files):
    server = store_scp(lambda event: time.sleep(1.5) or 0x0000)
    try:
        assoc = associate(server, dimse_timeout=0.5)
        assert send_c_store_file(assoc, str(small_files[0])).status is None
        assert assoc.is_aborted
    finally:
        server.shutdown()


def dimse_sender(scp: StorageSCP):
    config = DimseBackendConfig(host="127.0.0.1", port=scp.port, ae_title="STORE_SCP")
    return DimseBackend("pacs", config, "ROUTER").open_deliverer()


@pytest.mark.parametrize("how", ["abort", "release", "close"])
def test_a_peer_that_ends_an_idle_association_is_seen_before_the_next_delivery(tmp_path, small_files, how):
    """What a PACS does after its idle timeout, while the socket is still lent and nobody reads
    it: the next delivery opens a new association instead of failing."""
    with StorageSCP(tmp_path / "dest") as scp:
        sender = dimse_sender(scp)
        ender = None
        try:
            assert sender.deliver(delivery_of(small_files[0])).outcome is Outcome.SUCCESS
            first = sender.assoc
            assert first.dul._socket_lent
            peer = scp.server.active_associations[0]
            if how == "abort":
                peer.abort()
            elif how == "release":  # waits for the answer, which comes once the next delivery looks
                ender = threading.Thread(target=peer.release, daemon=True)
                ender.start()
            else:
                peer.dul.socket.socket.shutdown(socket.SHUT_RDWR)
            wait_for(lambda: _readable(first), 10, message="the peer's end to reach the lent socket")
            result = sender.deliver(delivery_of(small_files[1]))
            assert result.outcome is Outcome.SUCCESS, result.reason
            assert sender.assoc is not first and not first.is_established
            if ender is not None:
                ender.join(10)
                assert peer.is_released
        finally:
            sender.close()
    assert len(scp.received) == 2


def test_an_idle_sender_gives_the_socket_back_and_a_peer_release_is_answered_at_once(tmp_path, small_files):
    with StorageSCP(tmp_path / "dest") as scp:
        sender = dimse_sender(scp)
        try:
            assert sender.deliver(delivery_of(small_files[0])).outcome is Outcome.SUCCESS
            sender.idle()
            assert not sender.assoc.dul._socket_lent
            peer = scp.server.active_associations[0]
            peer.release()
            assert peer.is_released
            wait_for(lambda: not sender.assoc.is_established, 10, message="the sender to see the release")
            assert sender.deliver(delivery_of(small_files[1])).outcome is Outcome.SUCCESS
        finally:
            sender.close()
    assert len(scp.received) == 2


def _readable(assoc) -> bool:
    return socket_loans._has_input(assoc.dul.socket.socket)


def delivery_of(path) -> Delivery:
    ds = dcmread(path, stop_before_pixels=True)
    return Delivery(
        id=1,
        instance_id=1,
        backend="pacs",
        pipeline=None,
        attempts=0,
        queued_at=time.time(),
        path=str(path),
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
        calling_aet="MODALITY",
        association_id=None,
    )


@pytest.mark.parametrize("status,comment", [(0x0000, None), (0xB007, "odd"), (0xA700, "even!"), (0xC211, None)])
def test_parse_store_rsp_reads_what_pynetdicom_encodes(status, comment):
    assert socket_loans.parse_store_rsp(encode_store_rsp(store_response(status, comment=comment))) == (status, comment)


def test_the_socket_is_not_lent_while_the_dul_has_work_queued_or_outside_sta6(small_files, monkeypatch):
    server = store_scp(lambda event: 0x0000)
    try:
        assoc = associate(server)
        raw = assoc.dul.socket.socket
        with monkeypatch.context() as patch:
            patch.setattr(assoc.dul.to_provider_queue, "empty", lambda: False)
            assert socket_loans.exchange_on_loan(assoc, raw, b"", [], 1.0) is None
        assert not assoc.dul._socket_lent
        assoc.release()
        assert socket_loans.exchange_on_loan(assoc, raw, b"", [], 1.0) is None
    finally:
        server.shutdown()


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK storescp")
def test_a_peer_that_stops_reading_fails_the_send_at_the_socket_timeout_and_aborts(tmp_path):
    """DCMTK storescp stopped with SIGSTOP: the lent socket's send fails once the kernel's send
    timeout (1 s here) runs out, the call raises, and the association is aborted."""
    big = write_large(tmp_path / "big.dcm", 64 * 1024 * 1024)
    port = free_port()
    scp = start_storescp(tmp_path / "out", port)
    try:
        wait_for_port(port)
        engine.configure()
        ae = RouterAE("SENDER")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_established
        engine.arm_socket_timeout(assoc, 1.0)
        os.kill(scp.pid, signal.SIGSTOP)
        with pytest.raises(OSError):
            send_c_store_file(assoc, str(big))
        assert assoc.is_aborted
    finally:
        os.kill(scp.pid, signal.SIGCONT)
        stop_process(scp)
