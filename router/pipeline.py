"""Run a request through the pipelines bound to its endpoint; decide its backends.

Owns no I/O: stages read the envelope (and the spooled header) and return a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from router.config import registry
from router.config.models import PipelineConfig, RouterConfig
from router.envelope import Drop, Reject, RequestEnvelope

Stage = Callable[[RequestEnvelope], RequestEnvelope | Drop | Reject]


@dataclass(frozen=True)
class PipelineResult:
    pipeline: str
    envelope: RequestEnvelope
    verdict: Drop | Reject | None  # None: deliver to envelope.backends

    @property
    def backends(self) -> tuple[str, ...]:
        return () if self.verdict is not None else self.envelope.backends


@dataclass(frozen=True)
class Routing:
    """What all pipelines on an endpoint decided for one request."""

    results: tuple[PipelineResult, ...]

    @property
    def rejection(self) -> Reject | None:
        """A rejecting pipeline wins: the sender keeps the instance and is told why."""
        for result in self.results:
            if isinstance(result.verdict, Reject):
                return result.verdict
        return None

    @property
    def deliveries(self) -> list[Target]:
        """Where the request goes: one target per (backend, version of the instance).

        Pipelines that leave the instance as received share one version, so a backend two
        of them name receives it once; a pipeline that edits the header sends its own.
        """
        seen: set[tuple[str, int]] = set()
        out = []
        for result in self.results:
            for backend in result.backends:
                key = (backend, id(result.envelope.instance))
                if key not in seen:
                    seen.add(key)
                    out.append(Target(result.pipeline, backend, result.envelope))
        return out


@dataclass(frozen=True)
class Target:
    pipeline: str
    backend: str
    envelope: RequestEnvelope  # the instance version, and hold_reason when held for review


class Pipeline:
    def __init__(self, name: str, config: PipelineConfig, metrics=None):
        self.name = name
        self.config = config
        self.metrics = metrics
        self.stages = _build_stages(name, "middleware", config.middleware)
        self.response_stages = _build_stages(name, "response_middleware", config.response_middleware)

    def run(self, envelope: RequestEnvelope) -> PipelineResult:
        envelope = replace(envelope, backends=tuple(self.config.backends))
        for stage_name, stage in self.stages:
            outcome = stage(envelope)
            if isinstance(outcome, (Drop, Reject)):
                detail = outcome.reason if isinstance(outcome, Drop) else f"0x{outcome.status:04X} {outcome.reason}"
                envelope = envelope.with_audit(stage_name, type(outcome).__name__.lower(), detail)
                self._count(stage_name, type(outcome).__name__.lower())
                return PipelineResult(self.name, envelope, outcome)
            if outcome.hold_reason and not envelope.hold_reason:
                self._count(stage_name, "hold")
            envelope = outcome if len(outcome.audit) > len(envelope.audit) else outcome.with_audit(stage_name, "pass")
        return PipelineResult(self.name, envelope, None)

    def _count(self, stage: str, verdict: str) -> None:
        if self.metrics is not None:
            self.metrics.stage_verdicts.labels(self.name, stage, verdict).inc()

    def respond(self, envelope: RequestEnvelope) -> RequestEnvelope | None:
        """Run a C-FIND answer (``envelope.identifier``) through ``response_middleware``; None: leave it out."""
        for _, stage in self.response_stages:
            outcome = stage(envelope)
            if isinstance(outcome, (Drop, Reject)):
                return None
            envelope = outcome
        return envelope


def _build_stages(pipeline: str, key: str, configs) -> list[tuple[str, Stage]]:
    stages = []
    for i, stage_config in enumerate(configs):
        component = registry.get("middleware", stage_config.type)
        stage_name = f"{pipeline}.{key}[{i}]({stage_config.type})"
        stages.append((stage_name, component.build(stage_name, stage_config)))
    return stages


class PipelineSet:
    """The pipelines of a configuration, looked up by endpoint."""

    def __init__(self, config: RouterConfig, metrics=None):
        self.pipelines = {name: Pipeline(name, p, metrics) for name, p in config.pipelines.items()}
        self.non_storing = {name for name, b in config.backends.items() if getattr(b, "store", True) is False}
        self._by_endpoint = {
            endpoint: [self.pipelines[n] for n in config.pipelines_for_endpoint(endpoint)]
            for endpoint in config.endpoints
        }
        self._editing = {
            endpoint: any(getattr(stage, "edits_instances", False) for p in pipelines for _, stage in p.stages)
            for endpoint, pipelines in self._by_endpoint.items()
        }

    def for_endpoint(self, endpoint: str) -> list[Pipeline]:
        return self._by_endpoint.get(endpoint, [])

    def edits_instances(self, endpoint: str) -> bool:
        """Whether a pipeline bound to ``endpoint`` has a stage that may write an edited
        version of an instance (one whose ``edits_instances`` is true)."""
        return self._editing.get(endpoint, False)

    def route(self, envelope: RequestEnvelope) -> Routing:
        pipelines = self._by_endpoint.get(envelope.association.endpoint, [])
        return Routing(tuple(p.run(envelope) for p in pipelines))
