"""Accepted associations share the endpoint's supported contexts (owned code, declared in router/engine/changes.py).

pynetdicom 3.0.4 deep-copies the server's supported presentation contexts for every
association it accepts (``transport.RequestHandler._create_association``): 40-60 ms with all storage
classes and every transfer syntax, measured on this kind of machine. Negotiation only
reads them (``negotiate_as_acceptor`` and ``negotiate_unrestricted`` build new context
objects for the accepted list), so each association gets a new list of the same context
objects instead. Nothing in the router changes a supported context once serving.
"""

from __future__ import annotations

from router.engine.classes import RouterRequestHandler


def install_shared_contexts() -> None:
    RouterRequestHandler.copy_contexts = staticmethod(list)
