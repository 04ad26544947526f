"""Data sets sent with sendfile() put the same bytes on the wire as pynetdicom's encoder."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from router.engine import pdata_sends
from router.engine.pdata_sends import file_fragments


class FakeDUL:
    """What the DT-1 action uses of a DULServiceProvider: its queues, its socket and the association's handlers."""

    _send = DULServiceProvider._send

    def __init__(self, raw: socket.socket, handlers=None):
        self.sent_by_pynetdicom = []
        self.socket = SimpleNamespace(socket=raw, send=self._record_and_send)
        self.to_provider_queue = queue.Queue()
        self.event_queue = queue.Queue()
        self.assoc = FakeAssociation(handlers or {})

    def _record_and_send(self, data: bytes) -> None:
        self.sent_by_pynetdicom.append(data)
        self.socket.socket.sendall(data)


class FakeAssociation:
    def __init__(self, handlers):
        self._handlers = handlers

    def get_handlers(self, event):
        return self._handlers.get(event, [])

    def _abort_nonblocking(self):
        pass

    _abort_blocking = _abort_nonblocking


def wire_bytes(primitives, handlers=None) -> tuple[bytes, list[str], int]:
    """Everything DT-1 writes to the socket for ``primitives``, the events it queued, and
    how many PDUs pynetdicom's own send wrote."""
    ours, theirs = socket.socketpair()
    received = bytearray()
    reader = threading.Thread(target=lambda: _read_all(theirs, received))
    reader.start()
    dul = FakeDUL(ours, handlers)
    for primitive in primitives:
        dul.to_provider_queue.put(primitive)
        assert pdata_sends._dt_1(dul) == "Sta6"
    ours.close()
    reader.join(10)
    return bytes(received), list(dul.event_queue.queue), len(dul.sent_by_pynetdicom)


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(1 << 16):
        into += chunk
    sock.close()


def stock_bytes(primitives) -> bytes:
    return b"".join(P_DATA_TF(p).encode() for fragments in primitives for p in fragments.as_p_data())


@pytest.fixture
def data_file(tmp_path):
    def make(size: int, offset: int = 132) -> tuple:
        path = tmp_path / f"ds-{size}.dcm"
        path.write_bytes(os.urandom(offset) + os.urandom(size))
        return path, offset

    return make


@pytest.mark.parametrize("max_pdu", [0, 4096, 16384, 131072, 1048576])
@pytest.mark.parametrize("size", [0, 1, 4089, 4090, 4091, 131066, 525_000, 2_000_001])
def test_sendfile_bytes_identical_to_pynetdicom(data_file, max_pdu, size):
    path, offset = data_file(size)
    primitives = list(file_fragments(path, offset, 5, max_pdu))
    sent, events, by_pynetdicom = wire_bytes(primitives)
    assert (events, by_pynetdicom) == ([], 0)
    assert sent == stock_bytes(primitives)


def test_fragments_are_grouped_and_cover_the_file_once(data_file, monkeypatch):
    monkeypatch.setattr(pdata_sends, "GROUP_BYTES", 50_000)
    path, offset = data_file(300_000)
    primitives = list(file_fragments(path, offset, 1, 16384))
    assert len(primitives) > 1
    fragments = [f for p in primitives for f in p.fragments]
    assert [f[0] for f in fragments] == list(range(offset, offset + 300_000, 16378))
    assert [f[2] for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert wire_bytes(primitives)[:2] == (stock_bytes(primitives), [])


@pytest.mark.parametrize("event", [evt.EVT_PDU_SENT, evt.EVT_DATA_SENT])
def test_with_a_sent_handler_bound_pynetdicom_encodes_and_sends(data_file, event):
    path, offset = data_file(100_000)
    primitives = list(file_fragments(path, offset, 3, 16384))
    sent, _, by_pynetdicom = wire_bytes(primitives, handlers={event: [(lambda e: None, None)]})
    assert sent == stock_bytes(primitives)
    assert by_pynetdicom == len([f for p in primitives for f in p.fragments])


def ordinary_p_data(*pdvs):
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, data] for context_id, data in pdvs]
    return primitive


@pytest.mark.parametrize(
    "pdvs",
    [
        [(1, b"\x03" + bytes(range(200)))],
        [(1, b"\x03")],
        [(3, b"\x01" + os.urandom(16378)), (3, b"\x03" + os.urandom(5))],
        [(1, b"\x03" + os.urandom(90)), (5, b"\x02" + os.urandom(1_000_000))],
    ],
)
def test_ordinary_p_data_bytes_identical_to_pynetdicom(pdvs):
    primitive = ordinary_p_data(*pdvs)
    sent, events, by_pynetdicom = wire_bytes([primitive])
    assert (events, by_pynetdicom) == ([], 0)
    assert sent == P_DATA_TF(primitive).encode()


def test_ordinary_p_data_with_a_sent_handler_goes_to_pynetdicom(data_file):
    path, offset = data_file(1000)
    ordinary = next(file_fragments(path, offset, 1, 16384)).as_p_data()
    sent, _, by_pynetdicom = wire_bytes(ordinary, handlers={evt.EVT_PDU_SENT: [(lambda e: None, None)]})
    assert sent == b"".join(P_DATA_TF(p).encode() for p in ordinary)
    assert by_pynetdicom == len(ordinary)


def test_a_closed_connection_is_a_transport_event(data_file):
    path, offset = data_file(600_000)
    ours, theirs = socket.socketpair()
    theirs.close()
    dul = FakeDUL(ours)
    dul.to_provider_queue.put(next(file_fragments(path, offset, 1, 131072)))
    pdata_sends._dt_1(dul)
    assert list(dul.event_queue.queue) == ["Evt17"]
    assert dul.to_provider_queue.empty()
    ours.close()


def test_a_file_shortened_after_queueing_ends_the_connection(data_file):
    path, offset = data_file(200_000)
    fragments = next(file_fragments(path, offset, 1, 16384))
    os.truncate(path, offset + 1000)
    sent, events, _ = wire_bytes([fragments])
    assert events == ["Evt17"]
    assert len(sent) < 200_000


def test_the_file_is_closed_once_its_fragments_are_gone(data_file):
    path, offset = data_file(100_000)
    primitives = list(file_fragments(path, offset, 1, 16384))
    descriptor = primitives[0].source.file.fileno()
    wire_bytes(primitives)
    del primitives
    with pytest.raises(OSError):
        os.fstat(descriptor)


def test_send_file_range_on_a_socket_with_a_python_timeout_waits_for_room(data_file):
    """A socket with Python's timeout is non-blocking underneath: sendfile() meets EAGAIN
    whenever the buffer is full and must wait for room instead of failing."""
    path, _ = data_file(3_000_000, offset=0)
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    received = bytearray()

    def read_slowly():
        while chunk := theirs.recv(65536):
            received.extend(chunk)
            time.sleep(0.001)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    with open(path, "rb") as f:
        pdata_sends.send_file_range(ours, f.fileno(), 1000, 2_500_000)
    ours.close()
    reader.join(30)
    theirs.close()
    assert bytes(received) == path.read_bytes()[1000:2_501_000]


def test_send_file_range_to_a_peer_that_reads_nothing_times_out(data_file):
    from router.engine import set_kernel_timeouts

    path, _ = data_file(30_000_000, offset=0)
    ours, theirs = socket.socketpair()
    set_kernel_timeouts(ours, 0.2)
    try:
        with open(path, "rb") as f, pytest.raises(TimeoutError):
            pdata_sends.send_file_range(ours, f.fileno(), 0, 30_000_000)
    finally:
        ours.close()
        theirs.close()
