"""Lifecycle of a running router: the receiving process and its delivery process.

:class:`RouterService` owns the spool, the queue, the endpoints and the delivery child.
Start-up order makes a restart after ``kill -9`` exact: sweep partial transfers,
quarantine instances whose spool file is damaged, move spool files no row names to
``orphans/``, then start delivery (which requeues what was in flight), then
open the endpoints.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, TextIO

import structlog

from router import engine
from router.config import ConfigError, load_config, registry
from router.config.checks import check_references, check_stage_files
from router.config.models import RouterConfig
from router.delivery.process import run_delivery
from router.intake import Intake, quarantine_damaged
from router.observe.metrics import Metrics
from router.observe.systemd import Notifier
from router.pipeline import PipelineSet
from router.qr.service import QueryRetrieveService
from router.receive_workers import ReceiveWorkers, enable_shared_metrics
from router.reload import compare, refusal
from router.spool.queue import DeliveryQueue
from router.spool.store import Spool

if TYPE_CHECKING:
    from router.observe.admin import AdminServer

log = structlog.get_logger("router.service")

DELIVERY_RESTART_DELAY = 1.0
INCOMING_SWEEP_INTERVAL = 600.0
INCOMING_MAX_AGE = 3600.0


class DataDirInUse(RuntimeError):
    pass


class RouterService:
    """``role``: ``main`` (sweeps, delivery, admin, extra receiving processes) or ``receive-worker``
    (endpoints and pipelines only; see :mod:`router.receive_workers`)."""

    def __init__(self, config: RouterConfig, role: str = "main"):
        self.config = config
        self.role = role
        self.workers: ReceiveWorkers | None = None
        self.spool = Spool(config.router.data_dir, config.router.min_free_space_mb)
        self.queue: DeliveryQueue | None = None
        self.intake: Intake | None = None
        self.endpoints: dict = {}
        self.delivery: BaseProcess | None = None
        self._stop = threading.Event()
        self._lock_file: TextIO | None = None
        self._last_sweep = 0.0
        self.admin: AdminServer | None = None
        self.qr: QueryRetrieveService | None = None
        if role == "main" and config.router.receive_processes > 1:
            enable_shared_metrics(config)
        self.metrics = Metrics(shared=config.router.receive_processes > 1)
        self.started_at = time.time()
        self._reload_requested = threading.Event()
        self._retired: list = []  # endpoints closed by a reload whose associations may still run

    @property
    def is_main(self) -> bool:
        return self.role == "main"

    def start(self) -> None:
        engine.configure(self.config.router.engine)
        self.spool.prepare()
        if self.is_main:
            self._lock_data_dir()  # before the queue's schema is brought up to date
        self.queue = DeliveryQueue(self.spool.queue_path, checkpoint_on_commit=False)
        if self.is_main:
            self.spool.sweep_incoming()
            quarantine_damaged(self.queue)
            self.spool.sweep_unreferenced(self.queue.referenced_paths())
            self._last_sweep = time.monotonic()
            self._start_delivery()
            self.metrics.watch_queue(self.queue, lambda: self.config.backends)
        pipelines = PipelineSet(self.config, self.metrics)
        self.intake = Intake(self.spool, self.queue, pipelines)
        self.qr = QueryRetrieveService(self.config, pipelines, self.spool)
        for name in self.config.endpoints:
            self.endpoints[name] = self._build_endpoint(self.config, name, self.qr)
            self.endpoints[name].start(exclusive=self.is_main)
        if self.is_main:
            self._start_admin()
            if self.config.router.receive_processes > 1:
                self.workers = ReceiveWorkers(self.config, run_receive_worker)
                self.workers.start()
        engine.freeze_startup_objects()
        log.info(
            "router started",
            data_dir=str(self.spool.data_dir),
            endpoints=sorted(self.endpoints),
            backends=sorted(self.config.backends),
        )

    def _build_endpoint(self, config: RouterConfig, name: str, qr: QueryRetrieveService):
        endpoint_config = config.endpoints[name]
        component = registry.get("endpoint", endpoint_config.type)
        return component.build(name, endpoint_config, config.router.ae_title, self.intake, qr, self.metrics)

    def _start_admin(self) -> None:
        if self.config.admin is not None:
            from router.observe.admin import AdminServer

            admin = AdminServer(self.config.admin, self)
            admin.start()
            self.admin = admin

    # -- reload ------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration file and switch to it; on any problem keep running the old one.

        New requests see the new pipelines at once; added endpoints listen, changed ones get a
        new listener bound before the old closes (SO_REUSEPORT), removed ones stop listening;
        open associations are never dropped. Backends' queues are kept even when the backend
        is gone. Returns whether the new configuration is in effect.
        """
        source = self.config.source
        try:
            new = load_config(source)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload refused: invalid configuration; the old one stays in effect", issue=str(issue))
            return False
        problems = [i for i in check_references(new) + check_stage_files(new) if i.severity == "error"]
        reason = refusal(self.config, new)
        for issue in problems:
            log.error("reload refused: invalid configuration; the old one stays in effect", issue=str(issue))
        if reason:
            log.error("reload refused; the old configuration stays in effect", reason=reason)
        if problems or reason:
            return False
        changes = compare(self.config, new)
        tls_endpoints = [n for n, e in new.endpoints.items() if getattr(e, "tls", None) is not None]
        if changes.empty and not tls_endpoints:
            log.info("configuration reloaded: nothing changed", source=str(source))
            return True
        try:
            pipelines = PipelineSet(new, self.metrics)
            qr = QueryRetrieveService(new, pipelines, self.spool, self.qr.collector if self.qr else None)
        except Exception as exc:
            log.error(
                "reload refused: the new configuration cannot be built; the old one stays in effect", error=repr(exc)
            )
            return False
        old_config, old_qr = self.config, self.qr
        assert self.intake is not None and self.queue is not None
        self.intake.pipelines = pipelines
        self.qr = qr
        self.config = new
        self._switch_endpoints(old_config, old_qr, changes)
        if changes.delivery_affected and self.is_main:
            self._restart_delivery()
        if changes.admin_changed and self.is_main:
            if self.admin is not None:
                self.admin.stop()
                self.admin = None
            self._start_admin()
        kept = {b: c for b, c in self.queue.counts().items() if b in changes.backends_removed}
        log.info(
            "configuration reloaded",
            source=str(source),
            **changes.summary(),
            tls_files_reread=tls_endpoints,
            queues_of_removed_backends_kept=kept,
        )
        return True

    def _switch_endpoints(self, old_config: RouterConfig, old_qr: QueryRetrieveService | None, changes) -> None:
        qr = self.qr
        assert qr is not None
        for name in list(self.endpoints):
            if name in changes.endpoints_removed:
                self._retire(self.endpoints.pop(name))
        for name in self.config.endpoints:
            current = self.endpoints.get(name)
            same_services = old_qr is not None and old_qr.offered(name) == qr.offered(name)
            rereads_files = getattr(self.config.endpoints[name], "tls", None) is not None  # rotated certificates
            if current is not None and name not in changes.endpoints_changed and same_services and not rereads_files:
                current.qr = qr
                continue
            try:
                replacement = self._build_endpoint(self.config, name, qr)
                replacement.start(exclusive=current is None)  # next to the old listener (SO_REUSEPORT) until it closes
            except Exception as exc:
                log.error(
                    "reload could not open the endpoint; it keeps its previous settings", endpoint=name, error=repr(exc)
                )
                if current is not None:
                    current.qr = self.qr
                continue
            self.endpoints[name] = replacement
            if current is not None:
                self._retire(current)

    def _retire(self, endpoint) -> None:
        """Stop listening; its open associations finish on their own."""
        endpoint.close()
        self._retired.append(endpoint)

    def _restart_delivery(self) -> None:
        self._stop_delivery()
        self._start_delivery()

    def handle_signals(self) -> None:
        """From now on SIGTERM and SIGINT stop the router and SIGHUP reloads its configuration,
        once :meth:`serve_forever` runs; call it before :meth:`start` so that a signal sent while
        the router starts (say, a reload as soon as the port answers) waits for the loop instead
        of killing the process. Main thread only."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())

    def serve_forever(self, parent_pid: int | None = None) -> None:
        """Run until SIGTERM or SIGINT; restart the delivery process if it dies.

        Under systemd (``Type=notify``) it reports READY once the endpoints listen, pings the
        watchdog while the loop runs, and STOPPING when it begins to shut down.
        """
        notifier = Notifier() if self.is_main else Notifier({})
        self.handle_signals()
        notifier.ready(f"listening on {', '.join(sorted(self.endpoints))}")
        notifier.watchdog()
        while not self._stop.wait(0.5 if notifier.watchdog_interval is None else min(0.5, notifier.watchdog_interval)):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                notifier.send("RELOADING=1", "STATUS=reloading the configuration")
                if self.workers is not None:
                    self.workers.signal(signal.SIGHUP)
                self.reload()
                notifier.ready(f"listening on {', '.join(sorted(self.endpoints))}")
            if parent_pid is not None and os.getppid() != parent_pid:
                log.error("the main process is gone; stopping")
                break
            self.tend()
            notifier.watchdog()
        notifier.stopping()
        self.stop()

    def tend(self) -> None:
        """Periodic care: checkpoint the queue's WAL (kept off the acknowledgement path), restart a
        dead delivery or receiving process, sweep stale partial files."""
        if not self.is_main:
            return
        if self.queue is not None:
            self.queue.checkpoint()
        if self.workers is not None:
            self.workers.tend()
        if self.delivery is not None and not self.delivery.is_alive():
            log.error("delivery process exited; restarting it", exitcode=self.delivery.exitcode)
            time.sleep(DELIVERY_RESTART_DELAY)
            self._start_delivery()
        if time.monotonic() - self._last_sweep > INCOMING_SWEEP_INTERVAL:
            self.spool.sweep_incoming(older_than_seconds=INCOMING_MAX_AGE)
            self._last_sweep = time.monotonic()

    def delivery_running(self) -> bool:
        """Whether the delivery process is alive (a dead one is restarted; until then nothing is sent)."""
        return self.delivery is not None and self.delivery.is_alive()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let open associations finish (up to the grace period), then stop delivery.

        Everything acknowledged is durable in the queue and goes out after the next start. A
        step that fails (its data directory gone, say) is logged and the others still run: the
        delivery process is stopped whatever happened before, so no child is left running.
        """
        grace = self.config.router.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        try:
            self._stop_receiving(grace)
        except Exception:
            log.exception("error while stopping the endpoints and the intake; stopping the rest")
        try:
            self._stop_delivery()
        finally:
            for close in (
                self.queue.close if self.queue is not None else None,
                self.spool.close,
                self._lock_file.close if self._lock_file is not None else None,
            ):
                if close is not None:
                    try:
                        close()
                    except Exception:
                        log.exception("error while closing the spool")
            self._lock_file = None
        log.info("router stopped")

    def _stop_receiving(self, grace: float) -> None:
        if self.workers is not None:
            self.workers.signal(signal.SIGTERM)  # they drain in parallel with us
        endpoints = list(self.endpoints.values()) + self._retired
        for endpoint in endpoints:
            endpoint.close()
        deadline = time.monotonic() + grace
        open_now = sum(len(e.active_associations()) for e in endpoints)
        if open_now:
            log.info("waiting for open associations to finish", associations=open_now, grace_seconds=grace)
        aborted = sum(endpoint.drain(deadline) for endpoint in endpoints)
        self._retired = []
        if aborted:
            log.warning("aborted associations at the end of the grace period", aborted=aborted)
        self.endpoints = {}
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        if self.workers is not None:
            self.workers.stop(timeout=grace + 30)
            self.workers = None
        if self.intake is not None:
            self.intake.close()
            self.intake = None
            self.spool.spares.discard_all()
            if self.is_main:  # partial files of aborted transfers (never acknowledged); workers are gone
                self.spool.sweep_incoming()

    def _stop_delivery(self) -> None:
        """SIGTERM: workers put unsent batches back untried and exit; killed after a minute."""
        if self.delivery is not None:
            if self.delivery.is_alive() and self.delivery.pid is not None:
                os.kill(self.delivery.pid, signal.SIGTERM)
                self.delivery.join(timeout=60)
                if self.delivery.is_alive():
                    self.delivery.kill()
                    self.delivery.join()
            self.delivery = None

    def _start_delivery(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        delivery = ctx.Process(
            target=run_delivery, args=(self.config, os.getpid()), name="dicom-router-delivery", daemon=False
        )
        delivery.start()
        self.delivery = delivery

    def _lock_data_dir(self) -> None:
        """Hold ``router.lock`` (one router per data directory); it holds our PID for ``dicom-router reload``."""
        lock_file = open(self.spool.data_dir / "router.lock", "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise DataDirInUse(f"another router is using {self.spool.data_dir}") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file


def run_receive_worker(config: RouterConfig, parent_pid: int, index: int) -> None:
    """Entry point of receiving process ``index`` (spawned by the main process's :class:`ReceiveWorkers`)."""
    from router.delivery.process import die_with_parent
    from router.observe.logging import setup_logging

    setup_logging(
        config.router.log_level,
        config.router.log_format,
        process=f"receive-{index}",
        thread_context=engine.current_association_fields,
    )
    die_with_parent()
    service = RouterService(config, role="receive-worker")
    service.handle_signals()
    service.start()
    service.serve_forever(parent_pid=parent_pid)
