"""Field types shared by component config models."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not 1 <= len(value) <= 16:
        raise ValueError("an AE title has 1 to 16 characters")
    if not value.strip():
        raise ValueError("an AE title cannot be all spaces")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("an AE title has printable ASCII characters only, no backslash")
    return value.strip()


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are taken from the directory of the file that sets them."""
    value = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return Path(value).absolute()


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected 'host:port', e.g. '127.0.0.1:8080'")
    return value


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR network: {exc}") from None
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
CIDR = Annotated[str, AfterValidator(_check_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
