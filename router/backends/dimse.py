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
in a context of its own plus one context for each syntax of its transfer syntax policy
(:mod:`router.transcode.policy`: ``transfer_syntaxes``, ``transcode``,
``keep_uid_on_lossy``). An instance whose syntax was not yet proposed in a context of its
own makes the worker associate again, so every instance goes out in the syntax it came in
whenever the peer accepts that syntax (unless ``transcode = "always"``). One the peer
refuses goes out in the first syntax of the policy the peer accepted, transcoded once into
the spool (:mod:`router.transcode.variants`) and shared with every backend that wants it
so; one that cannot be transcoded is quarantined with the reason.
"""

from __future__ import annotations

import time
from typing import Literal

import structlog
from pydantic import Field
from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

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
from router.tls import BackendTLSConfig, client_context
from router.transcode.policy import TranscodePolicy
from router.transcode.syntaxes import CannotTranscode, describe
from router.transcode.variants import ensure_variant

log = structlog.get_logger("router.backends.dimse")

MAX_CONTEXTS = 128


class DimseBackendConfig(TranscodePolicy, BackendConfig):
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
        self.assoc: Association | None = None
        self.last_used = 0.0
        self.wanted: dict[str, list[str]] = {}  # SOP class -> transfer syntaxes, insertion ordered
        self.policy = backend.config
        self.targets = self.policy.proposed_syntaxes()
        self.proposed: set[tuple[str, str]] = set()

    def deliver(self, delivery: Delivery) -> DeliveryResult:
        sop, ts = delivery.sop_class_uid, delivery.transfer_syntax
        if not sop or not ts:
            return DeliveryResult(Outcome.PERMANENT, None, "the spool entry has no SOP class or transfer syntax")
        if not self._proposed(sop, ts) or not self._alive():
            self._want(sop, ts)
            unreachable = self._reassociate()
            if unreachable:
                return unreachable
        try:
            return self._send(delivery, sop, ts)
        finally:
            self.last_used = time.monotonic()

    def _proposed(self, sop: str, ts: str) -> bool:
        """Whether the association offered what an instance of ``sop`` in ``ts`` needs: a context
        of its own syntax, or with ``transcode = "always"`` any context of its SOP class."""
        if self.policy.transcode == "always":
            return any(proposed_sop == sop for proposed_sop, _ in self.proposed)
        return (sop, ts) in self.proposed

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
        return sum(len(v) + len(self.targets) for v in self.wanted.values())

    def _contexts(self):
        contexts = []
        for sop, syntaxes in self.wanted.items():
            for ts in syntaxes if self.policy.transcode != "always" else ():
                contexts.append(build_context(sop, [ts]))
            for ts in self.targets:
                if ts not in syntaxes or self.policy.transcode == "always":
                    contexts.append(build_context(sop, [ts]))
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
        assert self.assoc is not None  # sending on an established association
        return [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == sop]

    def _send(self, delivery: Delivery, sop: str, ts: str) -> DeliveryResult:
        accepted = self._accepted(sop)
        if not accepted:
            return DeliveryResult(
                Outcome.PERMANENT, None, f"{self.backend.describe()} refused SOP class {UID(sop).name}"
            )
        path = self._in_accepted_syntax(delivery, ts, {cx.transfer_syntax[0] for cx in accepted})
        if isinstance(path, DeliveryResult):
            return path
        assert self.assoc is not None
        try:
            rsp = send_c_store_file(self.assoc, path)
        except FileNotFoundError:
            return DeliveryResult(Outcome.PERMANENT, None, f"spool file missing: {path}")
        except (TimeoutError, OSError, RuntimeError) as exc:
            self.close()
            return DeliveryResult(Outcome.TRANSIENT, None, f"sending failed: {exc}")
        if rsp.status is None:
            self.close()
            return DeliveryResult(Outcome.TRANSIENT, None, "no C-STORE response (association aborted or timed out)")
        outcome = classify_store_status(rsp.status)
        comment = f": {rsp.error_comment}" if rsp.error_comment is not None else ""
        return DeliveryResult(outcome, rsp.status, f"C-STORE status 0x{rsp.status:04X}{comment}")

    def _in_accepted_syntax(self, delivery: Delivery, ts: str, accepted: set[str]):
        """The file to send: the spool file, or its version in the first syntax of the policy,
        among those the peer accepted, that the instance can be written in (made now if it is
        not there yet); or why there is none."""
        candidates = self.policy.candidates(ts, accepted)
        if not candidates:
            reason = self.policy.refusal(ts, accepted)
            return DeliveryResult(Outcome.PERMANENT, None, f"{self.backend.describe()}: {reason}")
        problems = []
        for target in candidates:
            if target == ts:
                return delivery.path
            log.info("transcoding", source=describe(ts), target=describe(target), **delivery.log_context())
            try:
                return ensure_variant(delivery.path, ts, target, keep_uid_on_lossy=self.policy.keep_uid_on_lossy)
            except CannotTranscode as exc:
                problems.append(f"cannot transcode to {describe(target)}: {exc}")
            except FileNotFoundError:
                return DeliveryResult(Outcome.PERMANENT, None, f"spool file missing: {delivery.path}")
            except OSError as exc:
                return DeliveryResult(Outcome.TRANSIENT, None, f"cannot write the transcoded instance: {exc}")
        return DeliveryResult(Outcome.PERMANENT, None, "; ".join(problems))


@register("backend", "dimse", DimseBackendConfig)
def build_dimse_backend(name: str, config: DimseBackendConfig, router_ae_title: str) -> DimseBackend:
    return DimseBackend(name, config, router_ae_title)
