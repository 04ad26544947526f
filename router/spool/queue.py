"""The delivery queue: one SQLite row per (spooled instance, backend).

States: ``pending`` (due at ``next_attempt_at``), ``in_flight`` (claimed by a worker),
``quarantined`` (will not be retried; ``reason`` says why). A delivered row is deleted and
counted in ``delivered_counts``; an instance row goes when its last delivery does, and the
caller then removes the spool file. The schema has a history (:mod:`router.spool.queue_schema`),
applied when the queue is opened. The database runs in WAL mode; intake commits
with ``synchronous=FULL``, so a row that was acknowledged survives a crash or a power cut.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from router.spool.group_commit import GroupCommit
from router.spool.queue_rows import DELIVERY_COLUMNS, Delivery, EditedByReference, InstanceRecord
from router.spool.queue_schema import migrate

log = structlog.get_logger("router.queue")

STATES = ("pending", "in_flight", "quarantined")


_DUE = "backend=? AND state='pending' AND next_attempt_at<=?"
_PENDING_UNLESS_SUPERSEDED = "CASE WHEN superseded_by IS NULL THEN 'pending' ELSE 'superseded' END"
"""The deliveries of a backend (first parameter) due at a time (second)."""

LOCK_TIMEOUT = 60.0
_FIRST_RETRY = 0.0001
_LONGEST_RETRY = 0.002


def begin_immediate(conn: sqlite3.Connection, timeout: float = LOCK_TIMEOUT) -> None:
    """``BEGIN IMMEDIATE``, retried every 0.1-2 ms while another connection holds the write lock.

    ``conn`` must have no busy timeout (``PRAGMA busy_timeout = 0``, as the queue's writer
    connections have): SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms and more, so
    a write of the delivery process that holds the lock for 50 us cost the intake at least a
    millisecond (one acknowledgement in ten, measured here). Raises
    sqlite3.OperationalError once ``timeout`` seconds have passed, as the busy handler would.
    """
    delay, deadline = _FIRST_RETRY, None
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            elif now >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, _LONGEST_RETRY)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class DeliveryQueue:
    """Thread-safe: each thread gets its own connections, one for reads and one, without a busy
    timeout, for write transactions (see :func:`begin_immediate`; setting the timeout
    before and after every transaction cost the intake 0.1 ms per instance). Safe across
    processes (WAL).

    ``durable_commits`` (``synchronous=FULL``) is for the intake: a committed row must
    survive a power cut before the sender hears 0x0000. The delivery process opens the
    queue without it (``synchronous=NORMAL``: safe against process crashes, not power
    cuts): losing a delivered mark costs one re-delivery, never an instance, and the
    commits then hold the write lock the intake waits for only briefly.
    """

    def __init__(self, path: Path, durable_commits: bool = True, checkpoint_on_commit: bool = True):
        """``checkpoint_on_commit=False``: commits never copy the WAL into the database (SQLite's
        automatic checkpoint, 5-20 ms every few hundred commits); :meth:`checkpoint` must then
        be called from elsewhere, as the receiving process's main loop does."""
        self.path = Path(path)
        self.synchronous = "FULL" if durable_commits else "NORMAL"
        self.checkpoint_on_commit = checkpoint_on_commit
        self._local = threading.local()
        self._enqueues = GroupCommit(self._write)
        applied = migrate(self._writer(), begin_immediate)
        if applied:
            log.info("queue database schema brought up to date", path=str(self.path), versions=applied)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection for reads (and anything outside :meth:`_write`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _writer(self) -> sqlite3.Connection:
        """This thread's connection for write transactions: no busy timeout."""
        conn = getattr(self._local, "writer", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA busy_timeout = 0")
            self._local.writer = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        if not self.checkpoint_on_commit:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer()
        begin_immediate(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database without waiting for anyone."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Close this thread's connections (they are opened again if needed)."""
        for name in ("conn", "writer"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    # -- intake -------------------------------------------------------------

    def enqueue(
        self,
        instance: InstanceRecord,
        targets: list[tuple[str, str]],
        now: float | None = None,
        hold_reason: str | None = None,
    ) -> int:
        """Record an instance and one delivery per (pipeline, backend); commit durably.

        With ``hold_reason`` the deliveries start quarantined with that reason.
        """
        return self.enqueue_many([(instance, targets, hold_reason)], now)[0]

    def enqueue_many(
        self, batches: list[tuple[InstanceRecord, list[tuple[str, str]], str | None]], now: float | None = None
    ) -> list[int]:
        """:meth:`enqueue` for several instances (versions of one received instance) in one commit.

        Callers on other threads of this process that enqueue at the same time share the
        commit (:class:`~router.spool.group_commit.GroupCommit`).
        """
        now = time.time() if now is None else now
        return self._enqueues.run(lambda conn: _insert_instances(conn, batches, now))

    # -- delivery -----------------------------------------------------------

    def reset_in_flight(self) -> int:
        """At start-up: whatever was in flight when the last process died is pending again."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET state='pending', updated_at=? WHERE state='in_flight'", (time.time(),)
            ).rowcount

    def claim_due(self, backend: str, limit: int, now: float | None = None) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries of ``backend``, oldest first.

        Whether any is due is read first, without the write lock: a worker that has caught up
        asks every few milliseconds, and each time the lock was the intake's to wait for.
        """
        now = time.time() if now is None else now
        if not self._conn().execute(f"SELECT 1 FROM deliveries WHERE {_DUE} LIMIT 1", (backend, now)).fetchone():
            return []
        with self._write() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM deliveries WHERE {_DUE} ORDER BY next_attempt_at, id LIMIT ?",
                    (backend, now, limit),
                )
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE deliveries SET state='in_flight', updated_at=? WHERE id IN ({marks})", (now, *ids))
            rows = conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN instances i ON i.id=d.instance_id"
                f" WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at, d.id",
                ids,
            ).fetchall()
        return [Delivery.from_row(row) for row in rows]

    def mark_delivered(self, delivery: Delivery, warning: bool = False) -> list[str]:
        """Record success; returns the spool files no delivery needs any more."""
        return self.mark_delivered_many([(delivery, warning)])

    def mark_delivered_many(self, results: list[tuple[Delivery, bool]]) -> list[str]:
        """Record several successes (each with its warning flag) in one transaction; returns
        the spool files no delivery needs any more.
        """
        with self._write() as conn:
            paths = []
            for delivery, warning in results:
                conn.execute("DELETE FROM deliveries WHERE id=?", (delivery.id,))
                conn.execute(
                    "INSERT INTO delivered_counts (backend, delivered) VALUES (?, 1)"
                    " ON CONFLICT(backend) DO UPDATE SET delivered = delivered + 1",
                    (delivery.backend,),
                )
                if warning:
                    _count_event(conn, delivery.backend, "delivered_with_warning")
                paths += self._drop_instance_if_done(conn, delivery.instance_id)
            return paths

    def take_superseded(self, backend: str) -> list[str]:
        """Remove ``backend``'s superseded deliveries (a newer version of the same SOP instance
        was queued for it); the spool paths no delivery needs any more."""
        if (
            not self._conn()
            .execute("SELECT 1 FROM deliveries WHERE backend=? AND state='superseded' LIMIT 1", (backend,))
            .fetchone()
        ):
            return []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, instance_id FROM deliveries WHERE backend=? AND state='superseded'", (backend,)
            ).fetchall()
            paths = []
            for delivery_id, instance_id in rows:
                conn.execute("DELETE FROM deliveries WHERE id=?", (delivery_id,))
                _count_event(conn, backend, "superseded")
                paths += self._drop_instance_if_done(conn, instance_id)
        return paths

    def schedule_retry(
        self, delivery: Delivery, next_attempt_at: float, status: int | None, reason: str, failure: str = "transient"
    ) -> None:
        """Record a failed attempt (``failure``: its class); the delivery is due again at ``next_attempt_at``.

        Like :meth:`postpone`, it changes only a delivery still in flight: a worker of a process
        that is going away must not put back one that another process has quarantined since.
        """
        with self._write() as conn:
            conn.execute(
                f"UPDATE deliveries SET state={_PENDING_UNLESS_SUPERSEDED}, attempts=attempts+1, next_attempt_at=?,"
                " updated_at=?, last_status=?, reason=? WHERE id=? AND state='in_flight'",
                (next_attempt_at, time.time(), status, reason, delivery.id),
            )
            _count_event(conn, delivery.backend, f"failure:{failure}")
            _count_event(conn, delivery.backend, "retry")

    def postpone(self, deliveries: list[Delivery], until: float, reason: str, unreachable: bool = False) -> None:
        """Put claimed deliveries back untried; no attempt counted (``unreachable``: counted as one failure)."""
        with self._write() as conn:
            conn.executemany(
                f"UPDATE deliveries SET state={_PENDING_UNLESS_SUPERSEDED}, next_attempt_at=?, updated_at=?, reason=?"
                " WHERE id=? AND state='in_flight'",
                [(until, time.time(), reason, d.id) for d in deliveries],
            )
            if unreachable and deliveries:
                _count_event(conn, deliveries[0].backend, "failure:unreachable")

    def quarantine(
        self,
        delivery: Delivery,
        status: int | None,
        reason: str,
        count_attempt: bool = True,
        failure: str = "permanent",
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE deliveries SET state=CASE WHEN superseded_by IS NULL THEN 'quarantined' ELSE 'superseded' END,"
                " attempts=attempts+?, updated_at=?, last_status=?, reason=? WHERE id=?",
                (1 if count_attempt else 0, time.time(), status, reason, delivery.id),
            )
            if count_attempt:
                _count_event(conn, delivery.backend, f"failure:{failure}")
            _count_event(conn, delivery.backend, "quarantined")

    def events(self) -> dict[str, dict[str, int]]:
        """Per backend, how often each delivery event happened: delivered_with_warning, failure:<class>,
        retry, quarantined (kept across restarts, counted by every process)."""
        out: dict[str, dict[str, int]] = {}
        for backend, event, count in self._conn().execute("SELECT backend, event, count FROM delivery_events"):
            out.setdefault(backend, {})[event] = count
        return out

    def recent_problems(self, limit: int = 10) -> list[dict]:
        """The latest reasons recorded on waiting or quarantined deliveries, newest first."""
        rows = self._conn().execute(
            "SELECT d.backend, d.state, d.attempts, d.updated_at, d.reason, i.sop_instance_uid FROM deliveries d"
            " JOIN instances i ON i.id=d.instance_id WHERE d.reason IS NOT NULL ORDER BY d.updated_at DESC LIMIT ?",
            (limit,),
        )
        keys = ("backend", "state", "attempts", "at", "reason", "sop_instance_uid")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def waiting_reasons(self) -> dict[str, list[tuple[str, int]]]:
        """Per backend, why its pending deliveries wait (the reason of their last failed attempt)
        and how many wait for it, most common first."""
        out: dict[str, list[tuple[str, int]]] = {}
        rows = self._conn().execute(
            "SELECT backend, reason, COUNT(*) AS n FROM deliveries WHERE state='pending' AND reason IS NOT NULL"
            " GROUP BY backend, reason ORDER BY backend, n DESC"
        )
        for backend, reason, count in rows:
            out.setdefault(backend, []).append((reason, count))
        return out

    # -- operators ----------------------------------------------------------

    def counts(self) -> dict[str, dict[str, float | int | None]]:
        """Per backend: pending, in_flight, quarantined, delivered, oldest pending queue time."""
        conn = self._conn()
        out: dict[str, dict] = {}

        def entry(backend: str) -> dict:
            return out.setdefault(
                backend, {"pending": 0, "in_flight": 0, "quarantined": 0, "delivered": 0, "oldest_queued_at": None}
            )

        for backend, state, n, oldest in conn.execute(
            "SELECT backend, state, COUNT(*), MIN(queued_at) FROM deliveries GROUP BY backend, state"
        ):
            e = entry(backend)
            e[state] = n
            if state in ("pending", "in_flight") and (e["oldest_queued_at"] is None or oldest < e["oldest_queued_at"]):
                e["oldest_queued_at"] = oldest
        for backend, delivered in conn.execute("SELECT backend, delivered FROM delivered_counts"):
            entry(backend)["delivered"] = delivered
        return out

    def list_state(self, state: str = "quarantined", backend: str | None = None, limit: int = 1000) -> list[Delivery]:
        query = f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN instances i ON i.id=d.instance_id WHERE d.state=?"
        args: list = [state]
        if backend:
            query += " AND d.backend=?"
            args.append(backend)
        query += " ORDER BY d.id LIMIT ?"
        args.append(limit)
        return [Delivery.from_row(row) for row in self._conn().execute(query, args)]

    def retry_quarantined(self, backend: str | None = None, delivery_ids: list[int] | None = None) -> int:
        """Requeue quarantined deliveries as new: attempts and age start again."""
        now = time.time()
        query = "UPDATE deliveries SET state='pending', attempts=0, queued_at=?, next_attempt_at=?, updated_at=? WHERE state='quarantined'"
        args: list = [now, now, now]
        query, args = _narrow(query, args, backend, delivery_ids)
        with self._write() as conn:
            return conn.execute(query, args).rowcount

    def purge(self, backend: str | None = None, delivery_ids: list[int] | None = None) -> tuple[int, list[str]]:
        """Delete quarantined deliveries; returns how many and the spool files no longer needed."""
        query, args = _narrow(
            "SELECT id, instance_id FROM deliveries WHERE state='quarantined'", [], backend, delivery_ids
        )
        paths = []
        with self._write() as conn:
            rows = conn.execute(query, args).fetchall()
            for delivery_id, instance_id in rows:
                conn.execute("DELETE FROM deliveries WHERE id=?", (delivery_id,))
                paths += self._drop_instance_if_done(conn, instance_id)
        return len(rows), paths

    def instance_files(self) -> list[tuple[int, str, int, str | None]]:
        """(instance id, spool file, its size, SOP instance UID) of every queued instance: for an
        edited version kept by reference, the received file it needs and that file's size."""
        return list(
            self._conn().execute(
                "SELECT id, COALESCE(source, path), COALESCE(source_size, size), sop_instance_uid FROM instances"
            )
        )

    def quarantine_instance(self, instance_id: int, reason: str) -> int:
        """Quarantine every delivery of an instance not delivered yet, with ``reason``; how many."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT backend FROM deliveries WHERE instance_id=? AND state IN ('pending','in_flight')",
                (instance_id,),
            ).fetchall()
            conn.execute(
                "UPDATE deliveries SET state='quarantined', updated_at=?, reason=? "
                "WHERE instance_id=? AND state IN ('pending','in_flight')",
                (time.time(), reason, instance_id),
            )
            for (backend,) in rows:
                _count_event(conn, backend, "quarantined")
        return len(rows)

    def forget_instance(self, instance_id: int) -> None:
        """Remove an instance and all its deliveries (it was never acknowledged)."""
        with self._write() as conn:
            conn.execute("DELETE FROM deliveries WHERE instance_id=?", (instance_id,))
            conn.execute("DELETE FROM instances WHERE id=?", (instance_id,))

    def referenced_paths(self) -> set[str]:
        """Every spool file a queued instance names: its own, and the received file an edited
        version kept by reference needs."""
        return {
            path
            for row in self._conn().execute("SELECT path, source FROM instances")
            for path in row
            if path is not None
        }

    @staticmethod
    def _drop_instance_if_done(conn: sqlite3.Connection, instance_id: int) -> list[str]:
        """Remove the instance if none of its deliveries is left; the spool files no queued
        instance needs any more: its own, and the received file it was edited from once no
        other instance names it."""
        left = conn.execute("SELECT 1 FROM deliveries WHERE instance_id=? LIMIT 1", (instance_id,)).fetchone()
        if left:
            return []
        row = conn.execute("SELECT path, source FROM instances WHERE id=?", (instance_id,)).fetchone()
        conn.execute("DELETE FROM instances WHERE id=?", (instance_id,))
        if row is None:
            return []
        path, source = row
        if source is None:
            return [] if _named_as_source(conn, path) else [path]
        named = (
            _named_as_source(conn, source)
            or conn.execute("SELECT 1 FROM instances WHERE path=? LIMIT 1", (source,)).fetchone()
        )
        return [path] if named else [path, source]


def _named_as_source(conn: sqlite3.Connection, path: str) -> bool:
    """Whether a queued edited version kept by reference needs the received file ``path``."""
    return conn.execute("SELECT 1 FROM instances WHERE source=? LIMIT 1", (path,)).fetchone() is not None


def _insert_instances(
    conn: sqlite3.Connection, batches: list[tuple[InstanceRecord, list[tuple[str, str]], str | None]], now: float
) -> list[int]:
    """Insert each batch's instance row and its delivery rows; return the instance ids."""
    ids: list[int] = []
    for instance, targets, hold_reason in batches:
        cur = conn.execute(
            "INSERT INTO instances (path, sop_instance_uid, sop_class_uid, transfer_syntax, size,"
            " received_at, endpoint, association_id, calling_aet, peer, checksum, header, source, source_offset,"
            " source_size, source_checksum) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                instance.path,
                instance.sop_instance_uid,
                instance.sop_class_uid,
                instance.transfer_syntax,
                instance.size,
                instance.received_at,
                instance.endpoint,
                instance.association_id,
                instance.calling_aet,
                instance.peer,
                instance.checksum,
                *_by_reference(instance.edited),
            ),
        )
        instance_id = cur.lastrowid
        assert instance_id is not None  # an INSERT gives its row's id
        state = "pending" if hold_reason is None else "quarantined"
        conn.executemany(
            "INSERT INTO deliveries (instance_id, backend, pipeline, state, queued_at, next_attempt_at,"
            " updated_at, reason) VALUES (?,?,?,?,?,?,?,?)",
            [(instance_id, backend, pipeline, state, now, now, now, hold_reason) for pipeline, backend in targets],
        )
        ids.append(instance_id)
    for (instance, targets, _), instance_id in zip(batches, ids, strict=True):
        if instance.sop_instance_uid:
            _supersede_older(conn, instance.sop_instance_uid, instance_id, ids, {b for _, b in targets}, now)
    return ids


def _by_reference(edited: EditedByReference | None) -> tuple:
    if edited is None:
        return (None,) * 5
    return (edited.header, edited.source, edited.offset, edited.size, edited.checksum)


def _supersede_older(
    conn: sqlite3.Connection, sop_instance_uid: str, newer_id: int, batch_ids: list[int], backends: set[str], now: float
) -> None:
    """A newer version of an instance supersedes the older ones not yet delivered to the same
    backend: pending or quarantined ones at once; one in flight once its attempt ends, unless
    it succeeds (it then reached the peer before the newer one, which follows it).

    The older versions are looked up by the SOP Instance UID index first: almost always there
    are none, and the intake's commit then pays one index probe, never a scan of the queue.
    """
    older = [
        row[0]
        for row in conn.execute("SELECT id FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        if row[0] not in batch_ids
    ]
    if not older:
        return
    marks = ",".join("?" * len(older))
    reason = f"superseded by a newer version of the instance (queue instance {newer_id})"
    for backend in backends:
        conn.execute(
            "UPDATE deliveries SET superseded_by=?, updated_at=?,"
            " reason=CASE WHEN state='in_flight' THEN reason ELSE ? END,"
            " state=CASE WHEN state='in_flight' THEN state ELSE 'superseded' END"
            f" WHERE instance_id IN ({marks}) AND backend=? AND state IN ('pending','quarantined','in_flight')",
            (newer_id, now, reason, *older, backend),
        )


def _count_event(conn: sqlite3.Connection, backend: str, event: str) -> None:
    conn.execute(
        "INSERT INTO delivery_events (backend, event, count) VALUES (?, ?, 1)"
        " ON CONFLICT(backend, event) DO UPDATE SET count = count + 1",
        (backend, event),
    )


def _narrow(query: str, args: list, backend: str | None, delivery_ids: list[int] | None) -> tuple[str, list]:
    if backend:
        query += " AND backend=?"
        args.append(backend)
    if delivery_ids:
        query += f" AND id IN ({','.join('?' * len(delivery_ids))})"
        args.extend(delivery_ids)
    return query, args
