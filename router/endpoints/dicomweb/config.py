"""The ``dicomweb`` endpoint's configuration.

```toml
[endpoints.web]
type = "dicomweb"
port = 8042
bind = "127.0.0.1"
base_path = "/dicom-web"
max_request_mb = 2048          # STOW-RS bodies over this get 413
allowed_hosts = ["10.0.0.0/8"]
auth = { type = "basic", users_file = "web-users" }   # see router.endpoints.dicomweb.auth
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from router.config.models import EndpointConfig
from router.config.registry import register
from router.config.types import CIDR, Port, Seconds
from router.endpoints.dicomweb.auth import EndpointAuthConfig
from router.tls import EndpointTLSConfig


class DicomwebEndpointConfig(EndpointConfig):
    """``header_timeout``: a connection must send a request's headers within this long of opening
    or of its previous response (it is closed otherwise); ``request_timeout``: the whole of a
    request after its headers (body, processing, response) must end within this long.
    ``max_pending``/``max_pending_per_address``: connections that have not yet been let in by a
    first request with complete headers that passed access checks; further ones are closed at once.
    ``max_connections``: connections let in at once."""

    type: Literal["dicomweb"] = "dicomweb"
    port: Port
    bind: str = "0.0.0.0"
    base_path: str = "/dicom-web"
    allowed_hosts: list[CIDR] = []
    tls: EndpointTLSConfig | None = None
    auth: EndpointAuthConfig = EndpointAuthConfig()
    max_request_mb: int = Field(default=4096, ge=1)
    header_timeout: Seconds = 15.0
    request_timeout: Seconds = 600.0
    max_pending: int = Field(default=64, ge=1, le=65536)
    max_pending_per_address: int = Field(default=16, ge=1, le=65536)
    max_connections: int = Field(default=256, ge=1, le=65536)
    parallel_instances: int = Field(default=8, ge=1, le=256)

    @field_validator("base_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError("a path that starts with '/', e.g. '/dicom-web'")
        return value.rstrip("/")


@register("endpoint", "dicomweb", DicomwebEndpointConfig)
def build_dicomweb_endpoint(
    name: str, config: DicomwebEndpointConfig, router_ae_title: str, intake, qr=None, metrics=None
):
    """The endpoint; its HTTP stack (aiohttp) is imported only by a router that has one."""
    from router.endpoints.dicomweb.endpoint import DicomwebEndpoint

    return DicomwebEndpoint(name, config, intake, qr, metrics, router_ae_title)
