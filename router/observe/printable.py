"""Peer-supplied text made safe for a terminal: control characters shown as escapes.

A UID, an AE title or a reason string comes from a peer and can hold terminal control
sequences (ESC ``[2J`` clears the screen). Everything the CLI prints goes through
:class:`EscapingWriter`, and console log lines through :func:`escape_event`; JSON log
lines are escaped by JSON itself.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapingWriter:
    """A text stream wrapper that writes :func:`printable` text."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


def escape_event(logger, method, event_dict: dict) -> dict:
    """structlog processor: escape control characters in every string value (console output)."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event_dict.items()}
