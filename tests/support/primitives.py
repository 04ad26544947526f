"""DIMSE primitives the engine tests build again and again."""

from __future__ import annotations

from pynetdicom.dimse_primitives import C_STORE

EVEN_UID = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters: odd
ODD_UID = "1.2.840.10008.5.1.4.1.1.20"  # 26 characters: even
LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 38


def store_response(
    status: int,
    instance: str | None = EVEN_UID,
    sop_class: str | None = EVEN_UID,
    comment: str | None = None,
    offending=None,
    message_id: int = 9,
) -> C_STORE:
    """A C-STORE-RSP primitive; ``None`` leaves an optional field out."""
    p = C_STORE()
    p.MessageIDBeingRespondedTo = message_id
    if sop_class is not None:
        p.AffectedSOPClassUID = sop_class
    if instance is not None:
        p.AffectedSOPInstanceUID = instance
    p.Status = status
    if comment is not None:
        p.ErrorComment = comment
    if offending is not None:
        p.OffendingElement = offending
    return p
