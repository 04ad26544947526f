"""Associations to an upstream ``dimse`` backend acting as a query/retrieve SCU."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from pydicom import Dataset
from pynetdicom import build_context, build_role, evt

from router import engine
from router.backends.dimse import DimseBackend
from router.engine.spare_files import ReceivedFiles

log = structlog.get_logger("router.qr.upstream")

UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
# Compressed syntaxes offered one context each, so an upstream sends instances as it stores them.
COMPRESSED = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]
MAX_CONTEXTS = 128


class UpstreamError(RuntimeError):
    """No association, or it broke: the message says which upstream and how."""


def storage_contexts(sop_classes: list[str], budget: int = MAX_CONTEXTS - 1):
    """Per SOP class one context per uncompressed syntax, then one per compressed syntax while they fit.

    Each syntax in a context of its own lets the peer accept all of them, so a file goes in
    the syntax it is stored in whichever that is.
    """
    contexts = [build_context(sop, [ts]) for sop in sop_classes for ts in UNCOMPRESSED]
    for ts in COMPRESSED:
        for sop in sop_classes:
            if len(contexts) >= budget:
                return contexts
            contexts.append(build_context(sop, [ts]))
    return contexts


class Upstream:
    """One configured ``dimse`` backend seen as a Q/R SCP."""

    def __init__(self, name: str, backend: DimseBackend):
        self.name = name
        self.backend = backend

    def describe(self) -> str:
        return f"{self.name} ({self.backend.describe()})"

    def answers(self, flag: str) -> bool:
        """Whether it answers "query", "worklist" or "retrieve" (its backend's flags)."""
        return bool(getattr(self.backend.config, flag, None))

    def associate(self, contexts, *, roles=None, handlers=None, received_files: ReceivedFiles | None = None):
        engine.configure()
        ae = self.backend.new_ae(received_files)
        ae.dimse_timeout = self.backend.config.query_timeout
        assoc = ae.associate(
            self.backend.config.host,
            self.backend.config.port,
            ae_title=self.backend.config.ae_title,
            contexts=contexts,
            ext_neg=roles or None,
            evt_handlers=handlers or None,
            tls_args=self.backend.tls_args(),
        )
        if not assoc.is_established:
            raise UpstreamError(f"{self.name}: {engine.why_not_associated(assoc, self.backend.describe())}")
        engine.arm_socket_timeout(assoc, self.backend.config.network_timeout)
        return assoc

    def find(self, model: str, identifier: Dataset, msg_id: int = 1) -> FindCall:
        return FindCall(self, self.associate([build_context(model)]), model, identifier, msg_id)

    def retrieve_association(self, model: str, sop_classes: list[str], on_store, received_files: ReceivedFiles):
        """An association for C-GET: the model, storage contexts, and the SCP role for each SOP class;
        the instances it receives are written into ``received_files``."""
        contexts = [build_context(model)] + storage_contexts(sop_classes)
        roles = [build_role(sop, scp_role=True) for sop in dict.fromkeys(sop_classes)]
        return self.associate(
            contexts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)], received_files=received_files
        )


class FindCall:
    """A C-FIND in progress on its own association; cancellable from another thread."""

    def __init__(self, upstream: Upstream, assoc, model: str, identifier: Dataset, msg_id: int):
        self.upstream = upstream
        self.assoc = assoc
        self.model = model
        self.identifier = identifier
        self.msg_id = msg_id

    def responses(self) -> Iterator[tuple[int, Dataset | None]]:
        """(status, identifier) as the upstream sends them; raises UpstreamError when it breaks off."""
        try:
            for status, identifier in self.assoc.send_c_find(self.identifier, self.model, msg_id=self.msg_id):
                if "Status" not in status:
                    raise UpstreamError(f"{self.upstream.describe()}: no C-FIND response (timeout or abort)")
                yield int(status.Status), identifier
        finally:
            self.close()

    def cancel(self) -> None:
        if self.assoc.is_established:
            context = next((cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == self.model), None)
            if context is not None:
                self.assoc.send_c_cancel(self.msg_id, context.context_id)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
