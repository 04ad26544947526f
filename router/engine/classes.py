"""The router's own pynetdicom classes: what the associations it requests and accepts are made of.

The router's AEs (:class:`~router.engine.application_entity.RouterAE`) request
:class:`RouterAssociation` threads over :class:`RouterSocket`, and its listeners accept them
through :class:`RouterRequestHandler`. A RouterAssociation's DUL, state machine, ACSE and
DIMSE providers are the router's subclasses too. The engine's changes
(:mod:`router.engine.changes`) are installed on these subclasses, never on pynetdicom's
classes, so an AE the router did not make (a test's peer, another library in the process)
runs pynetdicom as released.

The subclasses add only what the changes need: a ``setup()`` hook at the end of
construction, and a state machine with its own table of actions. Three pieces of pynetdicom
3.0.4 are copied to make them (``ApplicationEntity.associate``,
``RequestHandler._create_association``, ``StateMachine.do_action``); the change "the
router's own classes" in :mod:`router.engine.changes` carries their fingerprint, and when
pynetdicom's code differs the router's AEs fall back to pynetdicom's own classes, with none
of the changes.
"""

from __future__ import annotations

import socket
import threading
from copy import deepcopy
from datetime import datetime
from typing import Any, ClassVar

from pynetdicom import _config, evt, fsm
from pynetdicom._globals import DEFAULT_MAX_LENGTH, MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE, InvalidEventError, StateMachine
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

_in_use = False


def use_router_classes() -> None:
    """Make the router's AEs and listeners build their associations from these classes, and
    accept every storage SOP class on the router's associations only.

    pynetdicom reads ``_config.UNRESTRICTED_STORAGE_SERVICE`` inside its negotiation and its
    request dispatch; set process-wide, it made every AE in the process accept any storage
    class whatever its contexts said. The setting is taken out of the module and answered
    per thread instead (a module ``__getattr__``): true on a router association's threads,
    pynetdicom's default elsewhere. A value set on the module again overrides it everywhere.
    """
    global _in_use
    _in_use = True
    vars(_config).pop("UNRESTRICTED_STORAGE_SERVICE", None)
    _config.__getattr__ = _config_for_this_thread


def _config_for_this_thread(name: str) -> Any:
    if name == "UNRESTRICTED_STORAGE_SERVICE":
        return router_thread()
    raise AttributeError(f"module 'pynetdicom._config' has no attribute {name!r}")


def router_classes_in_use() -> bool:
    return _in_use


class RouterSocket(AssociationSocket):
    pass


class RouterStateMachine(StateMachine):
    """pynetdicom's state machine, with a table of actions of its own (:attr:`actions`)."""

    actions: ClassVar[dict[str, Any]] = dict(fsm.ACTIONS)

    def do_action(self, event: str) -> None:
        """pynetdicom 3.0.4's ``StateMachine.do_action``, taking the action from :attr:`actions`."""
        if (event, self.current_state) not in TRANSITION_TABLE:
            msg = f"Invalid event '{event}' for the current state '{self.current_state}'"
            fsm.LOGGER.error(msg)
            raise InvalidEventError(msg)
        action_name = TRANSITION_TABLE[(event, self.current_state)]
        action = self.actions[action_name]
        try:
            next_state = action[1](self.dul)
            evt.trigger(
                self.dul.assoc,
                evt.EVT_FSM_TRANSITION,
                {
                    "action": action_name,
                    "current_state": self.current_state,
                    "fsm_event": event,
                    "next_state": next_state,
                },
            )
            self.transition(next_state)
        except Exception as exc:
            fsm.LOGGER.error(
                "State Machine received an exception attempting to perform the action '%s' while in state '%s'",
                action_name,
                self.current_state,
            )
            fsm.LOGGER.exception(exc)
            self.dul.kill_dul()
            raise


class RouterDUL(DULServiceProvider):
    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self.state_machine = RouterStateMachine(self)
        self.setup()

    def setup(self) -> None:
        """Run at the end of construction; the changes that need more state fill it in."""


class RouterACSE(ACSE):
    pass


class RouterDIMSE(DIMSEServiceProvider):
    pass


class RouterAssociation(Association):
    """An association whose providers are the router's classes."""

    def __init__(self, ae, mode: str) -> None:
        super().__init__(ae, mode)
        self.acse = RouterACSE(self)
        self.dul = RouterDUL(self)
        self.dimse = RouterDIMSE(self)
        self.acse_timeout = ae.acse_timeout  # these set the new DUL's timers
        self.network_timeout = ae.network_timeout
        self.setup()

    def setup(self) -> None:
        """Run at the end of construction; the changes that need more state fill it in."""


def associate(
    ae,
    addr,
    port: int,
    contexts=None,
    ae_title: str = "ANY-SCP",
    max_pdu: int = DEFAULT_MAX_LENGTH,
    ext_neg=None,
    bind_address=None,
    tls_args=None,
    evt_handlers=None,
) -> RouterAssociation:
    """pynetdicom 3.0.4's ``ApplicationEntity.associate`` (without its checks of the arguments'
    types) making a :class:`RouterAssociation` over a :class:`RouterSocket`."""
    remote_address = AddressInformation.from_addr_port(addr, port)
    if bind_address is None:
        bind_address = ("::0", 0) if remote_address.address_family == socket.AF_INET6 else ("", 0)
    local_address = AddressInformation.from_tuple(bind_address)
    assoc = RouterAssociation(ae, MODE_REQUESTOR)
    assoc.name = f"RequestorThread@{datetime.now():%Y%m%d%H%M%S}"
    sock = RouterSocket(assoc, address=local_address)
    sock.tls_args = tls_args
    assoc.set_socket(sock)
    assoc.acceptor.ae_title = ae_title
    assoc.acceptor.address_info = remote_address
    assoc.requestor.address_info = local_address
    assoc.requestor.ae_title = ae.ae_title
    assoc.requestor.maximum_length = max_pdu
    assoc.requestor.implementation_class_uid = ae.implementation_class_uid
    assoc.requestor.implementation_version_name = ae.implementation_version_name
    for item in ext_neg or []:
        assoc.requestor.add_negotiation_item(item)
    contexts = contexts or ae.requested_contexts
    ae._validate_requested_contexts(contexts)
    if not contexts:
        raise RuntimeError("At least one requested presentation context is required before associating with a peer")
    contexts = deepcopy(contexts)
    for index, context in enumerate(contexts):
        context.context_id = 2 * index + 1
    assoc.requestor.requested_contexts = contexts
    for handler in evt_handlers or []:
        assoc.bind(*handler)
    assoc.request()
    if assoc.is_established:
        assoc.start()
    return assoc


class RouterRequestHandler(RequestHandler):
    """pynetdicom's request handler, making a :class:`RouterAssociation` for each connection."""

    copy_contexts: ClassVar[Any] = staticmethod(deepcopy)

    def _create_association(self) -> Association:
        """pynetdicom 3.0.4's ``RequestHandler._create_association`` with the router's classes,
        the supported contexts copied by :attr:`copy_contexts`."""
        if not _in_use:
            return super()._create_association()
        assoc = RouterAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(RouterSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = self.copy_contexts(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers: dict[Any, Any] = self.server._handlers
        for event, bound in handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:
                    assoc.bind(event, handler, args)
        return assoc


def router_thread() -> bool:
    """Whether the current thread is one of a router association's (its own or its DUL's)."""
    return isinstance(threading.current_thread(), (RouterAssociation, RouterDUL))
