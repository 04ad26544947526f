"""The admin HTTP server (``[admin] listen``, loopback by default).

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 when every endpoint is listening, the data directory is writable
  and free space is above the floor; 503 with the failing checks otherwise;
- ``GET /metrics``: Prometheus text format (see :mod:`router.observe.metrics`);
- ``GET /api/queues``: per backend pending, in flight, delivered, quarantined and the age
  of the oldest waiting instance;
- ``GET /api/status``: what ``dicom-router status`` shows: endpoints, backends, queues,
  readiness and recent problems.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import structlog

from router.observe.logging import recent_problems

log = structlog.get_logger("router.admin")


class AdminServer:
    def __init__(self, listen: str, service):
        host, _, port = listen.rpartition(":")
        self.service = service
        self.httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler_for(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="admin-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> None:
        self.thread.start()
        log.info("admin HTTP listening", address=f"{self.address[0]}:{self.address[1]}")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def readiness(self) -> tuple[bool, dict]:
        spool = self.service.spool
        checks = {
            "endpoints_listening": bool(self.service.endpoints)
            and all(e.server is not None for e in self.service.endpoints.values()),
            "data_dir_writable": os.access(spool.data_dir, os.W_OK),
            "free_space_above_floor": spool.has_free_space(),
        }
        return all(checks.values()), checks

    def status(self) -> dict:
        ready, checks = self.readiness()
        endpoints = {}
        for name, endpoint in self.service.endpoints.items():
            host, port = endpoint.address
            qr = sorted(self.service.qr.offered(name)) if self.service.qr is not None else []
            endpoints[name] = {"ae_title": endpoint.ae_title, "address": f"{host}:{port}",
                               "listening": endpoint.server is not None, "query_retrieve": qr}
        backends = {name: {"type": b.type, "target": _target(b)} for name, b in self.service.config.backends.items()}
        problems = self.service.queue.recent_problems()
        return {
            "ready": ready, "checks": checks, "uptime_seconds": round(time.time() - self.service.started_at, 1),
            "data_dir": str(self.service.spool.data_dir),
            "free_space_mb": self.service.spool.free_bytes() // 2**20,
            "endpoints": endpoints, "backends": backends, "queues": self.queues(),
            "recent_delivery_problems": problems, "recent_log_problems": recent_problems()[:10],
        }

    def queues(self) -> dict:
        now = time.time()
        out = {}
        for backend, c in self.service.queue.counts().items():
            oldest = c.pop("oldest_queued_at")
            out[backend] = {**c, "oldest_waiting_seconds": round(now - oldest, 3) if oldest else None,
                            "configured": backend in self.service.config.backends}
        return out


def _target(backend) -> str:
    if backend.type == "dimse":
        return f"{backend.ae_title}@{backend.host}:{backend.port}"
    return str(getattr(backend, "path", ""))


def _handler_for(admin: AdminServer) -> type[BaseHTTPRequestHandler]:
    def healthz() -> tuple[int, dict]:
        return 200, {"status": "alive"}

    def readyz() -> tuple[int, dict]:
        ready, checks = admin.readiness()
        return (200 if ready else 503), {"ready": ready, "checks": checks}

    def queues() -> tuple[int, dict]:
        return 200, admin.queues()

    def status() -> tuple[int, dict]:
        return 200, admin.status()

    routes: dict[str, Callable[[], tuple[int, dict]]] = {
        "/healthz": healthz, "/readyz": readyz, "/api/queues": queues, "/api/status": status,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, admin.service.metrics.exposition(), admin.service.metrics.content_type)
                return
            route = routes.get(path)
            try:
                status, body = route() if route else (404, {"error": f"no such path: {self.path}"})
            except Exception as exc:  # a failing check must not kill the admin thread
                log.exception("admin request failed", path=path)
                status, body = 500, {"error": repr(exc)}
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("admin request", request=fmt % args)

    return Handler
