"""Fan-out: a dead backend never holds up a live one, and gets everything once it is back."""

from __future__ import annotations

from tests.conftest import dimse_backend_toml, router_toml
from tests.integration.test_forwarding import send_with_pynetdicom
from tests.support.dicomfiles import digests_by_uid
from tests.support.peers import StorageSCP, free_port, wait_for


def test_fan_out_with_one_backend_down(tmp_path, write_config, start_router, port, small_files):
    down_port = free_port()
    with StorageSCP(tmp_path / "live", ae_title="LIVE") as live:
        backends = dimse_backend_toml(live.port, "LIVE", "live") + dimse_backend_toml(down_port, "LATE", "late")
        service = start_router(write_config(router_toml(tmp_path / "data", port, backends, ["live", "late"])))
        files = small_files[:40]
        assert send_with_pynetdicom(port, files) == [0] * len(files)
        wait_for(lambda: len(live.received) >= len(files), 60, message="the live backend to get everything")
        counts = service.queue.counts()
        assert counts["late"]["pending"] + counts["late"]["in_flight"] == len(files)
        assert counts["late"]["quarantined"] == 0

        with StorageSCP(tmp_path / "late", ae_title="LATE", port=down_port) as late:
            wait_for(lambda: len(late.received) >= len(files), 60, message="the late backend to catch up")
        expected = digests_by_uid(files)
        assert digests_by_uid((tmp_path / "live").glob("*.dcm")) == expected
        assert digests_by_uid((tmp_path / "late").glob("*.dcm")) == expected
        assert sorted(live.received) == sorted(set(live.received))  # no duplicates at the live one


def test_backend_concurrency_uses_parallel_associations(tmp_path, write_config, start_router, port, small_files):
    from pynetdicom import evt

    with StorageSCP(tmp_path / "dest", ae_title="PACS") as pacs:
        seen_assocs: set[int] = set()
        pacs.server.bind(evt.EVT_C_STORE, lambda e: seen_assocs.add(id(e.assoc)) or pacs._on_store(e))
        text = router_toml(tmp_path / "data", port, dimse_backend_toml(pacs.port) + "concurrency = 3\n", ["pacs"])
        service = start_router(write_config(text))
        files = small_files[:90]
        assert send_with_pynetdicom(port, files) == [0] * len(files)
        wait_for(lambda: len(pacs.received) >= len(files), 60, message="all instances")
        assert sorted(pacs.received) == sorted(digests_by_uid(files))  # each once
        assert len(seen_assocs) >= 2
        wait_for(lambda: service.queue.counts()["pacs"]["delivered"] == len(files), 10, message="the counts")
