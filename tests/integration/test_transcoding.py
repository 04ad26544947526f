"""Transfer syntaxes per destination, against DCMTK storescp restricted to one syntax or
preferring one: what arrives, in which syntax, with which pixels; what is quarantined."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.transcode.files import transcode_file
from tests.conftest import dimse_backend_toml, router_toml
from tests.support.images import dcmtk_convert, write_image
from tests.support.peers import c_store, free_port, start_storescp, stop_process, wait_for
from tests.support.spool import edited_versions_kept_by_reference, spooled_files

pytestmark = pytest.mark.dcmtk


@pytest.fixture
def j2k_image(tmp_path):
    """A 16-bit, three-frame image in JPEG 2000 Lossless, and its pixels."""
    plain = tmp_path / "plain.dcm"
    pixels = write_image(plain, rows=48, columns=40, bits_stored=16, frames=3)
    compressed = tmp_path / "j2k.dcm"
    transcode_file(plain, compressed, JPEG2000Lossless)
    return compressed, pixels


def _arrived(directory, count=1):
    def files():
        found = [p for p in directory.iterdir() if p.is_file()] if directory.exists() else []
        return found if len(found) >= count else None

    return wait_for(files, 30, message=f"{count} file(s) in {directory}")


@contextmanager
def _one_instance_through(tmp_path, write_config, start_router, port, source, syntax, option, policy=""):
    """Send ``source`` (in ``syntax``) through a router whose one backend is DCMTK storescp
    started with ``option`` and configured with ``policy``; yield the router, the file that
    arrived and its data set (read once storescp finished writing it)."""
    dest_port = free_port()
    scp = start_storescp(tmp_path / "dest", dest_port, extra=[option])
    try:
        service = start_router(
            write_config(
                router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "STORESCP", extra=policy), ["pacs"])
            )
        )
        assert c_store(port, source, syntax) == 0
        (arrived,) = _arrived(tmp_path / "dest")
        yield service, arrived, wait_for(lambda: _readable(arrived), 10, message="storescp to finish writing")
    finally:
        stop_process(scp)


def test_a_compressed_instance_goes_uncompressed_to_a_peer_that_takes_only_that(
    tmp_path, write_config, start_router, port, j2k_image
):
    source, pixels = j2k_image
    with _one_instance_through(tmp_path, write_config, start_router, port, source, JPEG2000Lossless, "+xi") as (
        _,
        _,
        ds,
    ):
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, pixels)
        assert ds.SOPInstanceUID == dcmread(source).SOPInstanceUID


@pytest.mark.parametrize(
    ("syntax", "option", "decoder"),
    [(JPEGLSLossless, "+xt", "dcmdjpls"), (RLELossless, "+xr", "dcmdrle")],
    ids=["jpeg-ls", "rle"],
)
def test_always_sends_the_syntax_named_first_that_the_peer_accepts(
    tmp_path, write_config, start_router, port, syntax, option, decoder
):
    plain = tmp_path / "plain.dcm"
    pixels = write_image(plain, rows=48, columns=40, bits_stored=12, signed=True, frames=2)
    policy = f'transfer_syntaxes = ["{syntax.keyword}", "ExplicitVRLittleEndian"]\ntranscode = "always"'
    with _one_instance_through(
        tmp_path, write_config, start_router, port, plain, ExplicitVRLittleEndian, option, policy
    ) as (service, arrived, ds):
        assert ds.file_meta.TransferSyntaxUID == syntax
        dcmtk_convert(decoder, arrived, tmp_path / "decoded.dcm")
        np.testing.assert_array_equal(dcmread(tmp_path / "decoded.dcm").pixel_array, pixels)
        _spool_emptied(tmp_path / "data", "the spool file and its version removed")
        assert service.queue.counts()["pacs"]["delivered"] == 1


def test_two_backends_share_one_transcoded_version_removed_with_the_instance(
    tmp_path, write_config, start_router, port, j2k_image
):
    source, pixels = j2k_image
    ports = free_port(), free_port()
    scps = [start_storescp(tmp_path / f"dest{i}", p, extra=["+xi"]) for i, p in enumerate(ports)]
    backends = dimse_backend_toml(ports[0], "STORESCP", "a") + dimse_backend_toml(ports[1], "STORESCP", "b")
    try:
        start_router(write_config(router_toml(tmp_path / "data", port, backends, ["a", "b"])))
        assert c_store(port, source, JPEG2000Lossless) == 0
        arrived = [_arrived(tmp_path / f"dest{i}")[0] for i in range(2)]
        for path in arrived:
            ds = wait_for(lambda path=path: _readable(path), 10, message="storescp to finish writing")
            np.testing.assert_array_equal(ds.pixel_array, pixels)
        _spool_emptied(tmp_path / "data", "the spool file and its version removed")
    finally:
        for scp in scps:
            stop_process(scp)


def test_never_quarantines_what_the_peer_will_not_take_as_received(
    tmp_path, write_config, start_router, port, j2k_image
):
    source, _ = j2k_image
    dest_port = free_port()
    scp = start_storescp(tmp_path / "dest", dest_port)
    try:
        service = start_router(
            write_config(
                router_toml(
                    tmp_path / "data",
                    port,
                    dimse_backend_toml(dest_port, "STORESCP", extra='transcode = "never"'),
                    ["pacs"],
                )
            )
        )
        assert c_store(port, source, JPEG2000Lossless) == 0
        (quarantined,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="a quarantined delivery")
        assert 'transcode = "never"' in quarantined.reason and "JPEG2000Lossless" in quarantined.reason
        assert not list((tmp_path / "dest").iterdir())
    finally:
        stop_process(scp)


def _spool_emptied(data_dir, what: str) -> None:
    """Wait until the spool holds no instance file and no version of one (``what``: what must go)."""
    wait_for(lambda: not spooled_files(data_dir) and not list(data_dir.rglob("*.dcm.*")), 10, message=what)


def _readable(path):
    try:
        ds = dcmread(path)
        ds.pixel_array  # noqa: B018 - the whole file is there
        return ds
    except Exception:
        return None


def _orthanc_http(tmp_path):
    from tests.support.pacs import have_orthanc_dicomweb, start_orthanc

    if not have_orthanc_dicomweb():
        pytest.skip("needs Orthanc with its HTTP server: tests/run.sh")
    return start_orthanc(tmp_path / "orthanc", {}, dicomweb=True)


def _post(url: str, body: bytes) -> bytes:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as answer:
        return answer.read()


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless], ids=lambda uid: uid.keyword)
def test_orthanc_decodes_what_the_router_encoded_and_the_router_what_orthanc_encoded(tmp_path, syntax):
    """Orthanc as a second opinion, both ways: it decodes the router's output to the same
    pixels, and the router decodes what Orthanc encoded. (Debian's Orthanc transcodes with
    DCMTK, which has no JPEG 2000 codec: it answers 500 for JPEG 2000 either way.)"""
    import io
    import json
    import urllib.request

    from router.transcode.files import transcode_file

    plain = tmp_path / "plain.dcm"
    pixels = write_image(plain, rows=48, columns=40, bits_stored=12, frames=2)
    ours = tmp_path / "ours.dcm"
    transcode_file(plain, ours, syntax)
    orthanc = _orthanc_http(tmp_path)
    base = f"http://127.0.0.1:{orthanc.http_port}"
    try:
        instance = json.loads(_post(f"{base}/instances", ours.read_bytes()))["ID"]
        with urllib.request.urlopen(f"{base}/instances/{instance}/numpy", timeout=30) as answer:
            decoded = np.load(io.BytesIO(answer.read()))
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)
        original = json.loads(_post(f"{base}/instances", plain.read_bytes()))["ID"]
        modify = json.dumps({"Transcode": str(syntax), "Keep": ["SOPInstanceUID"], "Force": True}).encode()
        (tmp_path / "theirs.dcm").write_bytes(_post(f"{base}/instances/{original}/modify", modify))
    finally:
        orthanc.stop()
    assert dcmread(tmp_path / "theirs.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    transcode_file(tmp_path / "theirs.dcm", tmp_path / "back.dcm", ExplicitVRLittleEndian)
    np.testing.assert_array_equal(dcmread(tmp_path / "back.dcm").pixel_array, pixels)


def test_an_instance_the_first_syntax_cannot_hold_goes_in_the_next(tmp_path, write_config, start_router, port):
    """16 x 16 frames are too small for OpenJPEG's resolution levels: with JPEG 2000 first and
    Explicit VR second, the peer (which takes both) gets Explicit VR, not a quarantine."""
    small = tmp_path / "small.dcm"
    pixels = write_image(small, rows=16, columns=16, bits_stored=12)
    policy = 'transfer_syntaxes = ["JPEG2000Lossless", "ExplicitVRLittleEndian"]\ntranscode = "always"'
    with _one_instance_through(
        tmp_path, write_config, start_router, port, small, ExplicitVRLittleEndian, "+xv", policy
    ) as (_, _, ds):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_an_edited_version_kept_by_reference_is_transcoded_from_its_copy_and_both_go_with_it(
    tmp_path, write_config, start_router, port
):
    """Anonymized (the version kept as a header and the received pixel data), then sent in
    JPEG-LS Lossless to one peer and as it is to another: both get the anonymized instance
    with the original pixels; the copy, its transcoded version and the received file all go."""
    (tmp_path / "research.key").write_text("a-key-for-tests-only-0123456789abcdef\n")
    plain = tmp_path / "plain.dcm"
    pixels = write_image(plain, rows=128, columns=128, bits_stored=12, frames=3)
    ports = free_port(), free_port()
    policy = 'transfer_syntaxes = ["JPEGLSLossless"]\ntranscode = "always"'
    backends = dimse_backend_toml(ports[0], "STORESCP", "a", policy) + dimse_backend_toml(ports[1], "STORESCP", "b")
    stage = '\n[[pipelines.default.middleware]]\ntype = "anonymize"\nkey_file = "research.key"\n'
    start_router(write_config(router_toml(tmp_path / "data", port, backends, ["a", "b"], extra=stage)))
    assert c_store(port, plain, ExplicitVRLittleEndian) == 0
    assert len(edited_versions_kept_by_reference(tmp_path / "data")) == 1  # the peers are not up yet
    scps = [
        start_storescp(tmp_path / f"dest{i}", p, extra=[o])
        for i, (p, o) in enumerate(zip(ports, ["+xt", "+xe"], strict=True))
    ]
    try:
        compressed, native = (
            wait_for(lambda i=i: _readable(_arrived(tmp_path / f"dest{i}")[0]), 30, message="storescp to finish")
            for i in range(2)
        )
        assert compressed.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        dcmtk_convert("dcmdjpls", _arrived(tmp_path / "dest0")[0], tmp_path / "decoded.dcm")
        for ds in (dcmread(tmp_path / "decoded.dcm"), native):
            np.testing.assert_array_equal(ds.pixel_array, pixels)
            assert ds.PatientIdentityRemoved == "YES" and ds.SOPInstanceUID != dcmread(plain).SOPInstanceUID
        _spool_emptied(
            tmp_path / "data", "the received file, the edited version's copy and its transcoded version removed"
        )
    finally:
        for scp in scps:
            stop_process(scp)
