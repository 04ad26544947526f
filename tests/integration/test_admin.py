"""The admin HTTP server answers health, readiness and queue state."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.conftest import dimse_backend_toml, router_toml
from tests.integration.test_forwarding import send_with_pynetdicom
from tests.support.peers import free_port


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_ready_and_queues(tmp_path, write_config, start_router, port, small_files):
    admin_port, dead_port = free_port(), free_port()
    backends = dimse_backend_toml(dead_port)
    text = router_toml(tmp_path / "data", port, backends, ["pacs"]) + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    service = start_router(write_config(text))
    assert get(admin_port, "/healthz") == (200, {"status": "alive"})
    status, body = get(admin_port, "/readyz")
    assert status == 200 and body["ready"] is True
    assert send_with_pynetdicom(port, small_files[:3]) == [0, 0, 0]
    status, queues = get(admin_port, "/api/queues")
    assert status == 200
    assert queues["pacs"]["pending"] + queues["pacs"]["in_flight"] == 3
    assert queues["pacs"]["oldest_waiting_seconds"] >= 0
    service.spool.min_free_bytes = 1 << 62  # as if the disk were full
    status, body = get(admin_port, "/readyz")
    assert status == 503 and body["checks"]["free_space_above_floor"] is False
    assert get(admin_port, "/nope")[0] == 404
    service.spool.min_free_bytes = 0
    service.delivery.kill()  # nothing restarts it here: the test runs no serve loop
    service.delivery.join(10)
    status, body = get(admin_port, "/readyz")
    assert status == 503 and body["checks"] == {**body["checks"], "delivery_running": False}


def test_a_failing_admin_check_answers_500_without_its_details(tmp_path, write_config, start_router, port, caplog):
    admin_port = free_port()
    text = (
        router_toml(tmp_path / "data", port, dimse_backend_toml(free_port()), ["pacs"])
        + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    )
    service = start_router(write_config(text))

    def broken():
        raise RuntimeError("secret-internal-detail")

    service.queue.counts = broken
    status, body = get(admin_port, "/api/queues")
    assert status == 500 and "secret-internal-detail" not in json.dumps(body)
    assert any("secret-internal-detail" in str(r.msg) for r in caplog.records)  # the log has it


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text output."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        found = dict(part.split("=", 1) for part in head[len(name) + 1 : -1].split(",")) if "{" in head else {}
        if {k: v.strip('"') for k, v in found.items()} == {k: str(v) for k, v in labels.items()}:
            return float(value)
    return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def test_metrics_after_a_transfer(tmp_path, write_config, start_router, port, small_files):
    from tests.support.peers import StorageSCP, wait_for

    admin_port = free_port()
    with StorageSCP(tmp_path / "dest") as scp:
        backends = dimse_backend_toml(scp.port, "STORE_SCP") + dimse_backend_toml(free_port(), "DEAD", "dead")
        extra = """
[[pipelines.default.middleware]]
type = "filter"
match = { InstanceNumber = { max = 8 } }
"""
        text = router_toml(tmp_path / "data", port, backends, ["pacs", "dead"], extra=extra)
        text += f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
        service = start_router(write_config(text))
        sizes = sum(p.stat().st_size for p in small_files[:10])
        assert send_with_pynetdicom(port, small_files[:10]) == [0] * 10
        wait_for(lambda: len(scp.received) == 8, 30, message="8 deliveries")
        wait_for(
            lambda: service.queue.events().get("dead", {}).get("failure:unreachable"),
            30,
            message="the dead backend to be tried",
        )
        wait_for(  # the SCP has them before the router records their success (in batches)
            lambda: metric(scrape(admin_port), "dicom_router_deliveries_total", backend="pacs") == 8,
            30,
            message="8 deliveries counted",
        )
        text = scrape(admin_port)
    assert metric(text, "dicom_router_associations_total", endpoint="ingest", result="accepted") == 1
    assert metric(text, "dicom_router_instances_received_total", endpoint="ingest") == 10
    assert metric(text, "dicom_router_received_bytes_total", endpoint="ingest") >= sizes - 10 * 400
    assert metric(text, "dicom_router_responses_total", endpoint="ingest", service="C-STORE", status="0x0000") == 10
    assert (
        metric(
            text,
            "dicom_router_stage_verdicts_total",
            pipeline="default",
            stage="default.middleware[0](filter)",
            verdict="drop",
        )
        == 2
    )
    assert metric(text, "dicom_router_deliveries_total", backend="pacs") == 8
    assert metric(text, "dicom_router_queue_depth", backend="pacs", state="pending") == 0
    assert (
        metric(text, "dicom_router_queue_depth", backend="dead", state="pending")
        + metric(text, "dicom_router_queue_depth", backend="dead", state="in_flight")
        == 8
    )
    assert metric(text, "dicom_router_queue_oldest_age_seconds", backend="dead") > 0
    assert metric(text, "dicom_router_delivery_failures_total", backend="dead", **{"class": "unreachable"}) >= 1
    assert metric(text, "dicom_router_quarantined", backend="pacs") == 0


def test_status_command_summarises_the_running_router(tmp_path, write_config, start_router, port, small_files):
    from tests.support.cli import run_cli

    admin_port, dead_port = free_port(), free_port()
    text = router_toml(tmp_path / "data", port, dimse_backend_toml(dead_port), ["pacs"])
    config = write_config(text + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    start_router(config)
    assert send_with_pynetdicom(port, small_files[:2]) == [0, 0]
    result = run_cli("status", "-c", config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("router READY")
    assert "ingest" in out and "listening" in out
    assert "pacs" in out and "dimse" in out
    no_admin = write_config(text, "no-admin.toml")
    missing = run_cli("status", "-c", no_admin)
    assert missing.returncode == 1 and "no [admin] table" in missing.stderr


def _admin_router(tmp_path, write_config, start_router, port, extra: str = ""):
    admin_port = free_port()
    text = router_toml(
        tmp_path / "data", port, '[backends.archive]\ntype = "filesystem"\npath = "archive"\n', ["archive"]
    )
    text += f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\nmax_connections = 8\nrequest_timeout = 2\n{extra}'
    service = start_router(write_config(text))
    return service, admin_port


def test_idle_admin_connections_never_starve_dicom(tmp_path, write_config, start_router, port, small_files):
    """Hundreds of idle admin connections: the admin server keeps its own fixed budget (its
    descriptors and threads do not grow), C-ECHO and C-STORE go on, and /healthz still answers."""
    import socket
    import threading

    from tests.integration.test_bad_input import echo

    service, admin_port = _admin_router(tmp_path, write_config, start_router, port)
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", admin_port), timeout=10))
        assert service.admin.httpd.open_connections <= 8
        assert threading.active_count() <= threads_before + 2  # at most the admin workers started
        assert echo(port) == (True, 0)
        assert send_with_pynetdicom(port, small_files[:2]) == [0, 0]
        assert get(admin_port, "/healthz") == (200, {"status": "alive"})
    finally:
        for s in idle:
            s.close()


def test_a_trickled_admin_request_is_cut_off_at_its_deadline(tmp_path, write_config, start_router, port):
    import socket

    from tests.support.pdus import trickle

    _, admin_port = _admin_router(tmp_path, write_config, start_router, port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as sock:
        sent = trickle(sock, request, 2, 0.1)  # one header byte pair every 0.1 s: ~12 s for the request
    assert sent < len(request)
    assert get(admin_port, "/healthz") == (200, {"status": "alive"})


def test_an_oversized_or_malformed_admin_request_gets_an_error_status(tmp_path, write_config, start_router, port):
    import socket

    _, admin_port = _admin_router(tmp_path, write_config, start_router, port)
    for payload, expected in (
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n", b" 431 "),
        (b"\x16\x03\x01garbage\r\n\r\n", b" 400 "),
    ):
        with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as sock:
            sock.sendall(payload)
            assert expected in sock.recv(200)
    status, _ = get(admin_port, "/healthz")
    assert status == 200
