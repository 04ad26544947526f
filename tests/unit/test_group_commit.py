"""Group commit of the intake's queue writes, on a real SQLite file and real threads."""

from __future__ import annotations

import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager

import pytest

from router.spool.group_commit import GroupCommit
from router.spool.queue import DeliveryQueue, InstanceRecord


def record(path: str) -> InstanceRecord:
    return InstanceRecord(
        path, f"1.2.3.{zlib.crc32(path.encode())}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", 100, time.time()
    )


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def run_while_a_commit_is_in_progress(group: GroupCommit, first, later: dict) -> dict:
    """Start ``group.run(first)`` and, while its commit is in progress, ``group.run`` of each of
    ``later``; returns every caller's ("ok", result) or ("error", exception), "first" included."""
    release = threading.Event()
    outcomes: dict = {}

    def held_first(conn):
        assert release.wait(10)
        return first(conn)

    def call(key, apply):
        try:
            outcomes[key] = ("ok", group.run(apply))
        except Exception as exc:
            outcomes[key] = ("error", exc)

    threads = [threading.Thread(target=call, args=("first", held_first))]
    threads[0].start()
    wait_until(lambda: group._committing)
    for key, apply in later.items():
        threads.append(threading.Thread(target=call, args=(key, apply)))
        threads[-1].start()
    wait_until(lambda: len(group._waiting) == len(later))
    release.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    return outcomes


def committed_paths(db) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT path FROM instances")}
    finally:
        conn.close()


def enqueue_write(path: str):
    from router.spool.queue import _insert_instances

    return lambda conn: _insert_instances(conn, [(record(path), [("p", "pacs")], None)], time.time())[0]


def test_a_lone_writer_commits_at_once_in_a_transaction_of_its_own(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    instance_id = q.enqueue(record("/spool/a.dcm"), [("p", "pacs")])
    assert (q._enqueues.commits, q._enqueues.writes) == (1, 1)
    assert instance_id == q.instance_files()[0][0]
    assert committed_paths(tmp_path / "q.db") == {"/spool/a.dcm"}


def test_writers_arriving_during_a_commit_share_the_next_one(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    later = {f"w{i}": enqueue_write(f"/spool/{i}.dcm") for i in range(5)}
    outcomes = run_while_a_commit_is_in_progress(q._enqueues, enqueue_write("/spool/first.dcm"), later)

    assert all(kind == "ok" for kind, _ in outcomes.values()), outcomes
    assert len({instance_id for _, instance_id in outcomes.values()}) == 6
    assert (q._enqueues.commits, q._enqueues.writes) == (2, 6)
    assert committed_paths(tmp_path / "q.db") == {"/spool/first.dcm", *(f"/spool/{i}.dcm" for i in range(5))}
    paths = {path: instance_id for instance_id, path, _, _ in q.instance_files()}
    assert {key: paths[f"/spool/{key[1:]}.dcm"] for key in later} == {key: outcomes[key][1] for key in later}
    assert len(q.claim_due("pacs", 100)) == 6


def test_a_write_that_fails_in_a_shared_commit_fails_alone(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    q.enqueue(record("/spool/taken.dcm"), [("p", "pacs")])
    later = {
        "a": enqueue_write("/spool/a.dcm"),
        "dup": enqueue_write("/spool/taken.dcm"),
        "b": enqueue_write("/spool/b.dcm"),
    }
    outcomes = run_while_a_commit_is_in_progress(q._enqueues, enqueue_write("/spool/first.dcm"), later)

    assert outcomes["dup"][0] == "error" and isinstance(outcomes["dup"][1], sqlite3.IntegrityError)
    assert [outcomes[k][0] for k in ("first", "a", "b")] == ["ok", "ok", "ok"]
    assert committed_paths(tmp_path / "q.db") == {
        "/spool/taken.dcm",
        "/spool/first.dcm",
        "/spool/a.dcm",
        "/spool/b.dcm",
    }
    assert len(q.claim_due("pacs", 100)) == 4


def test_a_failed_commit_is_the_error_of_every_writer_in_it(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")
    transactions = []

    @contextmanager
    def transaction_whose_second_commit_fails():
        transactions.append(1)
        with q._write() as conn:
            yield conn
            if len(transactions) == 2:
                raise OSError("disk I/O error")

    group = GroupCommit(transaction_whose_second_commit_fails)
    later = {f"w{i}": enqueue_write(f"/spool/{i}.dcm") for i in range(3)}
    outcomes = run_while_a_commit_is_in_progress(group, enqueue_write("/spool/first.dcm"), later)

    assert outcomes["first"][0] == "ok"
    assert all(kind == "error" and str(exc) == "disk I/O error" for kind, exc in (outcomes[k] for k in later))
    assert committed_paths(tmp_path / "q.db") == {"/spool/first.dcm"}
    assert q.enqueue(record("/spool/after.dcm"), [("p", "pacs")])


def test_an_interrupted_lone_writer_leaves_the_group_usable(tmp_path):
    q = DeliveryQueue(tmp_path / "q.db")

    def broken(conn):
        raise RuntimeError("bug in a write")

    with pytest.raises(RuntimeError, match="bug in a write"):
        q._enqueues.run(broken)
    assert q.enqueue(record("/spool/a.dcm"), [("p", "pacs")])
    assert committed_paths(tmp_path / "q.db") == {"/spool/a.dcm"}
