"""The C-GET SCP: retrieve from the upstream and send each instance back on the requester's association.

pynetdicom's protocol for the handler: yield the number of sub-operations, then
``(0xFF00, dataset or file)`` per instance; pynetdicom sends it with C-STORE on the
same association (the requester negotiated the SCP role for the storage SOP classes).
A file goes in its own transfer syntax or, when the requester did not accept that one,
in one it did (:meth:`router.qr.relay.Relay.file_dataset`). Counts, cancel and the final
status work as for C-MOVE.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from router.qr.relay import Relay

log = structlog.get_logger("router.qr.get")


def get_responses(relay: Relay | None, is_cancelled, ctx: dict) -> Iterator:
    planned = relay.retrieval.planned if relay is not None else []
    yield len(planned)
    if relay is None or not planned:
        return
    log.info("C-GET relaying", instances=len(planned), **ctx)
    yield from relay.responses(is_cancelled, "C-GET")
