"""Deliveries to a ``dicomweb`` backend by STOW-RS: Orthanc with its DICOMweb plugin as the
archive, a scripted server for the answers archives give rarely, the same queue promises."""

from __future__ import annotations

import json
import urllib.request

import pytest

from router.config import load_config
from router.service import RouterService
from tests.conftest import router_toml
from tests.support.cli import run_cli
from tests.support.dicomfiles import dataset_digest, digests_by_uid
from tests.support.pacs import have_orthanc_dicomweb, start_orthanc
from tests.support.peers import c_store, free_port, storescu, wait_for
from tests.support.stowpeer import ScriptedStowServer

orthanc_web = pytest.mark.skipif(
    not have_orthanc_dicomweb(), reason="needs Orthanc with its DICOMweb plugin (orthanc-dicomweb): run tests/run.sh"
)


def dicomweb_backend_toml(url: str, name: str = "cloud", extra: str = "") -> str:
    return f'\n[backends.{name}]\ntype = "dicomweb"\nurl = "{url}"\n{extra}\n'


def orthanc_instances(upstream, auth: tuple[str, str] | None = None) -> dict[str, str]:
    """SOP Instance UID -> data set digest of every instance Orthanc holds (read over its REST API)."""
    base = f"http://127.0.0.1:{upstream.http_port}"
    opener = urllib.request.build_opener()
    if auth:
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, base, *auth)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
    out = {}
    for orthanc_id in json.loads(opener.open(f"{base}/instances", timeout=30).read()):
        tags = json.loads(opener.open(f"{base}/instances/{orthanc_id}/simplified-tags", timeout=30).read())
        path = upstream.log_path.parent / f"{orthanc_id}.dcm"
        path.write_bytes(opener.open(f"{base}/instances/{orthanc_id}/file", timeout=60).read())
        out[tags["SOPInstanceUID"]] = dataset_digest(path)
    return out


def delivered(service: RouterService, backend: str = "cloud") -> int:
    return service.queue.counts().get(backend, {}).get("delivered", 0)


@orthanc_web
@pytest.mark.dcmtk
def test_dimse_in_stow_out_reaches_orthanc_byte_identical(tmp_path, write_config, start_router, port, ct_files):
    orthanc = start_orthanc(tmp_path / "orthanc", {}, dicomweb=True)
    try:
        backend = dicomweb_backend_toml(orthanc.dicomweb_url, extra="max_instances_per_request = 5")
        service = start_router(write_config(router_toml(tmp_path / "data", port, backend, ["cloud"])))
        assert storescu(port, ct_files).returncode == 0
        wait_for(lambda: delivered(service) == len(ct_files), 60, message="all delivered")
        assert orthanc_instances(orthanc) == digests_by_uid(ct_files)
    finally:
        orthanc.stop()


@orthanc_web
@pytest.mark.dcmtk
def test_an_archive_that_is_down_gets_everything_once_it_is_up_across_a_router_restart(
    tmp_path, write_config, port, small_files
):
    http_port = free_port()
    files = small_files[:6]
    config = write_config(
        router_toml(
            tmp_path / "data", port, dicomweb_backend_toml(f"http://127.0.0.1:{http_port}/dicom-web"), ["cloud"]
        )
    )
    service = RouterService(load_config(config))
    service.start()
    try:
        assert storescu(port, files).returncode == 0  # acknowledged: durable, queued
        reasons = wait_for(lambda: service.queue.waiting_reasons().get("cloud"), 30, message="a failed attempt")
        assert "connection refused" in reasons[0][0]
    finally:
        service.stop()
    orthanc = start_orthanc(tmp_path / "orthanc", {}, dicomweb=True, http_port=http_port)
    service = RouterService(load_config(config))
    service.start()
    try:
        wait_for(lambda: delivered(service) == len(files), 60, message="all delivered after the restart")
        assert orthanc_instances(orthanc) == digests_by_uid(files)
        assert service.queue.counts()["cloud"]["pending"] == 0 and service.queue.counts()["cloud"]["quarantined"] == 0
    finally:
        service.stop()
        orthanc.stop()


@orthanc_web
def test_basic_credentials_from_a_file_and_the_command_line(tmp_path, write_config, small_files):
    orthanc = start_orthanc(tmp_path / "orthanc", {}, dicomweb=True, users={"router": "s3cret"})
    try:
        (tmp_path / "good.pw").write_text("s3cret\n")
        (tmp_path / "bad.pw").write_text("wrong\n")
        good = dicomweb_backend_toml(
            orthanc.dicomweb_url,
            "cloud",
            f'auth = {{ type = "basic", username = "router", password_file = "{tmp_path / "good.pw"}" }}',
        )
        bad = dicomweb_backend_toml(
            orthanc.dicomweb_url,
            "wrong",
            f'auth = {{ type = "basic", username = "router", password_file = "{tmp_path / "bad.pw"}" }}',
        )
        config = write_config(router_toml(tmp_path / "data", free_port(), good + bad, ["cloud"]))
        echo = run_cli("echo", "cloud", "-c", config)
        assert echo.returncode == 0 and "HTTP 200" in echo.stdout, echo.stderr
        refused = run_cli("echo", "wrong", "-c", config)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "credentials" in refused.stderr
        sent = run_cli("send", small_files[0].parent, "--to", "cloud", "-c", config)
        assert sent.returncode == 0, sent.stderr
        assert f"{len(small_files)} sent, 0 with warnings, 0 failed" in sent.stdout
        assert set(orthanc_instances(orthanc, ("router", "s3cret"))) == set(digests_by_uid(small_files))
        down = run_cli(
            "echo",
            "cloud",
            "-c",
            write_config(
                router_toml(
                    tmp_path / "data2",
                    free_port(),
                    dicomweb_backend_toml(f"http://127.0.0.1:{free_port()}/dicom-web"),
                    ["cloud"],
                ),
                "down.toml",
            ),
        )
        assert down.returncode == 1 and "connection refused" in down.stderr
    finally:
        orthanc.stop()


def test_each_instance_gets_its_own_outcome_from_the_answer(tmp_path, write_config, start_router, port, small_files):
    """FailureReason 0xA900 quarantines that instance with the reason; its neighbours in the same
    request are delivered; 0xA700 is retried."""
    files = small_files[:4]
    uids = list(digests_by_uid(files))
    refused, busy = uids[1], uids[2]
    attempts = {"busy": 0}

    def answer(sent):
        failed = {}
        if refused in sent:
            failed[refused] = 0xA900
        if busy in sent and attempts["busy"] == 0:
            attempts["busy"] += 1
            failed[busy] = 0xA700
        return (202 if len(failed) < len(sent) else 409), failed

    with ScriptedStowServer(answer) as server:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dicomweb_backend_toml(server.url), ["cloud"]))
        )
        assert storescu(port, files).returncode == 0
        wait_for(lambda: delivered(service) == 3, 60, message="three delivered")
        (quarantined,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="one quarantined")
        assert quarantined.sop_instance_uid == refused and "FailureReason 0xA900" in quarantined.reason
        assert sum(busy in r for r in server.requests) == 2  # retried after 0xA700
        assert max(len(r) for r in server.requests) > 1  # several instances shared a request


def test_server_errors_are_retried_and_refused_credentials_postpone_the_queue(
    tmp_path, write_config, start_router, port, small_files
):
    script = {"status": 503}

    def answer(sent):
        return script["status"], ({} if script["status"] == 200 else None)

    with ScriptedStowServer(answer) as server:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dicomweb_backend_toml(server.url), ["cloud"]))
        )
        assert storescu(port, small_files[:2]).returncode == 0
        retried = wait_for(
            lambda: [d for d in service.queue.list_state("pending") if d.reason], 30, message="a retried delivery"
        )
        assert "answered 503" in retried[0].reason
        script["status"] = 401
        wait_for(
            lambda: any("credentials refused" in r for r, _ in service.queue.waiting_reasons().get("cloud", [])),
            30,
            message="the queue postponed for refused credentials",
        )
        assert service.queue.list_state("quarantined") == []
        script["status"] = 200
        wait_for(lambda: delivered(service) == 2, 60, message="delivered once the server accepts")


def test_a_request_the_server_calls_bad_is_sent_again_one_instance_each(
    tmp_path, write_config, start_router, port, small_files
):
    files = small_files[:3]
    bad = list(digests_by_uid(files))[0]

    def answer(sent):
        return (400, None) if bad in sent else (200, {})

    with ScriptedStowServer(answer) as server:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dicomweb_backend_toml(server.url), ["cloud"]))
        )
        assert storescu(port, files).returncode == 0
        wait_for(lambda: delivered(service) == 2, 60, message="the good ones delivered")
        (quarantined,) = wait_for(lambda: service.queue.list_state("quarantined"), 30, message="the bad one")
        assert quarantined.sop_instance_uid == bad and "answered 400" in quarantined.reason


def test_an_unreadable_credentials_file_holds_the_queue_until_it_is_there(
    tmp_path, write_config, start_router, port, small_files
):
    """The token file is the backend's problem: the queue waits with that reason, nothing is
    quarantined, and deliveries go out once the file exists (it is read for each request)."""
    token = tmp_path / "cloud.token"
    with ScriptedStowServer(lambda uids: (200, {})) as server:
        backend = dicomweb_backend_toml(server.url, extra=f'auth = {{ type = "bearer", token_file = "{token}" }}')
        service = start_router(write_config(router_toml(tmp_path / "data", port, backend, ["cloud"])))
        assert storescu(port, small_files[:2]).returncode == 0
        wait_for(
            lambda: any(
                "cannot read the credentials" in r for r, _ in service.queue.waiting_reasons().get("cloud", [])
            ),
            30,
            message="the queue held for the credentials",
        )
        assert service.queue.list_state("quarantined") == []
        token.write_text("let-me-in\n")
        wait_for(lambda: delivered(service) == 2, 60, message="delivered once the token is there")
        assert server.headers[-1]["Authorization"] == "Bearer let-me-in"


def _sent_j2k(tmp_path, port):
    """Send a two-frame JPEG 2000 Lossless image to the router (its pixels returned)."""
    from pydicom.uid import JPEG2000Lossless

    from router.transcode.files import transcode_file
    from tests.support.images import write_image

    plain = tmp_path / "plain.dcm"
    pixels = write_image(plain, rows=48, columns=40, bits_stored=12, frames=2)
    transcode_file(plain, tmp_path / "j2k.dcm", JPEG2000Lossless)
    assert c_store(port, tmp_path / "j2k.dcm", JPEG2000Lossless) == 0
    return pixels


def _kept(folder):
    from pydicom import dcmread

    return [dcmread(p) for p in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)]


def test_always_stows_in_the_first_syntax_of_the_list(tmp_path, write_config, start_router, port):
    import numpy as np

    (tmp_path / "kept").mkdir()
    with ScriptedStowServer(lambda sent: (200, {}), keep=tmp_path / "kept") as server:
        policy = 'transfer_syntaxes = ["JPEGLSLossless"]\ntranscode = "always"'
        service = start_router(
            write_config(
                router_toml(tmp_path / "data", port, dicomweb_backend_toml(server.url, extra=policy), ["cloud"])
            )
        )
        pixels = _sent_j2k(tmp_path, port)
        wait_for(lambda: delivered(service) == 1, 60, message="delivered")
    (ds,) = _kept(tmp_path / "kept")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_a_syntax_the_archive_refuses_is_stowed_again_in_the_next_one(tmp_path, write_config, start_router, port):
    import numpy as np

    refused: list[str] = []

    def answer(sent):
        if not refused:
            refused.extend(sent)
            return 409, {uid: 0xC122 for uid in sent}
        return 200, {}

    (tmp_path / "kept").mkdir()
    with ScriptedStowServer(answer, keep=tmp_path / "kept") as server:
        service = start_router(
            write_config(router_toml(tmp_path / "data", port, dicomweb_backend_toml(server.url), ["cloud"]))
        )
        pixels = _sent_j2k(tmp_path, port)
        wait_for(lambda: delivered(service) == 1, 60, message="delivered")
        assert service.queue.list_state("quarantined") == []
    first, second = _kept(tmp_path / "kept")
    assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert second.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(second.pixel_array, pixels)
