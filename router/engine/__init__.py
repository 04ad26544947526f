"""Process-wide pynetdicom settings and the small owned changes to its internals.

:func:`configure` is the one place these are set; every process of the router calls it
once at start-up, before any association.
"""

from __future__ import annotations

import gc
import logging
import resource
import socket
import ssl
import struct
import threading

import pynetdicom
from pynetdicom import _config
from pynetdicom.transport import AssociationSocket

from router.engine.acceptor import install_shared_contexts
from router.engine.backpressure import install_backpressure
from router.engine.connect_errors import install_connect_errors, why_not_associated  # noqa: F401 (re-exported)
from router.engine.failsafe import install_failsafes, log_unhandled_thread_errors
from router.engine.fast_store import install_fast_store_rsp
from router.engine.file_datasets import install_send_from_file
from router.engine.part10 import install_fast_file_meta
from router.engine.pdata_reads import install_pdata_reads
from router.engine.pdata_sends import install_pdata_sends
from router.engine.progress import arm_read_progress
from router.engine.reactors import current_association_fields, install_reactors  # noqa: F401 (re-exported)
from router.engine.readiness import install_poll_readiness
from router.engine.socket_reads import install_fast_recv
from router.engine.store_decode import install_fast_store_decode
from router.engine.uid_cache import install_uid_cache

SUPPORTED_PYNETDICOM = "3.0.4"

_configured = False
_lock = threading.Lock()


def configure() -> None:
    """Stream received and sent datasets through files, accept any storage class and
    transfer syntax as sent, silence pynetdicom's per-message logging, disable Nagle on
    every association socket, bound the outgoing PDU queue, make the reactor loops
    event-driven, encode and decode C-STORE command sets directly, read P-DATA PDV by PDV
    with received data sets going straight to their Part-10 files, send data sets from
    their files with sendfile(), validate each UID once, and share the supported contexts
    between accepted associations instead of deep-copying them.
    Idempotent."""
    global _configured
    with _lock:
        if _configured:
            return
        _config.LOG_HANDLER_LEVEL = "none"
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.STORE_SEND_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("pynetdicom.fsm").setLevel(logging.CRITICAL)  # the router logs these errors itself
        _quiet_pynetdicom_tracebacks()
        raise_descriptor_limit()
        _install_socket_options()
        install_send_from_file()
        if pynetdicom.__version__ == SUPPORTED_PYNETDICOM:
            install_poll_readiness()
            install_connect_errors()
            install_backpressure()
            install_reactors()
            install_fast_store_rsp()
            install_fast_recv()
            install_fast_file_meta()
            install_fast_store_decode()
            install_pdata_reads()
            install_pdata_sends()
            install_uid_cache()
            install_shared_contexts()
            install_failsafes()
        else:  # pragma: no cover - depends on the installed version
            logging.getLogger("router.engine").warning(
                "pynetdicom %s is not the version the engine changes were made for (%s): "
                "running stock pynetdicom; outbound memory is then not bounded",
                pynetdicom.__version__,
                SUPPORTED_PYNETDICOM,
            )
            log_unhandled_thread_errors()
        _configured = True


class _NoTracebacks(logging.Filter):
    """pynetdicom logs a peer's bad PDU as an error line and then the exception with its
    traceback (``LOGGER.exception(exc)``): the second line is dropped and no line keeps a
    traceback, so a fuzzing peer cannot fill the log with them (the router logs such errors
    itself, with the association's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, BaseException):
            return False
        record.exc_info = record.exc_text = None
        return True


def _quiet_pynetdicom_tracebacks() -> None:
    quiet = _NoTracebacks()
    names = [name for name in logging.root.manager.loggerDict if name.startswith("pynetdicom")]
    for name in {"pynetdicom", *names}:
        logging.getLogger(name).addFilter(quiet)


def raise_descriptor_limit() -> None:
    """Raise the process's soft limit on open descriptors to its hard limit.

    Each association holds two descriptors (its socket and the eventfd that wakes its
    socket thread); the common default soft limit of 1024 would otherwise cap a process
    near 500 associations whatever ``max_associations`` says. The hard limit is the
    operator's (``LimitNOFILE=`` in the systemd unit, ``ulimit -Hn``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def freeze_startup_objects() -> None:
    """Leave everything made at start-up (pydicom's and pynetdicom's tables, the
    configuration) out of later garbage collections.

    A full collection scanned them all: one pause of about 47 ms every thousand or so
    instances on a receiving association, measured here. Call once a process is serving.
    """
    gc.collect()
    gc.freeze()


def _install_socket_options() -> None:
    """Disable Nagle on every association socket, inbound and outbound.

    pynetdicom writes a PDU in several ``send()`` calls; with Nagle and the peer's delayed
    ACK each C-STORE then stalls about 40 ms (measured: 22 instead of 1115 instances/s).
    """
    original_init = AssociationSocket.__init__

    def init(self, assoc, client_socket=None, address=None):
        original_init(self, assoc, client_socket, address)
        set_nodelay(self.socket)

    original_create = AssociationSocket._create_socket

    def create(self, address):
        sock = original_create(self, address)
        set_nodelay(sock)
        return sock

    AssociationSocket.__init__ = init
    AssociationSocket._create_socket = create


def set_nodelay(sock) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def arm_socket_timeout(assoc, seconds: float | None) -> None:
    """A peer that stops reading, or stops sending inside a PDU, then fails the blocked send or
    read after ``seconds`` instead of hanging the association; one that trickles a message
    fails its reads once ``seconds`` pass without progress (:mod:`router.engine.progress`).

    On plain TCP the kernel keeps the time (``SO_SNDTIMEO``/``SO_RCVTIMEO`` on a blocking
    socket): with Python's own socket timeout every send and receive first waits in
    ``poll()``, one more system call each, about twenty per CT instance received. A send or
    read that runs out of time fails with an OSError, as it did with Python's timeout. TLS
    sockets keep Python's timeout.
    """
    arm_read_progress(assoc.dul, seconds)
    sock = _raw_socket(assoc)
    if sock is not None:
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(seconds)
            else:
                set_kernel_timeouts(sock, seconds)
        except OSError:
            pass


def set_kernel_timeouts(sock: socket.socket, seconds: float | None) -> None:
    """Make ``sock`` blocking, with its sends and receives bounded by the kernel (None: unbounded)."""
    sock.settimeout(None)
    seconds = seconds or 0.0
    interval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


def _raw_socket(assoc):
    try:
        return assoc.dul.socket.socket
    except AttributeError:
        return None
