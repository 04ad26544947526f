"""The C-GET SCP: retrieve from the upstream and send each instance back on the requester's association.

pynetdicom's protocol for the handler: yield the number of sub-operations, then
``(0xFF00, dataset or file)`` per instance; pynetdicom sends it with C-STORE on the
same association (the requester negotiated the SCP role for the storage SOP classes).
A file goes as it is when the requester accepted its transfer syntax; otherwise it is
written in one the requester accepted (:func:`router.transcode.variants.write_in_syntax`:
uncompressed first, then JPEG 2000, JPEG-LS or RLE Lossless; never a lossy one), and one
that cannot be counts as failed. Counts, cancel and the final status work as for C-MOVE.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.engine.file_datasets import FileBackedDataset
from router.qr.relay import Relay, file_instance_uid
from router.transcode.syntaxes import CannotTranscode
from router.transcode.variants import write_in_syntax

log = structlog.get_logger("router.qr.get")

LOSSLESS_PREFERENCE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless)


def get_responses(relay: Relay | None, accepted_contexts, is_cancelled, ctx: dict) -> Iterator:
    planned = relay.retrieval.planned if relay is not None else []
    yield len(planned)
    if not planned:
        return
    log.info("C-GET relaying", instances=len(planned), **ctx)

    def payload_for(fetched, path):
        payload = sendable(path, fetched, accepted_contexts, relay)
        if payload is None:
            log.warning(
                "the requester accepts this instance's SOP class in no usable transfer syntax",
                sop_instance_uid=fetched.sop_instance_uid,
                transfer_syntax=fetched.transfer_syntax,
                **ctx,
            )
        return payload

    yield from relay.responses(payload_for, is_cancelled, "C-GET")


def sendable(path, fetched, accepted_contexts, relay: Relay | None = None):
    """The file when the requester takes its syntax, else a copy in a syntax it takes (removed
    with the relay's other files once sent), else None."""
    sop_class, transfer_syntax = fetched.sop_class_uid, fetched.transfer_syntax
    syntaxes = {cx.transfer_syntax[0] for cx in accepted_contexts if cx.abstract_syntax == sop_class}
    instance_uid = file_instance_uid(path, fetched)
    if transfer_syntax in syntaxes:
        return FileBackedDataset(path, sop_class, instance_uid)
    targets = [syntax for syntax in LOSSLESS_PREFERENCE if syntax in syntaxes]
    if not targets:
        return None
    converted = path.with_name(path.name + ".converted")
    if relay is not None:
        relay.remove_after_sending(converted)
    try:
        write_in_syntax(path, transfer_syntax, targets[0], converted)
    except (CannotTranscode, OSError) as exc:
        log.warning(
            "could not write the instance in a syntax the requester accepts",
            sop_instance_uid=fetched.sop_instance_uid,
            target=targets[0],
            error=str(exc),
        )
        return None
    return FileBackedDataset(converted, sop_class, instance_uid)
