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
