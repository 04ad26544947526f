"""The request envelope: the one data shape that crosses every boundary.

An endpoint builds one :class:`RequestEnvelope` per DIMSE request. Middleware reads it
and returns a new one (``dataclasses.replace``) or a :class:`Drop` / :class:`Reject`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread


@dataclass(frozen=True)
class AssociationInfo:
    """Who is on the other end of the association a request arrived on."""

    endpoint: str
    association_id: str
    calling_aet: str
    called_aet: str
    peer_host: str
    peer_port: int
    tls_peer: str | None = None


@dataclass(frozen=True)
class Command:
    """The DIMSE command of the request."""

    kind: str  # echo | store | find | move | get
    sop_class_uid: str
    message_id: int
    priority: int = 0
    affected_sop_instance_uid: str | None = None
    move_destination: str | None = None


class SpooledInstance:
    """A received Part-10 file in the spool, with its header parsed on first use.

    The pixel data is never read: :attr:`header` stops before it.
    """

    def __init__(self, path: Path, transfer_syntax: str, size: int):
        self.path = Path(path)
        self.transfer_syntax = transfer_syntax
        self.size = size
        self._header: Dataset | None = None

    @property
    def header(self) -> Dataset:
        if self._header is None:
            self._header = dcmread(self.path, stop_before_pixels=True)
        return self._header

    def __repr__(self) -> str:
        return f"SpooledInstance({str(self.path)!r}, {self.transfer_syntax!r}, {self.size})"


@dataclass(frozen=True)
class AuditEntry:
    stage: str
    action: str
    detail: str = ""


@dataclass(frozen=True)
class RequestEnvelope:
    association: AssociationInfo
    command: Command
    instance: SpooledInstance | None = None
    identifier: Dataset | None = None
    received_at: float = field(default_factory=time.time)
    backends: tuple[str, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)
    audit: tuple[AuditEntry, ...] = ()

    def with_audit(self, stage: str, action: str, detail: str = "") -> "RequestEnvelope":
        return replace(self, audit=self.audit + (AuditEntry(stage, action, detail),))

    def log_context(self) -> dict[str, Any]:
        """The fields every log line about this request carries."""
        return {
            "assoc_id": self.association.association_id,
            "calling_aet": self.association.calling_aet,
            "sop_instance_uid": self.command.affected_sop_instance_uid,
        }


@dataclass(frozen=True)
class Drop:
    """Stop processing; the sender is told success and nothing is forwarded."""

    stage: str
    reason: str


@dataclass(frozen=True)
class Reject:
    """Stop processing; the sender is told ``status`` and nothing is forwarded."""

    stage: str
    status: int
    reason: str
