"""The request envelope: the one data shape that crosses every boundary.

An endpoint builds one :class:`RequestEnvelope` per DIMSE request. Middleware reads it
and returns a new one (``dataclasses.replace``) or a :class:`Drop` / :class:`Reject`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom import Dataset

from router.spool.encoded_versions import EncodedHeader
from router.spool.splice import (
    Layout,
    clone_header,
    locate_pixel_data,
    read_header_before_pixels,
)


@dataclass(frozen=True)
class AssociationInfo:
    """Who is on the other end of the association (DIMSE) or HTTP request (DICOMweb) a request
    arrived on. For DICOMweb, ``association_id`` is the HTTP request's id, the AE titles are
    empty and ``user`` is the authenticated user, if any."""

    endpoint: str
    association_id: str
    calling_aet: str
    called_aet: str
    peer_host: str
    peer_port: int
    tls_peer: str | None = None
    protocol: str = "dimse"
    user: str | None = None


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

    The pixel data is never read: :attr:`header` holds every element except the
    top-level pixel data. A stage that edits the header takes :meth:`editable_header`,
    changes it and returns :meth:`with_header`: a new instance that shares the source
    file (and so its pixel data) and carries the edited header, written out by the
    intake with :func:`router.spool.splice.write_spliced`.
    """

    def __init__(
        self,
        path: Path,
        transfer_syntax: str,
        size: int,
        *,
        header: Dataset | None = None,
        layout: Layout | None = None,
        edited: bool = False,
        encoded: EncodedHeader | None = None,
    ):
        self.path = Path(path)
        self.transfer_syntax = transfer_syntax
        self.size = size
        self.edited = edited or encoded is not None
        self.encoded = encoded
        self._header = header
        self._layout = layout if encoded is None else encoded.layout
        self._pixel_start: int | None = None

    @property
    def header(self) -> Dataset:
        """The elements before the pixel data; once :attr:`layout` is known, also those after it."""
        if self._header is None:
            if self.encoded is not None:
                self._header = self.encoded.dataset()
            else:
                self._header, self._pixel_start = read_header_before_pixels(
                    self.path, transfer_syntax=self.transfer_syntax
                )
        return self._header

    @property
    def layout(self) -> Layout:
        """Where the pixel data is; needed to edit, not to match (so a filter never walks the pixel data).

        Finding it also adds the elements after the pixel data to :attr:`header`.
        """
        if self._layout is None:
            self.full_header()
        assert self._layout is not None
        return self._layout

    def full_header(self) -> Dataset:
        """The header with the elements after the pixel data too: what an edit must carry over."""
        header = self.header
        if self._layout is None:
            self._layout = locate_pixel_data(self.path, header, self._pixel_start or 0)
        return header

    def editable_header(self) -> Dataset:
        """A copy of the whole header (trailing elements included) to change; the original stays as it was."""
        return clone_header(self.full_header())

    def sop_instance_uid(self, default: str | None = None) -> str | None:
        """The SOP Instance UID the header carries (an edit may have changed it), else ``default``."""
        if self.encoded is not None:
            return self.encoded.sop_instance_uid
        value = self.header.get("SOPInstanceUID", default)
        return None if value is None else str(value)

    def with_header(self, header: Dataset) -> SpooledInstance:
        return SpooledInstance(
            self.path, self.transfer_syntax, self.size, header=header, layout=self.layout, edited=True
        )

    def with_encoded(self, encoded: EncodedHeader) -> SpooledInstance:
        """A new instance whose edited header is already encoded (read back only if a later stage asks)."""
        return SpooledInstance(self.path, self.transfer_syntax, self.size, encoded=encoded)

    def __repr__(self) -> str:
        flag = ", edited" if self.edited else ""
        return f"SpooledInstance({str(self.path)!r}, {self.transfer_syntax!r}, {self.size}{flag})"


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
    hold_reason: str | None = None  # set: deliveries start quarantined for an operator to review

    @property
    def dataset(self) -> Dataset | None:
        """What stages read and edit: the instance header for a C-STORE, else the identifier."""
        return self.instance.header if self.instance is not None else self.identifier

    def with_dataset(self, dataset: Dataset) -> RequestEnvelope:
        """The envelope carrying an edited dataset (see :meth:`SpooledInstance.with_header`)."""
        if self.instance is not None:
            return replace(self, instance=self.instance.with_header(dataset))
        return replace(self, identifier=dataset)

    def with_encoded(self, encoded: EncodedHeader) -> RequestEnvelope:
        """The envelope carrying an instance whose edited header is already encoded."""
        assert self.instance is not None
        return replace(self, instance=self.instance.with_encoded(encoded))

    def editable_dataset(self) -> Dataset:
        if self.instance is not None:
            return self.instance.editable_header()
        return copy.deepcopy(self.identifier) if self.identifier is not None else Dataset()

    def held(self, reason: str) -> RequestEnvelope:
        """Deliver nowhere until an operator releases it (``dicom-router queue retry``)."""
        return replace(self, hold_reason=reason)

    def with_audit(self, stage: str, action: str, detail: str = "") -> RequestEnvelope:
        return replace(self, audit=self.audit + (AuditEntry(stage, action, detail),))

    def log_context(self) -> dict[str, Any]:
        """The fields every log line about this request carries."""
        a = self.association
        if a.protocol != "dimse":
            return {
                "request_id": a.association_id,
                "user": a.user,
                "peer": f"{a.peer_host}:{a.peer_port}",
                "sop_instance_uid": self.command.affected_sop_instance_uid,
            }
        return {
            "assoc_id": self.association.association_id,
            "calling_aet": self.association.calling_aet,
            "peer": f"{self.association.peer_host}:{self.association.peer_port}",
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
