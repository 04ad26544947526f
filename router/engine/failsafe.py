"""No thread dies unhandled, and no connection outlives its threads (owned code).

pynetdicom 3.0.4 lets several bad association requests end the association thread with
an exception while its socket thread and socket live on, outside every timeout and
every association limit (a presentation context with no transfer syntax raises
``IndexError`` in ``negotiate_unrestricted``; one with no abstract syntax raises
``AttributeError``). Here:

- an error while negotiating an association request answers it with an A-ASSOCIATE-RJ
  (rejected permanent, service user, no reason given) and ends the association;
- an error anywhere else in an association thread aborts the association and closes
  its connection (the socket thread's own errors are handled by
  :func:`router.engine.reactors.abort_after_error`);
- :func:`log_unhandled_thread_errors` replaces ``threading.excepthook``: anything that
  still slips through is one structured error line with the thread's name and the
  traceback as a field, and a connection the thread served is shut down.
"""

from __future__ import annotations

import threading

import structlog
from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from router.engine.association_log import log_association_error
from router.engine.classes import RouterACSE, RouterAssociation
from router.engine.reactors import abort_after_error

log = structlog.get_logger("router.engine")

REJECTED_PERMANENT, SERVICE_USER, NO_REASON = 0x01, 0x01, 0x01

_stock_negotiate_as_acceptor = ACSE._negotiate_as_acceptor
_stock_run_reactor = Association.run_reactor


def _negotiate_as_acceptor(self) -> None:
    try:
        _stock_negotiate_as_acceptor(self)
    except Exception as exc:
        if self.assoc.is_established or self.assoc.is_rejected:
            abort_after_error(self.assoc.dul, exc, "negotiating the association request")
            return
        log_association_error(self.assoc, exc, "negotiating the association request")
        try:
            self.send_reject(REJECTED_PERMANENT, SERVICE_USER, NO_REASON)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        except Exception:  # the connection is already gone: nothing to answer
            pass
        self.assoc.kill()


def _run_reactor(self) -> None:
    try:
        _stock_run_reactor(self)
    except Exception as exc:
        abort_after_error(self.dul, exc, "in the association thread")
        _close_connection(self)


def _close_connection(assoc) -> None:
    sock = getattr(assoc.dul, "socket", None)
    raw = getattr(sock, "socket", None)
    server = getattr(assoc, "_server", None)
    if raw is not None and server is not None:
        try:
            server.shutdown_request(raw)
        except Exception:  # already closed
            pass


def _unhandled(args) -> None:
    """``threading.excepthook``: log the error as one structured line and clean up after the thread."""
    if args.exc_type is SystemExit:
        return
    thread = args.thread
    log.error(
        "a thread ended with an unhandled error",
        thread=getattr(thread, "name", None),
        error=repr(args.exc_value),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
    try:
        if isinstance(thread, Association):
            abort_after_error(thread.dul, args.exc_value, "in the association thread")
            _close_connection(thread)
        elif isinstance(thread, DULServiceProvider):
            abort_after_error(thread, args.exc_value, "in the socket thread")
    except Exception:  # cleaning up must never raise out of the hook
        pass


def log_unhandled_thread_errors() -> None:
    threading.excepthook = _unhandled


def install_failsafes() -> None:
    RouterACSE._negotiate_as_acceptor = _negotiate_as_acceptor
    RouterAssociation.run_reactor = _run_reactor
    log_unhandled_thread_errors()
