"""What a sender and a destination see: statuses, transfer syntaxes, quarantine reasons."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE

from router.engine.application_entity import RouterAE
from tests.conftest import dimse_backend_toml, router_toml
from tests.support.dicomfiles import dataset_digest
from tests.support.dicomgen import make_dataset
from tests.support.peers import (
    StorageSCP,
    free_port,
    start_storescp,
    stop_process,
    wait_for,
)
from tests.support.spool import partial_files, spooled_files


def j2k_file(path):
    ds = make_dataset("ct", "J2K", generate_uid(), generate_uid(), 0, rows=64)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(200)) * 5])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def store(port: int, path, ts, calling="MODALITY") -> int:
    ae = AE(calling)
    ae.add_requested_context(CTImageStorage, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_compressed_instance_is_kept_as_sent(tmp_path, write_config, start_router, port):
    src = j2k_file(tmp_path / "j2k.dcm")
    with StorageSCP(tmp_path / "dest") as scp:
        start_router(
            write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(scp.port, "STORE_SCP"), ["pacs"]))
        )
        assert store(port, src, JPEG2000Lossless) == 0
        wait_for(lambda: scp.received, 30, message="the J2K instance")
        (arrived,) = (tmp_path / "dest").glob("*.dcm")
        assert dcmread(arrived).file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert dataset_digest(arrived) == dataset_digest(src)


@pytest.mark.dcmtk
def test_a_damaged_compressed_instance_a_peer_refuses_is_quarantined_with_the_codecs_reason(
    tmp_path, write_config, start_router, port
):
    """storescp accepts only uncompressed syntaxes by default; this J2K codestream is made
    up, so transcoding it fails (see tests/integration/test_transcoding.py for real ones)."""
    src = j2k_file(tmp_path / "j2k.dcm")
    dest_port = free_port()
    scp = start_storescp(tmp_path / "dest", dest_port)
    try:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "STORESCP"), ["pacs"]))
        )
        assert store(port, src, JPEG2000Lossless) == 0
        (quarantined,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="a quarantined delivery")
        assert "cannot transcode to ExplicitVRLittleEndian: cannot decode JPEG2000Lossless" in quarantined.reason
        assert not list((tmp_path / "dest").iterdir())
    finally:
        stop_process(scp)


@pytest.mark.dcmtk
def test_uncompressed_syntax_converted_for_a_peer_that_only_takes_implicit(
    tmp_path, write_config, start_router, port, ct_files
):
    dest_port = free_port()
    scp = start_storescp(tmp_path / "dest", dest_port, extra=["+xi"])
    try:
        start_router(
            write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "STORESCP"), ["pacs"]))
        )
        assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0
        (arrived,) = wait_for(lambda: list((tmp_path / "dest").iterdir()), 30, message="the converted instance")
        sent = dcmread(ct_files[0])
        got = wait_for(lambda: _whole(arrived, len(sent.PixelData)), 10, message="storescp to finish writing")
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert got == sent  # same elements and values
    finally:
        stop_process(scp)


def _whole(path, pixel_bytes: int):
    """The data set in ``path`` once its pixel data is all there (storescp writes as it receives)."""
    try:
        ds = dcmread(path)
        return ds if len(ds.PixelData) == pixel_bytes else None
    except Exception:
        return None


def test_refused_status_from_destination_is_quarantined(tmp_path, write_config, start_router, port, ct_files):
    with StorageSCP(tmp_path / "dest", status=0xA900) as scp:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(scp.port, "STORE_SCP"), ["pacs"]))
        )
        assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0
        (d,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="a quarantined delivery")
        assert "0xA900" in d.reason and "permanent" in d.reason
        assert len(scp.received) == 1  # no retry of a permanent failure


def test_transient_status_is_retried_then_quarantined(tmp_path, write_config, start_router, port, ct_files):
    with StorageSCP(tmp_path / "dest", status=0xA700) as scp:
        text = (
            router_toml(tmp_path / "data", port, dimse_backend_toml(scp.port, "STORE_SCP"), ["pacs"])
            + "max_attempts = 3\n"
        )
        service = start_router(write_config(text))
        assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0
        (d,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="a quarantined delivery")
        assert len(scp.received) == 3
        assert "gave up after 3 attempts" in d.reason


def test_free_space_floor_answers_out_of_resources(tmp_path, write_config, start_router, port, ct_files):
    text = router_toml(tmp_path / "data", port, '[backends.a]\ntype = "filesystem"\npath = "a"', ["a"])
    text = text.replace("min_free_space_mb = 0", "min_free_space_mb = 1000000000")
    service = start_router(write_config(text))
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0xA700
    assert service.queue.counts() == {}
    assert not spooled_files(tmp_path / "data")


@pytest.mark.owned_engine
def test_an_instance_is_spooled_in_the_spare_it_was_received_into(tmp_path, write_config, start_router, port, ct_files):
    """No rename into the spool and no directory fsync before the acknowledgement: the spare's
    directory entry was made durable when the spare was made."""
    text = router_toml(tmp_path / "data", port, dimse_backend_toml(free_port(), "NOBODY", "pacs"), ["pacs"])
    service = start_router(write_config(text))
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0x0000
    spares = service.spool.spares
    wait_for(lambda: len(spares.ready_paths) == spares.depth, 10, message="the spares to be made")
    ready = spares.ready_paths
    assert all(Path(path).parent.parent == tmp_path / "data" / "objects" for path in ready)
    assert store(port, ct_files[1], ExplicitVRLittleEndian) == 0x0000
    assert len(service.queue.referenced_paths() & ready) == 1


@pytest.mark.owned_engine
def test_a_data_set_that_cannot_be_written_answers_out_of_resources(
    tmp_path, write_config, start_router, port, ct_files
):
    text = router_toml(tmp_path / "data", port, '[backends.a]\ntype = "filesystem"\npath = "a"', ["a"])
    service = start_router(write_config(text))
    for directory in ("incoming", "objects"):  # every write of a received data set now fails, as on a broken disk
        shutil.rmtree(tmp_path / "data" / directory)
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0xA700
    assert service.queue.counts() == {}
    service.spool.prepare()
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0x0000


@pytest.mark.owned_engine
def test_an_association_aborted_mid_data_set_leaves_no_partial_file(tmp_path, write_config, start_router, port):
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    text = router_toml(tmp_path / "data", port, '[backends.a]\ntype = "filesystem"\npath = "a"', ["a"])
    start_router(write_config(text))
    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    assert assoc.is_established
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, generate_uid()
    request.DataSet = BytesIO(b"\x00" * 200_000)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdatas = list(message.encode_msg(assoc.accepted_contexts[0].context_id, 16384))
    for pdata in pdatas[:4]:  # the command and part of the data set
        assoc.dul.send_pdu(pdata)
    spool = (tmp_path / "data" / "incoming", tmp_path / "data" / "objects")
    wait_for(lambda: partial_files(*spool), 10, message="the partial file")
    assoc.abort()
    wait_for(lambda: not partial_files(*spool), 10, message="the partial file to be removed")


FILTER = """
[[pipelines.default.middleware]]
type = "filter"
match = {{ Modality = "MR" }}
action = "{action}"
"""


def test_filter_reject_and_drop_as_the_sender_sees_them(tmp_path, write_config, start_router, port, ct_files, caplog):
    arch = '[backends.a]\ntype = "filesystem"\npath = "a"'
    service = start_router(
        write_config(router_toml(tmp_path / "d1", port, arch, ["a"], extra=FILTER.format(action="reject")))
    )
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0x0124
    assert service.queue.counts() == {}
    service.stop()
    start_router(
        write_config(router_toml(tmp_path / "d2", port, arch, ["a"], extra=FILTER.format(action="drop")), "r2.toml")
    )
    assert store(port, ct_files[0], ExplicitVRLittleEndian) == 0x0000
    dropped = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "instance dropped"]
    assert dropped and dropped[-1]["sop_instance_uid"] and dropped[-1]["calling_aet"] == "MODALITY"


COERCE = """
[[pipelines.default.middleware]]
type = "coerce"
operations = [{ set = "InstitutionName", value = "{calling_aet}" }]
"""


@pytest.mark.parametrize("stages", ["", COERCE], ids=["as received", "through coerce"])
def test_an_instance_without_a_sop_class_uid_gets_a_failure_status_in_every_pipeline(
    tmp_path, write_config, start_router, port, ct_files, stages, caplog
):
    """Not 0xA700 (out of resources: the sender would retry it for ever), in any pipeline: a
    failure in the 0xC000 range with the reason in the log; nothing is queued."""
    from tests.integration.test_forwarding import send_with_pynetdicom

    broken = dcmread(ct_files[0])
    del broken.SOPClassUID
    path = tmp_path / "no-sop-class.dcm"
    broken.save_as(path, enforce_file_format=False)
    text = router_toml(
        tmp_path / "data",
        port,
        '[backends.archive]\ntype = "filesystem"\npath = "archive"\n',
        ["archive"],
        extra=stages,
    )
    service = start_router(write_config(text))
    (status,) = send_with_pynetdicom(port, [path])
    assert 0xC000 <= status <= 0xCFFF
    assert service.queue.counts().get("archive", {}).get("pending", 0) == 0
    refused = [
        e
        for e in caplog.records
        if isinstance(e.msg, dict)
        and e.msg.get("level") == "error"
        and e.msg.get("sop_instance_uid") == str(broken.SOPInstanceUID)
    ]
    assert refused and "SOP Class UID" in str(refused[-1].msg)


def test_one_association_of_mixed_syntaxes_goes_out_as_it_came_in(
    tmp_path, write_config, start_router, port, ct_files, caplog
):
    """JPEG 2000, Implicit and Explicit VR instances of one SOP class to a destination that takes
    every syntax: each arrives in its own syntax, none converted (the fallback context once let
    the worker skip re-associating and convert Implicit VR to Explicit)."""
    from pydicom.uid import ImplicitVRLittleEndian

    j2k = j2k_file(tmp_path / "j2k.dcm")
    implicit = tmp_path / "implicit.dcm"
    ds = dcmread(ct_files[1])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True, implicit_vr=True, little_endian=True)
    sent = {j2k: JPEG2000Lossless, implicit: ImplicitVRLittleEndian, ct_files[2]: ExplicitVRLittleEndian}
    with StorageSCP(tmp_path / "dest") as scp:
        start_router(
            write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(scp.port, "STORE_SCP"), ["pacs"]))
        )
        ae = AE("MODALITY")
        for ts in sent.values():
            ae.add_requested_context(CTImageStorage, [ts])
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(path).Status) for path in sent] == [0, 0, 0]
        finally:
            assoc.release()
        wait_for(lambda: len(scp.received) >= 3, 30, message="all three instances")
    for path, ts in sent.items():
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        arrived = tmp_path / "dest" / f"{uid}.dcm"
        assert dcmread(arrived, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        assert dataset_digest(arrived) == dataset_digest(path)
    assert not [
        r
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "converting transfer syntax for a peer that refused it"
    ]


def test_a_corrected_version_is_never_overtaken_by_the_older_one(tmp_path, write_config, start_router, port, ct_files):
    """The destination answers 0xA700 to the first version; a corrected version (same SOP
    Instance UID) then succeeds. The first is superseded, not retried after it: the
    destination ends with the corrected one."""
    import threading

    from pynetdicom import evt

    from tests.integration.test_forwarding import send_with_pynetdicom
    from tests.support.peers import free_port

    received: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_store(event):
        with lock:
            first = not received
            received.append((str(event.request.AffectedSOPInstanceUID), str(dcmread(event.dataset_path).PatientName)))
        return 0xA700 if first else 0x0000

    dest_port = free_port()
    ae = RouterAE("STORE_SCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        text = router_toml(
            tmp_path / "data", port, dimse_backend_toml(dest_port, "STORE_SCP"), ["pacs"], fast_retry=False
        )
        text += "\n[backends.pacs.retry]\ninitial_delay_seconds = 2.0\nmax_delay_seconds = 2.0\n"
        service = start_router(write_config(text))
        original = tmp_path / "v1.dcm"
        corrected = tmp_path / "v2.dcm"
        ds = dcmread(ct_files[3])
        ds.PatientName = "WRONG^NAME"
        ds.save_as(original, enforce_file_format=True)
        wait_for_first = send_with_pynetdicom(port, [original])
        assert wait_for_first == [0]
        wait_for(lambda: received, 30, message="the first attempt")
        ds.PatientName = "RIGHT^NAME"
        ds.save_as(corrected, enforce_file_format=True)
        assert send_with_pynetdicom(port, [corrected]) == [0]
        wait_for(lambda: any(name == "RIGHT^NAME" for _, name in received), 30, message="the corrected version")
        wait_for(lambda: not spooled_files(tmp_path / "data"), 30, message="the spool empty")
        time.sleep(3)  # longer than the retry delay: an overtaking retry would have come by now
        assert [name for _, name in received] == ["WRONG^NAME", "RIGHT^NAME"]
        assert service.queue.events()["pacs"]["superseded"] == 1
    finally:
        server.shutdown()
