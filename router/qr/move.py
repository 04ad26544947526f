"""The C-MOVE SCP: resolve the destination, retrieve from the upstream, relay each instance.

pynetdicom's protocol for the handler: yield the destination ``(host, port, kwargs)``,
then the number of sub-operations, then ``(0xFF00, file)`` per instance (pynetdicom
sends it on a sub-association and reports the running counts in pending responses).
The number announced is what the upstream's C-FIND listed; whatever was not sent in the
end (never arrived, or refused by a stage) is reported in a final Warning (0xB000, some
sent) or Failure (0xA702, none sent) with the Failed SOP Instance UID List, never as a
silent Success. A client's C-CANCEL cancels the upstream retrieval too. The sub-association
proposes every syntax the router can send, and an instance goes in its own or, when the
destination did not accept that one, in one it did (:meth:`router.qr.relay.Relay.file_dataset`).
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from router.qr.relay import Relay
from router.qr.upstream import storage_contexts

log = structlog.get_logger("router.qr.move")


def move_responses(destination: tuple[str, int, dict] | None, relay: Relay | None, is_cancelled, ctx: dict) -> Iterator:
    """The C-MOVE handler's yields; ``relay`` is None when nothing matched."""
    if destination is None:
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    planned = relay.retrieval.planned if relay is not None else []
    sop_classes = sorted({p.sop_class_uid for p in planned if p.sop_class_uid})
    options = {**destination[2], "contexts": storage_contexts(sop_classes) if sop_classes else None}
    yield destination[0], destination[1], {k: v for k, v in options.items() if v is not None}
    yield len(planned)
    if relay is None or not planned:
        return
    log.info("C-MOVE relaying", instances=len(planned), destination=f"{destination[0]}:{destination[1]}", **ctx)
    yield from relay.responses(is_cancelled, "C-MOVE")
