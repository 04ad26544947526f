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
