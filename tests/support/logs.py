"""Find structured log events captured by pytest's caplog."""

from __future__ import annotations


def events(caplog, name: str) -> list[dict]:
    """The event dicts logged with event ``name``."""
    out = []
    for record in caplog.records:
        if isinstance(record.msg, dict) and record.msg.get("event") == name:
            out.append(record.msg)
    return out
