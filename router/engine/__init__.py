"""Process-wide pynetdicom settings and the router's declared changes to its internals.

:func:`configure` is the one place these are set; every process of the router calls it
once at start-up, before any association. The changes themselves are declared in
:mod:`router.engine.changes` and applied by :mod:`router.engine.seam`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import resource
import socket
import ssl
import struct
import threading

import pynetdicom
import structlog
from pydicom import config as pydicom_config
from pynetdicom import _config

from router.engine.association_log import current_association_fields  # noqa: F401 (re-exported)
from router.engine.connect_errors import why_not_associated  # noqa: F401 (re-exported)
from router.engine.failsafe import log_unhandled_thread_errors
from router.engine.progress import arm_read_progress
from router.engine.seam import MODES, SeamReport, apply_changes

ENGINE_ENVIRONMENT = "DICOM_ROUTER_ENGINE"

log = structlog.get_logger("router.engine")

_report: SeamReport | None = None
_lock = threading.Lock()


def default_mode() -> str:
    """``owned``, unless the environment variable ``DICOM_ROUTER_ENGINE`` names another mode
    (how CI runs the DIMSE tests on stock pynetdicom)."""
    mode = os.environ.get(ENGINE_ENVIRONMENT, "owned")
    if mode not in MODES:
        raise ValueError(f"{ENGINE_ENVIRONMENT}={mode!r} is not one of {', '.join(MODES)}")
    return mode


def configure(mode: str | None = None) -> SeamReport:
    """Stream received and sent data sets through files, accept any storage class and
    transfer syntax as sent, silence pynetdicom's per-message logging (and its identifier
    dumps, which it formats before the logger's level is checked: a third of the time a
    C-FIND response takes), leave values pydicom
    reads unvalidated (a router passes on what it was sent, and validating each value it decodes
    is a measurable part of de-identifying an instance: docs/benchmarks.md), raise the descriptor
    limit, keep freed memory for the next instance (:func:`reuse_freed_memory`), and apply the
    router's changes to pynetdicom for ``mode`` (default :func:`default_mode`):

    - ``owned``: every change of :mod:`router.engine.changes`, fixes and speed-ups;
    - ``stock``: pynetdicom as released plus the fixes.

    The first call decides; later calls return its report (a later call naming another mode
    is logged and ignored). One line says the mode and how many changes apply (at debug level
    when that is all of them); each change left out because pynetdicom's code changed under it
    has its own warning line (:mod:`router.engine.seam`).
    """
    global _report
    with _lock:
        wanted = mode or default_mode()
        if _report is not None:
            if mode is not None and mode != _report.mode:
                log.warning("engine mode already set in this process", mode=_report.mode, ignored=mode)
            return _report
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.STORE_SEND_CHUNKED_DATASET = True
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("pynetdicom.fsm").setLevel(logging.CRITICAL)  # the router logs these errors itself
        _quiet_pynetdicom_tracebacks()
        raise_descriptor_limit()
        reuse_freed_memory()
        from router.engine.changes import CHANGES, OWN_CLASSES

        _report = apply_changes(CHANGES, wanted)
        if OWN_CLASSES not in _report.applied:
            _config.UNRESTRICTED_STORAGE_SERVICE = True  # pynetdicom's own classes: the router's AEs need it
        log_unhandled_thread_errors()
        notable = _report.mode != "owned" or _report.left_out
        (log.info if notable else log.debug)(
            "pynetdicom engine",
            mode=_report.mode,
            pynetdicom=pynetdicom.__version__,
            changes_applied=len(_report.applied),
            changes_left_out=len(_report.left_out),
        )
        return _report


def report() -> SeamReport | None:
    """What :func:`configure` applied in this process (None before it ran)."""
    return _report


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


MMAP_THRESHOLD = 4 * 2**20
TRIM_THRESHOLD = 8 * 2**20
ARENAS = 4
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def reuse_freed_memory() -> bool:
    """Let the C allocator keep freed memory for the next instance instead of handing it back
    to the kernel after each one; True when set (glibc), False elsewhere.

    A transcoded frame, a decoded one and the file buffers around them (about 1.5 MB for a
    512 x 512 CT frame) are allocated and freed for every instance. With glibc's defaults,
    blocks of that size are mapped and unmapped, or the heap grown and trimmed, each time,
    so every instance's buffers start as fresh pages that the kernel faults in and zeroes,
    at a cost of the order of decoding an RLE frame. Here allocations under
    :data:`MMAP_THRESHOLD` come from a heap, a heap's free top is trimmed only past
    :data:`TRIM_THRESHOLD`, and the threads share at most :data:`ARENAS` heaps: what a
    process keeps beyond what it uses stays under ``ARENAS * TRIM_THRESHOLD`` (32 MiB), so
    memory is still flat.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENAS))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])


def freeze_startup_objects() -> None:
    """Leave everything made at start-up (pydicom's and pynetdicom's tables, the
    configuration) out of later garbage collections.

    A full collection scanned them all: one pause of about 47 ms every thousand or so
    instances on a receiving association, measured here. Call once a process is serving.
    """
    gc.collect()
    gc.freeze()


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
