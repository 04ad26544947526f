"""``dimse`` backend: C-STORE SCU to a remote AE, streaming from the spool file.

```toml
[backends.pacs]
type = "dimse"
host = "10.1.2.3"
port = 104
ae_title = "PACS"
store = true              # false: a node that only answers queries (a RIS) gets no C-STOREs
query = true              # forward C-FIND (Patient and Study Root) here
worklist = true           # forward Modality Worklist C-FIND here
retrieve = "move"         # fetch instances for C-MOVE/C-GET with C-MOVE to the router ("get": C-GET)
```

Each worker keeps one association open and reuses it while the instances it sends fit
its presentation contexts; it proposes, per SOP class, each transfer syntax it has seen
in a context of its own plus one uncompressed context as a fallback. An instance whose
syntax was not yet proposed in a context of its own makes the worker associate again (the
fallback context never stands in for it), so every instance goes out in the syntax it came
in whenever the peer accepts that syntax. An instance whose
transfer syntax the peer refused is converted when both are uncompressed little endian;
a compressed one the peer will not take is quarantined with the reason.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import structlog
from pydantic import Field
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from router import engine
from router.backends.status import DeliveryResult, Outcome, classify_store_status
from router.config.models import BackendConfig
from router.config.registry import register
from router.config.types import AETitle, Port, Seconds
from router.engine.application_entity import RouterAE
from router.engine.fast_store import send_c_store_file
from router.engine.socket_loans import end_loan, settle_lent_socket
from router.engine.spare_files import ReceivedFiles
from router.spool.queue import Delivery
from router.spool.transcode import CannotConvert, convert_file
from router.tls import BackendTLSConfig, client_context

log = structlog.get_logger("router.backends.dimse")

MAX_CONTEXTS = 128
FALLBACK_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class DimseBackendConfig(BackendConfig):
    type: Literal["dimse"] = "dimse"
    host: str = Field(min_length=1)
    port: Port
    ae_title: AETitle
    calling_ae_title: AETitle | None = None
    connect_timeout: Seconds = 10.0
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 120.0
    network_timeout: Seconds = 60.0
    idle_release_seconds: Seconds = 5.0
    max_pdu_size: int = Field(default=1048576, ge=4096, le=16777216)
    store: bool = True
    query: bool = False
    worklist: bool = False
    retrieve: Literal["get", "move"] | None = None
    retrieve_ae_title: AETitle | None = None
    query_timeout: Seconds = 60.0
    tls: BackendTLSConfig | None = None


class DimseBackend:
    def __init__(self, name: str, config: DimseBackendConfig, router_ae_title: str):
        self.name = name
        self.config = config
        self.calling_ae_title = config.calling_ae_title or router_ae_title

    def describe(self) -> str:
        return f"{self.config.ae_title}@{self.config.host}:{self.config.port}"

    def new_ae(self, received_files: ReceivedFiles | None = None) -> RouterAE:
        """An AE for one association to this backend; ``received_files``: where it writes what it receives (C-GET)."""
        ae = RouterAE(self.calling_ae_title, received_files)
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        ae.connection_timeout = self.config.connect_timeout
        ae.maximum_pdu_size = self.config.max_pdu_size
        return ae

    def tls_args(self):
        """pynetdicom's ``tls_args``: the client context and the name the server certificate must carry."""
        tls = self.config.tls
        if tls is None:
            return None
        return client_context(tls), (tls.server_name or self.config.host) if tls.verify else None

    def associate(self, ae: AE, contexts):
        assoc = ae.associate(
            self.config.host,
            self.config.port,
            ae_title=self.config.ae_title,
            contexts=contexts,
            tls_args=self.tls_args(),
        )
        if assoc.is_established:
            engine.arm_socket_timeout(assoc, self.config.network_timeout)
        return assoc

    def echo(self) -> int | str | None:
        """C-ECHO the backend: the status (None if the response had none), or why no association was made."""
        engine.configure()
        assoc = self.associate(self.new_ae(), [build_context(Verification)])
        if not assoc.is_established:
            return engine.why_not_associated(assoc, self.describe())
        try:
            status = assoc.send_c_echo()
            return int(status.Status) if "Status" in status else None
        finally:
            assoc.release()

    def open_deliverer(self) -> StoreSCU:
        return StoreSCU(self)


class StoreSCU:
    """Sends spooled instances over one reused association."""

    def __init__(self, backend: DimseBackend):
        self.backend = backend
        self.ae = backend.new_ae()
        self.assoc = None
        self.last_used = 0.0
        self.wanted: dict[str, list[str]] = {}  # SOP class -> transfer syntaxes, insertion ordered
        self.proposed: set[tuple[str, str]] = set()

    def deliver(self, delivery: Delivery) -> DeliveryResult:
        sop, ts = delivery.sop_class_uid, delivery.transfer_syntax
        if not sop or not ts:
            return DeliveryResult(Outcome.PERMANENT, None, "the spool entry has no SOP class or transfer syntax")
        if (sop, ts) not in self.proposed or not self._alive():
            self._want(sop, ts)
            unreachable = self._reassociate()
            if unreachable:
                return unreachable
        try:
            return self._send(delivery, sop, ts)
        finally:
            self.last_used = time.monotonic()

    def idle(self) -> None:
        """Give the association's socket back to its DUL thread (see
        :func:`~router.engine.socket_loans.end_loan`), and release the association once
        nothing has been sent for ``idle_release_seconds``."""
        if self.assoc is not None:
            end_loan(self.assoc)
        if self.assoc is not None and time.monotonic() - self.last_used > self.backend.config.idle_release_seconds:
            self.close()

    def close(self) -> None:
        if self.assoc is not None:
            if self.assoc.is_established:
                self.assoc.release()
            self.assoc = None
            self.proposed = set()

    def _alive(self) -> bool:
        if self.assoc is None:
            return False
        settle_lent_socket(self.assoc)
        return self.assoc.is_established

    def _want(self, sop: str, ts: str) -> None:
        syntaxes = self.wanted.setdefault(sop, [])
        if ts not in syntaxes:
            syntaxes.append(ts)
        while self._context_count() > MAX_CONTEXTS and len(self.wanted) > 1:
            oldest = next(k for k in self.wanted if k != sop)
            del self.wanted[oldest]

    def _context_count(self) -> int:
        return sum(len(v) + 1 for v in self.wanted.values())

    def _contexts(self):
        contexts = []
        for sop, syntaxes in self.wanted.items():
            for ts in syntaxes:
                contexts.append(build_context(sop, [ts]))
            contexts.append(build_context(sop, FALLBACK_SYNTAXES))
        return contexts[:MAX_CONTEXTS]

    def _reassociate(self) -> DeliveryResult | None:
        self.close()
        contexts = self._contexts()
        assoc = self.backend.associate(self.ae, contexts)
        if assoc.is_established:
            self.assoc = assoc
            self.proposed = {
                (cx.abstract_syntax, cx.transfer_syntax[0]) for cx in contexts if len(cx.transfer_syntax) == 1
            }
            return None
        return DeliveryResult(Outcome.UNREACHABLE, None, engine.why_not_associated(assoc, self.backend.describe()))

    def _accepted(self, sop: str) -> list:
        return [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == sop]

    def _send(self, delivery: Delivery, sop: str, ts: str) -> DeliveryResult:
        accepted = self._accepted(sop)
        if not accepted:
            return DeliveryResult(
                Outcome.PERMANENT, None, f"{self.backend.describe()} refused SOP class {UID(sop).name}"
            )
        path = delivery.path
        if not any(cx.transfer_syntax[0] == ts for cx in accepted):
            converted = self._converted(delivery, ts, accepted)
            if isinstance(converted, DeliveryResult):
                return converted
            path = converted
        try:
            rsp = send_c_store_file(self.assoc, path)
        except FileNotFoundError:
            return DeliveryResult(Outcome.PERMANENT, None, f"spool file missing: {delivery.path}")
        except (TimeoutError, OSError, RuntimeError) as exc:
            self.close()
            return DeliveryResult(Outcome.TRANSIENT, None, f"sending failed: {exc}")
        finally:
            if path != delivery.path:
                os.unlink(path)
        if rsp.status is None:
            self.close()
            return DeliveryResult(Outcome.TRANSIENT, None, "no C-STORE response (association aborted or timed out)")
        outcome = classify_store_status(rsp.status)
        comment = f": {rsp.error_comment}" if rsp.error_comment is not None else ""
        return DeliveryResult(outcome, rsp.status, f"C-STORE status 0x{rsp.status:04X}{comment}")

    def _converted(self, delivery: Delivery, ts: str, accepted):
        """A file beside the spool file holding the instance in an accepted uncompressed syntax
        (streamed: :mod:`router.spool.transcode`), or why that is impossible."""
        source = UID(ts)
        offered = ", ".join(sorted({UID(cx.transfer_syntax[0]).name for cx in accepted}))
        convertible = [cx for cx in accepted if cx.transfer_syntax[0] in FALLBACK_SYNTAXES]
        if source.is_compressed or not source.is_little_endian or not convertible:
            return DeliveryResult(
                Outcome.PERMANENT,
                None,
                f"{self.backend.describe()} accepts {UID(delivery.sop_class_uid).name} only in {offered}; "
                f"the instance is {source.name} and the router does not transcode it",
            )
        target = convertible[0].transfer_syntax[0]
        log.info(
            "converting transfer syntax for a peer that refused it",
            source=source.name,
            target=UID(target).name,
            **delivery.log_context(),
        )
        converted = f"{delivery.path}.{UID(target).name.replace(' ', '-')}.part"
        try:
            convert_file(delivery.path, converted, target)
        except (CannotConvert, ValueError) as exc:
            _remove(converted)
            return DeliveryResult(Outcome.PERMANENT, None, f"cannot convert to {UID(target).name}: {exc}")
        except OSError as exc:
            _remove(converted)
            return DeliveryResult(Outcome.TRANSIENT, None, f"cannot write the converted instance: {exc}")
        return converted


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@register("backend", "dimse", DimseBackendConfig)
def build_dimse_backend(name: str, config: DimseBackendConfig, router_ae_title: str) -> DimseBackend:
    return DimseBackend(name, config, router_ae_title)
