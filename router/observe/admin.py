"""The admin HTTP server (``[admin] listen``, loopback by default).

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 when every endpoint is listening, the data directory is writable
  and free space is above the floor; 503 with the failing checks otherwise;
- ``GET /metrics``: Prometheus text format (see :mod:`router.observe.metrics`);
- ``GET /api/queues``: per backend pending, in flight, delivered, quarantined and the age
  of the oldest waiting instance;
- ``GET /api/status``: what ``dicom-router status`` shows: endpoints, backends, queues,
  readiness and recent problems.

It runs on :class:`~router.observe.http_server.GuardedHTTPServer`: at most
``max_connections`` connections (32) and 3 threads in the receiving process, each request
whole within ``request_timeout`` (10 s), so idle or slow admin clients can never take the
descriptors or threads DICOM needs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import structlog

from router.observe.http_server import GuardedHTTPServer, Request, Response
from router.observe.logging import recent_problems

log = structlog.get_logger("router.admin")


class AdminServer:
    def __init__(self, config, service):
        host, _, port = config.listen.rpartition(":")
        self.service = service
        self.httpd = GuardedHTTPServer(
            (host.strip("[]"), int(port)),
            _handler_for(self),
            name="admin",
            max_connections=config.max_connections,
            request_timeout=config.request_timeout,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.address

    def start(self) -> None:
        self.httpd.start()
        log.info("admin HTTP listening", address=f"{self.address[0]}:{self.address[1]}")

    def stop(self) -> None:
        self.httpd.stop()

    def readiness(self) -> tuple[bool, dict]:
        spool = self.service.spool
        checks = {
            "endpoints_listening": bool(self.service.endpoints)
            and all(e.server is not None for e in self.service.endpoints.values()),
            "data_dir_writable": os.access(spool.data_dir, os.W_OK),
            "free_space_above_floor": spool.has_free_space(),
            "delivery_running": self.service.delivery_running(),
        }
        return all(checks.values()), checks

    def status(self) -> dict:
        ready, checks = self.readiness()
        endpoints = {}
        for name, endpoint in self.service.endpoints.items():
            host, port = endpoint.address
            qr = sorted(self.service.qr.offered(name)) if self.service.qr is not None else []
            endpoints[name] = {
                "ae_title": endpoint.ae_title,
                "address": f"{host}:{port}",
                "listening": endpoint.server is not None,
                "query_retrieve": qr,
            }
        backends = {name: {"type": b.type, "target": _target(b)} for name, b in self.service.config.backends.items()}
        problems = self.service.queue.recent_problems()
        return {
            "ready": ready,
            "checks": checks,
            "uptime_seconds": round(time.time() - self.service.started_at, 1),
            "data_dir": str(self.service.spool.data_dir),
            "free_space_mb": self.service.spool.free_bytes() // 2**20,
            "endpoints": endpoints,
            "backends": backends,
            "queues": self.queues(),
            "recent_delivery_problems": problems,
            "recent_log_problems": recent_problems()[:10],
        }

    def queues(self) -> dict:
        now = time.time()
        out = {}
        for backend, c in self.service.queue.counts().items():
            oldest = c.pop("oldest_queued_at")
            out[backend] = {
                **c,
                "oldest_waiting_seconds": round(now - oldest, 3) if oldest else None,
                "configured": backend in self.service.config.backends,
            }
        return out


def _target(backend) -> str:
    if backend.type == "dimse":
        return f"{backend.ae_title}@{backend.host}:{backend.port}"
    return str(getattr(backend, "path", ""))


def _handler_for(admin: AdminServer) -> Callable[[Request], Response]:
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
        "/healthz": healthz,
        "/readyz": readyz,
        "/api/queues": queues,
        "/api/status": status,
    }

    def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, json.dumps({"error": "only GET"}).encode(), headers=[("Allow", "GET, HEAD")])
        path = request.target.split("?", 1)[0]
        if path == "/metrics":
            return Response(200, admin.service.metrics.exposition(), admin.service.metrics.content_type)
        route = routes.get(path)
        try:
            status, body = route() if route else (404, {"error": f"no such path: {path}"})
        except Exception as exc:  # a failing check must not kill the admin thread
            log.exception("admin request failed", path=path, peer=request.peer, error=repr(exc))
            status, body = 500, {"error": "internal error; see the router's log"}
        log.debug("admin request", path=path, status=status, peer=request.peer)
        return Response(status, json.dumps(body).encode())

    return handle
