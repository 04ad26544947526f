"""The queue database's schema history: ``PRAGMA user_version`` and ordered migrations.

At start-up :func:`migrate` brings a database to :data:`CURRENT` in one transaction: it runs
every migration above the database's version, in order, then sets the version. A database
made before the history existed has version 0; migration 1 turns any such database (from any
earlier release, which added columns without recording it) into the first recorded schema. A
database from a newer release (a version above :data:`CURRENT`) is refused with
:class:`QueueFromNewerRelease`: its rows may mean what this release cannot know, and
undelivered instances are at stake. Every process opening the queue runs :func:`migrate`;
the write lock makes one of them do the work and the others find it done.

To change the schema: add a migration at the end of :data:`MIGRATIONS` (never edit one that
shipped), and a test that upgrades a database of the previous version holding deliveries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

TABLES = (
    """CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    transfer_syntax TEXT,
    size INTEGER,
    received_at REAL NOT NULL,
    endpoint TEXT,
    association_id TEXT,
    calling_aet TEXT,
    peer TEXT,
    checksum TEXT
)""",
    """CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    backend TEXT NOT NULL,
    pipeline TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_status INTEGER,
    reason TEXT,
    superseded_by INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(backend, state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries(instance_id)",
    """CREATE TABLE IF NOT EXISTS delivered_counts (
    backend TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS delivery_events (
    backend TEXT NOT NULL,
    event TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, event)
)""",
)


class QueueFromNewerRelease(RuntimeError):
    """The queue database was written by a newer release than this one."""


def _first_recorded_schema(conn: sqlite3.Connection) -> None:
    """Version 1: the tables as of 2026-12, from nothing or from any earlier release (whose
    databases may lack ``instances.checksum``, ``deliveries.superseded_by`` and the UID index)."""
    for statement in TABLES:
        conn.execute(statement)
    if "checksum" not in _columns(conn, "instances"):
        conn.execute("ALTER TABLE instances ADD COLUMN checksum TEXT")
    if "superseded_by" not in _columns(conn, "deliveries"):
        conn.execute("ALTER TABLE deliveries ADD COLUMN superseded_by INTEGER")
    conn.execute("CREATE INDEX IF NOT EXISTS instances_by_uid ON instances(sop_instance_uid)")


def _edited_versions_by_reference(conn: sqlite3.Connection) -> None:
    """Version 2: an edited version may be kept as its header (``header``, the bytes before the
    pixel data) and a range of the received file it was made from (``source`` from
    ``source_offset`` to its end; ``source_size`` and ``source_checksum`` recorded to check it);
    ``path`` is then where delivery writes the whole version (:mod:`router.spool.edited_copies`)."""
    for column, kind in (
        ("header", "BLOB"),
        ("source", "TEXT"),
        ("source_offset", "INTEGER"),
        ("source_size", "INTEGER"),
        ("source_checksum", "TEXT"),
    ):
        conn.execute(f"ALTER TABLE instances ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX instances_by_source ON instances(source) WHERE source IS NOT NULL")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "the first recorded schema", _first_recorded_schema),
    (2, "edited versions kept as a header and a range of the received file", _edited_versions_by_reference),
]
CURRENT = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection, begin: Callable[[sqlite3.Connection], None]) -> list[int]:
    """Bring the database on ``conn`` (autocommit mode) to :data:`CURRENT` in one transaction,
    opened with ``begin``; the versions applied. Raises :class:`QueueFromNewerRelease`."""
    begin(conn)
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > CURRENT:
            raise QueueFromNewerRelease(
                f"the queue database has schema version {found}, written by a newer dicom-router; this "
                f"release knows versions up to {CURRENT}. Run the newer release (undelivered instances "
                f"wait in it), or deliver or purge its queue before going back"
            )
        applied = []
        for version, _, apply in MIGRATIONS:
            if version > found:
                apply(conn)
                applied.append(version)
        if applied:
            conn.execute(f"PRAGMA user_version = {CURRENT}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
