"""The delivery queue's state machine on a real SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from router.spool.queue import DeliveryQueue, EditedByReference, InstanceRecord, begin_immediate


def record(path="/spool/a.dcm", uid="1.2.3"):
    return InstanceRecord(
        path,
        uid,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.2.1",
        100,
        time.time(),
        "ingest",
        "assoc1",
        "CT1",
        "127.0.0.1:1",
    )


def test_one_row_per_backend_and_file_released_after_last(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("default", "pacs"), ("default", "archive")])
    pacs = q.claim_due("pacs", 10)
    archive = q.claim_due("archive", 10)
    assert len(pacs) == len(archive) == 1
    assert q.claim_due("pacs", 10) == []  # in flight: not claimed twice
    assert q.mark_delivered(pacs[0]) == []  # archive still needs the file
    assert q.mark_delivered(archive[0]) == ["/spool/a.dcm"]
    counts = q.counts()
    assert counts["pacs"]["delivered"] == 1 and counts["archive"]["delivered"] == 1
    assert q.referenced_paths() == set()


def test_a_received_file_is_let_go_once_neither_it_nor_an_edited_version_made_from_it_is_queued(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    edited = EditedByReference(b"header", "/spool/a.dcm", 40, 100, "c0ffee")
    q.enqueue_many(
        [
            (record(), [("forward", "pacs")], None),
            (replace(record("/spool/a.dcm.edit0.dcm", "2.5.1"), edited=edited), [("research", "archive")], None),
        ]
    )
    assert q.referenced_paths() == {"/spool/a.dcm", "/spool/a.dcm.edit0.dcm"}
    assert sorted(row[1:3] for row in q.instance_files()) == [("/spool/a.dcm", 100)] * 2
    (version,) = q.claim_due("archive", 10)
    assert version.edited == edited and version.path == "/spool/a.dcm.edit0.dcm"
    (forwarded,) = q.claim_due("pacs", 10)
    assert q.mark_delivered(forwarded) == []  # the edited version still needs its pixel data
    assert q.mark_delivered(version) == ["/spool/a.dcm.edit0.dcm", "/spool/a.dcm"]
    assert q.referenced_paths() == set()


def test_retry_is_due_later_and_counts_attempts(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("default", "pacs")])
    (d,) = q.claim_due("pacs", 10)
    q.schedule_retry(d, time.time() + 60, 0xA700, "busy")
    assert q.claim_due("pacs", 10) == []
    (again,) = q.claim_due("pacs", 10, now=time.time() + 61)
    assert again.attempts == 1 and again.reason == "busy"


def test_in_flight_is_resumed_after_a_crash(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("default", "pacs")])
    q.claim_due("pacs", 10)
    q.close()
    q2 = DeliveryQueue(tmp_path / "q.db")  # a new process
    assert q2.claim_due("pacs", 10) == []
    assert q2.reset_in_flight() == 1
    assert len(q2.claim_due("pacs", 10)) == 1


def test_quarantine_retry_and_purge(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record("/s/a.dcm", "1.1"), [("default", "pacs")])
    q.enqueue(record("/s/b.dcm", "1.2"), [("default", "pacs"), ("default", "archive")])
    first, second = q.claim_due("pacs", 10)
    q.quarantine(first, 0xC000, "cannot understand")
    q.quarantine(second, 0xA900, "mismatch")
    listed = q.list_state("quarantined")
    assert [d.reason for d in listed] == ["cannot understand", "mismatch"]
    assert q.retry_quarantined(delivery_ids=[first.id]) == 1
    assert len(q.claim_due("pacs", 10)) == 1
    n, paths = q.purge(backend="pacs")
    assert n == 1 and paths == []  # b.dcm is still wanted by archive
    assert q.counts()["archive"]["pending"] == 1


def test_postpone_does_not_count_an_attempt(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("default", "pacs")])
    batch = q.claim_due("pacs", 10)
    q.postpone(batch, time.time() + 30, "cannot connect")
    (d,) = q.claim_due("pacs", 10, now=time.time() + 31)
    assert d.attempts == 0 and d.reason == "cannot connect"


def test_instances_whose_file_is_missing_or_short_are_quarantined_not_forgotten(tmp_path):
    """Acknowledged instances whose spool files were damaged never vanish: their deliveries are
    quarantined with the reason, and the rows stay until an operator purges them."""
    from router.intake import quarantine_damaged

    q = DeliveryQueue(tmp_path / "q.db")
    whole, short, missing = tmp_path / "whole.dcm", tmp_path / "short.dcm", tmp_path / "missing.dcm"
    whole.write_bytes(b"x" * 100)
    short.write_bytes(b"x" * 10)
    for path in (whole, short, missing):
        q.enqueue(record(str(path), path.stem), [("default", "pacs"), ("default", "archive")])
    assert quarantine_damaged(q) == 2
    assert q.referenced_paths() == {str(whole), str(short), str(missing)}
    assert [d.sop_instance_uid for d in q.claim_due("pacs", 10)] == ["whole"]
    reasons = {d.sop_instance_uid: d.reason for d in q.list_state("quarantined")}
    assert reasons["short"].startswith("spool file shorter than recorded (10 of 100 bytes)")
    assert reasons["missing"].startswith("spool file missing")
    assert q.counts()["archive"]["quarantined"] == 2


def test_successes_recorded_in_one_batch_release_each_file_once(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record("/s/a.dcm", "1.1"), [("default", "pacs")])
    q.enqueue(record("/s/b.dcm", "1.2"), [("default", "pacs"), ("default", "archive")])
    a, b = q.claim_due("pacs", 10)
    assert q.mark_delivered_many([(a, False), (b, True)]) == ["/s/a.dcm"]  # b: archive still needs it
    (b_archive,) = q.claim_due("archive", 10)
    assert q.mark_delivered_many([(b_archive, False)]) == ["/s/b.dcm"]
    counts = q.counts()
    assert counts["pacs"]["delivered"] == 2 and counts["archive"]["delivered"] == 1


def test_success_recorder_commits_off_thread_and_removes_files(tmp_path):
    from router.delivery.workers import SuccessRecorder
    from router.spool.store import Spool

    spool_file = tmp_path / "a.dcm"
    spool_file.write_bytes(b"x")
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(str(spool_file), "1.1"), [("default", "pacs")])
    (delivery,) = q.claim_due("pacs", 10)
    recorder = SuccessRecorder(DeliveryQueue(tmp_path / "q.db", durable_commits=False), Spool(tmp_path), "record")
    recorder.add(delivery, False)
    recorder.wait_recorded()
    assert not spool_file.exists()
    assert q.counts()["pacs"]["delivered"] == 1
    recorder.close()


def wal_frames(path) -> int:
    import os

    wal = f"{path}-wal"
    return os.path.getsize(wal) // 4096 if os.path.exists(wal) else 0


def test_without_checkpoint_on_commit_the_wal_is_copied_only_when_asked(tmp_path):
    import sqlite3

    q = DeliveryQueue(tmp_path / "q.db", durable_commits=False, checkpoint_on_commit=False)
    for i in range(600):
        q.enqueue(record(f"/s/{i}.dcm", f"1.{i}"), [("default", "pacs")])
    assert wal_frames(tmp_path / "q.db") > 1000  # SQLite's automatic checkpoint would have run
    q.checkpoint()
    busy, logged, copied = sqlite3.connect(tmp_path / "q.db").execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and logged == copied
    assert len(q.claim_due("pacs", 1000)) == 600


def hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another connection (as the delivery process would) holds the write lock for ``seconds``;
    returns once it holds it."""
    holding = threading.Event()

    def hold():
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    return holder


def test_a_write_waits_for_another_connections_lock_and_then_commits(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    holder = hold_write_lock(tmp_path / "q.db", 0.05)
    instance_id = q.enqueue(record(), [("p", "pacs")])
    holder.join(10)
    assert instance_id in [row[0] for row in q.instance_files()]
    assert q._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 60000


def test_a_write_lock_held_past_the_timeout_raises_as_sqlite_would(tmp_path):
    conn = DeliveryQueue(tmp_path / "q.db")._writer()
    holder = hold_write_lock(tmp_path / "q.db", 1.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(conn, timeout=0.05)
    holder.join(10)


def test_writes_use_a_connection_without_busy_timeout_and_reads_one_with(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("p", "pacs")])
    assert q._writer().execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert q._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 60000
    assert q._writer() is not q._conn()
    q.close()
    assert q._local.conn is None and q._local.writer is None


def test_a_claim_with_nothing_due_does_not_wait_for_the_write_lock(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record(), [("p", "pacs")])
    (claimed,) = q.claim_due("pacs", 10)
    release = threading.Event()
    holding = threading.Event()

    def hold():
        conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    results = []
    claimer = threading.Thread(target=lambda: results.append(q.claim_due("pacs", 10)))
    claimer.start()
    claimer.join(10)
    finished_while_locked = not claimer.is_alive()
    release.set()
    holder.join(10)
    claimer.join(10)
    assert finished_while_locked and results == [[]]


def test_an_error_other_than_a_lock_is_raised_at_once(tmp_path):
    conn = DeliveryQueue(tmp_path / "q.db")._writer()
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_immediate(conn)
    conn.execute("ROLLBACK")


def test_a_newer_version_supersedes_an_older_one_not_yet_delivered(tmp_path):
    """Per (SOP Instance UID, backend): a pending older version is superseded at once; one in
    flight is superseded when its attempt fails, never put back in the queue; other backends
    and other instances are untouched."""
    q = DeliveryQueue(tmp_path / "q.db")
    old_pending = record(str(tmp_path / "v1.dcm"), "1.2.3")
    q.enqueue(old_pending, [("default", "pacs"), ("default", "archive")])
    q.enqueue(record(str(tmp_path / "other.dcm"), "9.9.9"), [("default", "pacs")])
    q.enqueue(record(str(tmp_path / "v2.dcm"), "1.2.3"), [("default", "pacs")])
    claimed = q.claim_due("pacs", 10)
    assert sorted(d.path for d in claimed) == [str(tmp_path / "other.dcm"), str(tmp_path / "v2.dcm")]
    assert [d.path for d in q.claim_due("archive", 10)] == [str(tmp_path / "v1.dcm")]  # archive: no newer one
    assert q.take_superseded("pacs") == []  # v1 is still needed by the archive
    in_flight = next(d for d in claimed if d.sop_instance_uid == "1.2.3")
    q.enqueue(record(str(tmp_path / "v3.dcm"), "1.2.3"), [("default", "pacs")])
    q.schedule_retry(in_flight, time.time(), 0xA700, "out of resources")
    assert [d.path for d in q.claim_due("pacs", 10)] == [str(tmp_path / "v3.dcm")]
    assert q.take_superseded("pacs") == [str(tmp_path / "v2.dcm")]
    assert q.events()["pacs"]["superseded"] == 2
