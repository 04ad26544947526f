"""The fast C-STORE decode gives what pynetdicom's own decoder gives: the same primitives, the same files."""

from __future__ import annotations

import os
import queue
import tempfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse_messages
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu_primitives import P_DATA

from router.engine import store_decode
from router.engine.spare_files import MemoryFirstFiles, SpareFiles, SpillingFile, create_empty
from tests.support.peers import wait_for
from tests.support.primitives import EVEN_UID, LONG_UID, ODD_UID
from tests.support.primitives import store_response as store_rsp

SYNTAX = "1.2.840.10008.1.2.1"
FIELDS = (
    "MessageID",
    "MessageIDBeingRespondedTo",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "Status",
    "ErrorComment",
    "OffendingElement",
    "_context_id",
)


class FakeAssociation:
    is_acceptor = False  # requests go to the association's queue, where these tests read them

    def __init__(self, handlers=None, files=None):
        self.ae = SimpleNamespace(received_files=files)
        self._accepted_cx = {1: SimpleNamespace(transfer_syntax=[SYNTAX]), 3: SimpleNamespace(transfer_syntax=[SYNTAX])}
        self._handlers = handlers or {}
        self.dul = SimpleNamespace(event_queue=queue.Queue(), assoc=self)

    def _abort_nonblocking(self):
        pass

    _abort_blocking = _abort_nonblocking

    def get_handlers(self, event):
        return self._handlers.get(event, [])


@pytest.fixture
def stock_file_meta(monkeypatch, tmp_path):
    """pynetdicom's own file meta writer, and received files under ``tmp_path``."""
    monkeypatch.setattr(dimse_messages, "create_file_meta", create_file_meta)
    monkeypatch.setattr(dimse_messages, "write_file_meta_info", write_file_meta_info)
    monkeypatch.setattr(dimse_messages._config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where an AE without received files writes


def feed(receive, pdatas, handlers=None, files=None):
    """Run P-DATA primitives through a decoder; returns (messages, events, provider)."""
    provider = DIMSEServiceProvider(FakeAssociation(handlers, files))
    for pdata in pdatas:
        receive(provider, pdata)
    messages = []
    while not provider.msg_queue.empty():
        messages.append(provider.msg_queue.get())
    events = []
    while not provider.dul.event_queue.empty():
        events.append(provider.dul.event_queue.get())
    return messages, events, provider


def pdata_of(message, primitive, max_pdu: int, context_id: int = 1) -> list[P_DATA]:
    message.primitive_to_message(primitive)
    return list(message.encode_msg(context_id, max_pdu))


def store_rq(instance=EVEN_UID, sop_class=EVEN_UID, size=1000, message_id=7, priority=2, originator=None):
    p = C_STORE()
    p.MessageID = message_id
    p.AffectedSOPClassUID = sop_class
    p.AffectedSOPInstanceUID = instance
    p.Priority = priority
    if originator is not None:
        p.MoveOriginatorApplicationEntityTitle = originator
        p.MoveOriginatorMessageID = 3
    p.DataSet = BytesIO(bytes(range(256)) * (size // 256) + b"\x01" * (size % 256))
    return p


def summary(item) -> tuple:
    context_id, primitive = item
    return (context_id, type(primitive).__name__, *(str(getattr(primitive, f, None)) for f in FIELDS))


def received_bytes(item) -> bytes:
    return open(item[1]._dataset_path, "rb").read()


def both(pdatas_factory, handlers=None):
    stock = feed(store_decode._stock_receive_primitive, pdatas_factory(), handlers)
    fast = feed(store_decode._receive_primitive, pdatas_factory(), handlers)
    return stock, fast


@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072, 1048576])
@pytest.mark.parametrize("size", [1, 4090, 16378, 100_000, 525_000])
@pytest.mark.parametrize("instance", [EVEN_UID, ODD_UID, LONG_UID])
@pytest.mark.parametrize("originator", [None, "MOVE_SCU"])
def test_received_request_and_file_identical(stock_file_meta, max_pdu, size, instance, originator):
    (stock, _, _), (fast, _, _) = both(
        lambda: pdata_of(C_STORE_RQ(), store_rq(instance, size=size, originator=originator), max_pdu)
    )
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert len(fast) == 1
    assert received_bytes(fast[0]) == received_bytes(stock[0])
    assert fast[0][1]._received_size == len(received_bytes(fast[0]))
    assert fast[0][1].DataSet.getvalue() == stock[0][1].DataSet.getvalue() == b""
    assert fast[0][1].is_valid_request


def test_command_and_data_set_in_one_pdata(stock_file_meta):
    def one_pdata():
        pdatas = pdata_of(C_STORE_RQ(), store_rq(size=50_000), 16384)
        merged = P_DATA()
        merged.presentation_data_value_list = [list(pdv) for p in pdatas for pdv in p.presentation_data_value_list]
        return [merged]

    (stock, _, _), (fast, _, _) = both(one_pdata)
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert received_bytes(fast[0]) == received_bytes(stock[0])


def test_two_requests_in_a_row(stock_file_meta):
    (stock, _, _), (fast, _, _) = both(
        lambda: (
            pdata_of(C_STORE_RQ(), store_rq(EVEN_UID, size=3000), 16384)
            + pdata_of(C_STORE_RQ(), store_rq(ODD_UID, size=70_000, message_id=8), 16384, 3)
        )
    )
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert [received_bytes(m) for m in fast] == [received_bytes(m) for m in stock]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xA900, 0xC000, 0x0110, 0xFFFF])
@pytest.mark.parametrize("instance", [EVEN_UID, ODD_UID, LONG_UID, None])
@pytest.mark.parametrize("comment", [None, "disk full"])
@pytest.mark.parametrize("sop_class", [EVEN_UID, None])
def test_responses_identical(status, instance, comment, sop_class):
    (stock, _, _), (fast, _, _) = both(
        lambda: pdata_of(C_STORE_RSP(), store_rsp(status, instance, sop_class, comment), 16384)
    )
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert fast[0][1].is_valid_response


def test_response_with_offending_element_goes_to_pynetdicom():
    (stock, _, _), (fast, _, _) = both(
        lambda: pdata_of(C_STORE_RSP(), store_rsp(0xA900, offending=[0x00100010]), 16384)
    )
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert str(fast[0][1].OffendingElement) == str(stock[0][1].OffendingElement)


def test_other_messages_and_split_command_sets_go_to_pynetdicom(stock_file_meta):
    echo = C_ECHO()
    echo.MessageID = 5
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    (stock, _, _), (fast, _, _) = both(lambda: pdata_of(C_ECHO_RQ(), echo, 16384))
    assert isinstance(fast[0][1], C_ECHO)
    assert [summary(m) for m in fast] == [summary(m) for m in stock]

    (stock, _, _), (fast, _, _) = both(lambda: pdata_of(C_STORE_RQ(), store_rq(size=5000), 40))  # command in pieces
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert received_bytes(fast[0]) == received_bytes(stock[0])


def test_with_a_dimse_recv_handler_bound_pynetdicom_decodes(stock_file_meta):
    from pynetdicom import evt

    handlers = {evt.EVT_DIMSE_RECV: [(lambda event: None, None)]}
    _, (fast, _, provider) = both(lambda: pdata_of(C_STORE_RQ(), store_rq(), 16384), handlers)
    assert len(fast) == 1
    assert getattr(provider, "_incoming_data_set", None) is None
    assert fast[0][1]._dataset_file.__class__.__name__ == "_TemporaryFileWrapper"


def test_invalid_uid_gets_the_same_abort_as_pynetdicom(stock_file_meta):
    def bad():
        pdatas = pdata_of(C_STORE_RQ(), store_rq(instance="1.2.3"), 16384)
        cid, data = pdatas[0].presentation_data_value_list[0]
        pdatas[0].presentation_data_value_list = [[cid, data.replace(b"1.2.3\x00", b"1.2.x\x00")]]
        return pdatas

    (stock, stock_events, _), (fast, fast_events, _) = both(bad)
    assert [summary(m) for m in fast] == [summary(m) for m in stock]
    assert fast_events == stock_events


def test_command_inside_a_data_set_aborts_and_leaves_no_file(stock_file_meta, tmp_path):
    def broken():
        first = pdata_of(C_STORE_RQ(), store_rq(size=50_000), 16384)
        return first[:2] + pdata_of(C_STORE_RQ(), store_rq(ODD_UID, size=10), 16384)[:1]

    messages, events, _ = feed(store_decode._receive_primitive, broken())
    assert messages == []
    assert events == ["Evt19"]
    assert list(tmp_path.iterdir()) == []


def test_a_data_set_that_cannot_be_written_is_reported_not_aborted(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    messages, events, _ = feed(store_decode._receive_primitive, pdata_of(C_STORE_RQ(), store_rq(size=50_000), 16384))
    assert events == []
    ((context_id, request),) = messages
    assert "cannot write the received data set" in request._receive_error
    assert not request._dataset_file  # no file was made: pynetdicom's clean-up after the handler skips it
    assert request.is_valid_request


def test_write_failure_midway_removes_the_partial_file(monkeypatch, tmp_path, stock_file_meta):
    calls = {"n": 0}
    real_write = store_decode.IncomingDataSet._write

    def failing_write(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(store_decode.IncomingDataSet, "_write", failing_write)
    messages, events, _ = feed(store_decode._receive_primitive, pdata_of(C_STORE_RQ(), store_rq(size=60_000), 16384))
    ((_, request),) = messages
    assert "No space left" in request._receive_error
    assert list(tmp_path.iterdir()) == [], [(p.name, p.stat().st_size) for p in tmp_path.iterdir()]


def maker_in(directory, calls=None):
    def maker(count):
        if calls is not None:
            calls.append(count)
        return [create_empty(str(directory)) for _ in range(count)]

    return maker


def test_data_sets_are_written_to_the_associations_spare_files_made_ahead(stock_file_meta, tmp_path):
    (tmp_path / "spares").mkdir()
    spares = SpareFiles(maker_in(tmp_path / "spares"), tmp_path, depth=2)
    assert spares.take_ready() is None  # the first asks for some
    wait_for(lambda: len(spares.ready_paths) == 2, 10, message="two spares")
    ready = sorted(Path(p) for p in spares.ready_paths)
    messages, _, _ = feed(
        store_decode._receive_primitive, pdata_of(C_STORE_RQ(), store_rq(size=3000), 16384), files=spares
    )
    written = Path(messages[0][1]._dataset_path)
    assert written in ready and written.stat().st_size > 3000
    spares.close()
    assert not any(p.exists() for p in ready if p != written)


def test_without_a_ready_spare_a_new_file_is_made_in_the_folder(tmp_path):
    spares = SpareFiles(maker_in(tmp_path / "nowhere"), tmp_path, depth=0)
    path, file = spares.take()
    file.close()
    assert Path(path).parent == tmp_path


def test_a_spare_removed_by_a_sweep_is_not_used(tmp_path):
    spares = SpareFiles(maker_in(tmp_path), tmp_path / "fallback", depth=2)
    spares.take_ready()
    wait_for(lambda: len(spares.ready_paths) == 2, 10, message="two spares")
    first, second = list(spares._ready)
    os.unlink(first[0])  # the hourly sweep of old partial files
    assert spares.take_ready()[0] == second[0]
    second[1].close()
    spares.close()


def test_spares_come_from_the_maker_in_batches_once_half_are_used(tmp_path):
    calls = []

    spares = SpareFiles(maker_in(tmp_path, calls), tmp_path / "fallback", depth=4)
    assert spares.take_ready() is None  # the first asks for some
    wait_for(lambda: len(spares._ready) == 4, 10, message="four spares")
    assert calls == [4]
    for _ in range(2):
        path, file = spares.take()
        assert Path(path).parent == tmp_path
        file.close()
    spares.refill()
    wait_for(lambda: len(spares._ready) == 4, 10, message="four spares again")
    assert calls == [4, 2]
    ready = [Path(path) for path in spares.ready_paths]
    spares.close()
    assert not any(path.exists() for path in ready)
    spares.refill()
    assert not spares._ready, "a closed pool makes no more"


def test_writeback_is_started_once_a_mebibyte_not_once_a_fragment(monkeypatch, tmp_path, stock_file_meta):
    started = []
    monkeypatch.setattr(store_decode, "start_writeback", started.append)
    size = 3 * store_decode.WRITEBACK_STEP + 1000
    messages, _, _ = feed(store_decode._receive_primitive, pdata_of(C_STORE_RQ(), store_rq(size=size), 16384))
    ((_, request),) = messages
    assert request._received_size > size
    assert 0 < len(started) <= size // store_decode.WRITEBACK_STEP  # not one per 16 KB fragment (about 190)


@pytest.mark.parametrize("size", [3000, 100_000])
def test_a_data_set_under_the_limit_is_kept_in_memory_and_a_larger_one_spills_to_its_file(
    stock_file_meta, tmp_path, size
):
    def pdatas():
        return pdata_of(C_STORE_RQ(), store_rq(size=size), 16384)

    (stock,), _, _ = feed(store_decode._stock_receive_primitive, pdatas())
    folder = tmp_path / "retrieved"
    folder.mkdir()
    (fast,), _, _ = feed(store_decode._receive_primitive, pdatas(), files=MemoryFirstFiles(folder, 50_000))
    received = fast[1]._dataset_file
    assert isinstance(received, SpillingFile)
    if size < 50_000:
        assert not received.spilled and received.data == received_bytes(stock)
        assert not list(folder.iterdir())
    else:
        assert received.spilled and received.data == b""
        received.close()
        assert Path(fast[1]._dataset_path).read_bytes() == received_bytes(stock)
    assert fast[1]._received_size == len(received_bytes(stock))


def test_a_spilled_data_set_that_fails_midway_leaves_no_file(monkeypatch, stock_file_meta, tmp_path):
    writes = []

    def failing_write(self, data):
        writes.append(len(data))
        if len(writes) > 3:
            raise OSError(28, "No space left on device")
        return original(self, data)

    original = SpillingFile.write
    monkeypatch.setattr(SpillingFile, "write", failing_write)
    (message,), _, _ = feed(
        store_decode._receive_primitive,
        pdata_of(C_STORE_RQ(), store_rq(size=100_000), 16384),
        files=MemoryFirstFiles(tmp_path, 20_000),
    )
    assert "No space left" in message[1]._receive_error
    assert not list(tmp_path.glob("*.dcm"))


def test_parts_written_together_survive_short_writes(monkeypatch, tmp_path):
    """``write_parts`` gives the file every byte, in order, and checksums them, however few bytes each ``writev`` takes."""
    real_writev = os.writev

    def three_bytes_at_most(fd, parts):
        return real_writev(fd, [bytes(b"".join(bytes(p) for p in parts)[:3])])

    monkeypatch.setattr(store_decode.os, "writev", three_bytes_at_most)
    incoming = store_decode.IncomingDataSet(store_rq(), 1, SYNTAX, SpareFiles(maker_in(tmp_path), tmp_path))
    header = incoming.size
    parts = [memoryview(b"abcde"), memoryview(b"f"), memoryview(os.urandom(1000)), memoryview(b"gh")]
    incoming.write_parts(parts)
    incoming.file.close()
    written = Path(incoming.path).read_bytes()[header:]
    assert written == b"".join(bytes(p) for p in parts)
    assert incoming.size == header + len(written)
    expected = store_decode.new_checksum()
    expected.update(Path(incoming.path).read_bytes())
    assert incoming.checksum.hexdigest() == expected.hexdigest()
