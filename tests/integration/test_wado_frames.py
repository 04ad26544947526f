"""WADO-RS frames from the router's dicomweb endpoint, fetched from a DIMSE upstream (Orthanc,
C-GET): the same frame bytes as Orthanc's own WADO-RS gives, uncompressed or as stored, in the
order asked, and what a viewer's client library (dicomweb-client) reads from them."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless, generate_uid

from router.transcode.files import transcode_file
from tests.conftest import web_gateway_toml
from tests.support.dicomweb import get, multipart_parts
from tests.support.images import write_image
from tests.support.pacs import have_orthanc_dicomweb, load, start_orthanc
from tests.support.peers import free_port, storescu

OCTET = 'multipart/related; type="application/octet-stream"'

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_orthanc_dicomweb(), reason="needs Orthanc's DICOMweb plugin: tests/run.sh"),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    native = folder / "native.dcm"
    pixels = write_image(native, rows=20, columns=23, bits_stored=12, frames=3)
    rle = folder / "rle.dcm"
    transcode_file(native, folder / "source.dcm", RLELossless)
    ds = dcmread(folder / "source.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(rle)
    upstream = start_orthanc(
        tmp_path_factory.mktemp("orthanc"), {"DICOM_ROUTER": ("127.0.0.1", free_port())}, dicomweb=True
    )
    load(upstream, [native])
    loaded = storescu(upstream.port, [rle], called=upstream.ae_title, calling="LOADER", extra=["-xr"])
    assert loaded.returncode == 0, loaded.stderr
    yield upstream, {"native": native, "rle": rle}, pixels.reshape(3, 20, 23)
    upstream.stop()


@pytest.fixture
def router(tmp_path, write_config, start_router, archive):
    orthanc, _, _ = archive
    web = free_port()
    start_router(write_config(web_gateway_toml(tmp_path / "data", web, orthanc.port, orthanc.ae_title)))
    return web


def frames_path(path, numbers: str) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/{numbers}"
    )


def frames(port_or_url, path: str, accept: str | None = OCTET) -> tuple[int, list[tuple[dict, bytes]], bytes]:
    headers = {"Accept": accept} if accept else {}
    if isinstance(port_or_url, int):
        status, answer_headers, body = get(port_or_url, "/dicom-web" + path, headers)
    else:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(port_or_url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, answer_headers, body = answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, [], exc.read()
    if status != 200:
        return status, [], body
    return status, multipart_parts(body, answer_headers["Content-Type"]), body


def test_uncompressed_frames_in_the_order_asked_are_orthanc_s_and_the_pixels(router, archive):
    web = router
    orthanc, files, pixels = archive
    for name in ("native", "rle"):
        status, ours, _ = frames(web, frames_path(files[name], "3,1"))
        assert status == 200, ours
        theirs_status, theirs, _ = frames(orthanc.dicomweb_url, frames_path(files[name], "3,1"))
        assert theirs_status == 200
        assert [content for _, content in ours] == [content for _, content in theirs], name
        for (headers, content), number in zip(ours, (3, 1), strict=True):
            assert headers["content-type"].startswith("application/octet-stream")
            frame = np.frombuffer(content, "<u2").reshape(20, 23)
            np.testing.assert_array_equal(frame, pixels[number - 1])


def test_compressed_frames_as_stored_are_their_codestreams(router, archive):
    web = router
    _, files, _ = archive
    stored = list(generate_frames(dcmread(files["rle"]).PixelData, number_of_frames=3))
    for accept in (
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        'multipart/related; type="image/dicom-rle"',
    ):
        status, parts, _ = frames(web, frames_path(files["rle"], "2,3"), accept)
        assert status == 200, parts
        assert [content for _, content in parts] == stored[1:]
        assert all(h["content-type"] == f"image/dicom-rle; transfer-syntax={RLELossless}" for h, _ in parts)
    status, _, body = frames(web, frames_path(files["rle"], "1"), 'multipart/related; type="image/jls"')
    assert status == 406 and b"RLE" in body


def test_bad_frame_lists_and_unknown_frames_are_refused(router, archive):
    web = router
    _, files, _ = archive
    assert frames(web, frames_path(files["native"], "4"))[0] == 404
    status, _, body = frames(web, frames_path(files["native"], "1,x"))
    assert status == 400 and b"frame list" in body
    assert frames(web, frames_path(files["native"], "0"))[0] == 400
    assert frames(web, frames_path(files["native"], "1"), "image/png")[0] == 406


def test_dicomweb_client_reads_frames_from_the_router(router, archive):
    from dicomweb_client.api import DICOMwebClient

    web = router
    _, files, pixels = archive
    ds = dcmread(files["native"], stop_before_pixels=True)
    client = DICOMwebClient(f"http://127.0.0.1:{web}/dicom-web")
    got = client.retrieve_instance_frames(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), frame_numbers=[2]
    )
    assert len(got) == 1
    np.testing.assert_array_equal(np.frombuffer(got[0], "<u2").reshape(20, 23), pixels[1])
