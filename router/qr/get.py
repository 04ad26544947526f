"""The C-GET SCP: retrieve from the upstream and send each instance back on the requester's association.

pynetdicom's protocol for the handler: yield the number of sub-operations, then
``(0xFF00, dataset or file)`` per instance; pynetdicom sends it with C-STORE on the
same association (the requester negotiated the SCP role for the storage SOP classes).
A file goes as it is when the requester accepted its transfer syntax; an uncompressed
little endian file is converted (streamed from file to file, :mod:`router.spool.transcode`)
when the requester accepted only the other one; anything else counts as failed. Counts, cancel and the final status work as for C-MOVE.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.engine.file_datasets import FileBackedDataset
from router.qr.relay import Relay, file_instance_uid
from router.spool.transcode import CannotConvert, convert_file

log = structlog.get_logger("router.qr.get")

UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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
    """The file when the requester takes its syntax, else a converted copy when possible (removed
    with the relay's other files once sent), else None."""
    sop_class, transfer_syntax = fetched.sop_class_uid, fetched.transfer_syntax
    syntaxes = {cx.transfer_syntax[0] for cx in accepted_contexts if cx.abstract_syntax == sop_class}
    instance_uid = file_instance_uid(path, fetched)
    if transfer_syntax in syntaxes:
        return FileBackedDataset(path, sop_class, instance_uid)
    targets = sorted(syntaxes & set(UNCOMPRESSED_LE))
    if UID(transfer_syntax) not in UNCOMPRESSED_LE or not targets:
        return None
    converted = path.with_name(path.name + ".converted")
    if relay is not None:
        relay.remove_after_sending(converted)
    try:
        convert_file(path, converted, targets[0])
    except CannotConvert as exc:
        log.warning(
            "could not convert the instance for the requester",
            sop_instance_uid=fetched.sop_instance_uid,
            error=str(exc),
        )
        return None
    return FileBackedDataset(converted, sop_class, instance_uid)
