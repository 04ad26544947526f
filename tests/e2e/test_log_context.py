"""pynetdicom's own log lines name the association they are about, like the router's."""

from __future__ import annotations

import json
import socket

from tests.conftest import dimse_backend_toml, router_toml
from tests.support import pdus
from tests.support.cli import ServeProcess
from tests.support.peers import StorageSCP, free_port, wait_for

BACKENDS = '\n[backends.archive]\ntype = "filesystem"\npath = "archive"\n'


def test_the_idle_timeout_line_names_the_association_and_its_peer(tmp_path, write_config):
    port = free_port()
    config = write_config(
        router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra="network_timeout = 1")
    )
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(pdus.associate_rq())
        assert pdus.read_pdu(sock, 10)[0] == pdus.A_ASSOCIATE_AC
        local = "{}:{}".format(*sock.getsockname()[:2])
        assert pdus.connection_closed(sock, 30)  # the router ends the idle association
        sock.close()
        wait_for(lambda: "Network timeout reached" in serve.log_text(), 10, message="the idle timeout's line")
    finally:
        assert serve.stop() == 0
    lines = [json.loads(line) for line in serve.log_text().splitlines() if line.startswith("{")]
    (accepted,) = [line for line in lines if line["event"] == "association accepted"]
    (timeout,) = [line for line in lines if line["event"] == "Network timeout reached"]
    assert timeout["logger"].startswith("pynetdicom")
    assert accepted["peer"] == local
    assert (timeout["assoc_id"], timeout["peer"], timeout["endpoint"]) == (
        accepted["assoc_id"],
        local,
        accepted["endpoint"],
    )


def test_at_the_default_level_the_log_says_where_every_instance_went(tmp_path, write_config, small_files):
    """One ``info`` line when an instance is acknowledged and one when each delivery ends: from
    the log alone, which study from which modality reached which backend, and when."""
    from pydicom import dcmread

    from tests.support.cli import run_cli

    port = free_port()
    with StorageSCP(tmp_path / "pacs") as pacs:
        backends = BACKENDS + dimse_backend_toml(pacs.port, ae_title="STORE_SCP")
        config = write_config(router_toml(tmp_path / "data", port, backends, ["archive", "pacs"]))
        serve = ServeProcess(config, tmp_path / "serve.log").start(port)
        try:
            sent = run_cli("send", small_files[0], "--to", f"127.0.0.1:{port}:DICOM_ROUTER")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: serve.log_text().count('"event": "delivered"') == 2, 30, message="two deliveries")
        finally:
            assert serve.stop() == 0
    source = dcmread(small_files[0], stop_before_pixels=True)
    lines = [json.loads(line) for line in serve.log_text().splitlines() if line.startswith("{")]
    (received,) = [line for line in lines if line["event"] == "instance received"]
    assert received["level"] == "info"
    assert received["sop_instance_uid"] == source.SOPInstanceUID
    assert received["study_instance_uid"] == source.StudyInstanceUID
    assert received["calling_aet"] and received["peer"].startswith("127.0.0.1:") and received["assoc_id"]
    assert received["size"] > len(dcmread(small_files[0]).PixelData)  # the spooled Part-10 file (its own meta)
    assert sorted(received["backends"]) == ["archive", "pacs"] and received["pipelines"]
    delivered = {line["backend"]: line for line in lines if line["event"] == "delivered"}
    assert sorted(delivered) == ["archive", "pacs"]
    for line in delivered.values():
        assert line["level"] == "info" and line["sop_instance_uid"] == source.SOPInstanceUID
        assert line["attempts"] == 1 and line["queued_s"] >= 0
    assert delivered["pacs"]["status"] == "0x0000"  # the C-STORE status; a folder has none
