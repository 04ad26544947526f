"""Config models for the sections every configuration has.

Component models (endpoints, backends, middleware) live beside their runtime code
and derive from the bases here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny

from router.config.types import AETitle, ConfigPath, HostPort, Seconds, StrictModel


class RouterSection(StrictModel):
    ae_title: AETitle = "DICOM_ROUTER"
    data_dir: ConfigPath = Field(default=Path("dicom-router-data"), validate_default=True)
    include: list[str] = []
    min_free_space_mb: int = Field(default=1024, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_grace_seconds: Seconds = 30.0
    receive_processes: int = Field(default=1, ge=1, le=16)
    engine: Literal["owned", "stock"] = Field(
        default_factory=lambda: os.environ.get("DICOM_ROUTER_ENGINE", "owned"), validate_default=True
    )


class AdminSection(StrictModel):
    listen: HostPort = "127.0.0.1:8080"
    max_connections: int = Field(default=32, ge=1, le=1024)
    request_timeout: Seconds = 10.0


class ComponentConfig(StrictModel):
    type: str


class EndpointConfig(ComponentConfig):
    pass


class MiddlewareConfig(ComponentConfig):
    def backend_references(self) -> list[tuple[str, str]]:
        """(dotted key below this stage, backend name) pairs this stage routes to."""
        return []

    def environment_problems(self) -> list[tuple[str, str, str]]:
        """(dotted key below this stage, message, "error" or "warning") about files this stage uses."""
        return []


class RetryPolicyConfig(StrictModel):
    """How a failed delivery is retried; see :class:`router.spool.retry.RetryPolicy`."""

    initial_delay_seconds: Seconds = 5.0
    max_delay_seconds: Seconds = 600.0
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    max_attempts: int = Field(default=50, ge=1)
    max_age_seconds: Seconds = 7 * 86400.0


class BackendConfig(ComponentConfig):
    concurrency: int = Field(default=1, ge=1, le=32)
    retry: RetryPolicyConfig = RetryPolicyConfig()


class PipelineConfig(StrictModel):
    endpoints: list[str] = Field(min_length=1)
    backends: list[str] = []
    middleware: list[SerializeAsAny[MiddlewareConfig]] = []
    response_middleware: list[SerializeAsAny[MiddlewareConfig]] = []


@dataclass(frozen=True)
class RouterConfig:
    """A whole, validated configuration.

    ``origins`` maps a section key (``"backends.pacs"``) to the file that defined it,
    so later checks can name the right file.
    """

    router: RouterSection
    admin: AdminSection | None
    endpoints: dict[str, EndpointConfig]
    backends: dict[str, BackendConfig]
    pipelines: dict[str, PipelineConfig]
    source: Path | None = None
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        return self.origins.get(key, self.origins.get("", "<config>"))

    def pipelines_for_endpoint(self, endpoint: str) -> list[str]:
        return [name for name, p in self.pipelines.items() if endpoint in p.endpoints]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for TOML output; loading it back gives an equal config."""
        out: dict[str, Any] = {"router": self.router.model_dump(mode="json")}
        out["router"]["include"] = []
        if self.admin is not None:
            out["admin"] = self.admin.model_dump(mode="json")
        for section in ("endpoints", "backends", "pipelines"):
            items = getattr(self, section)
            if items:
                out[section] = {n: c.model_dump(mode="json", exclude_none=True) for n, c in items.items()}
        return out
