"""Resolve a command-line TARGET: a configured dimse or dicomweb backend, or ``HOST:PORT:AET``."""

from __future__ import annotations

from pydantic import ValidationError

from router.backends.dicomweb.config import DicomwebBackendConfig
from router.backends.dimse import DimseBackend, DimseBackendConfig
from router.config.errors import ConfigError, ConfigIssue
from router.config.models import RouterConfig


def resolve_target(target: str, config: RouterConfig, calling_aet: str | None = None):
    if target in config.backends:
        backend_config = config.backends[target]
        if isinstance(backend_config, DicomwebBackendConfig):
            from router.backends.dicomweb.backend import DicomwebBackend

            return DicomwebBackend(target, backend_config)
        if not isinstance(backend_config, DimseBackendConfig):
            raise ConfigError(
                [
                    ConfigIssue(
                        "<command line>",
                        "target",
                        f"backend {target!r} is of type {backend_config.type}, not dimse or dicomweb",
                    )
                ]
            )
        if calling_aet:
            backend_config = backend_config.model_copy(update={"calling_ae_title": calling_aet})
        return DimseBackend(target, backend_config, config.router.ae_title)
    host, sep, rest = target.partition(":")
    port, sep2, aet = rest.partition(":")
    if not (sep and sep2):
        known = ", ".join(sorted(config.backends)) or "none"
        raise ConfigError(
            [
                ConfigIssue(
                    "<command line>",
                    "target",
                    f"{target!r} is neither a configured backend ({known}) nor HOST:PORT:AET",
                )
            ]
        )
    try:
        backend_config = DimseBackendConfig.model_validate(
            {"host": host, "port": port, "ae_title": aet, "calling_ae_title": calling_aet}
        )
    except ValidationError as exc:
        raise ConfigError([ConfigIssue("<command line>", "target", str(exc.errors()[0]["msg"]))]) from None
    return DimseBackend(target, backend_config, config.router.ae_title)
