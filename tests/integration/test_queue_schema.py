"""The queue database's schema history: a database written by the release before the history
existed is upgraded at start-up and every undelivered instance in it goes out; a database from
a newer release is refused with a clear message and left as it was."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from router.spool.queue import DeliveryQueue
from router.spool.queue_schema import CURRENT, MIGRATIONS, QueueFromNewerRelease
from tests.conftest import ROOT, dimse_backend_toml, router_toml
from tests.support.cli import run_cli
from tests.support.dicomfiles import digests_by_uid
from tests.support.peers import StorageSCP, free_port, wait_for

FIXTURE = ROOT / "tests" / "fixtures" / "queue-db-2026-12"
MADE_AT = "/tmp/v0fix/queue-db-2026-12"


def copy_fixture(data_dir):
    shutil.copytree(FIXTURE, data_dir, ignore=shutil.ignore_patterns("README.md"))
    conn = sqlite3.connect(data_dir / "queue.db")
    conn.execute("UPDATE instances SET path = replace(path, ?, ?)", (MADE_AT, str(data_dir)))
    conn.commit()
    conn.close()


def user_version(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def recorded_as_version_1(path) -> None:
    """Bring a database of the release before the history to version 1, as that release left it."""
    (version, _, apply) = MIGRATIONS[0]
    conn = sqlite3.connect(path)
    try:
        apply(conn)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("version", [0, 1])
def test_a_database_of_an_earlier_release_is_upgraded_and_every_pending_delivery_goes_out(
    tmp_path, write_config, start_router, port, version
):
    data = tmp_path / "data"
    copy_fixture(data)
    if version == 1:
        recorded_as_version_1(data / "queue.db")
    assert user_version(data / "queue.db") == version
    originals = sorted((FIXTURE / "objects" / "00").glob("*.dcm"))
    with StorageSCP(tmp_path / "pacs", ae_title="PACS") as scp:
        service = start_router(write_config(router_toml(data, port, dimse_backend_toml(scp.port), ["pacs"])))
        assert user_version(data / "queue.db") == CURRENT
        wait_for(
            lambda: service.queue.counts()["pacs"]["delivered"] == 3,
            60,
            message="the pending, retried and in-flight deliveries sent",
        )
        (quarantined,) = service.queue.list_state("quarantined")
        assert "0xA900" in quarantined.reason  # an operator's decision, kept as it was
        received = digests_by_uid(sorted((tmp_path / "pacs").glob("*.dcm")))
    expected = {uid: digest for uid, digest in digests_by_uid(originals).items() if uid != quarantined.sop_instance_uid}
    assert received == expected


def test_opening_an_upgraded_database_again_changes_nothing(tmp_path):
    copy_fixture(tmp_path / "data")
    DeliveryQueue(tmp_path / "data" / "queue.db").close()
    before = (tmp_path / "data" / "queue.db").read_bytes()
    DeliveryQueue(tmp_path / "data" / "queue.db").close()
    assert user_version(tmp_path / "data" / "queue.db") == CURRENT
    assert len((tmp_path / "data" / "queue.db").read_bytes()) == len(before)


def test_a_database_from_a_newer_release_is_refused_and_left_alone(tmp_path, write_config):
    data = tmp_path / "data"
    copy_fixture(data)
    conn = sqlite3.connect(data / "queue.db")
    conn.execute(f"PRAGMA user_version = {CURRENT + 1}")
    conn.close()
    with pytest.raises(QueueFromNewerRelease, match=f"schema version {CURRENT + 1}"):
        DeliveryQueue(data / "queue.db")
    config = write_config(router_toml(data, free_port(), dimse_backend_toml(free_port()), ["pacs"]))
    served = run_cli("serve", "-c", config, timeout=60)
    assert served.returncode == 1
    lines = [json.loads(line) for line in served.stderr.splitlines() if line.strip()]
    assert any(line["event"] == "not started" and "newer dicom-router" in line["reason"] for line in lines)
    assert user_version(data / "queue.db") == CURRENT + 1
    assert sqlite3.connect(data / "queue.db").execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 4
