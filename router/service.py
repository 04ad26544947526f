"""Lifecycle of a running router: the receiving process and its delivery process.

:class:`RouterService` owns the spool, the queue, the endpoints and the delivery child.
Start-up order makes a restart after ``kill -9`` exact: sweep partial transfers and
orphaned spool files, then start delivery (which requeues what was in flight), then
open the endpoints.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time

import structlog

from router import engine
from router.config import registry
from router.config.models import RouterConfig
from router.observe.metrics import Metrics
from router.observe.systemd import Notifier
from router.pipeline import PipelineSet
from router.qr.service import QueryRetrieveService
from router.spool.delivery_process import run_delivery
from router.spool.intake import Intake, drop_unacknowledged
from router.spool.queue import DeliveryQueue
from router.spool.store import Spool

log = structlog.get_logger("router.service")

DELIVERY_RESTART_DELAY = 1.0
INCOMING_SWEEP_INTERVAL = 600.0
INCOMING_MAX_AGE = 3600.0


class DataDirInUse(RuntimeError):
    pass


class RouterService:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.spool = Spool(config.router.data_dir, config.router.min_free_space_mb)
        self.queue: DeliveryQueue | None = None
        self.intake: Intake | None = None
        self.endpoints: dict = {}
        self.delivery: multiprocessing.Process | None = None
        self._stop = threading.Event()
        self._lock_file = None
        self._last_sweep = 0.0
        self.admin = None
        self.qr: QueryRetrieveService | None = None
        self.metrics = Metrics()
        self.started_at = time.time()

    def start(self) -> None:
        engine.configure()
        self.spool.prepare()
        self._lock_data_dir()
        self.queue = DeliveryQueue(self.spool.queue_path)
        self.spool.sweep_incoming()
        drop_unacknowledged(self.queue)
        self.spool.sweep_unreferenced(self.queue.referenced_paths())
        self._last_sweep = time.monotonic()
        self._start_delivery()
        self.metrics.watch_queue(self.queue, self.config.backends)
        pipelines = PipelineSet(self.config, self.metrics)
        intake = self.intake = Intake(self.spool, self.queue, pipelines)
        self.qr = QueryRetrieveService(self.config, pipelines, self.spool)
        for name, endpoint_config in self.config.endpoints.items():
            component = registry.lookup("endpoint", endpoint_config.type)
            endpoint = component.build(name, endpoint_config, self.config.router.ae_title, intake, self.qr,
                                       self.metrics)
            endpoint.start()
            self.endpoints[name] = endpoint
        if self.config.admin is not None:
            from router.observe.admin import AdminServer

            self.admin = AdminServer(self.config.admin.listen, self)
            self.admin.start()
        log.info("router started", data_dir=str(self.spool.data_dir), endpoints=sorted(self.endpoints),
                 backends=sorted(self.config.backends))

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; restart the delivery process if it dies.

        Under systemd (``Type=notify``) it reports READY once the endpoints listen, pings the
        watchdog while the loop runs, and STOPPING when it begins to shut down.
        """
        notifier = Notifier()
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        notifier.ready(f"listening on {', '.join(sorted(self.endpoints))}")
        notifier.watchdog()
        while not self._stop.wait(0.5 if notifier.watchdog_interval is None else min(0.5, notifier.watchdog_interval)):
            self.tend()
            notifier.watchdog()
        notifier.stopping()
        self.stop()

    def tend(self) -> None:
        """Periodic care: restart a dead delivery process, sweep stale partial files."""
        if self.delivery is not None and not self.delivery.is_alive():
            log.error("delivery process exited; restarting it", exitcode=self.delivery.exitcode)
            time.sleep(DELIVERY_RESTART_DELAY)
            self._start_delivery()
        if time.monotonic() - self._last_sweep > INCOMING_SWEEP_INTERVAL:
            self.spool.sweep_incoming(older_than_seconds=INCOMING_MAX_AGE)
            self._last_sweep = time.monotonic()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let open associations finish (up to the grace period), then stop delivery.

        Everything acknowledged is durable in the queue and goes out after the next start.
        """
        grace = self.config.router.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        for endpoint in self.endpoints.values():
            endpoint.close()
        deadline = time.monotonic() + grace
        open_now = sum(len(e.active_associations()) for e in self.endpoints.values())
        if open_now:
            log.info("waiting for open associations to finish", associations=open_now, grace_seconds=grace)
        aborted = sum(endpoint.drain(deadline) for endpoint in self.endpoints.values())
        if aborted:
            log.warning("aborted associations at the end of the grace period", aborted=aborted)
        self.endpoints = {}
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        if self.intake is not None:
            self.intake.close()
            self.intake = None
            self.spool.sweep_incoming()  # partial files of aborted transfers: never acknowledged
        if self.delivery is not None:
            if self.delivery.is_alive():
                os.kill(self.delivery.pid, signal.SIGTERM)
                self.delivery.join(timeout=60)
                if self.delivery.is_alive():
                    self.delivery.kill()
                    self.delivery.join()
            self.delivery = None
        if self.queue is not None:
            self.queue.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        log.info("router stopped")

    def _start_delivery(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.delivery = ctx.Process(target=run_delivery, args=(self.config, os.getpid()), name="dicom-router-delivery",
                                    daemon=False)
        self.delivery.start()

    def _lock_data_dir(self) -> None:
        self._lock_file = open(self.spool.data_dir / "router.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise DataDirInUse(f"another router is using {self.spool.data_dir}") from None
