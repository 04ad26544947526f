"""Plain C-STOREs answered on the socket thread (owned code, declared in router/engine/changes.py).

In pynetdicom 3.0.4 a received C-STORE-RQ goes from the socket thread through a queue to
the association thread, which runs ``StorageServiceClass.SCP`` and the EVT_C_STORE
handler and queues the response back to the socket thread: two thread hand-offs and the
interpreter lock passed back and forth for each instance, 0.2-0.5 ms of an association's
time here. An association acceptor has one request outstanding at a time (the router
negotiates no asynchronous operations), so while the socket thread holds a complete
C-STORE-RQ and the association thread has nothing queued, nothing else is being served on
that association: :func:`answer` runs the bound EVT_C_STORE handler there and queues the
response for the same thread to send next.

It does what ``Association._serve_request`` and ``StorageServiceClass.SCP`` do: the same
event, the received file closed and removed after the handler (unless the handler took it,
:func:`router.engine.store_decode.take_received_file`), 0xC211 when the handler
raises, no response once the handler has ended the association, the status checked by
pynetdicom's ``validate_status``.

pynetdicom's way serves the request instead when:

- the association is not yet counted as established. The acceptor sends the
  A-ASSOCIATE-AC, runs the EVT_ACCEPTED handlers and only then sets ``is_established``;
  a fast peer's first C-STORE can arrive in between, and the association thread serves it
  once establishment is complete (answering it here would find ``is_established`` False
  after the handler and send nothing);
- the association is a requestor's (C-GET sub-operations), or a release has been sent;
- something is bound to EVT_DIMSE_SENT, a PDU is waiting to go out, or a request is
  already queued for the association thread.
"""

from __future__ import annotations

import structlog
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass

from router.engine.association_log import association_fields
from router.engine.spare_files import close_and_remove

log = structlog.get_logger("router.engine")
HANDLER_FAILED = 0xC211


def answer(dimse, context_id: int, request: C_STORE) -> bool:
    """Serve ``request`` on the calling (socket) thread; False if pynetdicom's way must serve it."""
    assoc = dimse.assoc
    if not _can_answer_here(dimse, assoc):
        return False
    bound = assoc.get_handlers(evt.EVT_C_STORE)
    context = assoc._accepted_cx.get(context_id)
    if not bound or bound[0] is None or context is None:
        return False
    handler, args = bound
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    event = evt.Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})
    assoc.abort = assoc._abort_nonblocking  # a blocking abort would wait for this very thread
    try:
        status = handler(event, *args) if args is not None else handler(event)
    except Exception as exc:
        log.exception(
            "exception in the C-STORE handler",
            status=f"0x{HANDLER_FAILED:04X}",
            error=repr(exc),
            **association_fields(assoc),
        )
        status = HANDLER_FAILED
    finally:
        assoc.abort = assoc._abort_blocking
        if request._dataset_file is not None:  # the handler did not take it
            close_and_remove(request._dataset_path, request._dataset_file)
    if not assoc.is_established:
        return True
    response = StorageServiceClass(assoc).validate_status(status, response)
    dimse.send_msg(response, context_id)
    return True


def _can_answer_here(dimse, assoc) -> bool:
    return (
        assoc.is_acceptor
        and assoc.is_established
        and not assoc._sent_release
        and dimse.msg_queue.empty()
        and dimse.dul.to_provider_queue.empty()
        and not assoc.get_handlers(evt.EVT_DIMSE_SENT)
    )
