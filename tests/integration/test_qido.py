"""QIDO-RS both ways, against Orthanc with its DICOMweb plugin: the router's QIDO-RS endpoint
answered by C-FIND to Orthanc, and DCMTK findscu answered by QIDO-RS to Orthanc. Each gives
the same matches as asking Orthanc directly."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.conftest import dimse_backend_toml, endpoint_section, router_section
from tests.support.dicomgen import write_series
from tests.support.dicomweb import dicomweb_endpoint_toml, get
from tests.support.pacs import have_orthanc_dicomweb, load, start_orthanc
from tests.support.peers import dcmtk, dcmtk_env, free_port

pytestmark = [
    pytest.mark.xdist_group("qido-orthanc"),
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_orthanc_dicomweb(), reason="needs Orthanc's DICOMweb plugin: tests/run.sh"),
]

ROUTER_AE = "DICOM_ROUTER"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    router_port = free_port()
    upstream = start_orthanc(tmp_path_factory.mktemp("orthanc"), {ROUTER_AE: ("127.0.0.1", router_port)}, dicomweb=True)
    files = []
    for i, (patient, modality) in enumerate([("QA1", "CT"), ("QA1", "MR"), ("QB2", "CT")]):
        files += write_series(tmp_path_factory.mktemp(f"s{i}"), 2 + i, patient=patient, modality=modality)
    load(upstream, files)
    yield upstream
    upstream.stop()


def orthanc_qido(orthanc, path: str) -> list[dict]:
    return json.loads(urllib.request.urlopen(f"{orthanc.dicomweb_url}{path}", timeout=30).read() or b"[]")


def uids(answers: list[dict], tag: str) -> list[str]:
    return sorted(a[tag]["Value"][0] for a in answers if a.get(tag, {}).get("Value"))


@pytest.fixture
def router(tmp_path, write_config, start_router, orthanc):
    web, dimse = free_port(), free_port()
    text = (
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml("web", web)
        + endpoint_section("ingest", dimse)
        + dimse_backend_toml(orthanc.port, orthanc.ae_title, "pacs", "store = false\nquery = true")
        + f"""
[backends.cloud]
type = "dicomweb"
url = "{orthanc.dicomweb_url}"
store = false
query = true

[pipelines.web]
endpoints = ["web"]
backends = ["pacs"]

[pipelines.dimse]
endpoints = ["ingest"]
backends = ["cloud"]
"""
    )
    start_router(write_config(text))
    return web, dimse


@pytest.mark.parametrize(
    "path, tag",
    [
        ("/studies", "0020000D"),
        ("/studies?PatientID=QA1", "0020000D"),
        ("/studies?00100020=QA1", "0020000D"),
        ("/studies?StudyDate=19000101-", "0020000D"),
        ("/studies?ModalitiesInStudy=CT", "0020000D"),
        ("/series?Modality=MR", "0020000E"),
        ("/instances?PatientID=QB2", "00080018"),
    ],
)
def test_qido_through_the_router_matches_orthanc_directly(router, orthanc, path, tag):
    web, _ = router
    status, headers, body = get(web, f"/dicom-web{path}")
    assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")
    ours = json.loads(body)
    assert uids(ours, tag) == uids(orthanc_qido(orthanc, path), tag)
    assert uids(ours, tag)


def test_qido_of_a_study_s_series_and_instances_and_paging(router, orthanc):
    web, _ = router
    study = uids(orthanc_qido(orthanc, "/studies?PatientID=QB2"), "0020000D")[0]
    _, _, body = get(web, f"/dicom-web/studies/{study}/series")
    (series,) = uids(json.loads(body), "0020000E")
    _, _, body = get(web, f"/dicom-web/studies/{study}/series/{series}/instances")
    instances = uids(json.loads(body), "00080018")
    assert instances == uids(orthanc_qido(orthanc, f"/studies/{study}/instances"), "00080018")
    _, _, first = get(web, f"/dicom-web/studies/{study}/instances?limit=2")
    _, _, rest = get(web, f"/dicom-web/studies/{study}/instances?offset=2")
    assert (
        len(json.loads(first)) == 2
        and sorted(uids(json.loads(first), "00080018") + uids(json.loads(rest), "00080018")) == instances
    )
    _, _, none = get(web, "/dicom-web/studies?PatientID=NOBODY")
    assert json.loads(none) == []


@pytest.mark.parametrize(
    "query, named",
    [
        ("NoSuchKeyword=1", "NoSuchKeyword"),
        ("limit=ten", "limit"),
        ("includefield=ReferencedSeriesSequence.SeriesInstanceUID", "ReferencedSeriesSequence"),
        ("NumberOfStudyRelatedSeries=many", "NumberOfStudyRelatedSeries"),
    ],
)
def test_an_invalid_parameter_gets_400_naming_it(router, query, named):
    web, _ = router
    status, _, body = get(web, f"/dicom-web/studies?{query}")
    assert status == 400 and named in body.decode()


def test_findscu_through_the_router_is_answered_by_qido(router, orthanc, tmp_path):
    _, dimse = router
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QA1", "-k", "StudyInstanceUID", "-k", "StudyDate"]
    found = subprocess.run(
        [dcmtk("findscu"), "-S", "-aec", ROUTER_AE, *keys, "127.0.0.1", str(dimse)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )
    direct = subprocess.run(
        [dcmtk("findscu"), "-S", "-aet", ROUTER_AE, "-aec", orthanc.ae_title, *keys, "127.0.0.1", str(orthanc.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )
    assert found.returncode == 0 and direct.returncode == 0

    def studies(output: str) -> list[str]:
        return sorted(line.split("[")[1].split("]")[0] for line in output.splitlines() if "(0020,000d)" in line)

    assert studies(found.stderr) == studies(direct.stderr) and len(studies(found.stderr)) == 2


def test_an_upstream_that_is_down_gets_502_with_the_reason(tmp_path, write_config, start_router):
    web = free_port()
    text = (
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml("web", web)
        + dimse_backend_toml(free_port(), "GONE", "pacs", "store = false\nquery = true")
        + """
[pipelines.web]
endpoints = ["web"]
backends = ["pacs"]
"""
    )
    start_router(write_config(text))
    status, _, body = get(web, "/dicom-web/studies")
    assert status == 502 and b"pacs" in body and b"connection refused" in body
