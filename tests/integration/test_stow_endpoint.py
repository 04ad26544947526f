"""STOW-RS into a ``dicomweb`` endpoint: the dicomweb-client library and curl as clients, the
same intake and pipelines as C-STORE, and hostile or broken clients answered without loss."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import endpoint_section, router_section
from tests.support.dicomfiles import digests_by_uid
from tests.support.dicomgen import write_series
from tests.support.dicomweb import (
    BOUNDARY,
    closed_by_peer,
    dicomweb_endpoint_toml,
    multipart_related,
    post,
    raw_connection,
    request_head,
    stow_content_type,
    stow_uids,
)
from tests.support.pdus import echo_over_raw_socket
from tests.support.peers import free_port, wait_for
from tests.support.spool import spooled_files

STUDIES = "/dicom-web/studies"


def config_text(
    tmp_path: Path,
    web_port: int,
    dimse_port: int,
    endpoint_extra: str = "",
    pipeline_extra: str = "",
    router_extra: str = "",
) -> str:
    return (
        router_section(tmp_path / "data", router_extra)
        + dicomweb_endpoint_toml("web", web_port, endpoint_extra)
        + endpoint_section("ingest", dimse_port)
        + f"""
[backends.archive]
type = "filesystem"
path = "{tmp_path / "archive"}"
template = "{{SOPInstanceUID}}.dcm"

[pipelines.default]
endpoints = ["web", "ingest"]
backends = ["archive"]
{pipeline_extra}
"""
    )


@pytest.fixture
def web(tmp_path, write_config, start_router):
    """Start a router with a dicomweb endpoint (extra endpoint and pipeline TOML allowed); its ports."""

    def start(endpoint_extra: str = "", pipeline_extra: str = "", router_extra: str = ""):
        web_port, dimse_port = free_port(), free_port()
        service = start_router(
            write_config(config_text(tmp_path, web_port, dimse_port, endpoint_extra, pipeline_extra, router_extra))
        )
        return service, web_port, dimse_port

    return start


def archived(tmp_path: Path, count: int) -> list[Path]:
    return wait_for(
        lambda: (lambda found: found if len(found) >= count else None)(sorted((tmp_path / "archive").glob("*.dcm"))),
        timeout=30,
        message=f"{count} archived instances",
    )


def spool_leftovers(tmp_path: Path) -> list[Path]:
    """Received bytes no queue row owns: partial files in ``incoming/``, or files in ``objects/``
    that are neither queued nor empty spares (deliveries to the archive folder are quick, so a
    queued file is gone soon)."""
    incoming = list((tmp_path / "data" / "incoming").iterdir())
    return incoming + spooled_files(tmp_path / "data")


def test_dicomweb_client_stores_a_series_and_each_instance_is_acknowledged_once_durable(tmp_path, web, ct_files):
    from dicomweb_client.api import DICOMwebClient

    service, port, _ = web()
    client = DICOMwebClient(f"http://127.0.0.1:{port}/dicom-web")
    answer = client.store_instances([dcmread(p) for p in ct_files])
    stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(digests_by_uid(ct_files))
    assert "FailedSOPSequence" not in answer
    # Retrieve URL is Type 2 (PS3.18 Table I.1-1): present, empty while the router holds the instance
    assert "RetrieveURL" in answer and not answer.RetrieveURL
    assert all("RetrieveURL" in item and not item.RetrieveURL for item in answer.ReferencedSOPSequence)
    queue_uids = {uid for _, _, _, uid in service.queue.instance_files()}
    assert set(stored) <= queue_uids  # in the queue before the answer came back
    assert digests_by_uid(archived(tmp_path, len(ct_files))) == digests_by_uid(ct_files)


def test_curl_posts_files_that_arrive_byte_identical(tmp_path, web, small_files):
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    _, port, _ = web()
    files = small_files[:5]
    body = tmp_path / "body.bin"
    body.write_bytes(multipart_related(files))
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            f"Content-Type: {stow_content_type()}",
            "-H",
            "Accept: application/dicom+json",
            "--data-binary",
            f"@{body}",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{port}{STUDIES}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer, _, code = result.stdout.rpartition("\n")
    assert code == "200", result.stdout + result.stderr
    stored, failed = stow_uids(answer.encode())
    assert len(stored) == 5 and not failed
    by_name = {p.read_bytes() for p in files}
    assert {p.read_bytes() for p in archived(tmp_path, 5)} == by_name


def test_a_study_path_fails_the_instances_of_another_study_with_a900(tmp_path, web):
    _, port, _ = web()
    ours = write_series(tmp_path / "a", 2, patient="A1")
    other = write_series(tmp_path / "b", 1, patient="B1")
    study = str(dcmread(ours[0], stop_before_pixels=True).StudyInstanceUID)
    status, headers, body = post(port, f"{STUDIES}/{study}", multipart_related(ours + other), stow_content_type())
    assert status == 202
    assert headers["Content-Type"].startswith("application/dicom+json")
    stored, failed = stow_uids(body)
    other_uid = str(dcmread(other[0], stop_before_pixels=True).SOPInstanceUID)
    assert len(stored) == 2 and failed == {other_uid: 0xA900}
    assert len(archived(tmp_path, 2)) == 2


def test_pipelines_apply_filter_rejections_and_coercions_as_for_c_store(tmp_path, web):
    stages = """
[[pipelines.default.middleware]]
type = "filter"
match = { Modality = "CT" }
action = "reject"
reject_status = 0xA900

[[pipelines.default.middleware]]
type = "coerce"
operations = [{ set = "InstitutionName", value = "Via STOW" }]
"""
    _, port, _ = web(pipeline_extra=stages)
    ct = write_series(tmp_path / "ct", 1, patient="C1", modality="CT")
    mr = write_series(tmp_path / "mr", 1, patient="M1", modality="MR")
    status, _, body = post(port, STUDIES, multipart_related(ct + mr), stow_content_type())
    assert status == 202
    stored, failed = stow_uids(body)
    assert failed == {str(dcmread(mr[0], stop_before_pixels=True).SOPInstanceUID): 0xA900}
    (copy,) = archived(tmp_path, 1)
    assert dcmread(copy).InstitutionName == "Via STOW"


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_wrong_media_types_and_missing_boundaries_are_refused(tmp_path, web, ct_files, content_type, expected):
    _, port, _ = web()
    status, _, body = post(port, STUDIES, ct_files[0].read_bytes(), content_type)
    assert status == expected, body
    assert body.strip()  # says why


def test_parts_that_are_not_dicom_fail_and_a_body_without_parts_is_malformed(tmp_path, web, small_files):
    _, port, _ = web()
    status, _, body = post(port, STUDIES, multipart_related([b"not dicom at all", small_files[0]]), stow_content_type())
    assert status == 202
    stored, failed = stow_uids(body)
    assert len(stored) == 1 and failed == {"": 0xC000}
    status, _, _ = post(port, STUDIES, multipart_related([b"not dicom"]), stow_content_type())
    assert status == 409
    status, _, body = post(port, STUDIES, b"no boundary in here", stow_content_type())
    assert status == 400, body
    status, _, _ = post(port, STUDIES, multipart_related([small_files[1]], part_type="text/plain"), stow_content_type())
    assert status == 409
    wait_for(lambda: spool_leftovers(tmp_path) == [], timeout=20, message="no received bytes left unowned")


@pytest.mark.parametrize(
    "part_head",
    [b"Content-Type: app\xdd\x9e\xfc\x1dlication/dicom", b"no colon in this header line", b"Content-Type : x"],
    ids=["bytes-in-header", "no-colon", "space-before-colon"],
)
def test_a_part_with_a_malformed_header_makes_the_body_malformed(tmp_path, web, small_files, part_head):
    """400, not an unexpected error; the whole part before it is queued but not acknowledged."""
    _, port, _ = web()
    whole = multipart_related(small_files[:1])[: -len(f"--{BOUNDARY}--\r\n")]
    body = (
        whole
        + f"--{BOUNDARY}\r\n".encode()
        + part_head
        + b"\r\n\r\n"
        + b"\0" * 200
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    status, _, answer = post(port, STUDIES, body, stow_content_type())
    assert status == 400, answer
    assert b"malformed" in answer
    archived(tmp_path, 1)
    wait_for(lambda: spool_leftovers(tmp_path) == [], timeout=20, message="no received bytes left unowned")


def test_a_request_over_the_size_limit_gets_413(tmp_path, web, ct_files):
    _, port, _ = web(endpoint_extra="max_request_mb = 1")
    status, _, _ = post(port, STUDIES, multipart_related(ct_files[:3]), stow_content_type())
    assert status == 413
    with raw_connection(port) as sock:  # chunked: found out while reading
        sock.sendall(request_head(STUDIES, stow_content_type()))
        body = multipart_related(ct_files[:3])
        for start in range(0, len(body), 65536):
            chunk = body[start : start + 65536]
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert b" 413 " in sock.recv(65536).split(b"\r\n")[0] + b" "
    wait_for(lambda: spool_leftovers(tmp_path) == [], timeout=20, message="no received bytes left unowned")


def test_below_the_free_space_floor_stow_gets_507(tmp_path, web, small_files):
    service, port, _ = web()
    service.intake.spool.min_free_bytes = 1 << 62
    status, _, body = post(port, STUDIES, multipart_related(small_files[:1]), stow_content_type())
    assert status == 507, body


def test_a_client_that_disconnects_mid_upload_leaves_nothing_and_nothing_acknowledged(tmp_path, web, ct_files):
    service, port, _ = web()
    body = multipart_related(ct_files[:2])
    with raw_connection(port) as sock:
        sock.sendall(request_head(STUDIES, stow_content_type(), len(body)) + body[: len(body) * 3 // 4])
        time.sleep(0.5)
    wait_for(
        lambda: spool_leftovers(tmp_path) == [], timeout=20, message="the partial part removed, the whole one delivered"
    )
    # the first part was whole: it may be queued (never acknowledged); the cut one is not
    assert len(service.queue.instance_files()) <= 1


def test_slow_senders_are_dropped_at_their_deadlines_while_dimse_and_http_go_on(tmp_path, web, small_files):
    _, port, dimse_port = web(endpoint_extra="header_timeout = 1.0\nrequest_timeout = 1.5")
    body = multipart_related(small_files[:1])
    stalled_body = raw_connection(port)
    stalled_body.sendall(request_head(STUDIES, stow_content_type(), len(body)) + body[:100])
    trickling_headers = raw_connection(port)
    trickling_headers.sendall(b"POST /dicom-web/studies HTTP/1.1\r\n")
    try:
        status, _, _ = post(port, STUDIES, body, stow_content_type())
        assert status == 200
        assert echo_over_raw_socket(dimse_port) == 0x0000
        head = stalled_body.recv(65536)
        assert head.startswith(b"HTTP/1.1 408")
        assert closed_by_peer(trickling_headers, timeout=10)
    finally:
        stalled_body.close()
        trickling_headers.close()
    wait_for(lambda: spool_leftovers(tmp_path) == [], timeout=20, message="no received bytes left unowned")


def test_idle_sockets_fill_only_their_address_share_of_the_pending_pool(tmp_path, web, small_files):
    _, port, dimse_port = web(endpoint_extra="max_pending = 8\nmax_pending_per_address = 4")
    idle = [raw_connection(port, source="127.0.0.2") for _ in range(4)]
    try:
        over = raw_connection(port, source="127.0.0.2")
        assert closed_by_peer(over, timeout=10)  # the fifth from that address: closed at once
        over.close()
        status, _, _ = post(port, STUDIES, multipart_related(small_files[:1]), stow_content_type())
        assert status == 200  # another address still gets in
        assert echo_over_raw_socket(dimse_port) == 0x0000
    finally:
        for sock in idle:
            sock.close()


def test_allowed_hosts_refuse_other_addresses_with_403(tmp_path, web, small_files):
    _, port, _ = web(endpoint_extra='allowed_hosts = ["10.0.0.0/8"]')
    status, _, body = post(port, STUDIES, multipart_related(small_files[:1]), stow_content_type())
    assert status == 403


def test_unknown_routes_and_methods_are_answered_and_counted(tmp_path, web, write_config):
    service, port, _ = web()
    status, _, _ = post(port, "/dicom-web/nothing-here", b"", "text/plain")
    assert status == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}{STUDIES}/1.2.3", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    exposition = service.metrics.exposition().decode()
    assert 'dicom_router_http_requests_total{endpoint="web",route="other",status="404"} 1.0' in exposition


def test_every_log_line_about_a_stow_request_names_it_and_its_peer(tmp_path, web, small_files, caplog):
    _, port, _ = web()
    with caplog.at_level("DEBUG"):
        status, headers, _ = post(port, STUDIES, multipart_related(small_files[:2]), stow_content_type())
    assert status == 200
    request_id = headers["X-Request-Id"]
    about = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("request_id") == request_id]
    received = [line for line in about if line.get("event") == "instance received"]
    assert len(received) == 2 and all(
        line["sop_instance_uid"] and line["peer"].startswith("127.0.0.1:") for line in received
    )
    assert any(line.get("event") == "http request" and line["status"] == 200 for line in about)
