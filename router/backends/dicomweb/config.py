"""The ``dicomweb`` backend's configuration.

```toml
[backends.cloud]
type = "dicomweb"
url = "https://archive.example.org/dicom-web"
auth = { type = "bearer", token_file = "/etc/dicom-router/cloud.token" }
tls = { ca_bundle = "/etc/dicom-router/cloud-ca.pem" }
max_instances_per_request = 16
max_request_mb = 64
```

Secrets live in files (``password_file``, ``token_file``), never in the TOML; a missing or
unreadable one is an environment finding of ``check``, and the backend reads it for each
connection, so a rotated token needs no reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.config.models import BackendConfig
from router.config.registry import register
from router.config.types import ConfigPath, Seconds, StrictModel
from router.tls import BackendTLSConfig
from router.transcode.policy import TranscodePolicy


class HttpAuthConfig(StrictModel):
    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password_file: ConfigPath | None = None
    token_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _complete(self) -> HttpAuthConfig:
        if self.type == "basic" and (not self.username or self.password_file is None):
            raise ValueError('type = "basic" needs username and password_file')
        if self.type == "bearer" and self.token_file is None:
            raise ValueError('type = "bearer" needs token_file')
        return self

    def file_problem(self) -> str | None:
        for path in (self.password_file, self.token_file):
            if path is not None:
                try:
                    if not read_secret(path):
                        return f"{path} is empty"
                except OSError as exc:
                    return f"cannot read {path}: {exc.strerror or exc}"
        return None

    def header(self) -> dict[str, str]:
        """The Authorization header to send (the secret read from its file now)."""
        import base64

        if self.type == "basic":
            assert self.password_file is not None  # checked by the model
            pair = f"{self.username}:{read_secret(self.password_file)}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if self.type == "bearer":
            assert self.token_file is not None  # checked by the model
            return {"Authorization": "Bearer " + read_secret(self.token_file)}
        return {}


def read_secret(path: Path) -> str:
    """A secret file's first line, without the line end."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


class DicomwebBackendConfig(TranscodePolicy, BackendConfig):
    type: Literal["dicomweb"] = "dicomweb"
    url: str
    store: bool = True
    query: bool = False
    retrieve: Literal["wado"] | None = None
    auth: HttpAuthConfig = HttpAuthConfig()
    tls: BackendTLSConfig | None = None
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 120.0
    request_timeout: Seconds = 1800.0
    max_instances_per_request: int = Field(default=16, ge=1, le=1000)
    max_request_mb: int = Field(default=64, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("an http:// or https:// URL, e.g. 'http://archive:8042/dicom-web'")
        return value.rstrip("/")


@register("backend", "dicomweb", DicomwebBackendConfig)
def build_dicomweb_backend(name: str, config: DicomwebBackendConfig, router_ae_title: str):
    """The backend; its HTTP client (aiohttp) is imported only by a router that has one."""
    from router.backends.dicomweb.backend import DicomwebBackend

    return DicomwebBackend(name, config)
