"""Extra receiving processes sharing the endpoints' ports (``router.receive_processes``).

Each receives on every endpoint (the listeners use SO_REUSEPORT, so the kernel spreads new
connections over the processes), runs the pipelines and commits to the same spool and
queue (SQLite in WAL mode serialises the writers). The main process alone sweeps the
spool, runs the delivery process and the admin server; it starts the workers after its
own endpoints listen, forwards SIGTERM and SIGHUP to them, and restarts one that dies.
Workers die with the main process. Metrics are kept in prometheus-client's multiprocess
files under ``data_dir/metrics`` and summed at scrape time.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from router.config.models import RouterConfig

log = structlog.get_logger("router.receive_workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(config: RouterConfig) -> Path:
    return Path(config.router.data_dir) / "metrics"


def enable_shared_metrics(config: RouterConfig) -> None:
    """Before any metric exists in the main process: keep metric values in files all processes share."""
    directory = metrics_dir(config)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[METRICS_DIR_ENV] = str(directory)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


class ReceiveWorkers:
    """The main process's handle on its extra receiving processes; each runs
    ``entry(config, parent_pid, index)`` (:func:`router.service.run_receive_worker`)."""

    def __init__(self, config: RouterConfig, entry: Callable[[RouterConfig, int, int], None]):
        self.config = config
        self.entry = entry
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}

    def start(self) -> None:
        for index in range(1, self.config.router.receive_processes):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(
            target=self.entry,
            args=(self.config, os.getpid(), index),
            name=f"dicom-router-receive-{index}",
            daemon=False,
        )
        process.start()
        self.processes[index] = process

    def tend(self) -> None:
        for index, process in list(self.processes.items()):
            if not process.is_alive():
                log.error("a receiving process exited; restarting it", index=index, exitcode=process.exitcode)
                self._spawn(index)

    def signal(self, signum: int) -> None:
        for process in self.processes.values():
            if process.is_alive():
                os.kill(process.pid, signum)  # type: ignore[arg-type]  # alive: it has a pid

    def stop(self, timeout: float) -> None:
        """SIGTERM all (each drains its open associations within the grace period), then wait for them."""
        self.signal(signal.SIGTERM)
        for process in self.processes.values():
            process.join(timeout=timeout)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = {}
