"""``dimse`` endpoint: a DICOM SCP for C-ECHO, C-STORE of any storage SOP class, and query/retrieve.

```toml
[endpoints.ingest]
type = "dimse"
port = 11112
allowed_calling_aets = ["CT_*", "MR01"]
allowed_hosts = ["10.0.0.0/8"]
move_destinations = { VIEWER01 = "10.0.0.5:104" }   # C-MOVE targets besides dimse backends
```

Every storage SOP class is accepted in the transfer syntax the sender lists first, and
the dataset streams to a file in the spool as it arrives; it is never held in memory.
C-FIND, C-MOVE and C-GET are offered when a pipeline bound to the endpoint has a backend
that can answer them (see :mod:`router.qr.service`); a C-STORE that an upstream sends for
a retrieval in progress goes to that retrieval, not to the pipelines.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Literal, cast

import structlog
from pydantic import Field
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from router import engine
from router.config.checks import bind_problem
from router.config.models import EndpointConfig
from router.config.registry import register
from router.config.types import CIDR, AETitle, HostPort, Port, Seconds
from router.endpoints.access import AccessPolicy
from router.engine.admission import AdmittingServer
from router.engine.application_entity import RouterAE
from router.engine.store_decode import take_received_file
from router.envelope import AssociationInfo, Command, RequestEnvelope
from router.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, Intake
from router.observe.metrics import Metrics
from router.qr.service import QueryRetrieveService, RetrievalRefused
from router.qr.upstream import UpstreamError
from router.tls import EndpointTLSConfig, peer_name, server_context

log = structlog.get_logger("router.endpoint")

REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_PRESENTATION = 0x01, 0x03
DIAG_NO_REASON, DIAG_CALLING_AET, DIAG_LOCAL_LIMIT = 0x01, 0x03, 0x02
UNLIMITED = 1 << 30


class DimseEndpointConfig(EndpointConfig):
    type: Literal["dimse"] = "dimse"
    port: Port
    bind: str = "0.0.0.0"
    ae_title: AETitle | None = None
    require_called_aet: bool = False
    allowed_calling_aets: list[str] = []
    allowed_hosts: list[CIDR] = []
    max_associations: int = Field(default=16, ge=1, le=65536)
    max_pending: int = Field(default=64, ge=1, le=65536)
    max_pending_per_address: int = Field(default=16, ge=1, le=65536)
    max_pdu_size: int = Field(default=1048576, ge=4096, le=16777216)
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 60.0
    network_timeout: Seconds = 120.0
    move_destinations: dict[AETitle, HostPort] = {}
    tls: EndpointTLSConfig | None = None


class DimseEndpoint:
    def __init__(
        self,
        name: str,
        config: DimseEndpointConfig,
        router_ae_title: str,
        intake: Intake,
        qr: QueryRetrieveService | None = None,
        metrics: Metrics | None = None,
    ):
        self.name = name
        self.metrics = metrics or Metrics()
        self.config = config
        self.ae_title = config.ae_title or router_ae_title
        self.intake = intake
        self.qr = qr
        self.access = AccessPolicy.from_lists(config.allowed_calling_aets, config.allowed_hosts)
        self.server = None
        self._ae: AE | None = None
        self._admitted: set = set()
        self._slots = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2] if self.server else (self.config.bind, self.config.port)

    def start(self, exclusive: bool = True) -> None:
        """Listen. ``exclusive``: first make sure nothing else listens on the port (SO_REUSEPORT would
        otherwise let a second router share it silently); a reload replacing this endpoint skips that."""
        engine.configure()
        if exclusive:
            problem = bind_problem(self.config.bind, self.config.port)
            if problem:
                raise OSError(errno.EADDRINUSE, problem)
        ae = RouterAE(self.ae_title, received_files=self.intake.spool.spares)
        ae.add_supported_context(Verification)
        qr_classes = self.qr.sop_classes(self.name) if self.qr is not None else []
        for sop_class in qr_classes:
            ae.add_supported_context(sop_class)
        ae.maximum_associations = UNLIMITED  # the endpoint counts admitted associations itself
        ae.maximum_pdu_size = self.config.max_pdu_size
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        ae.require_called_aet = self.config.require_called_aet
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        self._ae = ae
        self.server = self._listen(ae, handlers)
        log.info(
            "endpoint listening",
            endpoint=self.name,
            ae_title=self.ae_title,
            address=f"{self.address[0]}:{self.address[1]}",
            query_retrieve=sorted(self.qr.offered(self.name)) if self.qr is not None else [],
        )

    def _listen(self, ae: AE, handlers):
        """A listener with a bounded pool for connections that have not sent their association
        request yet (:class:`~router.engine.admission.AdmittingServer`)."""
        address = (self.config.bind, self.config.port)
        tls = self.config.tls
        server = cast(
            AdmittingServer,
            ae.make_server(
                address,
                evt_handlers=handlers,
                server_class=AdmittingServer,
                ssl_context=server_context(tls) if tls is not None else None,
            ),
        )
        server.endpoint = self.name
        server.request_timeout = self.config.acse_timeout
        server.max_pending = self.config.max_pending
        server.max_pending_per_address = self.config.max_pending_per_address
        if tls is not None:
            server.handshake_timeout = tls.handshake_timeout
        ae._servers.append(server)  # pynetdicom's shutdown() removes it from this list
        threading.Thread(target=server.serve_forever, name=f"accept-{self.name}", daemon=True).start()
        return server

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop listening, let open associations finish for ``grace_seconds``, then abort the rest."""
        self.close()
        self.drain(time.monotonic() + grace_seconds)

    def close(self) -> None:
        """Stop accepting associations; the open ones go on."""
        if self.server is not None:
            self._closed_server = self.server
            self.server.shutdown()
            self.server = None
            log.info("endpoint closed", endpoint=self.name, open_associations=len(self.active_associations()))

    def active_associations(self) -> list:
        """Associations still talking (a thread whose transport is already gone does not count)."""
        server = self._closed_server_or_server()
        if server is None:
            return []
        return [a for a in server.active_associations if a.is_alive() and (a.is_established or a.dul.is_alive())]

    def _closed_server_or_server(self):
        return self.server or getattr(self, "_closed_server", None)

    def drain(self, deadline: float) -> int:
        """Wait until the open associations end or ``deadline`` (monotonic) passes; abort what is left.

        Returns how many were aborted. An aborted C-STORE was never acknowledged, and its
        partial file is swept, so nothing acknowledged is lost.
        """
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.active_associations()
        for assoc in left:
            log.warning(
                "aborting an association still open at the end of the shutdown grace period",
                endpoint=self.name,
                assoc_id=getattr(getattr(assoc, "router_info", None), "association_id", None),
            )
            assoc.abort()
        for assoc in left:
            assoc.join(timeout=5)
        return len(left)

    # -- association events -------------------------------------------------

    def _info(self, assoc) -> AssociationInfo:
        """Who is calling, from the A-ASSOCIATE-RQ; made once per association (at EVT_REQUESTED)."""
        info = getattr(assoc, "router_info", None)
        if info is None:
            primitive = assoc.requestor.primitive
            info = AssociationInfo(
                endpoint=self.name,
                association_id=uuid.uuid4().hex[:12],
                calling_aet=(primitive.calling_ae_title or "").strip(),
                called_aet=(primitive.called_ae_title or "").strip(),
                peer_host=assoc.requestor.address,
                peer_port=assoc.requestor.port,
                tls_peer=peer_name(getattr(assoc.dul.socket, "socket", None)) if self.config.tls else None,
            )
            assoc.router_info = info
        return info

    def _assoc_log(self, assoc):
        info = self._info(assoc)
        return log.bind(
            endpoint=self.name,
            assoc_id=info.association_id,
            calling_aet=info.calling_aet,
            peer=f"{info.peer_host}:{info.peer_port}",
        )

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        info = self._info(assoc)
        server = self._closed_server_or_server()
        if server is not None:
            server.admitted(assoc.dul.socket.socket)
        refusal = self.access.refusal(info.calling_aet, info.peer_host)
        if refusal is not None:
            diagnostic = DIAG_CALLING_AET if "calling AE" in refusal else DIAG_NO_REASON
            self._refuse(assoc, refusal, (REJECT_PERMANENT, SOURCE_USER, diagnostic))
        elif not self._take_slot(assoc):
            self._refuse(
                assoc,
                f"max_associations ({self.config.max_associations}) reached",
                (REJECT_TRANSIENT, SOURCE_PRESENTATION, DIAG_LOCAL_LIMIT),
            )

    def _take_slot(self, assoc) -> bool:
        """Count ``assoc`` among the endpoint's associations unless ``max_associations`` are open."""
        with self._slots:
            self._admitted = {a for a in self._admitted if a.is_alive()}
            if len(self._admitted) >= self.config.max_associations:
                return False
            self._admitted.add(assoc)
            return True

    def _refuse(self, assoc, reason: str, result_source_diagnostic: tuple[int, int, int]) -> None:
        info = self._info(assoc)
        self._assoc_log(assoc).warning("association rejected", reason=reason, called_aet=info.called_aet)
        self.metrics.associations.labels(self.name, "rejected").inc()
        assoc.acse.send_reject(*result_source_diagnostic)
        assoc.kill()

    def _on_established(self, event) -> None:
        engine.arm_socket_timeout(event.assoc, self.config.network_timeout)
        self.metrics.associations.labels(self.name, "accepted").inc()
        info = self._info(event.assoc)
        self._assoc_log(event.assoc).info(
            "association accepted", called_aet=info.called_aet, tls=self.config.tls is not None, tls_peer=info.tls_peer
        )

    def _on_rejected(self, event) -> None:
        self.metrics.associations.labels(self.name, "rejected").inc()
        self._assoc_log(event.assoc).warning(
            "association rejected by the negotiation", active=len(self._ae.active_associations) if self._ae else None
        )

    def _on_aborted(self, event) -> None:
        self._assoc_log(event.assoc).warning("association aborted")

    def _on_released(self, event) -> None:
        self._assoc_log(event.assoc).info("association released")

    def _on_connection_closed(self, event) -> None:
        if getattr(event.assoc, "router_info", None) is None:
            host, port = event.address[:2]
            log.warning(
                "connection closed before a valid A-ASSOCIATE-RQ (bad bytes or silence)",
                endpoint=self.name,
                peer=f"{host}:{port}",
            )

    # -- DIMSE services ------------------------------------------------------

    def _on_echo(self, event) -> int:
        self._assoc_log(event.assoc).debug("C-ECHO")
        self.metrics.response(self.name, "C-ECHO", 0x0000)
        return 0x0000

    def _on_store(self, event) -> int:
        rq = event.request
        info = self._info(event.assoc)
        receive_error = getattr(rq, "_receive_error", None)
        if receive_error is not None:
            log.error(
                "refusing instance: its data set could not be written",
                error=receive_error,
                association_id=info.association_id,
                calling_aet=info.calling_aet,
                sop_instance_uid=str(rq.AffectedSOPInstanceUID),
            )
            self.metrics.response(self.name, "C-STORE", OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES
        if (
            self.qr is not None
            and self.qr.collector.active
            and self.qr.collector.claim(
                str(rq.AffectedSOPInstanceUID),
                str(rq.AffectedSOPClassUID),
                str(event.context.transfer_syntax),
                Path(event.dataset_path),
            )
        ):
            self.metrics.response(self.name, "C-STORE", 0x0000)
            return 0x0000
        envelope = RequestEnvelope(
            association=info,
            command=Command(
                kind="store",
                sop_class_uid=str(rq.AffectedSOPClassUID),
                message_id=int(rq.MessageID),
                priority=int(rq.Priority or 0),
                affected_sop_instance_uid=str(rq.AffectedSOPInstanceUID),
            ),
        )
        received = Path(event.dataset_path)
        size = self._count_received(received, getattr(rq, "_received_size", None))
        try:
            result = self.intake.receive_store(
                envelope,
                received,
                str(event.context.transfer_syntax),
                size,
                received_file=take_received_file(rq),
                checksum=getattr(rq, "_received_checksum", None),
            )
            status = result.status
        except Exception as exc:  # never let a bug take the association or the daemon down
            log.exception("C-STORE handling failed", error=repr(exc), **envelope.log_context())
            status = CANNOT_UNDERSTAND
        self.metrics.response(self.name, "C-STORE", status)
        return status

    def _count_received(self, path: Path, size: int | None = None) -> int | None:
        """Count the instance and its bytes; returns its size (``size`` if the receiver counted
        it, else the file's; None if the file is unreadable)."""
        self.metrics.instances_received.labels(self.name).inc()
        if size is None:
            try:
                size = os.path.getsize(path)
            except OSError:
                return None
        self.metrics.bytes_received.labels(self.name).inc(size)
        return size

    def _on_find(self, event):
        rq = event.request
        info = self._info(event.assoc)
        yield from self._counted(
            "C-FIND",
            self.qr.find(
                info, str(rq.AffectedSOPClassUID), int(rq.MessageID), event.identifier, lambda: event.is_cancelled
            ),
        )

    def _on_move(self, event):
        rq = event.request
        info = self._info(event.assoc)
        yield from self._counted(
            "C-MOVE",
            self.qr.move(
                info,
                str(rq.AffectedSOPClassUID),
                int(rq.MessageID),
                event.identifier,
                str(event.move_destination or "").strip(),
                self.ae_title,
                lambda: event.is_cancelled,
            ),
        )

    def _on_get(self, event):
        rq = event.request
        info = self._info(event.assoc)
        yield from self._counted(
            "C-GET",
            self.qr.get(
                info,
                str(rq.AffectedSOPClassUID),
                int(rq.MessageID),
                event.identifier,
                self.ae_title,
                lambda: event.is_cancelled,
            ),
        )

    def _counted(self, service: str, responses):
        """Pass a handler's yields through; count its final status (an exception counts as 0xC000
        and is logged: pynetdicom answers it with a failure status but says nothing of it)."""
        last = None
        try:
            for last in responses:
                yield last
        except Exception as exc:
            self.metrics.response(self.name, service, 0xC000)
            log.error(
                f"{service} failed",
                endpoint=self.name,
                error=repr(exc),
                exc_info=not isinstance(exc, (UpstreamError, RetrievalRefused)),
            )
            raise
        self.metrics.response(self.name, service, _final_status(last))


def _final_status(last) -> int:
    """The status in a handler's last yield: ``(status, dataset)`` with an int or a status Dataset."""
    if isinstance(last, tuple) and len(last) == 2 and last[0] is not None:
        status = last[0]
        if isinstance(status, int):
            return 0x0000 if status in (0xFF00, 0xFF01) else status
        if hasattr(status, "Status"):
            return int(status.Status)
    if isinstance(last, tuple) and len(last) == 2 and last[0] is None:
        return 0xA801  # a C-MOVE to an unknown destination
    return 0x0000


@register("endpoint", "dimse", DimseEndpointConfig)
def build_dimse_endpoint(
    name: str,
    config: DimseEndpointConfig,
    router_ae_title: str,
    intake: Intake,
    qr: QueryRetrieveService | None = None,
    metrics: Metrics | None = None,
) -> DimseEndpoint:
    return DimseEndpoint(name, config, router_ae_title, intake, qr, metrics)
