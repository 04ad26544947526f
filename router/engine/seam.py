"""The seam between the router and pynetdicom's internals: every owned change, declared once.

A :class:`Change` names the pynetdicom objects it replaces or wraps (``replaces``, dotted
paths from ``pynetdicom``), why, whether it is a ``fix`` (hostile or unlucky peers, flat
memory, honest errors: applied in every engine mode) or a ``speed`` change (applied in the
``owned`` mode only), and a fingerprint of the pynetdicom source it was written against.

:func:`apply_changes` fingerprints every target before it changes anything, then applies
each change whose fingerprint still matches and whose prerequisites were applied. A change
whose target differs (another pynetdicom release changed that code) is left out with one
log line naming it, its targets and both fingerprints; every other change still applies.
So a pynetdicom upgrade turns off exactly the changes whose code it touched, and the test
suite (``tests/unit/test_engine_seam.py``) fails on the first run against it, naming them.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

log = structlog.get_logger("router.engine")

Kind = Literal["fix", "speed"]
MODES = ("owned", "stock")


@dataclass(frozen=True)
class Change:
    name: str
    kind: Kind
    why: str
    replaces: tuple[str, ...]
    fingerprint: str
    install: Callable[[], None]
    requires: tuple[str, ...] = ()


@dataclass
class SeamReport:
    """What :func:`apply_changes` did: the mode, and each change applied or left out (with why)."""

    mode: str
    applied: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)


def resolve(target: str) -> object:
    """The object at ``target``, a dotted path whose longest importable prefix is a module
    (``pynetdicom.dul.DULServiceProvider.run_reactor``). A property resolves to its getter."""
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = inspect.getattr_static(obj, name) if inspect.isclass(obj) else getattr(obj, name)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            obj = obj.fget
        return obj
    raise ImportError(f"no module in {target!r}")


def fingerprint(targets: Iterable[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the targets' source code, in order."""
    digest = hashlib.sha256()
    for target in targets:
        try:
            source = inspect.getsource(resolve(target))  # type: ignore[arg-type]
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            source = f"<missing: {type(exc).__name__}>"
        digest.update(target.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:16]


def apply_changes(changes: Iterable[Change], mode: str) -> SeamReport:
    """Apply the changes that belong to ``mode`` and still match pynetdicom's source, in order."""
    if mode not in MODES:
        raise ValueError(f"engine mode {mode!r} is not one of {', '.join(MODES)}")
    changes = list(changes)
    found = {change.name: fingerprint(change.replaces) for change in changes}
    report = SeamReport(mode)
    for change in changes:
        reason = _reason_to_leave_out(change, mode, found[change.name], report)
        if reason is None:
            change.install()
            report.applied.append(change.name)
            continue
        report.left_out[change.name] = reason
        if change.kind == "fix" or mode == "owned":
            log.warning(
                "pynetdicom change not applied",
                change=change.name,
                kind=change.kind,
                reason=reason,
                replaces=list(change.replaces),
            )
    return report


def _reason_to_leave_out(change: Change, mode: str, found: str, report: SeamReport) -> str | None:
    if change.kind == "speed" and mode == "stock":
        return "speed change, engine mode stock"
    if found != change.fingerprint:
        return f"pynetdicom's source differs from the one it was written for (fingerprint {found}, expected {change.fingerprint})"
    missing = [name for name in change.requires if name not in report.applied]
    if missing:
        return f"needs {', '.join(missing)}, not applied"
    return None
