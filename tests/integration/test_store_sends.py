"""The delivery's C-STORE from a spool file (``engine.fast_store.send_c_store_file``) against
pynetdicom's own ``send_c_store(path)``, to a pynetdicom SCP over loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association

from router import engine
from router.engine.application_entity import RouterAE
from router.engine.fast_store import send_c_store_file, store_response_from

pytestmark = pytest.mark.owned_engine


def store_scp(handler):
    engine.configure()
    ae = RouterAE("STORE_SCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])


def associate(server, dimse_timeout=10):
    engine.configure()
    ae = RouterAE("SENDER")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.dimse_timeout = dimse_timeout
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="STORE_SCP")
    assert assoc.is_established
    return assoc


def status_dataset(status: int, comment: str | None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment is not None:
        ds.ErrorComment = comment
    return ds


@pytest.mark.parametrize(
    "status,comment", [(0x0000, None), (0xB000, "elements coerced"), (0xA700, "disk full"), (0xC000, None)]
)
def test_a_file_sent_the_owned_way_arrives_and_is_answered_as_with_pynetdicom(
    small_files, monkeypatch, status, comment
):
    received = []

    def on_store(event):
        rq = event.request
        received.append(
            (
                rq.MessageID,
                rq.Priority,
                rq.AffectedSOPClassUID,
                rq.AffectedSOPInstanceUID,
                rq.MoveOriginatorApplicationEntityTitle,
                Path(event.dataset_path).read_bytes(),
            )
        )
        return status_dataset(status, comment)

    stock_sends = []
    stock = Association.send_c_store
    monkeypatch.setattr(
        Association, "send_c_store", lambda self, *a, **k: stock_sends.append(a) or stock(self, *a, **k)
    )
    server = store_scp(on_store)
    try:
        assoc = associate(server)
        owned = send_c_store_file(assoc, str(small_files[0]))
        assert stock_sends == []  # the owned way was taken
        by_pynetdicom = store_response_from(assoc.send_c_store(small_files[0]))
        assoc.release()
    finally:
        server.shutdown()
    assert len(received) == 2 and received[0] == received[1]
    assert received[0][3] == dcmread(small_files[0]).SOPInstanceUID
    assert (owned.status, owned.error_comment) == (by_pynetdicom.status, by_pynetdicom.error_comment)
    assert (owned.status, owned.error_comment) == (status, comment)


def test_no_response_within_the_dimse_timeout_aborts_and_reports_none_as_pynetdicom_does(small_files):
    server = store_scp(lambda event: time.sleep(1.5) or 0x0000)
    try:
        for send in (
            lambda assoc: send_c_store_file(assoc, str(small_files[1])),
            lambda assoc: store_response_from(assoc.send_c_store(small_files[1])),
        ):
            assoc = associate(server, dimse_timeout=0.5)
            assert send(assoc).status is None
            assert assoc.is_aborted
    finally:
        server.shutdown()


def test_a_file_in_a_syntax_no_context_accepts_fails_as_with_pynetdicom(small_files, tmp_path):
    implicit = tmp_path / "implicit.dcm"
    ds = dcmread(small_files[2])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    server = store_scp(lambda event: 0x0000)
    try:
        assoc = associate(server)
        with pytest.raises(ValueError) as owned:
            send_c_store_file(assoc, str(implicit))
        with pytest.raises(ValueError) as by_pynetdicom:
            assoc.send_c_store(implicit)
        assert str(owned.value) == str(by_pynetdicom.value)
        assoc.release()
    finally:
        server.shutdown()


def test_a_missing_file_raises_file_not_found(tmp_path, small_files):
    server = store_scp(lambda event: 0x0000)
    try:
        assoc = associate(server)
        with pytest.raises(FileNotFoundError):
            send_c_store_file(assoc, str(tmp_path / "gone.dcm"))
        assert assoc.is_established
        assoc.release()
    finally:
        server.shutdown()
