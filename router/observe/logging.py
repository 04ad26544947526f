"""structlog set-up: JSON lines when stderr is not a terminal, readable console otherwise.

Standard-library loggers (pynetdicom's messages) and Python warnings (pydicom's) go
through the same renderer, so in JSON mode stderr carries nothing but JSON lines; console
lines have their control characters escaped (:mod:`router.observe.printable`). Their lines
carry no context of their own: each gets the fields of what the logging thread is working
on (its association, for pynetdicom's threads) from the ``thread_context`` given to
:func:`setup_logging`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import Any

import structlog

from router.observe.printable import escape_event

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
RECENT_PROBLEMS: deque[dict] = deque(
    maxlen=50
)  # the latest warnings and errors of this process, for `dicom-router status`
_recent_lock = threading.Lock()
KEPT_FIELDS = (
    "timestamp",
    "level",
    "logger",
    "event",
    "endpoint",
    "backend",
    "assoc_id",
    "calling_aet",
    "sop_instance_uid",
    "reason",
    "error",
)


def _thread_context_adder(provider):
    """A processor adding ``provider()``'s fields to a standard-library logger's line."""

    def add(logger, method, event_dict):
        try:
            fields = provider()
        except Exception:  # context is a courtesy: never lose the line over it
            return event_dict
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def setup_logging(level: str = "info", fmt: str = "auto", process: str | None = None, thread_context=None) -> None:
    """Configure structlog and the standard library for this process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise).
    ``process`` names the router process (``receive``, ``delivery``) on every line.
    ``thread_context()``, if given, returns the fields (a dict, maybe empty) naming what the
    current thread works on; they are added to every line from a standard-library logger.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _remember_problems,
    ]
    if process:
        shared.append(_add_process(process))
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_thread_context_adder(thread_context), *shared] if thread_context else shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            _identity if use_json else escape_event,  # type: ignore[list-item]  # a plain function, as processors are
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    logging.getLogger("pynetdicom").setLevel(max(LEVELS[level], logging.WARNING))
    logging.captureWarnings(True)  # pydicom's warnings become log lines, not bare text on stderr


def _add_process(name: str):
    def add(logger, method, event_dict):
        event_dict.setdefault("process", name)
        return event_dict

    return add


def _remember_problems(logger, method, event_dict):
    if event_dict.get("level") in ("warning", "error", "critical"):
        entry = {k: str(event_dict[k]) for k in KEPT_FIELDS if k in event_dict}
        with _recent_lock:
            RECENT_PROBLEMS.append(entry)
    return event_dict


def recent_problems() -> list[dict]:
    """The latest warnings and errors logged by this process, newest first."""
    with _recent_lock:
        return list(reversed(RECENT_PROBLEMS))


def _identity(logger, method, event_dict):
    return event_dict
