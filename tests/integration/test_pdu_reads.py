"""P-DATA-TF PDUs read PDV by PDV give what pynetdicom's whole-PDU read gives.

A scripted peer speaks raw PDUs to an in-process pynetdicom SCP running the engine; every
script runs twice, with the engine's read and with pynetdicom's own, and both runs must
store the same files, answer the same statuses and end the association the same way.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from router import engine
from router.engine import pdata_reads, pdu_limits
from router.engine import store_decode as store_decode_module
from router.engine.application_entity import RouterAE
from router.engine.classes import RouterDUL
from router.engine.store_decode import parse_command_set
from tests.support.peers import wait_for
from tests.support.spool import partial_files

pytestmark = pytest.mark.owned_engine

A_ASSOCIATE_AC, P_DATA_PDU, A_RELEASE_RP, A_ABORT = 0x02, 0x04, 0x06, 0x07


@pytest.fixture(params=["engine", "pynetdicom"])
def scp(request, tmp_path, monkeypatch):
    """An SCP keeping each received file's bytes; ``engine`` reads PDVs one at a time, ``pynetdicom`` whole PDUs."""
    engine.configure()
    direct = []
    if request.param == "pynetdicom":
        monkeypatch.setattr(RouterDUL, "_read_pdu_data", pdu_limits.STOCK_READ_PDU_DATA)
    else:
        read_items = pdata_reads._read_items
        monkeypatch.setattr(pdata_reads, "_read_items", lambda *a: direct.append(1) or read_items(*a))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    received = []

    def on_store(event):
        received.append(Path(event.dataset_path).read_bytes())
        return 0x0000

    ae = RouterAE("STORE_SCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.maximum_pdu_size = 0
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield server.server_address[1], received, tmp_path
    server.shutdown()
    assert bool(direct) == (request.param == "engine"), "the engine's read was not the one tested"


def associate(port: int) -> socket.socket:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "SCRIPTED"
    primitive.called_ae_title = "STORE_SCP"
    context = build_context(CTImageStorage, ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 0
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode())
    assert read_pdu(sock)[0] == A_ASSOCIATE_AC
    return sock


def read_pdu(sock: socket.socket) -> tuple[int | None, bytes]:
    header = read_exact(sock, 6)
    if len(header) < 6:
        return None, b""
    pdu_type, length = header[0], struct.unpack(">L", header[2:])[0]
    return pdu_type, read_exact(sock, length)


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def store_pdvs(payload: bytes, message_id: int, max_pdu: int) -> list[tuple[int, bytes]]:
    """The PDVs of a C-STORE-RQ carrying ``payload``, cut as pynetdicom cuts them for ``max_pdu``."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.Priority = 2
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{message_id}"
    from io import BytesIO

    primitive.DataSet = BytesIO(payload)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [pdv for p_data in message.encode_msg(1, max_pdu) for pdv in p_data.presentation_data_value_list]


def pdu(*pdvs: tuple[int, bytes]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(pdv) for pdv in pdvs]
    return P_DATA_TF(primitive).encode()


def status_of(body: bytes) -> int:
    """The Status of the C-STORE-RSP in a P-DATA-TF body holding one command PDV."""
    fields = parse_command_set(memoryview(body)[6:])
    return struct.unpack("<H", fields[0x0900])[0]


def release(sock: socket.socket) -> int | None:
    sock.sendall(A_RELEASE_RQ().encode())
    pdu_type, _ = read_pdu(sock)
    sock.close()
    return pdu_type


@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072, 0])
def test_instances_in_separate_pdus(scp, max_pdu):
    port, received, _ = scp
    payloads = [os.urandom(size) for size in (1, 5000, 300_000)]
    sock = associate(port)
    statuses = []
    for number, payload in enumerate(payloads, 1):
        for item in store_pdvs(payload, number, max_pdu):
            sock.sendall(pdu(item))
        statuses.append(status_of(read_pdu(sock)[1]))
    assert release(sock) == A_RELEASE_RP
    assert statuses == [0, 0, 0]
    assert [r[-len(p) :] for r, p in zip(received, payloads, strict=True)] == payloads
    assert len({r[: -len(p)] for r, p in zip(received, payloads, strict=True)}) == 3  # each with its own file meta


def test_command_and_data_and_the_next_command_share_pdus(scp):
    port, received, _ = scp
    first, second = os.urandom(40_000), os.urandom(20_000)
    one, two = store_pdvs(first, 1, 16384), store_pdvs(second, 2, 16384)
    sock = associate(port)
    sock.sendall(pdu(*one[:2]) + pdu(*one[2:]))
    assert status_of(read_pdu(sock)[1]) == 0
    sock.sendall(pdu(*two))
    assert status_of(read_pdu(sock)[1]) == 0
    assert release(sock) == A_RELEASE_RP
    assert [r[-len(p) :] for r, p in zip(received, (first, second), strict=True)] == [first, second]


@pytest.mark.parametrize("max_pdu", [4096, 16384])
def test_pdus_waiting_together_are_taken_from_one_read(scp, max_pdu, request, monkeypatch):
    """Two instances' PDUs sent at once: most are whole in one peek at the socket (the first
    data set is longer than the read buffer, so some PDU is also cut by its end)."""
    taken = []
    read_items = pdata_reads._read_items
    monkeypatch.setattr(
        pdata_reads, "_read_items", lambda dul, source, n: taken.append(type(source)) or read_items(dul, source, n)
    )
    port, received, _ = scp
    payloads = [os.urandom(300_000), os.urandom(5000)]
    sock = associate(port)
    sock.sendall(b"".join(pdu(item) for n, p in enumerate(payloads, 1) for item in store_pdvs(p, n, max_pdu)))
    statuses = [status_of(read_pdu(sock)[1]) for _ in payloads]
    assert release(sock) == A_RELEASE_RP
    assert statuses == [0, 0]
    assert [r[-len(p) :] for r, p in zip(received, payloads, strict=True)] == payloads
    if request.node.callspec.params["scp"] == "engine":
        assert taken.count(pdata_reads._Peeked) > 300_000 // max_pdu // 2


@pytest.mark.parametrize("scp", ["engine"], indirect=True)  # the engine's own way of writing PDUs taken together
def test_a_write_failure_in_pdus_taken_together_refuses_the_instance_and_leaves_no_file(scp, monkeypatch):
    def disk_full(fd, parts):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_decode_module.os, "writev", disk_full)
    port, received, directory = scp
    sock = associate(port)
    sock.sendall(b"".join(pdu(item) for item in store_pdvs(os.urandom(100_000), 1, 4096)))
    assert status_of(read_pdu(sock)[1]) != 0
    assert release(sock) == A_RELEASE_RP
    assert received == []
    wait_for(lambda: not partial_files(directory), 10, message="the partial file to be removed")


def item_longer_than_its_pdu(command, data) -> bytes:
    good = pdu(data[0])
    return pdu(command) + good[:6] + struct.pack(">L", len(good)) + good[10:]


def cut_inside_a_pdu(command, data) -> bytes:
    return pdu(command) + pdu(data[0]) + pdu(data[1])[:5000]


def command_inside_a_data_set(command, data) -> bytes:
    return pdu(command) + pdu(data[0], command)


def invalid_after_whole_pdus(command, data) -> bytes:
    """Whole PDUs, then one whose item is longer than the PDU, all waiting at once."""
    return pdu(command) + pdu(data[0]) + pdu(data[1]) + item_longer_than_its_pdu(command, data[2:])[len(pdu(command)) :]


@pytest.mark.parametrize(
    "script,answer",
    [
        (item_longer_than_its_pdu, A_ABORT),
        (cut_inside_a_pdu, None),  # then the connection is closed
        (command_inside_a_data_set, A_ABORT),
        (invalid_after_whole_pdus, A_ABORT),
    ],
)
def test_a_broken_transfer_stores_nothing_and_leaves_no_file(scp, script, answer):
    port, received, directory = scp
    command, *data = store_pdvs(os.urandom(100_000), 1, 16384)
    sock = associate(port)
    sock.sendall(script(command, data))
    if answer is None:
        time.sleep(0.2)
    else:
        assert read_pdu(sock)[0] == answer
    sock.close()
    assert received == []
    wait_for(lambda: not partial_files(directory), 10, message="the partial file to be removed")


def test_release_between_instances_is_answered(scp):
    port, received, _ = scp
    sock = associate(port)
    for item in store_pdvs(b"\x00" * 1000, 1, 16384):
        sock.sendall(pdu(item))
    assert status_of(read_pdu(sock)[1]) == 0
    assert release(sock) == A_RELEASE_RP
    assert len(received) == 1
