"""Looking into a router's spool from a test."""

from __future__ import annotations

from pathlib import Path


def partial_files(*directories: Path) -> list[Path]:
    """Files under ``directories`` holding received bytes: not the empty spares made ahead for the next data sets."""
    return [path for directory in directories for path in directory.rglob("*") if _holds_bytes(path)]


def spooled_files(data_dir: Path) -> list[Path]:
    """Instances in the spool's ``objects/`` (the empty spares made ahead to receive into are not)."""
    return partial_files(data_dir / "objects")


def _holds_bytes(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except FileNotFoundError:
        return False


def edited_versions_kept_by_reference(data_dir: Path) -> list[str]:
    """Where delivery writes the edited versions kept by reference that the queue holds (their
    header in the row, their pixel data in the received file)."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "queue.db")
    try:
        return [row[0] for row in conn.execute("SELECT path FROM instances WHERE source IS NOT NULL")]
    finally:
        conn.close()
