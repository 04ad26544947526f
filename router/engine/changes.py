"""Every change the router makes to pynetdicom's internals, in the order they are applied.

Speed changes come first, so that the fixes wrapping the same functions wrap them. Each
entry's module docstring says what the change does and what it measured; ``why`` here is
the one-line reason. The fingerprints are those of pynetdicom 3.0.4's source
(:func:`router.engine.seam.fingerprint`); ``tests/unit/test_engine_seam.py`` checks them
against the pynetdicom installed.
"""

from __future__ import annotations

from router.engine import (
    acceptor,
    application_entity,
    backpressure,
    classes,
    connect_errors,
    failsafe,
    fast_store,
    file_datasets,
    part10,
    pdata_reads,
    pdata_sends,
    pdu_limits,
    reactors,
    readiness,
    socket_options,
    socket_reads,
    store_decode,
    uid_cache,
)
from router.engine.seam import Change

DUL = "pynetdicom.dul.DULServiceProvider"
ASSOCIATION = "pynetdicom.association.Association"
SOCKET = "pynetdicom.transport.AssociationSocket"
DIMSE = "pynetdicom.dimse.DIMSEServiceProvider"
OWN_CLASSES = "the router's own classes"

CHANGES: tuple[Change, ...] = (
    # -- first: the classes every other change is installed on ---------------------------
    Change(
        OWN_CLASSES,
        "fix",
        "the router's AEs, listeners and associations are made of its own subclasses, so its changes "
        "(and accepting every storage class) reach only them, not every pynetdicom AE in the process",
        (
            "pynetdicom.ae.ApplicationEntity.associate",
            "pynetdicom.transport.RequestHandler._create_association",
            "pynetdicom.fsm.StateMachine.do_action",
            f"{ASSOCIATION}.__init__",
            f"{DUL}.__init__",
        ),
        "c45fcb7af445cf7a",
        classes.use_router_classes,
    ),
    # -- speed: the owned engine only ---------------------------------------------------
    Change(
        "event-driven reactors",
        "speed",
        "the stock reactors sleep 1 ms per pass, most of an association's wall time",
        (
            f"{DUL}.__init__",
            f"{DUL}.run_reactor",
            f"{DUL}.kill_dul",
            f"{DUL}.stop_dul",
            f"{ASSOCIATION}.__init__",
            f"{ASSOCIATION}._run_reactor",
            f"{ASSOCIATION}.kill",
        ),
        "7c34f6380c2db53e",
        reactors.install_reactors,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "no Nagle",
        "speed",
        "pynetdicom writes a PDU in several send() calls, which Nagle and delayed ACKs stall 40 ms each",
        (f"{SOCKET}.__init__", f"{SOCKET}._create_socket"),
        "a18fbd2e4ab1517e",
        socket_options.install_socket_options,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "direct store decoding",
        "speed",
        "C-STORE command sets decoded with struct, data sets written straight to their Part-10 files",
        (f"{DIMSE}.receive_primitive",),
        "b902ef354f4948fd",
        store_decode.install_fast_store_decode,
        requires=(
            OWN_CLASSES,
            "event-driven reactors",
        ),
    ),
    Change(
        "P-DATA read PDV by PDV",
        "speed",
        "received data sets go to their files without building pynetdicom's PDU objects",
        (f"{DUL}._read_pdu_data",),
        "f726a45ce334f525",
        pdata_reads.install_pdata_reads,
        requires=(OWN_CLASSES, "event-driven reactors", "direct store decoding"),
    ),
    Change(
        "P-DATA sent with sendfile()",
        "speed",
        "data sets go from the page cache to the socket, not through Python's memory",
        ("pynetdicom.fsm.DT_1", "pynetdicom.fsm.AR_7"),
        "7545332f2c48f2a1",
        pdata_sends.install_pdata_sends,
        requires=(
            OWN_CLASSES,
            "event-driven reactors",
        ),
    ),
    Change(
        "direct store sends",
        "speed",
        "C-STORE requests and responses encoded with struct, sent on the socket the reactor lends",
        (f"{DIMSE}.send_msg",),
        "0a84102e66ac20c7",
        fast_store.install_fast_store_rsp,
        requires=(OWN_CLASSES, "event-driven reactors", "P-DATA sent with sendfile()"),
    ),
    Change(
        "file meta written directly",
        "speed",
        "the File Meta Information of a received instance written without building a Dataset",
        (
            "pynetdicom.dimse_messages.create_file_meta",
            "pynetdicom.dimse_messages.write_file_meta_info",
            "pynetdicom.association.split_dataset",
        ),
        "125b121f39ac6799",
        part10.install_fast_file_meta,
    ),
    Change(
        "UIDs validated once",
        "speed",
        "pynetdicom validates the same UID on every primitive, item and context",
        ("pynetdicom.utils.set_uid", "pynetdicom.presentation.PresentationContext.add_transfer_syntax"),
        "1ea8072983497eb6",
        uid_cache.install_uid_cache,
    ),
    Change(
        "shared supported contexts",
        "speed",
        "each accepted association deep-copied every supported context: 40-60 ms",
        ("pynetdicom.transport.RequestHandler._create_association",),
        "c8217033dc806d4e",
        acceptor.install_shared_contexts,
        requires=(OWN_CLASSES,),
    ),
    # -- fixes: every engine mode -------------------------------------------------------------
    Change(
        "poll() readiness",
        "fix",
        "select() fails for descriptors above 1024, which a few hundred associations reach",
        (f"{SOCKET}.ready",),
        "fc1876ad66f81541",
        readiness.install_poll_readiness,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "bounded socket reads",
        "fix",
        "a PDU length above the cap fails as a closed connection; every read counts towards the "
        "deadline by progress, so a trickling peer is cut off",
        (f"{SOCKET}.recv",),
        "58e43dd0f220a1ba",
        socket_reads.install_fast_recv,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "bounded PDU reads",
        "fix",
        "a PDU announcing more than the association accepts is aborted before it is read; the deadline "
        "by progress restarts between DIMSE messages, not inside one",
        (f"{DUL}._read_pdu_data",),
        "f726a45ce334f525",
        pdu_limits.install_pdu_limits,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "events before reads",
        "fix",
        "the abort of an invalid PDU waited while the socket thread blocked reading what came after it",
        (f"{DUL}._is_transport_event", f"{DUL}.run_reactor"),
        "f6cd1486aea05115",
        pdu_limits.install_events_before_reads,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "bounded outgoing PDU queue",
        "fix",
        "a peer that stops reading cannot make the router queue a whole data set in memory",
        (f"{DUL}.send_pdu",),
        "998e70725b3218c7",
        backpressure.install_backpressure,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "no unhandled association thread",
        "fix",
        "a bad association request or an error in an association thread ended the thread and left "
        "its socket open, outside every limit",
        ("pynetdicom.acse.ACSE._negotiate_as_acceptor", f"{ASSOCIATION}.run_reactor"),
        "8687d766eb462dcc",
        failsafe.install_failsafes,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "reactor keeps off responses",
        "fix",
        "the association's reactor could take a response a send_*() call was waiting for, ending the association",
        (f"{ASSOCIATION}._run_reactor", f"{DIMSE}.get_msg"),
        "3f10e5c44b0ae563",
        reactors.install_reactor_keeps_off_responses,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "no wait after close",
        "fix",
        "a connection closed before its association request held an association thread for acse_timeout",
        (f"{DUL}.receive_pdu",),
        "c8c25e4ae7d6cb8e",
        reactors.install_receive_until_closed,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "no unhandled socket thread",
        "fix",
        "an error in a state machine action (a request pynetdicom cannot decode, a P-DATA queued once a "
        "release began) ended the socket thread, leaving the peer unanswered and the socket open",
        ("pynetdicom.fsm.StateMachine.do_action",),
        "c92a09edce5d5930",
        reactors.install_state_machine_guard,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "rejection is not abort",
        "fix",
        "a rejection answered before the association thread looked was reported as an abort",
        ("pynetdicom.acse.ACSE.socket", "pynetdicom.acse.ACSE._negotiate_as_requestor"),
        "a53865f697e3ba68",
        reactors.install_answered_socket,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "connection errors kept",
        "fix",
        "why a connection failed (refused, timed out, TLS) reaches the operator, not only 'aborted'",
        (f"{SOCKET}.connect",),
        "16106e4eddcc108f",
        connect_errors.install_connect_errors,
        requires=(OWN_CLASSES,),
    ),
    Change(
        "received data sets in the router's folder",
        "fix",
        "pynetdicom writes a data set it decodes itself to the system's temporary folder, not the "
        "receiving association's (the spool, on the same filesystem as the spool's objects)",
        ("pynetdicom.dimse_messages.DIMSEMessage.decode_msg",),
        "d9ea3949bc0e8b9c",
        application_entity.install_received_files_folder,
    ),
    Change(
        "sends from files",
        "fix",
        "C-GET and C-MOVE sub-operations send instances from their files, never whole in memory",
        (f"{ASSOCIATION}.send_c_store",),
        "49e17520ddd6fefa",
        file_datasets.install_send_from_file,
        requires=(OWN_CLASSES,),
    ),
)
