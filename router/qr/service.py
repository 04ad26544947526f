"""What an endpoint offers for query/retrieve, and the entry points its C-FIND/C-MOVE/C-GET handlers call.

An endpoint offers a service when a pipeline bound to it names (in ``backends`` or a
``route`` stage) a backend that can answer it: ``query = true`` for Patient and Study Root
C-FIND (and QIDO-RS; a ``dicomweb`` backend answers by QIDO-RS), ``worklist = true`` for
Modality Worklist, ``retrieve`` for C-MOVE and C-GET. A request runs through those pipelines like a stored instance (``filter`` can
refuse it, ``coerce`` can rewrite the identifier, ``route`` can choose the upstream);
the capable backends among the ones they choose answer it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from pydicom import Dataset

from router.backends.dicomweb.config import DicomwebBackendConfig
from router.backends.dimse import DimseBackendConfig
from router.config import registry
from router.config.models import RouterConfig
from router.envelope import AssociationInfo, Command, Drop, RequestEnvelope
from router.pipeline import Pipeline, PipelineSet
from router.qr.find import FindProxy, failure_status
from router.qr.get import get_responses
from router.qr.models import GET, MOVE, QR_FIND, STUDY_GET, WORKLIST_FIND
from router.qr.move import move_responses
from router.qr.relay import Relay
from router.qr.retrieve import Collector, Fetched, Retrieval
from router.qr.upstream import Upstream, UpstreamError
from router.spool.store import Spool

if TYPE_CHECKING:
    from router.qr.dicomweb_upstream import DicomwebUpstream

log = structlog.get_logger("router.qr")

SERVICES = {"find": "query", "worklist": "worklist", "retrieve": "retrieve"}


class RetrievalRefused(RuntimeError):
    """A pipeline stage refused a C-MOVE or C-GET request."""


@dataclass(frozen=True)
class Choice:
    pipeline: Pipeline
    envelope: RequestEnvelope
    upstreams: list[Upstream | DicomwebUpstream]


class QueryRetrieveService:
    def __init__(self, config: RouterConfig, pipelines: PipelineSet, spool: Spool, collector: Collector | None = None):
        self.config = config
        self.pipelines = pipelines
        self.spool = spool
        self.collector = collector or Collector()  # kept across reloads: retrievals in progress still claim
        self.upstreams: dict[str, Upstream | DicomwebUpstream] = {}
        for name, backend in config.backends.items():
            if isinstance(backend, DimseBackendConfig) and (backend.query or backend.worklist or backend.retrieve):
                built = registry.get("backend", "dimse").build(name, backend, config.router.ae_title)
                self.upstreams[name] = Upstream(name, built)
            elif isinstance(backend, DicomwebBackendConfig) and (backend.query or backend.retrieve):
                from router.qr.dicomweb_upstream import DicomwebUpstream

                built = registry.get("backend", "dicomweb").build(name, backend, config.router.ae_title)
                self.upstreams[name] = DicomwebUpstream(name, built)

    # -- what an endpoint offers ------------------------------------------------

    def offered(self, endpoint: str) -> set[str]:
        """Of "find", "worklist", "retrieve": what the pipelines bound to ``endpoint`` can answer."""
        services = set()
        for pipeline in self.pipelines.for_endpoint(endpoint):
            for name in _named_backends(pipeline):
                upstream = self.upstreams.get(name)
                if upstream is not None:
                    services |= {s for s, flag in SERVICES.items() if upstream.answers(flag)}
        return services

    def sop_classes(self, endpoint: str) -> list[str]:
        offered = self.offered(endpoint)
        classes: list[str] = []
        if "find" in offered:
            classes += QR_FIND
        if "worklist" in offered:
            classes.append(WORKLIST_FIND)
        if "retrieve" in offered:
            classes += MOVE + GET
        return classes

    # -- C-FIND ------------------------------------------------------------------

    def find(self, info: AssociationInfo, model: str, message_id: int, identifier: Dataset, is_cancelled) -> Iterator:
        envelope = _envelope(info, "find", model, message_id, identifier)
        ctx = envelope.log_context()
        wanted = "worklist" if model == WORKLIST_FIND else "find"
        choices, refusal = self._choose(envelope, wanted)
        if refusal is not None:
            yield refusal
            return
        upstreams = list({u.name: u for c in choices for u in c.upstreams}.values())
        if not upstreams:
            log.info("C-FIND answered with no matches: no pipeline chose an upstream", **ctx)
            yield 0x0000, None
            return
        query = choices[0].envelope.identifier
        assert query is not None  # a C-FIND request always carries its identifier
        log.info(
            "C-FIND forwarded",
            upstreams=[u.name for u in upstreams],
            level=str(query.get("QueryRetrieveLevel", "")),
            **ctx,
        )
        respond = [c.pipeline for c in choices]

        def transform(answer: Dataset) -> Dataset | None:
            for pipeline in respond:
                out = pipeline.respond(replace(envelope, identifier=answer))
                if out is None or out.identifier is None:
                    return None
                answer = out.identifier
            return answer

        yield from FindProxy(
            upstreams, model, query, is_cancelled=is_cancelled, transform=transform, log_context=ctx
        ).responses()

    # -- C-MOVE / C-GET ------------------------------------------------------------

    def move(
        self,
        info: AssociationInfo,
        model: str,
        message_id: int,
        identifier: Dataset,
        destination_ae: str,
        endpoint_ae: str,
        is_cancelled,
    ) -> Iterator:
        envelope = replace(
            _envelope(info, "move", model, message_id, identifier),
            command=Command("move", model, message_id, move_destination=destination_ae),
        )
        ctx = envelope.log_context()
        destination = self.resolve_destination(info.endpoint, destination_ae)
        if destination is None:
            log.warning("C-MOVE destination unknown", move_destination=destination_ae, **ctx)
            yield from move_responses(None, None, is_cancelled, ctx)
            return
        relay = self._relay(envelope, endpoint_ae, ctx)
        yield from move_responses(destination, relay, is_cancelled, ctx)

    def get(
        self,
        info: AssociationInfo,
        model: str,
        message_id: int,
        identifier: Dataset,
        endpoint_ae: str,
        is_cancelled,
    ) -> Iterator:
        envelope = _envelope(info, "get", model, message_id, identifier)
        ctx = envelope.log_context()
        relay = self._relay(envelope, endpoint_ae, ctx)
        yield from get_responses(relay, is_cancelled, ctx)

    def retrieve_files(
        self, info: AssociationInfo, identifier: Dataset, endpoint_ae: str, is_cancelled, in_memory: bool = False
    ) -> Iterator[tuple[Fetched, Path | bytes]]:
        """For WADO-RS: (fetched, file) per instance the request covers, through the pipeline's
        stages, as they arrive; each file is removed when the next is asked for. ``in_memory``:
        an instance fetched by C-GET comes as its bytes instead when it is small and no stage
        runs on it (:class:`~router.qr.retrieve.Retrieval`). Nothing when no upstream has a
        match; raises :class:`RetrievalRefused` or :class:`UpstreamError`."""
        envelope = _envelope(info, "get", STUDY_GET, 1, identifier)
        relay = self._relay(envelope, endpoint_ae, envelope.log_context(), in_memory=in_memory, count_only=True)
        if relay is None:
            return
        for fetched, path in relay.instances():
            if is_cancelled():
                relay.retrieval.cancel()
                return
            relay.sent.add(fetched.sop_instance_uid)
            yield fetched, path
        missing = max(relay.retrieval.expected - len(relay.sent), len(relay.missing()))
        if missing:
            log.warning("WADO-RS retrieval incomplete", sent=len(relay.sent), failed=missing, **envelope.log_context())

    def resolve_destination(self, endpoint: str, ae_title: str) -> tuple[str, int, dict] | None:
        """A C-MOVE destination (host, port, association options): a ``dimse`` backend with that AE title
        (with its TLS settings), or an entry of the endpoint's ``move_destinations``."""
        ae_title = ae_title.strip()
        for name, backend in self.config.backends.items():
            if isinstance(backend, DimseBackendConfig) and backend.ae_title == ae_title:
                built = registry.get("backend", "dimse").build(name, backend, self.config.router.ae_title)
                return backend.host, backend.port, {"tls_args": built.tls_args()}
        known = getattr(self.config.endpoints.get(endpoint), "move_destinations", {}) or {}
        if ae_title in known:
            host, _, port = known[ae_title].rpartition(":")
            return host, int(port), {}
        return None

    def _relay(
        self,
        envelope: RequestEnvelope,
        endpoint_ae: str,
        ctx: dict,
        *,
        in_memory: bool = False,
        count_only: bool = False,
    ) -> Relay | None:
        """Plan the retrieval on the first capable upstream that has matches; raises when none answers.
        ``in_memory`` and ``count_only``: see :class:`~router.qr.retrieve.Retrieval` and its ``plan``."""
        choices, refusal = self._choose(envelope, "retrieve")
        if refusal is not None:  # pynetdicom's retrieve SCPs answer a handler error with a Cxxx failure
            raise RetrievalRefused(str(refusal[0].ErrorComment))
        errors = []
        for choice in choices:
            for upstream in choice.upstreams:
                identifier = choice.envelope.identifier
                assert identifier is not None  # a retrieve request always carries its identifier
                retrieval = Retrieval(
                    upstream,
                    envelope.command.sop_class_uid,
                    identifier,
                    self.spool.incoming,
                    self.collector,
                    getattr(upstream.backend.config, "retrieve_ae_title", None) or endpoint_ae,
                    ctx,
                    in_memory,
                )
                try:
                    planned = retrieval.plan(count_only)
                except UpstreamError as exc:
                    errors.append(str(exc))
                    log.warning("an upstream could not list the instances to retrieve", error=str(exc), **ctx)
                    continue
                if planned:
                    log.info("retrieval planned", upstream=upstream.name, instances=planned, **ctx)
                    return Relay(retrieval, choice.pipeline, self.spool, envelope.association, ctx)
        if errors and len(errors) == sum(len(c.upstreams) for c in choices):
            raise UpstreamError("; ".join(errors))
        return None

    def _choose(self, envelope: RequestEnvelope, service: str) -> tuple[list[Choice], tuple | None]:
        """Run the request through the endpoint's pipelines; their capable upstreams, or a refusal."""
        flag = SERVICES[service]
        routing = self.pipelines.route(envelope)
        rejection = routing.rejection
        if rejection is not None:
            log.info(
                "query/retrieve request refused",
                stage=rejection.stage,
                reason=rejection.reason,
                **envelope.log_context(),
            )
            return [], (failure_status(rejection.status, f"refused by {rejection.stage}: {rejection.reason}"), None)
        choices = []
        for result in routing.results:
            if isinstance(result.verdict, Drop):
                continue
            upstreams = [
                self.upstreams[b] for b in result.backends if b in self.upstreams and self.upstreams[b].answers(flag)
            ]
            if upstreams:
                choices.append(Choice(self.pipelines.pipelines[result.pipeline], result.envelope, upstreams))
        return choices, None


def _envelope(info: AssociationInfo, kind: str, model: str, message_id: int, identifier: Dataset) -> RequestEnvelope:
    return RequestEnvelope(association=info, command=Command(kind, model, message_id), identifier=identifier)


def _named_backends(pipeline: Pipeline) -> list[str]:
    names = list(pipeline.config.backends)
    for stage in pipeline.config.middleware:
        names += [b for _, b in stage.backend_references()]
    return names
