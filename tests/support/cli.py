"""Run ``dicom-router`` as a user does: a subprocess of the installed console script."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.peers import wait_for_port


def router_command() -> list[str]:
    """The ``dicom-router`` installed beside this Python (a virtual environment's, off PATH
    too), else the one on PATH, else ``python -m router``."""
    beside = Path(sys.executable).parent / "dicom-router"
    exe = str(beside) if beside.exists() else shutil.which("dicom-router")
    return [exe] if exe else [sys.executable, "-m", "router"]


def run_cli(
    *args, cwd: Path | None = None, timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*router_command(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text if input_text is not None else "",
    )


class ServeProcess:
    """``dicom-router serve`` in the background; logs go to ``log_path``. Every one started is
    in :attr:`started`, so a test that fails half-way leaves no router running (``conftest``
    stops them after each test)."""

    started: list[ServeProcess] = []

    def __init__(self, config: Path | None, log_path: Path, cwd: Path | None = None):
        self.config, self.log_path, self.cwd = config, log_path, cwd
        self.proc: subprocess.Popen | None = None
        self.preexec = None

    def start(self, port: int) -> ServeProcess:
        args = [*router_command(), "serve"] + (["-c", str(self.config)] if self.config else [])
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=self.preexec,
        )
        ServeProcess.started.append(self)
        wait_for_port(port, timeout=30)
        if self.proc.poll() is not None:  # another process holds the port (a port chosen twice)
            raise AssertionError(f"dicom-router serve exited ({self.proc.returncode}); see {self.log_path}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
