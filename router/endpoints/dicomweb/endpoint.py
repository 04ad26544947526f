"""The ``dicomweb`` endpoint: routes DICOMweb requests to their handlers, under the endpoint's
access rules and deadlines.

Every request gets an id (the ``X-Request-Id`` answer header, and ``request_id`` on every log
line about it). Before a handler runs, the request must come from ``allowed_hosts`` (403
otherwise), carry credentials ``auth`` accepts (401, :mod:`.auth`), and its connection must
fit under ``max_connections`` (503); until then the connection counts as pending; the handler then has
``request_timeout`` for the body, the work and the answer (408 when the client is too slow to
send, the connection closed). Any error a handler does not expect is logged and answered 500;
the endpoint keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import structlog
from aiohttp import web

from router.config.checks import bind_problem
from router.endpoints.access import AccessPolicy
from router.endpoints.dicomweb.auth import Authenticator, Refused
from router.endpoints.dicomweb.config import DicomwebEndpointConfig
from router.endpoints.dicomweb.connections import ConnectionPool
from router.endpoints.dicomweb.frames import retrieve_frames
from router.endpoints.dicomweb.listener import HttpListener
from router.endpoints.dicomweb.qido import search
from router.endpoints.dicomweb.responses import problem
from router.endpoints.dicomweb.stow import StowTarget, store_instances
from router.endpoints.dicomweb.wado import retrieve
from router.envelope import AssociationInfo
from router.intake import Intake
from router.observe.metrics import Metrics
from router.qr.service import QueryRetrieveService
from router.tls import peer_name, server_context

log = structlog.get_logger("router.dicomweb")

UID = r"[0-9][0-9.]{0,63}"
MAX_PROXIED_REQUESTS = 32  # searches and retrievals running at once; further ones wait for a thread


class DicomwebEndpoint:
    def __init__(
        self,
        name: str,
        config: DicomwebEndpointConfig,
        intake: Intake,
        qr: QueryRetrieveService | None = None,
        metrics: Metrics | None = None,
        router_ae_title: str = "DICOM_ROUTER",
    ):
        self.name = name
        self.router_ae_title = router_ae_title
        self.config = config
        self.ae_title = config.base_path  # what `status` shows in the AE title column
        self.intake = intake
        self.qr = qr
        self.metrics = metrics or Metrics()
        self.access = AccessPolicy.from_lists([], config.allowed_hosts)
        self.auth = Authenticator(config.auth)
        self.server: HttpListener | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._proxies: ThreadPoolExecutor | None = None
        base = re.escape(config.base_path)
        study, series = rf"/studies/(?P<study>{UID})", rf"/series/(?P<series>{UID})"
        instance = rf"/instances/(?P<instance>{UID})"
        self._routes = [
            ("POST", re.compile(rf"^{base}/studies$"), "stow", self._stow),
            ("POST", re.compile(rf"^{base}{study}$"), "stow", self._stow),
            ("GET", re.compile(rf"^{base}/studies$"), "qido", self._search("STUDY")),
            ("GET", re.compile(rf"^{base}{study}/series$"), "qido", self._search("SERIES")),
            ("GET", re.compile(rf"^{base}/series$"), "qido", self._search("SERIES")),
            ("GET", re.compile(rf"^{base}{study}{series}/instances$"), "qido", self._search("IMAGE")),
            ("GET", re.compile(rf"^{base}{study}/instances$"), "qido", self._search("IMAGE")),
            ("GET", re.compile(rf"^{base}/instances$"), "qido", self._search("IMAGE")),
            ("GET", re.compile(rf"^{base}{study}$"), "wado", self._retrieve(False)),
            ("GET", re.compile(rf"^{base}{study}{series}$"), "wado", self._retrieve(False)),
            ("GET", re.compile(rf"^{base}{study}{series}{instance}$"), "wado", self._retrieve(False)),
            ("GET", re.compile(rf"^{base}{study}/metadata$"), "wado", self._retrieve(True)),
            ("GET", re.compile(rf"^{base}{study}{series}/metadata$"), "wado", self._retrieve(True)),
            ("GET", re.compile(rf"^{base}{study}{series}{instance}/metadata$"), "wado", self._retrieve(True)),
            ("GET", re.compile(rf"^{base}{study}{series}{instance}/frames/(?P<frames>[^/]+)$"), "wado", self._frames),
        ]

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address if self.server else (self.config.bind, self.config.port)

    def start(self, exclusive: bool = True) -> None:
        """Listen. ``exclusive``: first make sure nothing else listens on the port."""
        if exclusive:
            why = bind_problem(self.config.bind, self.config.port)
            if why:
                raise OSError(errno.EADDRINUSE, why)
        tls = self.config.tls
        pool = ConnectionPool(
            self.name, self.config.max_pending, self.config.max_pending_per_address, self.config.max_connections
        )
        self._executor = ThreadPoolExecutor(
            max(4, self.config.parallel_instances), thread_name_prefix=f"stow-{self.name}"
        )
        self._proxies = ThreadPoolExecutor(MAX_PROXIED_REQUESTS, thread_name_prefix=f"qr-{self.name}")
        listener = HttpListener(
            self.name,
            self._handle,
            self.config.bind,
            self.config.port,
            pool,
            self.config.header_timeout,
            server_context(tls) if tls else None,
            tls.handshake_timeout if tls else 5.0,
        )
        listener.start()
        self.server = listener
        log.info(
            "endpoint listening",
            endpoint=self.name,
            protocol="dicomweb",
            address=f"{self.address[0]}:{self.address[1]}",
            base_path=self.config.base_path,
        )

    def close(self) -> None:
        if self.server is not None:
            self._closing = self.server
            self.server.close()
            self.server = None

    def active_associations(self) -> list:
        """Requests in progress (one entry each), as the service counts open work at shutdown."""
        listener = self.server or getattr(self, "_closing", None)
        return [None] * listener.in_progress if listener is not None else []

    def drain(self, deadline: float) -> int:
        listener = self.server or getattr(self, "_closing", None)
        cut = listener.drain(deadline) if listener is not None else 0
        for executor in (self._executor, self._proxies):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._proxies = None
        return cut

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads that run the intake, queries and retrievals (there while the endpoint is started)."""
        assert self._executor is not None
        return self._executor

    @property
    def proxies(self) -> ThreadPoolExecutor:
        """The threads that wait on upstreams for queries and retrievals (there while started)."""
        assert self._proxies is not None
        return self._proxies

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = uuid.uuid4().hex[:16]
        route_name = "other"
        response: web.StreamResponse | None = None
        origin = self._origin(request, request_id)
        try:
            refusal = self.access.refusal("", origin.peer_host)
            if refusal is not None:
                log.warning(
                    "request refused", endpoint=self.name, request_id=request_id, peer=_peer(origin), reason=refusal
                )
                response = problem(403, "this address may not use the endpoint")
                return response
            if self.auth.required:
                try:
                    user = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self.auth.user, request.headers.get("Authorization")
                    )
                except Refused as exc:
                    log.warning(
                        "request not authenticated",
                        endpoint=self.name,
                        request_id=request_id,
                        peer=_peer(origin),
                        reason=str(exc),
                    )
                    response = problem(401, "authentication required", {"WWW-Authenticate": exc.challenge})
                    return response
                origin = replace(origin, user=user)
            guard = self.server.guard_of(request) if self.server is not None else None
            if guard is not None and not guard.let_in():
                response = problem(503, "too many connections; try again later", {"Retry-After": "5"})
                return response
            route_name, handler, params = self._route(request)
            if handler is None:
                assert isinstance(params, web.StreamResponse)  # the answer to a request no route takes
                response = params
                return response
            try:
                response = await asyncio.wait_for(handler(request, origin, **params), self.config.request_timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "request timed out",
                    endpoint=self.name,
                    request_id=request_id,
                    peer=_peer(origin),
                    route=route_name,
                    timeout_seconds=self.config.request_timeout,
                )
                response = problem(408, "the request did not complete within the endpoint's request_timeout")
                response.force_close()
            assert response is not None
            return response
        except ConnectionError as exc:
            log.warning(
                "client went away during the request",
                endpoint=self.name,
                request_id=request_id,
                peer=_peer(origin),
                route=route_name,
                error=str(exc),
            )
            response = problem(400, "the connection was lost")
            return response
        except Exception as exc:
            log.exception(
                "request failed",
                endpoint=self.name,
                request_id=request_id,
                peer=_peer(origin),
                route=route_name,
                error=repr(exc),
            )
            response = problem(500, "internal error; see the router's log")
            return response
        finally:
            if response is not None:
                response.headers["X-Request-Id"] = request_id
                self.metrics.http_requests.labels(self.name, route_name, str(response.status)).inc()
                log.info(
                    "http request",
                    endpoint=self.name,
                    request_id=request_id,
                    peer=_peer(origin),
                    method=request.method,
                    path=request.path,
                    route=route_name,
                    status=response.status,
                )

    def _route(self, request: web.BaseRequest):
        """(route name, handler, path parameters) for the request, or (name, None, the answer)."""
        path_matched = False
        for method, pattern, name, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if request.method == method:
                return name, handler, {k: v for k, v in match.groupdict().items()}
        if path_matched:
            return "other", None, problem(405, f"{request.method} is not allowed here")
        return "other", None, problem(404, f"no DICOMweb resource at {request.path}")

    async def _stow(self, request: web.BaseRequest, origin: AssociationInfo, study: str | None = None):
        target = StowTarget(
            self.name,
            self.intake,
            self.intake.spool,
            self.executor,
            self.metrics,
            self.config.max_request_mb * 1024 * 1024,
            self.config.parallel_instances,
        )
        return await store_instances(request, target, origin, study)

    def _search(self, level: str):
        async def search_level(
            request: web.BaseRequest, origin: AssociationInfo, study: str | None = None, series: str | None = None
        ):
            uids = {k: v for k, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)) if v}
            return await search(request, self.name, self.qr, self.proxies, origin, level, uids)

        return search_level

    def _retrieve(self, metadata: bool):
        async def retrieve_level(
            request: web.BaseRequest,
            origin: AssociationInfo,
            study: str,
            series: str | None = None,
            instance: str | None = None,
        ):
            uids = {
                k: v
                for k, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", instance))
                if v
            }
            return await retrieve(
                request, self.name, self.qr, self.proxies, origin, self.router_ae_title, uids, metadata
            )

        return retrieve_level

    async def _frames(
        self, request: web.BaseRequest, origin: AssociationInfo, study: str, series: str, instance: str, frames: str
    ):
        uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance}
        return await retrieve_frames(
            request, self.qr, self.proxies, origin, self.name, self.router_ae_title, uids, frames
        )

    def _origin(self, request: web.BaseRequest, request_id: str) -> AssociationInfo:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        return AssociationInfo(
            self.name,
            request_id,
            "",
            "",
            host,
            port,
            tls_peer=peer_name(ssl_object) if ssl_object is not None else None,
            protocol="dicomweb",
        )


def _peer(origin: AssociationInfo) -> str:
    return f"{origin.peer_host}:{origin.peer_port}"
