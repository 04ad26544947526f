"""Looking into a router's spool from a test."""

from __future__ import annotations

from pathlib import Path


def partial_files(incoming: Path) -> list[Path]:
    """Files in ``incoming/`` holding received bytes: not the empty spares made ahead for the next data sets."""
    return [path for path in incoming.iterdir() if path.is_file() and path.stat().st_size > 0]
