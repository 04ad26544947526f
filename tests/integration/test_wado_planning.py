"""How a WADO-RS request fetched by C-GET is planned and held: a study the upstream counts
(SOP Classes in Study, Number of Study Related Instances) costs one STUDY-level C-FIND; one it
does not count, a series or an instance has its instances listed as a C-GET proxy lists them.
Instances are held in memory by a few retrievals at a time, by files beyond that."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from router.qr.retrieve import IN_MEMORY_RETRIEVALS, memory_slots
from tests.conftest import web_gateway_toml
from tests.support.dicomfiles import digests_by_uid
from tests.support.dicomgen import write_series
from tests.support.dicomweb import get, multipart_parts
from tests.support.peers import free_port, wait_for
from tests.support.qrpeer import ScriptedPACS


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("ct"), 3, patient="PLAN1")


def gateway(tmp_path, write_config, start_router, pacs: ScriptedPACS) -> int:
    web = free_port()
    start_router(write_config(web_gateway_toml(tmp_path / "data", web, pacs.port, pacs.ae_title)))
    return web


def memory_slots_free() -> bool:
    """Whether no retrieval holds one of the process's in-memory slots."""
    free = [memory_slots.acquire(blocking=False) for _ in range(IN_MEMORY_RETRIEVALS)]
    for _ in filter(None, free):
        memory_slots.release()
    return all(free)


def instances_of(body: bytes, content_type: str) -> dict:
    parts = multipart_parts(body, content_type)
    return {str(dcmread(io.BytesIO(content)).SOPInstanceUID): content for _, content in parts}


@pytest.mark.parametrize("study_counts", [True, False], ids=["counted", "listed"])
def test_a_study_is_counted_when_the_upstream_can_and_listed_otherwise(
    tmp_path, write_config, start_router, series, study_counts
):
    with ScriptedPACS(series, study_counts=study_counts) as pacs:
        web = gateway(tmp_path, write_config, start_router, pacs)
        study = str(dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
        status, headers, body = get(web, f"/dicom-web/studies/{study}")
        assert status == 200
        received = instances_of(body, headers["Content-Type"])
        assert pacs.find_levels == (["STUDY"] if study_counts else ["STUDY", "IMAGE"])
        assert pacs.sent == len(series)
    wait_for(memory_slots_free, 10, message="the retrieval to give its memory slot back")
    for uid, content in received.items():
        (tmp_path / f"{uid}.dcm").write_bytes(content)
    assert digests_by_uid(sorted(tmp_path.glob("*.dcm"))) == digests_by_uid(series)


def test_an_unknown_study_is_404_after_one_study_query(tmp_path, write_config, start_router, series):
    with ScriptedPACS(series, study_counts=True) as pacs:
        web = gateway(tmp_path, write_config, start_router, pacs)
        status, _, _ = get(web, "/dicom-web/studies/1.2.3.4.5.6.7.8.9")
        assert status == 404
        assert pacs.find_levels == ["STUDY"] and pacs.sent == 0


def test_a_series_is_listed_even_when_the_upstream_counts_studies(tmp_path, write_config, start_router, series):
    with ScriptedPACS(series, study_counts=True) as pacs:
        web = gateway(tmp_path, write_config, start_router, pacs)
        header = dcmread(series[0], stop_before_pixels=True)
        status, headers, body = get(
            web, f"/dicom-web/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
        )
        assert status == 200 and len(instances_of(body, headers["Content-Type"])) == len(series)
        assert pacs.find_levels == ["IMAGE"]


def test_with_every_memory_slot_taken_a_retrieval_goes_through_files(
    tmp_path, write_config, start_router, series, monkeypatch
):
    from router.qr import retrieve

    def no_memory(*args):
        raise AssertionError("a retrieval held instances in memory without a slot")

    monkeypatch.setattr(retrieve, "MemoryFirstFiles", no_memory)
    taken = [retrieve.memory_slots.acquire(blocking=False) for _ in range(retrieve.IN_MEMORY_RETRIEVALS)]
    assert all(taken)
    try:
        with ScriptedPACS(series, study_counts=True) as pacs:
            web = gateway(tmp_path, write_config, start_router, pacs)
            study = str(dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
            status, headers, body = get(web, f"/dicom-web/studies/{study}")
            assert status == 200 and len(instances_of(body, headers["Content-Type"])) == len(series)
    finally:
        for _ in taken:
            retrieve.memory_slots.release()


def test_a_viewer_that_leaves_mid_answer_cancels_the_c_get_and_frees_its_memory_slot(
    tmp_path, write_config, start_router
):
    import http.client

    files = write_series(tmp_path / "study", 20, "small", patient="LEAVES")
    with ScriptedPACS(files, delay=0.1, study_counts=True) as pacs:
        web = gateway(tmp_path, write_config, start_router, pacs)
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        conn = http.client.HTTPConnection("127.0.0.1", web, timeout=30)
        conn.request("GET", f"/dicom-web/studies/{study}")
        response = conn.getresponse()
        assert response.status == 200
        response.read(1000)  # the first part has begun: the viewer goes
        conn.close()
        wait_for(pacs.cancelled.is_set, 30, message="the upstream C-GET to be cancelled")
        assert pacs.sent < len(files)
    wait_for(memory_slots_free, 10, message="the retrieval's memory slot to be given back")
    assert not list((tmp_path / "data").rglob("retrieved-*"))
