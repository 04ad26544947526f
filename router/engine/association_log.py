"""The log fields that name an association, for every line the engine writes about one
(pynetdicom's own lines included, through :func:`current_association_fields`)."""

from __future__ import annotations

import threading

import structlog
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

ROUTER_LOG = structlog.get_logger("router.engine")


def log_association_error(assoc, exc: BaseException, where: str) -> None:
    """One structured line for an error that ends an association, with who the peer was."""
    ROUTER_LOG.error(
        "association ended after an unexpected error", where=where, error=repr(exc), **association_fields(assoc)
    )


def association_fields(assoc) -> dict:
    """The log fields naming an association: endpoint, id, calling AE title and peer once the
    endpoint has seen its request; the peer's address alone before that, or for an
    association the router requested."""
    info = getattr(assoc, "router_info", None)
    if info is not None:
        return {
            "endpoint": info.endpoint,
            "assoc_id": info.association_id,
            "calling_aet": info.calling_aet,
            "peer": f"{info.peer_host}:{info.peer_port}",
        }
    return {"peer": _peer_of(assoc)}


def current_association_fields() -> dict:
    """:func:`association_fields` of the association whose thread (association or socket
    thread) is running, or nothing: the context of pynetdicom's own log lines."""
    thread = threading.current_thread()
    if isinstance(thread, Association):
        return association_fields(thread)
    if isinstance(thread, DULServiceProvider):
        return association_fields(thread.assoc)
    return {}


def _peer_of(assoc) -> str | None:
    """The other end's address: the socket's peer, else the address the association was made
    with or requested to (a requestor's connection may not be up yet, or have failed)."""
    try:
        host, port = assoc.dul.socket.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError, TypeError, ValueError):
        pass
    try:
        remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        return f"{remote.address}:{remote.port}" if remote.address else None
    except (AttributeError, TypeError, ValueError):
        return None
