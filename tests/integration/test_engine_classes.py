"""The engine's changes reach the router's own associations only (router/engine/classes.py).

Runs in both engine modes: the router's classes carry the fixes in each.
"""

from __future__ import annotations

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from router import engine
from router.engine.application_entity import RouterAE
from router.engine.classes import RouterAssociation, RouterDUL, RouterSocket

CT_ONLY = [(CTImageStorage, [ExplicitVRLittleEndian])]


def _ct_only_server(ae: AE):
    for sop_class, syntaxes in CT_ONLY:
        ae.add_supported_context(sop_class, syntaxes)
    return ae.start_server(("127.0.0.1", 0), block=False)


def _propose_mr(requestor: AE, port: int):
    requestor.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    requestor.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = requestor.associate("127.0.0.1", port)
    assert assoc.is_established
    accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
    return assoc, accepted


def test_the_routers_associations_take_any_storage_class_and_a_plain_pynetdicom_ae_keeps_its_contexts():
    engine.configure()
    router_server = _ct_only_server(RouterAE("ROUTER"))
    plain_server = _ct_only_server(AE("PLAIN"))
    try:
        to_router, accepted_by_router = _propose_mr(RouterAE("SENDER"), router_server.server_address[1])
        to_plain, accepted_by_plain = _propose_mr(AE("SENDER"), plain_server.server_address[1])
        assert accepted_by_router == [CTImageStorage, MRImageStorage]
        assert accepted_by_plain == [
            CTImageStorage
        ]  # its contexts say CT only, whatever the router set up in the process
        assert type(to_router) is RouterAssociation and type(to_router.dul) is RouterDUL
        assert type(to_router.dul.socket) is RouterSocket
        assert type(to_plain) is Association and type(to_plain.dul) is DULServiceProvider
        [served_by_router] = router_server.active_associations
        [served_by_plain] = plain_server.active_associations
        assert type(served_by_router) is RouterAssociation and type(served_by_plain) is Association
        for assoc in (to_router, to_plain):
            assoc.release()
    finally:
        router_server.shutdown()
        plain_server.shutdown()
