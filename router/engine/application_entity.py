"""The router's application entities: pynetdicom's ``AE`` with where received data sets go.

Every AE the router makes (its endpoints', its backends', the upstream associations of
query/retrieve) is a :class:`RouterAE`, which carries the :class:`ReceivedFiles` its
associations write received data sets into: the spool's spares for an endpoint, the
spool's ``incoming/`` folder for a retrieval. The engine finds them from the association
(:func:`received_files_of`), so nothing about the spool is set process-wide. Its associations,
requested or accepted, are made of the router's own classes (:mod:`router.engine.classes`).
"""

from __future__ import annotations

import threading
from tempfile import NamedTemporaryFile

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from router.engine import classes
from router.engine.spare_files import ReceivedFiles, received_files_in_temporary_directory


class RouterAE(AE):
    def __init__(self, ae_title: str = "DICOM_ROUTER", received_files: ReceivedFiles | None = None):
        super().__init__(ae_title)
        self.received_files = received_files

    def associate(self, addr, port, *args, **kwargs):
        """pynetdicom's ``associate``, making the router's own association classes
        (:mod:`router.engine.classes`) when they are in use."""
        if not classes.router_classes_in_use():
            return super().associate(addr, port, *args, **kwargs)
        return classes.associate(self, addr, port, *args, **kwargs)

    def make_server(self, address, *args, **kwargs):
        """pynetdicom's ``make_server``, accepting associations of the router's own classes."""
        kwargs.setdefault("request_handler", classes.RouterRequestHandler)
        return super().make_server(address, *args, **kwargs)


def received_files_of(assoc) -> ReceivedFiles:
    """Where ``assoc`` writes what it receives: its AE's, else the temporary directory
    (an AE the router did not make)."""
    files = getattr(getattr(assoc, "ae", None), "received_files", None)
    return files if files is not None else received_files_in_temporary_directory()


def _current_association():
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    if isinstance(thread, Association):
        return thread
    return None


def _named_temporary_file(*args, **kwargs):
    """``NamedTemporaryFile`` for pynetdicom's own chunked receive, in the folder of the
    receiving association's :class:`ReceivedFiles`."""
    assoc = _current_association()
    if assoc is not None and "dir" not in kwargs:
        kwargs["dir"] = received_files_of(assoc).directory
    return NamedTemporaryFile(*args, **kwargs)


def install_received_files_folder() -> None:
    """pynetdicom writes a received data set it decodes itself (the stock engine, TLS, a
    message the owned decoder leaves to it) into the association's folder, not ``/tmp``."""
    from pynetdicom import dimse_messages

    dimse_messages.NamedTemporaryFile = _named_temporary_file
