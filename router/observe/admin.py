"""The admin HTTP server (``[admin] listen``): health, readiness and queue state as JSON.

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 when every endpoint is listening, the data directory is writable
  and free space is above the floor; 503 with the failing checks otherwise;
- ``GET /api/queues``: per backend pending, in flight, delivered, quarantined and the age
  of the oldest waiting instance.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import structlog

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

    def queues(self) -> dict:
        now = time.time()
        out = {}
        for backend, c in self.service.queue.counts().items():
            oldest = c.pop("oldest_queued_at")
            out[backend] = {**c, "oldest_waiting_seconds": round(now - oldest, 3) if oldest else None,
                            "configured": backend in self.service.config.backends}
        return out


def _handler_for(admin: AdminServer) -> type[BaseHTTPRequestHandler]:
    def healthz() -> tuple[int, dict]:
        return 200, {"status": "alive"}

    def readyz() -> tuple[int, dict]:
        ready, checks = admin.readiness()
        return (200 if ready else 503), {"ready": ready, "checks": checks}

    def queues() -> tuple[int, dict]:
        return 200, admin.queues()

    routes: dict[str, Callable[[], tuple[int, dict]]] = {"/healthz": healthz, "/readyz": readyz, "/api/queues": queues}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, body = route() if route else (404, {"error": f"no such path: {self.path}"})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("admin request", request=fmt % args)

    return Handler
