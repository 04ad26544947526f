"""Several receiving processes share an endpoint's port; queue, spool and metrics stay right across them."""

from __future__ import annotations

import signal
import subprocess
import urllib.request

import psutil
import pytest

from tests.conftest import dimse_backend_toml, router_toml
from tests.integration.test_admin import metric
from tests.support.cli import ServeProcess
from tests.support.dicomfiles import digests_by_uid
from tests.support.peers import (
    dcmtk,
    dcmtk_env,
    free_port,
    start_storescp,
    stop_process,
    wait_for,
)


@pytest.mark.dcmtk
def test_two_receiving_processes_share_the_work(tmp_path, write_config, small_files):
    port, dest_port, admin_port = free_port(), free_port(), free_port()
    storescp = start_storescp(tmp_path / "dest", dest_port, "DEST")
    text = router_toml(tmp_path / "data", port, dimse_backend_toml(dest_port, "DEST"), ["pacs"])
    text = text.replace("min_free_space_mb = 0", "min_free_space_mb = 0\nreceive_processes = 2")
    text += f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    serve = ServeProcess(write_config(text), tmp_path / "serve.log").start(port)
    try:
        wait_for(lambda: "receive-1" in serve.log_text(), 30, message="the second receiving process")
        names = [p.name() for p in psutil.Process(serve.pid).children(recursive=True)]
        halves = [small_files[:60], small_files[60:]]
        senders = [
            subprocess.Popen(
                [dcmtk("storescu"), "-aec", "DICOM_ROUTER", "127.0.0.1", str(port), *map(str, half)],
                env=dcmtk_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for half in halves
            for _ in range(2)
        ]
        for sender in senders:
            assert sender.wait(120) == 0
        wait_for(lambda: len(list((tmp_path / "dest").iterdir())) == len(small_files), 60, message="every instance")

        def delivered() -> float:  # successes are committed in batches, a little after the files arrive
            nonlocal text
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
                text = r.read().decode()
            return metric(text, "dicom_router_deliveries_total", backend="pacs")

        def superseded() -> int:  # each instance was sent twice: a second copy may supersede the first
            from router.spool.queue import DeliveryQueue

            return DeliveryQueue(tmp_path / "data" / "queue.db").events().get("pacs", {}).get("superseded", 0)

        text = ""
        wait_for(lambda: delivered() + superseded() == 2 * len(small_files), 60, message="every delivery recorded")
        superseded_total = superseded()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(90) == 0
    finally:
        serve.stop()
        stop_process(storescp)
    assert len([n for n in names if "python" in n or "dicom-router" in n]) >= 3  # delivery + a receiver (+ tracker)
    assert digests_by_uid((tmp_path / "dest").iterdir()) == digests_by_uid(small_files)
    assert metric(text, "dicom_router_instances_received_total", endpoint="ingest") == 2 * len(small_files)
    assert metric(text, "dicom_router_deliveries_total", backend="pacs") + superseded_total == 2 * len(small_files)
    log_text = serve.log_text()
    assert '"process": "receive-1"' in log_text and '"process": "receive"' in log_text


def test_retrieve_by_move_needs_one_receiving_process(tmp_path, write_config):
    from tests.support.cli import run_cli

    text = router_toml(tmp_path / "data", free_port(), dimse_backend_toml(free_port()), ["pacs"])
    text = text.replace("min_free_space_mb = 0", "min_free_space_mb = 0\nreceive_processes = 2")
    text = text.replace('ae_title = "PACS"', 'ae_title = "PACS"\nretrieve = "move"', 1)
    result = run_cli("check", "-c", write_config(text), "--tier", "references")
    assert result.returncode == 78 and "backends.pacs.retrieve" in result.stderr
