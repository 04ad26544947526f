"""``filesystem`` backend: file each instance under a directory, named by its attributes.

```toml
[backends.archive]
type = "filesystem"
path = "./archive"
template = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
```

Template fields are DICOM keywords. Values are reduced to ``[A-Za-z0-9._-]`` (others
become ``_``), so no value can name a parent directory or an absolute path; an empty or
missing value becomes ``UNKNOWN``. Files are written atomically (temporary file, fsync,
rename) and an existing file of the same name is replaced.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import field_validator
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from router.backends.status import DeliveryResult, Outcome
from router.config.models import BackendConfig
from router.config.registry import register
from router.config.types import ConfigPath
from router.spool.queue import Delivery
from router.spool.store import copy_durably

DEFAULT_TEMPLATE = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_COMPONENT = 64


class FilesystemBackendConfig(BackendConfig):
    type: Literal["filesystem"] = "filesystem"
    path: ConfigPath
    template: str = DEFAULT_TEMPLATE

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        if value.startswith("/") or any(part in ("..", ".") for part in value.split("/")):
            raise ValueError("the template must be a relative path without '.' or '..' components")
        for _, field, spec, conversion in string.Formatter().parse(value):
            if field is None:
                continue
            if spec or conversion:
                raise ValueError(f"{{{field}}}: format specs and conversions are not supported")
            if tag_for_keyword(field) is None:
                raise ValueError(f"{{{field}}} is not a DICOM keyword")
        return value


def safe_component(value: object) -> str:
    """A path component made from an attribute value that cannot leave its directory."""
    text = "" if value is None else str(value).strip()
    text = _UNSAFE.sub("_", text)[:MAX_COMPONENT].strip(".")
    return text or "UNKNOWN"


class FilesystemBackend:
    def __init__(self, name: str, config: FilesystemBackendConfig):
        self.name = name
        self.config = config
        self.root = Path(config.path)
        self.fields = [f for _, f, _, _ in string.Formatter().parse(config.template) if f]

    def describe(self) -> str:
        return str(self.root)

    def target_for(self, header) -> Path:
        values = {f: safe_component(header.get(f)) for f in self.fields}
        relative = self.config.template.format(**values)
        target = (self.root / relative).resolve()
        root = self.root.resolve()
        if root not in target.parents:
            raise ValueError(f"{relative!r} resolves outside {root}")
        return target

    def open_deliverer(self) -> "FilesystemBackend":
        return self

    def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            header = dcmread(delivery.path, stop_before_pixels=True)
        except FileNotFoundError:
            return DeliveryResult(Outcome.PERMANENT, None, f"spool file missing: {delivery.path}")
        except (InvalidDicomError, ValueError, EOFError) as exc:
            return DeliveryResult(Outcome.PERMANENT, None, f"cannot read the instance header: {exc}")
        try:
            target = self.target_for(header)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_durably(Path(delivery.path), target)
        except ValueError as exc:
            return DeliveryResult(Outcome.PERMANENT, None, str(exc))
        except OSError as exc:
            return DeliveryResult(Outcome.TRANSIENT, None, f"cannot write under {self.root}: {exc.strerror or exc}")
        return DeliveryResult(Outcome.SUCCESS, None, str(target))

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


@register("backend", "filesystem", FilesystemBackendConfig)
def build_filesystem_backend(name: str, config: FilesystemBackendConfig, router_ae_title: str) -> FilesystemBackend:
    return FilesystemBackend(name, config)
