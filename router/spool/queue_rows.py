"""The rows the delivery queue (:mod:`router.spool.queue`) writes and hands out: an instance
as the intake records it, and a delivery as a worker claims it."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class InstanceRecord:
    path: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax: str | None
    size: int
    received_at: float
    endpoint: str | None = None
    association_id: str | None = None
    calling_aet: str | None = None
    peer: str | None = None
    checksum: str | None = None
    edited: EditedByReference | None = None


@dataclass(frozen=True)
class EditedByReference:
    """An edited version kept as its ``header`` (every byte before the pixel data) and the
    received file ``source`` from ``offset`` to its end (the pixel data, unchanged); the source
    was ``size`` bytes with ``checksum`` when it was received. Delivery writes the whole version
    at the instance's path (:mod:`router.spool.edited_copies`)."""

    header: bytes
    source: str
    offset: int
    size: int
    checksum: str | None


@dataclass(frozen=True)
class Delivery:
    id: int
    instance_id: int
    backend: str
    pipeline: str | None
    attempts: int
    queued_at: float
    path: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax: str | None
    calling_aet: str | None
    association_id: str | None
    reason: str | None = None
    size: int | None = None
    checksum: str | None = None
    edited: EditedByReference | None = None

    @classmethod
    def from_row(cls, row) -> Delivery:
        """A delivery from a row of :data:`DELIVERY_COLUMNS`."""
        header, source, offset, source_size, source_checksum = row[15:]
        edited = None if source is None else EditedByReference(header, source, offset, source_size, source_checksum)
        delivery = cls(*row[:15])
        return delivery if edited is None else replace(delivery, edited=edited)

    def log_context(self) -> dict:
        return {
            "backend": self.backend,
            "delivery_id": self.id,
            "assoc_id": self.association_id,
            "calling_aet": self.calling_aet,
            "sop_instance_uid": self.sop_instance_uid,
        }


DELIVERY_COLUMNS = (
    "d.id, d.instance_id, d.backend, d.pipeline, d.attempts, d.queued_at, i.path, i.sop_instance_uid,"
    " i.sop_class_uid, i.transfer_syntax, i.calling_aet, i.association_id, d.reason, i.size, i.checksum,"
    " i.header, i.source, i.source_offset, i.source_size, i.source_checksum"
)
