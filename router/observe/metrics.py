"""Prometheus metrics: the same families for every endpoint, pipeline stage and backend.

Counters of the receiving process (associations, instances, bytes, responses, stage
verdicts) live in this process's :class:`Metrics` registry. Backend figures come from the
delivery queue's database at scrape time (:class:`QueueCollector`), so they are right
whichever process did the work and survive restarts: queue depth by state, age of the
oldest waiting instance, quarantined count, deliveries, failures by class and retries.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

FAILURE_CLASSES = ("transient", "permanent", "unreachable")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, shared: bool = False):
        """``shared``: several receiving processes; values live in prometheus-client's multiprocess
        files (``PROMETHEUS_MULTIPROC_DIR``) and are summed at scrape time."""
        self.shared = shared
        self.registry = CollectorRegistry(auto_describe=True)
        self._queue_collector: QueueCollector | None = None
        r = None if shared else self.registry
        self.associations = Counter(
            "dicom_router_associations",
            "Associations requested, by endpoint and result (accepted, rejected)",
            ["endpoint", "result"],
            registry=r,
        )
        self.instances_received = Counter(
            "dicom_router_instances_received",
            "C-STORE requests whose dataset was received in full",
            ["endpoint"],
            registry=r,
        )
        self.bytes_received = Counter(
            "dicom_router_received_bytes", "Bytes of received instances (Part-10 files)", ["endpoint"], registry=r
        )
        self.responses = Counter(
            "dicom_router_responses",
            "Final responses sent, by endpoint, DIMSE service and status",
            ["endpoint", "service", "status"],
            registry=r,
        )
        self.http_requests = Counter(
            "dicom_router_http_requests",
            "HTTP requests answered by DICOMweb endpoints, by endpoint, route (stow, qido, wado, ...) and status code",
            ["endpoint", "route", "status"],
            registry=r,
        )
        self.stage_verdicts = Counter(
            "dicom_router_stage_verdicts",
            "Requests a pipeline stage dropped, rejected or held for review",
            ["pipeline", "stage", "verdict"],
            registry=r,
        )

    def watch_queue(self, queue, backends) -> None:
        """Report the queue's figures for the backends ``backends()`` names (and any with rows)."""
        collector = self._queue_collector = QueueCollector(queue, backends)
        self.registry.register(collector)

    def response(self, endpoint: str, service: str, status: int) -> None:
        self.responses.labels(endpoint, service, f"0x{status:04X}").inc()

    def exposition(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if self._queue_collector is not None:
            registry.register(self._queue_collector)
        return generate_latest(registry)


class QueueCollector:
    """Per backend figures read from the delivery queue at scrape time."""

    def __init__(self, queue, backends):
        self.queue = queue
        self.backends = backends

    def describe(self):
        return []

    def collect(self):
        counts = self.queue.counts()
        events = self.queue.events()
        backends = sorted(set(self.backends()) | set(counts) | set(events))
        now = time.time()
        depth = GaugeMetricFamily(
            "dicom_router_queue_depth",
            "Deliveries waiting, by backend and state (pending, in_flight)",
            labels=["backend", "state"],
        )
        oldest = GaugeMetricFamily(
            "dicom_router_queue_oldest_age_seconds",
            "Age of the oldest delivery waiting (pending or in flight); 0 when none",
            labels=["backend"],
        )
        quarantined = GaugeMetricFamily(
            "dicom_router_quarantined", "Deliveries quarantined, waiting for an operator", labels=["backend"]
        )
        delivered = CounterMetricFamily("dicom_router_deliveries", "Instances delivered", labels=["backend"])
        failures = CounterMetricFamily(
            "dicom_router_delivery_failures",
            "Failed delivery attempts by class (transient, permanent, unreachable)",
            labels=["backend", "class"],
        )
        retries = CounterMetricFamily(
            "dicom_router_delivery_retries", "Deliveries scheduled for another attempt", labels=["backend"]
        )
        for backend in backends:
            c = counts.get(backend, {})
            e = events.get(backend, {})
            for state in ("pending", "in_flight"):
                depth.add_metric([backend, state], c.get(state, 0))
            first = c.get("oldest_queued_at")
            oldest.add_metric([backend], round(now - first, 3) if first else 0.0)
            quarantined.add_metric([backend], c.get("quarantined", 0))
            delivered.add_metric([backend], c.get("delivered", 0))
            for failure in FAILURE_CLASSES:
                failures.add_metric([backend, failure], e.get(f"failure:{failure}", 0))
            retries.add_metric([backend], e.get("retry", 0))
        yield from (depth, oldest, quarantined, delivered, failures, retries)
