"""WADO-RS from the router's dicomweb endpoint, fetched from a DIMSE upstream (Orthanc, C-GET):
the same instances, byte for byte, as Orthanc's own WADO-RS gives, as parts streamed one by
one; metadata without bulk data; an anonymized view through a research pipeline."""

from __future__ import annotations

import io
import json
import urllib.request

import pytest
from pydicom import dcmread

from tests.conftest import QUERY_AND_GET, dimse_backend_toml, endpoint_section, router_section
from tests.support.deid import key_file
from tests.support.dicomfiles import digests_by_uid
from tests.support.dicomgen import write_series
from tests.support.dicomweb import dicomweb_endpoint_toml, get, multipart_parts
from tests.support.pacs import have_orthanc_dicomweb, load, start_orthanc
from tests.support.peers import StorageSCP, free_port, wait_for
from tests.support.qrclients import getscu, movescu

pytestmark = [
    pytest.mark.xdist_group("wado-orthanc"),
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_orthanc_dicomweb(), reason="needs Orthanc's DICOMweb plugin: tests/run.sh"),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    files = write_series(tmp_path_factory.mktemp("ct"), 5, patient="WA1")
    upstream = start_orthanc(
        tmp_path_factory.mktemp("orthanc"), {"DICOM_ROUTER": ("127.0.0.1", free_port())}, dicomweb=True
    )
    load(upstream, files)
    yield upstream, files
    upstream.stop()


@pytest.fixture
def router(tmp_path, write_config, start_router, archive):
    orthanc, _ = archive
    web = free_port()
    key = key_file(tmp_path)
    text = (
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml("web", web)
        + dicomweb_endpoint_toml("research", free_port())
        + dimse_backend_toml(orthanc.port, orthanc.ae_title, "pacs", QUERY_AND_GET)
        + f"""
[pipelines.web]
endpoints = ["web"]
backends = ["pacs"]

[pipelines.research]
endpoints = ["research"]
backends = ["pacs"]

[[pipelines.research.middleware]]
type = "anonymize"
key_file = "{key}"
"""
    )
    service = start_router(write_config(text))
    return web, service.endpoints["research"].address[1]


def uid_of(path, keyword="StudyInstanceUID") -> str:
    return str(getattr(dcmread(path, stop_before_pixels=True), keyword))


@pytest.mark.parametrize("memory_limit", [None, 20_000], ids=["in-memory", "spilled"])
def test_a_study_arrives_as_parts_byte_identical_to_orthanc_s_own_wado(
    router, archive, tmp_path, monkeypatch, memory_limit
):
    """Instances of up to a mebibyte go from the C-GET to the answer in memory; with a lower
    limit every one spills to a file midway, and the answer is the same, with no file left."""
    if memory_limit is not None:
        monkeypatch.setattr("router.qr.retrieve.IN_MEMORY_LIMIT", memory_limit)
    web, _ = router
    orthanc, files = archive
    study = uid_of(files[0])
    status, headers, body = get(
        web, f"/dicom-web/studies/{study}", {"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert status == 200 and headers["Content-Type"].startswith("multipart/related")
    ours = multipart_parts(body, headers["Content-Type"])
    request = urllib.request.Request(
        f"{orthanc.dicomweb_url}/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        theirs = multipart_parts(answer.read(), answer.headers["Content-Type"])
    assert len(ours) == len(files) == len(theirs)
    for index, (part_headers, content) in enumerate(ours):
        assert part_headers["content-type"].startswith("application/dicom")
        (tmp_path / f"ours{index}.dcm").write_bytes(content)
    for index, (_, content) in enumerate(theirs):
        (tmp_path / f"theirs{index}.dcm").write_bytes(content)
    ours_digests = digests_by_uid(sorted(tmp_path.glob("ours*.dcm")))
    assert ours_digests == digests_by_uid(sorted(tmp_path.glob("theirs*.dcm"))) == digests_by_uid(files)
    wait_for(lambda: not list((tmp_path / "data").rglob("retrieved-*")), 10, message="the fetched files to be removed")


def test_series_instance_and_metadata(router, archive):
    web, _ = router
    _, files = archive
    study, series, sop = uid_of(files[2]), uid_of(files[2], "SeriesInstanceUID"), uid_of(files[2], "SOPInstanceUID")
    status, headers, body = get(web, f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
    (part,) = multipart_parts(body, headers["Content-Type"])
    assert status == 200 and dcmread(io.BytesIO(part[1])).SOPInstanceUID == sop
    status, headers, body = get(web, f"/dicom-web/studies/{study}/series/{series}/metadata")
    assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")
    metadata = json.loads(body)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(digests_by_uid(files))
    assert all("7FE00010" not in m for m in metadata)  # no pixel data in metadata


def test_metadata_read_from_memory_is_the_metadata_read_from_files(router, archive, monkeypatch):
    web, _ = router
    _, files = archive
    path = f"/dicom-web/studies/{uid_of(files[0])}/metadata"
    status, _, in_memory = get(web, path)
    monkeypatch.setattr("router.qr.retrieve.IN_MEMORY_LIMIT", 20_000)  # every instance spills to its file
    spilled_status, _, from_files = get(web, path)
    assert status == spilled_status == 200
    assert metadata_by_uid(in_memory) == metadata_by_uid(from_files)
    assert len(metadata_by_uid(in_memory)) == len(files)


def metadata_by_uid(body: bytes) -> dict:
    return {m["00080018"]["Value"][0]: m for m in json.loads(body)}


def test_a_transfer_syntax_asked_for_is_sent_frame_by_frame_transcoded_and_406_for_one_it_cannot(router, archive):
    import numpy as np

    web, _ = router
    _, files = archive
    study = uid_of(files[0])
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    status, headers, body = get(web, f"/dicom-web/studies/{study}", {"Accept": accept})
    assert status == 200
    parts = multipart_parts(body, headers["Content-Type"])
    assert len(parts) == len(files)
    originals = {uid_of(f, "SOPInstanceUID"): dcmread(f).pixel_array for f in files}
    for part_headers, content in parts:
        assert "transfer-syntax=1.2.840.10008.1.2.4.80" in part_headers["content-type"]
        ds = dcmread(io.BytesIO(content))
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        np.testing.assert_array_equal(ds.pixel_array, originals[ds.SOPInstanceUID])
    refused = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.57'
    status, _, body = get(web, f"/dicom-web/studies/{study}", {"Accept": refused})
    assert status == 406 and b"1.2.840.10008.1.2.4.57" in body


def test_unknown_uids_get_404(router):
    web, _ = router
    status, _, body = get(web, "/dicom-web/studies/1.2.3.4.5.6.7.8.9")
    assert status == 404
    status, _, _ = get(web, "/dicom-web/studies/1.2.3.4.5.6.7.8.9/metadata")
    assert status == 404


def test_the_research_endpoint_serves_the_study_anonymized(router, archive):
    _, research = router
    _, files = archive
    status, headers, body = get(research, f"/dicom-web/studies/{uid_of(files[0])}")
    assert status == 200
    parts = multipart_parts(body, headers["Content-Type"])
    assert len(parts) == len(files)
    for _, content in parts:
        ds = dcmread(io.BytesIO(content))
        assert ds.PatientID != "WA1" and ds.StudyInstanceUID != uid_of(files[0])


@pytest.fixture
def bridge(tmp_path, write_config, start_router, archive):
    """A router whose only upstream is Orthanc's DICOMweb (query and retrieve by QIDO-RS and WADO-RS),
    reached from a DIMSE endpoint and a dicomweb endpoint."""
    orthanc, _ = archive
    web, dimse = free_port(), free_port()
    text = (
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml("web", web)
        + endpoint_section("ingest", dimse)
        + f"""
[backends.cloud]
type = "dicomweb"
url = "{orthanc.dicomweb_url}"
store = false
query = true
retrieve = "wado"

[backends.viewer]
type = "dimse"
host = "127.0.0.1"
port = {free_port()}
ae_title = "VIEWER"
store = false

[pipelines.all]
endpoints = ["web", "ingest"]
backends = ["cloud"]
"""
    )
    service = start_router(write_config(text))
    return web, dimse, service


def test_getscu_through_the_router_is_fetched_by_wado_rs_byte_identical(bridge, archive, tmp_path):
    _, dimse, _ = bridge
    _, files = archive
    result = getscu(
        dimse, "DICOM_ROUTER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid_of(files[0])}"], tmp_path / "got"
    )
    assert result.returncode == 0, result.stderr
    assert digests_by_uid(sorted((tmp_path / "got").iterdir())) == digests_by_uid(files)


def test_movescu_through_the_router_sends_what_wado_rs_fetched(bridge, archive, tmp_path):
    _, dimse, service = bridge
    _, files = archive
    viewer = service.config.backends["viewer"]
    with StorageSCP(tmp_path / "viewer", ae_title="VIEWER", port=viewer.port) as scp:
        result = movescu(
            dimse,
            "DICOM_ROUTER",
            "VIEWER",
            [
                "QueryRetrieveLevel=SERIES",
                f"StudyInstanceUID={uid_of(files[0])}",
                f"SeriesInstanceUID={uid_of(files[0], 'SeriesInstanceUID')}",
            ],
        )
        assert result.returncode == 0, result.stderr
        assert sorted(scp.received) == sorted(digests_by_uid(files))
    assert digests_by_uid(sorted((tmp_path / "viewer").iterdir())) == digests_by_uid(files)


def test_wado_rs_through_the_router_from_a_dicomweb_upstream(bridge, archive, tmp_path):
    web, _, _ = bridge
    _, files = archive
    status, headers, body = get(web, f"/dicom-web/studies/{uid_of(files[0])}")
    assert status == 200
    for index, (_, content) in enumerate(multipart_parts(body, headers["Content-Type"])):
        (tmp_path / f"{index}.dcm").write_bytes(content)
    assert digests_by_uid(sorted(tmp_path.glob("*.dcm"))) == digests_by_uid(files)


def test_qido_rs_through_the_router_from_a_dicomweb_upstream(bridge, archive):
    web, _, _ = bridge
    orthanc, files = archive
    status, _, body = get(web, "/dicom-web/studies/" + uid_of(files[0]) + "/instances")
    assert status == 200
    with urllib.request.urlopen(f"{orthanc.dicomweb_url}/studies/{uid_of(files[0])}/instances", timeout=30) as answer:
        theirs = json.loads(answer.read())
    ours = json.loads(body)
    assert (
        sorted(a["00080018"]["Value"][0] for a in ours)
        == sorted(a["00080018"]["Value"][0] for a in theirs)
        == sorted(digests_by_uid(files))
    )
