"""Why an association the router requested was not made (pynetdicom 3.0.4, owned code).

Stock pynetdicom logs the socket error of a failed connection and reports the association
as aborted, so a destination that refused the connection, or did not answer it, looked like
one that aborted. :func:`install_connect_errors` replaces ``AssociationSocket.connect`` by a
copy of 3.0.4's that also keeps the error as ``assoc.connect_error``;
:func:`why_not_associated` turns what is known into the reason an operator reads in
``queue list``, ``status`` and the log.
"""

from __future__ import annotations

import socket
import ssl
from typing import cast

from pynetdicom import evt
from pynetdicom.transport import (
    LOGGER,
    T_CONNECT,
    AddressInformation,
    AssociationSocket,
)

from router.engine.classes import RouterSocket


def _connect(self: AssociationSocket, primitive: T_CONNECT) -> None:
    """pynetdicom 3.0.4 ``AssociationSocket.connect``, keeping a failure's error on the association."""
    if self.socket is None:
        raise ValueError("A socket must be created before calling AssociationSocket.connect()")
    try:
        if self.tls_args:
            context, server_hostname = self.tls_args
            self.socket = cast(
                socket.socket, context.wrap_socket(self.socket, server_side=False, server_hostname=server_hostname)
            )
        self.socket.settimeout(self.assoc.connection_timeout)
        self.socket.connect(primitive.address_info.as_tuple)
        self.socket.settimeout(None)
        conn_info = self.socket.getsockname()
        self.assoc.requestor.address_info = AddressInformation.from_tuple(conn_info)
        self._is_connected = True
        evt.trigger(self.assoc, evt.EVT_CONN_OPEN, {"address": primitive.address_info.as_tuple})
        primitive.result = "Evt2"
        self.provider_queue.put(primitive)
    except OSError as exc:
        self.assoc.connect_error = exc
        LOGGER.error("Association request failed: unable to connect to remote")
        LOGGER.error(f"TCP Initialisation Error: {exc}")
        if self.socket:
            self._shutdown_socket()
            self.socket = None
        primitive.result = "Evt17"
        self.provider_queue.put(primitive)
    finally:
        self._ready.set()


def install_connect_errors() -> None:
    RouterSocket.connect = _connect


def why_not_associated(assoc, peer: str) -> str:
    """The reason the association ``assoc`` with ``peer`` (a description) was not established."""
    if assoc.is_rejected:
        answer = getattr(assoc.acceptor, "primitive", None)
        detail = ""
        if answer is not None and getattr(answer, "result", None) in (0x01, 0x02):
            detail = f" ({answer.result_str}, {answer.source_str}: {answer.reason_str})"
        return f"association rejected by {peer}{detail}"
    error = getattr(assoc, "connect_error", None)
    if error is not None:
        return f"cannot connect to {peer}: {connect_problem(error, assoc.connection_timeout)}"
    if assoc.is_aborted:
        return f"{peer} aborted the association request, or did not answer it within {assoc.acse_timeout:g} s"
    return f"cannot connect to {peer}"


def connect_problem(error: OSError, timeout: float | None = None) -> str:
    """What a failed connection attempt means, in words an operator acts on."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"connection timed out after {timeout:g} s" if timeout else "connection timed out"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name: {error.strerror}"
    return error.strerror or str(error)
