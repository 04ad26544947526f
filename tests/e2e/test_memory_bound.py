"""Large instances pass with flat memory: 300 MB under 150 MiB per router process, as received
and through ``coerce`` and ``anonymize`` (header rewritten, pixel data spliced); 600 MB under
100 MiB (issue 6's bound); and a retrieval of 200 x 0.5 MB through the C-GET proxy."""

from __future__ import annotations

import psutil
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from router.spool.splice import read_header
from tests.conftest import (
    dimse_backend_toml,
    endpoint_section,
    router_section,
    router_toml,
)
from tests.support.cli import ServeProcess
from tests.support.deid import key_file, pixel_digest
from tests.support.dicomfiles import dataset_digest
from tests.support.dicomgen import write_large
from tests.support.peers import free_port, start_storescp, stop_process, wait_for
from tests.support.spool import spooled_files

LIMIT_MIB = 150
SIZE = 300 * 1000 * 1000


def tail_digest(path, size: int) -> str:
    """SHA-256 of the last ``size`` bytes of a file, read in chunks."""
    import hashlib
    import os

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(os.path.getsize(path) - size)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def store_and_measure(port: int, path, sop_class: str, data_dir, serve) -> dict[int, float]:
    """C-STORE ``path`` (Explicit VR) to the router, wait until its spool is empty, and return the
    peak RSS of every router process (MiB)."""
    ae = AE("MODALITY")
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    ae.maximum_pdu_size = 1048576
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    assert int(status.Status) == 0
    wait_for(lambda: not spooled_files(data_dir), 300, message="delivery of the large instance")
    processes = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
    peaks = {p.pid: peak_rss_mib(p.pid) for p in processes}
    print(f"router peak RSS per process (MiB): {peaks}")
    assert len(peaks) >= 2  # receiving and delivery processes
    return peaks


EDITING_STAGES = """
[[pipelines.default.middleware]]
type = "coerce"
operations = [{{ set = "BodyPartExamined", value = "{{calling_aet}}" }}, {{ delete = ["private"] }}]

[[pipelines.default.middleware]]
type = "anonymize"
key_file = "{key}"
options = ["retain_longitudinal_modified_dates"]
"""


@pytest.mark.slow
@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "stages,size,limit",
    [
        ("as-received", SIZE, LIMIT_MIB),
        ("coerce+anonymize", SIZE, LIMIT_MIB),
        ("as-received", 600 * 1000 * 1000, 100),  # issue 6: a 600 MB multi-frame instance under 100 MiB
    ],
)
def test_large_instance_with_flat_memory(tmp_path, write_config, stages, size, limit):
    big = write_large(tmp_path / "big.dcm", size)
    port, dest_port = free_port(), free_port()
    dest = tmp_path / "dest"
    storescp = start_storescp(dest, dest_port, ae_title="PACS")
    backends = dimse_backend_toml(dest_port)
    extra = EDITING_STAGES.format(key=key_file(tmp_path)) if stages != "as-received" else ""
    serve = ServeProcess(
        write_config(router_toml(tmp_path / "data", port, backends, ["pacs"], extra=extra)), tmp_path / "serve.log"
    ).start(port)
    try:
        peaks = store_and_measure(port, big, CTImageStorage, tmp_path / "data", serve)
        assert max(peaks.values()) < limit
    finally:
        serve.stop()
        stop_process(storescp)
    (arrived,) = list(dest.iterdir())
    if stages == "as-received":
        assert dataset_digest(arrived) == dataset_digest(big)
    else:
        assert pixel_digest(arrived) == pixel_digest(big)
        header = dcmread(arrived, stop_before_pixels=True)
        assert header.PatientIdentityRemoved == "YES" and header.BodyPartExamined == "MODALITY"


@pytest.mark.slow
@pytest.mark.dcmtk
def test_a_large_instance_converted_for_a_peer_that_takes_only_implicit_vr(tmp_path, write_config):
    """300 MB Explicit VR to a destination that accepts only Implicit VR: the conversion streams
    from file to file, every router process under 100 MiB, and the pixel data arrives intact."""
    big = write_large(tmp_path / "big.dcm", SIZE)
    port, dest_port = free_port(), free_port()
    dest = tmp_path / "dest"
    storescp = start_storescp(dest, dest_port, ae_title="PACS", extra=["+xi"])  # Implicit VR only
    serve = ServeProcess(
        write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port), ["pacs"])),
        tmp_path / "serve.log",
    ).start(port)
    try:
        peaks = store_and_measure(port, big, CTImageStorage, tmp_path / "data", serve)
        assert max(peaks.values()) < 100
    finally:
        serve.stop()
        stop_process(storescp)
    (arrived,) = list(dest.iterdir())
    assert dcmread(arrived, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    _, source_layout = read_header(big)
    value_bytes = source_layout.pixel_end - source_layout.pixel_start - 12  # the value, past its Explicit VR header
    assert tail_digest(arrived, value_bytes) == tail_digest(big, value_bytes)  # pixel data last in both
    assert '"transcoding"' in serve.log_text()


@pytest.mark.slow
def test_a_large_encapsulated_document_passes_a_filter_to_a_folder_with_flat_memory(tmp_path, write_config):
    """A 200 MB Encapsulated PDF (no pixel data) through a ``filter`` stage to a ``filesystem``
    backend: no process reads the document value (every one stays under 100 MiB)."""
    from tests.support.dicomgen import write_large_pdf

    pdf = write_large_pdf(tmp_path / "doc.dcm", 200 * 1000 * 1000)
    extra = '[[pipelines.default.middleware]]\ntype = "filter"\nmatch = { Modality = ["DOC"] }\n'
    arrived = through_the_router_to_a_folder(tmp_path, write_config, pdf, "1.2.840.10008.5.1.4.1.1.104.1", extra)
    assert dataset_digest(arrived) == dataset_digest(pdf)


def through_the_router_to_a_folder(tmp_path, write_config, path, sop_class: str, stages: str):
    """Send ``path`` through ``dicom-router serve`` with ``stages`` to a ``filesystem`` backend,
    every router process under 100 MiB; the file that arrived."""
    port = free_port()
    backends = '[backends.archive]\ntype = "filesystem"\npath = "archive"\n'
    serve = ServeProcess(
        write_config(router_toml(tmp_path / "data", port, backends, ["archive"], extra=stages)), tmp_path / "serve.log"
    ).start(port)
    try:
        peaks = store_and_measure(port, path, sop_class, tmp_path / "data", serve)
        assert max(peaks.values()) < 100
    finally:
        serve.stop()
    (arrived,) = [p for p in (tmp_path / "archive").rglob("*.dcm")]
    return arrived


def sequence_digest(path, tag: int) -> str:
    """SHA-256 of the bytes of a top-level undefined-length sequence as encoded in the file."""
    import hashlib

    from router.spool.spans import element_end
    from router.spool.splice import read_header_before_pixels

    header, _ = read_header_before_pixels(path)
    element = header.get_item(tag, keep_deferred=True)
    assert element.value is None, "the sequence was read, not deferred"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        end = element_end(
            f, element.value_tell, element.length, implicit=element.is_implicit_VR, little=True, vr=element.VR
        )
        f.seek(element.value_tell)
        left = end - element.value_tell
        while left:
            chunk = f.read(min(left, 1 << 20))
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


SEQUENCE_STAGES = {
    "filter+coerce": (
        '[[pipelines.default.middleware]]\ntype = "filter"\nmatch = { Modality = ["CT"] }\n\n'
        '[[pipelines.default.middleware]]\ntype = "coerce"\n'
        'operations = [{ set = "BodyPartExamined", value = "CHEST" }]\n'
    ),
    "anonymize": '[[pipelines.default.middleware]]\ntype = "anonymize"\nkey_file = "{key}"\n',
}


@pytest.mark.slow
@pytest.mark.parametrize("stages", list(SEQUENCE_STAGES))
def test_a_large_sequence_passes_the_stages_to_a_folder_with_flat_memory(tmp_path, write_config, stages):
    """An Enhanced CT instance with a 200 MB Per-frame Functional Groups Sequence of undefined
    length (items and nested sequences of undefined length too) to a ``filesystem`` backend,
    every process under 100 MiB: through ``filter`` and ``coerce`` the sequence is never
    parsed and arrives byte for byte; through ``anonymize`` it is de-identified one item at a
    time (Frame Comments, PS3.15 action X, leave every item)."""
    from tests.support.dicomgen import write_large_sequence

    big = write_large_sequence(tmp_path / "enhanced.dcm", 200 * 1000 * 1000)
    extra = SEQUENCE_STAGES[stages].replace("{key}", str(key_file(tmp_path)))
    arrived = through_the_router_to_a_folder(tmp_path, write_config, big, "1.2.840.10008.5.1.4.1.1.2.1", extra)
    assert pixel_digest(arrived) == pixel_digest(big)
    if stages == "filter+coerce":
        assert dcmread(arrived, stop_before_pixels=True, specific_tags=["BodyPartExamined"]).BodyPartExamined == "CHEST"
        assert sequence_digest(arrived, 0x52009230) == sequence_digest(big, 0x52009230)
    else:
        with open(arrived, "rb") as f:
            tail = f.read()[-(20 << 20) :]  # the last items, the sequence's end and the pixel data
        assert b"frame frame" not in tail and b"0\\0\\" in tail
        assert (
            dcmread(arrived, stop_before_pixels=True, specific_tags=["PatientIdentityRemoved"]).PatientIdentityRemoved
            == "YES"
        )


@pytest.mark.slow
def test_a_deflate_bomb_through_a_filter_is_refused_with_flat_memory(tmp_path, write_config):
    """A deflated instance of about 1 MiB that inflates to 1 GiB, through a ``filter`` stage
    (which must inflate it to match): the sender gets a failure status, the log says why, no
    process grows past 110 MiB (the 16 MiB inflated on top of a process that starts at about
    80 MiB with pydicom's codec plugins loaded), and the router goes on answering."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from router.spool.deflated import MAX_INFLATED
    from tests.support import pdus
    from tests.support.dicomgen import write_deflate_bomb

    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 64 * MAX_INFLATED)
    port = free_port()
    backends = '[backends.archive]\ntype = "filesystem"\npath = "archive"\n'
    extra = '[[pipelines.default.middleware]]\ntype = "filter"\nmatch = { Modality = ["CT"] }\n'
    serve = ServeProcess(
        write_config(router_toml(tmp_path / "data", port, backends, ["archive"], extra=extra)), tmp_path / "serve.log"
    ).start(port)
    try:
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
        assert assoc.is_established
        status = assoc.send_c_store(bomb)
        assoc.release()
        assert 0xC000 <= int(status.Status) <= 0xCFFF, status
        assert pdus.echo_over_raw_socket(port) == 0
        processes = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
        assert max(peak_rss_mib(p.pid) for p in processes) < 110
    finally:
        serve.stop()
    assert not list((tmp_path / "archive").rglob("*.dcm"))
    assert "inflates past 16 MiB" in serve.log_text()


@pytest.mark.slow
@pytest.mark.dcmtk
def test_retrieving_hundreds_of_instances_keeps_memory_flat(tmp_path, write_config):
    """200 x 0.5 MB through a C-GET proxied to an upstream C-GET: every router process stays small."""
    from tests.support.dicomgen import write_series
    from tests.support.qrclients import final_counts, getscu
    from tests.support.qrpeer import ScriptedPACS

    files = write_series(tmp_path / "study", 200, "ct", patient="BULK")
    port = free_port()
    with ScriptedPACS(files) as pacs:
        text = (
            router_section(tmp_path / "data", 'log_level = "info"')
            + endpoint_section("qr", port)
            + (dimse_backend_toml(pacs.port, pacs.ae_title))
            + """query = true
retrieve = "get"

[pipelines.qr]
endpoints = ["qr"]
backends = ["pacs"]
"""
        )
        serve = ServeProcess(write_config(text), tmp_path / "serve.log").start(port)
        try:
            study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            result = getscu(
                port, "DICOM_ROUTER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"], tmp_path / "got"
            )
            processes = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
            peaks = {p.pid: peak_rss_mib(p.pid) for p in processes}
        finally:
            serve.stop()
    print(f"router peak RSS per process after retrieving 200 x 0.5 MB (MiB): {peaks}")
    assert result.returncode == 0, result.stderr
    assert final_counts(result.stderr + result.stdout).get("Completed") == 200
    assert len(list((tmp_path / "got").iterdir())) == 200
    assert max(peaks.values()) < LIMIT_MIB


def _frame(index: int, rows: int = 512, columns: int = 512):
    """Frame ``index`` of the large multi-frame image: a ramp shifted by the index, 12 bits."""
    import numpy as np

    ramp = (np.arange(rows * columns, dtype=np.uint32).reshape(rows, columns) // 61 + index * 7) % 4096
    return ramp.astype(np.uint16)


def write_large_multiframe(path, frames: int):
    """A multi-frame 512 x 512 16-bit image, written frame by frame (never whole in memory)."""
    import struct

    from tests.support.dicomgen import make_dataset

    ds = make_dataset("ct", "BIGMF", "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", 0, rows=512)
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if "PixelData" in ds:
        del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * 512 * 512 * 2))
        for index in range(frames):
            f.write(_frame(index).tobytes())


@pytest.mark.slow
@pytest.mark.dcmtk
def test_a_600_mb_multi_frame_instance_is_transcoded_frame_by_frame_with_flat_memory(tmp_path, write_config):
    """Issue 21: 1144 frames of 512 x 512 (600 MB) sent as RLE Lossless to a peer the backend
    wants RLE for: every router process stays under 150 MiB, and the frames arrive intact."""
    from pydicom.pixels import iter_pixels
    from pydicom.uid import RLELossless

    frames = 1144
    source = tmp_path / "large-mf.dcm"
    write_large_multiframe(source, frames)
    port, dest_port = free_port(), free_port()
    scp = start_storescp(tmp_path / "dest", dest_port, extra=["+xr"])
    policy = 'transfer_syntaxes = ["RLELossless"]\ntranscode = "always"'
    text = router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "STORESCP", extra=policy), ["pacs"])
    serve = ServeProcess(write_config(text), tmp_path / "serve.log").start(port)
    try:
        peaks = store_and_measure(port, source, CTImageStorage, tmp_path / "data", serve)
    finally:
        serve.stop()
        stop_process(scp)
    assert max(peaks.values()) < LIMIT_MIB
    (arrived,) = (tmp_path / "dest").iterdir()
    header = dcmread(arrived, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == RLELossless and int(header.NumberOfFrames) == frames
    for index, frame in zip((0, frames - 1), iter_pixels(arrived, indices=[0, frames - 1]), strict=True):
        assert (frame == _frame(index)).all()
