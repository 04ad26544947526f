"""A dicomweb endpoint through the router's life: SIGTERM during an upload, a reload that adds
and changes endpoints, and several receiving processes sharing the port."""

from __future__ import annotations

import json
import signal

from tests.conftest import router_section
from tests.support.cli import ServeProcess
from tests.support.dicomweb import (
    dicomweb_endpoint_toml,
    multipart_related,
    post,
    raw_connection,
    request_head,
    stow_content_type,
    stow_uids,
)
from tests.support.peers import free_port, wait_for
from tests.support.spool import partial_files as spool_partial_files


def partial_files(data_dir):
    """Received bytes in ``objects/`` and ``incoming/``."""
    return spool_partial_files(data_dir / "objects", data_dir / "incoming")


STUDIES = "/dicom-web/studies"


def config_text(tmp_path, endpoints: str, names: list[str], router_extra: str = "") -> str:
    return (
        router_section(tmp_path / "data", router_extra)
        + endpoints
        + f"""
[backends.archive]
type = "filesystem"
path = "{tmp_path / "archive"}"
template = "{{SOPInstanceUID}}.dcm"

[pipelines.default]
endpoints = {json.dumps(names)}
backends = ["archive"]
"""
    )


def test_sigterm_during_an_upload_stops_within_the_grace_acknowledges_nothing_and_leaves_nothing(
    tmp_path, write_config, ct_files
):
    port = free_port()
    config = write_config(
        config_text(tmp_path, dicomweb_endpoint_toml("web", port), ["web"], "shutdown_grace_seconds = 1")
    )
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    body = multipart_related(ct_files[:1])
    try:
        with raw_connection(port) as stalled:
            stalled.sendall(request_head(STUDIES, stow_content_type(), len(body)) + body[: len(body) * 3 // 4])
            wait_for(lambda: partial_files(tmp_path / "data"), 30, message="the part being written to the spool")
            serve.proc.send_signal(signal.SIGTERM)
            assert serve.proc.wait(60) == 0
            answer = stalled.recv(65536)
    finally:
        serve.stop()
    assert not answer.startswith(b"HTTP/1.1 200")  # never acknowledged
    log_text = serve.log_text()
    assert "router stopped" in log_text and "Traceback" not in log_text
    assert partial_files(tmp_path / "data") == []  # the part's bytes removed (sqlite files aside)


def test_a_reload_adds_a_dicomweb_endpoint_and_changes_one(tmp_path, write_config, small_files):
    first, second = free_port(), free_port()
    config = write_config(config_text(tmp_path, dicomweb_endpoint_toml("web", first), ["web"]))
    serve = ServeProcess(config, tmp_path / "serve.log").start(first)
    try:
        assert post(first, STUDIES, multipart_related(small_files[:1]), stow_content_type())[0] == 200
        config.write_text(
            config_text(
                tmp_path,
                dicomweb_endpoint_toml("web", first, 'allowed_hosts = ["10.0.0.0/8"]')
                + dicomweb_endpoint_toml("more", second),
                ["web", "more"],
            )
        )
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in serve.log_text(), 30, message="the reload")
        status, _, body = post(second, STUDIES, multipart_related(small_files[1:2]), stow_content_type())
        assert status == 200 and len(stow_uids(body)[0]) == 1  # the added endpoint listens
        assert post(first, STUDIES, multipart_related(small_files[2:3]), stow_content_type())[0] == 403  # new rules
    finally:
        assert serve.stop() == 0


def test_two_receiving_processes_share_the_dicomweb_port(tmp_path, write_config, small_files):
    port = free_port()
    config = write_config(config_text(tmp_path, dicomweb_endpoint_toml("web", port), ["web"], "receive_processes = 2"))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        wait_for(
            lambda: '"process": "receive-1"' in serve.log_text() and "router started" in serve.log_text(),
            30,
            message="the second receiving process",
        )
        for path in small_files[:20]:  # a new connection each: the kernel spreads them over the processes
            assert post(port, STUDIES, multipart_related([path]), stow_content_type())[0] == 200
        wait_for(lambda: len(list((tmp_path / "archive").glob("*.dcm"))) == 20, 60, message="all archived")
        receivers = {
            json.loads(line).get("process") for line in serve.log_text().splitlines() if '"instance received"' in line
        }
        assert receivers == {"receive", "receive-1"}
    finally:
        assert serve.stop() == 0
