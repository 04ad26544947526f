"""DICOM TLS for endpoints and ``dimse`` backends: config models and SSL contexts.

```toml
[endpoints.secure]
type = "dimse"
port = 2762
tls = { certificate = "router.pem", private_key = "router.key", ca_bundle = "clients-ca.pem",
        require_client_certificate = true }

[backends.pacs]
type = "dimse"
host = "pacs.example.org"
port = 2762
ae_title = "PACS"
tls = { ca_bundle = "pacs-ca.pem", certificate = "router.pem", private_key = "router.key" }
```

TLS 1.2 is the minimum. The files are an environment finding, like the files stages name:
``check`` reports a missing or unreadable one at its key (the schema and reference tiers
pass without them), and ``serve`` and ``reload`` refuse the configuration until it loads. The listener does the TLS
handshake in the connection's own thread (:class:`router.engine.admission.AdmittingServer`):
a client that connects and stays silent costs one pending slot for ``handshake_timeout``
seconds and never delays anyone else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import structlog
from pydantic import model_validator

from router.config.types import ConfigPath, Seconds, StrictModel

log = structlog.get_logger("router.tls")


class EndpointTLSConfig(StrictModel):
    certificate: ConfigPath
    private_key: ConfigPath
    ca_bundle: ConfigPath | None = None
    require_client_certificate: bool = False
    handshake_timeout: Seconds = 5.0

    @model_validator(mode="after")
    def _complete(self) -> EndpointTLSConfig:
        if self.require_client_certificate and self.ca_bundle is None:
            raise ValueError("require_client_certificate needs ca_bundle (the CAs that sign client certificates)")
        return self

    def file_problem(self) -> str | None:
        """Why the certificate, key or CA files cannot be loaded, or None."""
        return _load_problem(server_context, self)


class BackendTLSConfig(StrictModel):
    ca_bundle: ConfigPath | None = None
    certificate: ConfigPath | None = None
    private_key: ConfigPath | None = None
    server_name: str | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _complete(self) -> BackendTLSConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (the router's client certificate)")
        return self

    def file_problem(self) -> str | None:
        """Why the CA, certificate or key files cannot be loaded, or None."""
        return _load_problem(client_context, self)


def _load_problem(make_context, config) -> str | None:
    try:
        make_context(config)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS files: {exc}"
    return None


def server_context(config: EndpointTLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(Path(config.certificate), Path(config.private_key))
    if config.ca_bundle is not None:
        context.load_verify_locations(Path(config.ca_bundle))
        context.verify_mode = ssl.CERT_REQUIRED if config.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(config: BackendTLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.verify:
        if config.ca_bundle is not None:
            context.load_verify_locations(Path(config.ca_bundle))
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.certificate is not None:
        assert config.private_key is not None  # the model requires both or neither
        context.load_cert_chain(Path(config.certificate), Path(config.private_key))
    return context


def peer_name(sock) -> str | None:
    """The subject common name of a TLS peer's certificate, if it sent one."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
