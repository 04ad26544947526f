"""Signals on the `serve` subprocess: SIGTERM during a transfer loses nothing acknowledged."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from pynetdicom import AE

from router import engine
from tests.conftest import dimse_backend_toml, endpoint_section, router_toml
from tests.support.cli import ServeProcess, router_command
from tests.support.dicomfiles import digests_by_uid
from tests.support.peers import (
    dcmtk,
    dcmtk_env,
    free_port,
    start_storescp,
    stop_process,
    wait_for,
)
from tests.support.spool import spooled_files


@pytest.mark.dcmtk
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_transfer_loses_nothing_acknowledged(tmp_path, write_config, small_files, sig):
    port, dest_port = free_port(), free_port()
    dest = tmp_path / "dest"
    config = write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "DEST"), ["pacs"]))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    sending = small_files * 3  # long enough to be under way when the signal lands, on a fast machine too
    sender_log = open(tmp_path / "storescu.log", "w")  # a file: an unread pipe would stall storescu
    sender = subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aec", "DICOM_ROUTER", "127.0.0.1", str(port), *map(str, sending)],
        env=dcmtk_env(),
        stdout=sender_log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: len(spooled_files(tmp_path / "data")) >= 10, 30, message="the transfer to be under way")
    serve.proc.send_signal(sig)
    assert serve.proc.wait(60) == 0  # the open association finished within the grace period
    sender.wait(60)
    sender_log.close()
    output = (tmp_path / "storescu.log").read_text()
    acknowledged = output.count("Received Store Response (Success)")
    assert acknowledged == len(sending), output[-2000:]  # the open association was let finish
    assert "waiting for open associations to finish" in serve.log_text()
    # the destination was down all along: everything acknowledged waits in the queue, then goes out
    storescp = start_storescp(dest, dest_port, "DEST")
    again = ServeProcess(config, tmp_path / "serve2.log").start(port)
    try:
        wait_for(
            lambda: not spooled_files(tmp_path / "data"),
            120,
            message="every acknowledged instance delivered (the spool empty)",
        )
    finally:
        assert again.stop() == 0
        stop_process(storescp)
    assert digests_by_uid(dest.iterdir()) == digests_by_uid(small_files)


def test_an_association_left_open_is_aborted_after_the_grace_period(tmp_path, write_config):
    port = free_port()
    text = router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"])
    text = text.replace("min_free_space_mb = 0", "min_free_space_mb = 0\nshutdown_grace_seconds = 1")
    serve = ServeProcess(write_config(text), tmp_path / "serve.log").start(port)
    engine.configure()
    ae = AE("IDLER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
    assert assoc.is_established
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(60) == 0
    wait_for(lambda: not assoc.is_established, 10, message="the idle association to be aborted")
    assert assoc.is_aborted
    assert "aborting an association still open at the end of the shutdown grace period" in serve.log_text()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ae.active_associations:
        time.sleep(0.05)


def test_systemd_notify_ready_watchdog_and_stopping(tmp_path, write_config):
    """Under systemd (Type=notify): READY=1 once the endpoint listens, WATCHDOG=1 pings, STOPPING=1."""
    import os
    import socket as socketlib

    port = free_port()
    notify_path = tmp_path / "notify.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    config = write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"]))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    serve = subprocess.Popen(
        [*router_command(), "serve", "-c", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
            if any("READY=1" in m for m in messages):
                with socketlib.create_connection(("127.0.0.1", port), timeout=5):
                    pass  # the endpoint listens by the time READY=1 is sent
        serve.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        listener.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=listening on ingest" in ready and f"MAINPID={serve.pid}" in ready


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    from tests.conftest import ROOT

    text = (ROOT / "Dockerfile").read_text()
    assert "USER dicom-router" in text and "HEALTHCHECK" in text and "/healthz" in text


def open_ct_association(port: int):
    """An association from MODALITY proposing CT Image Storage, left open for the test to use."""
    engine.configure()
    ae = AE("MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    return ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")


@pytest.mark.parametrize("how", ["SIGHUP", "reload command"])
def test_reload_adds_a_backend_while_an_association_stays_open(tmp_path, write_config, small_files, how):
    from tests.support.cli import run_cli
    from tests.support.peers import StorageSCP

    port = free_port()
    with (
        StorageSCP(tmp_path / "first", ae_title="FIRST") as first,
        StorageSCP(tmp_path / "second", ae_title="SECOND") as second,
    ):
        one = dimse_backend_toml(first.port, "FIRST", "first")
        two = dimse_backend_toml(second.port, "SECOND", "second")
        config = write_config(router_toml(tmp_path / "data", port, one, ["first"]))
        serve = ServeProcess(config, tmp_path / "serve.log").start(port)
        try:
            assoc = open_ct_association(port)
            assert int(assoc.send_c_store(small_files[0]).Status) == 0
            config.write_text(router_toml(tmp_path / "data", port, one + two, ["first", "second"]))
            if how == "SIGHUP":
                serve.proc.send_signal(signal.SIGHUP)
            else:
                result = run_cli("reload", "-c", config)
                assert result.returncode == 0, result.stderr
            wait_for(lambda: "configuration reloaded" in serve.log_text(), 30, message="the reload")
            assert assoc.is_established  # the open association was not dropped
            assert int(assoc.send_c_store(small_files[1]).Status) == 0  # and keeps working
            assoc.release()
            wait_for(
                lambda: len(first.received) == 2 and len(second.received) == 1,
                30,
                message="deliveries under the new configuration",
            )
            assert "backends_added" in serve.log_text()
        finally:
            assert serve.stop() == 0


def test_an_invalid_reload_keeps_the_old_configuration(tmp_path, write_config, small_files):
    from tests.integration.test_forwarding import send_with_pynetdicom
    from tests.support.cli import run_cli

    port = free_port()
    config = write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"]))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        good = config.read_text()
        config.write_text(good.replace('backends = ["pacs"]', 'backends = ["nowhere"]'))
        refused = run_cli("reload", "-c", config)
        assert refused.returncode == 78 and "no backend named 'nowhere'" in refused.stderr
        serve.proc.send_signal(signal.SIGHUP)  # the router itself also refuses it
        wait_for(lambda: "reload refused" in serve.log_text(), 30, message="the refusal in the log")
        assert send_with_pynetdicom(port, small_files[:1]) == [0]  # still running the old one
    finally:
        assert serve.stop() == 0


def test_reload_changes_and_adds_endpoints_without_dropping_associations(tmp_path, write_config, small_files):
    from tests.integration.test_forwarding import send_with_pynetdicom

    port, new_port = free_port(), free_port()
    archive = f'[backends.archive]\ntype = "filesystem"\npath = "{tmp_path / "archive"}"\n'
    config = write_config(router_toml(tmp_path / "data", port, archive, ["archive"]))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        assoc = open_ct_association(port)
        assert assoc.is_established
        text = router_toml(
            tmp_path / "data", port, archive, ["archive"], endpoint_extra='allowed_calling_aets = ["CT_*"]'
        )
        text += endpoint_section("second", new_port)
        config.write_text(text.replace('endpoints = ["ingest"]', 'endpoints = ["ingest", "second"]'))
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in serve.log_text(), 30, message="the reload")
        assert int(assoc.send_c_store(small_files[0]).Status) == 0  # admitted under the old rules, still open
        assoc.release()
        assert send_with_pynetdicom(new_port, small_files[1:2]) == [0]  # the added endpoint listens
        refused = AE("MODALITY")
        refused.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        late = refused.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
        assert late.is_rejected  # the changed endpoint applies its new rules to new associations
        assert send_with_pynetdicom(port, small_files[2:3], calling="CT_01") == [0]
        log_text = serve.log_text()
        assert "endpoints_added" in log_text and "endpoints_changed" in log_text
    finally:
        assert serve.stop() == 0


def test_a_router_whose_data_directory_vanished_still_stops_and_leaves_no_child(tmp_path, write_config):
    """Stopping logs what failed and goes on: the delivery process is stopped and the router
    exits, instead of waiting for ever on a child it never told to stop."""
    import psutil

    port = free_port()
    config = write_config(router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"]))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    wait_for(lambda: '"delivery started"' in serve.log_text(), 30, message="the delivery process")
    children = psutil.Process(serve.pid).children(recursive=True)
    import shutil

    shutil.rmtree(tmp_path / "data")
    serve.proc.send_signal(signal.SIGTERM)
    serve.proc.wait(90)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [" ".join(c.cmdline()) for c in alive]
    assert "router stopped" in serve.log_text()
