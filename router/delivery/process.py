"""The delivery process: runs every backend's workers, apart from the receiving process.

Receiving and sending each get a core (pynetdicom's per-message work holds the GIL).
The process exits when its parent dies, so a killed router never leaves an orphan
sending behind the back of its successor; a file lock makes a successor wait for it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import threading

import structlog

from router import engine
from router.config import registry
from router.config.models import RouterConfig
from router.delivery.workers import BackendWorker
from router.observe.logging import setup_logging
from router.spool.queue import DeliveryQueue
from router.spool.retry import RetryPolicy
from router.spool.store import Spool

log = structlog.get_logger("router.delivery")

PR_SET_PDEATHSIG = 1


def build_backends(config: RouterConfig) -> dict:
    backends = {}
    for name, backend_config in config.backends.items():
        component = registry.get("backend", backend_config.type)
        backends[name] = component.build(name, backend_config, config.router.ae_title)
    return backends


def start_workers(
    config: RouterConfig, queue: DeliveryQueue, spool: Spool, stop: threading.Event
) -> list[BackendWorker]:
    workers = []
    for name, backend in build_backends(config).items():
        backend_config = config.backends[name]
        policy = RetryPolicy.from_config(backend_config.retry)
        for i in range(backend_config.concurrency):
            worker = BackendWorker(name, backend.open_deliverer, queue, spool, policy, stop, i)
            worker.start()
            workers.append(worker)
    return workers


def run_delivery(config: RouterConfig, parent_pid: int) -> None:
    """Entry point of the delivery process (spawned by :class:`router.service.RouterService`)."""
    setup_logging(
        config.router.log_level,
        config.router.log_format,
        process="delivery",
        thread_context=engine.current_association_fields,
    )
    die_with_parent()
    engine.configure(config.router.engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spool = Spool(config.router.data_dir, config.router.min_free_space_mb)
    lock = open(spool.data_dir / "delivery.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # a predecessor still exiting holds it
    queue = DeliveryQueue(spool.queue_path, durable_commits=False)
    resumed = queue.reset_in_flight()
    workers = start_workers(config, queue, spool, stop)
    engine.freeze_startup_objects()
    log.info("delivery started", backends=sorted(config.backends), workers=len(workers), resumed_in_flight=resumed)
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            log.error("the receiving process is gone; stopping delivery")
            stop.set()
    for worker in workers:
        worker.join(timeout=30)
    log.info("delivery stopped")
    lock.close()


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the getppid() check still applies
        pass
