"""``filesystem`` backend: file each instance under a directory, named by its attributes.

```toml
[backends.archive]
type = "filesystem"
path = "./archive"
template = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
```

Template fields are DICOM keywords. Values are reduced to ``[A-Za-z0-9._-]`` (others
become ``_``), so no value can name a parent directory or an absolute path; an empty or
missing value becomes ``UNKNOWN``. Names stay distinct for distinct values: when reducing
changed a value (a character replaced, leading or trailing dots dropped, or the value cut
to 64 characters), ``~`` and 16 hex digits of the value's SHA-256 follow, and ``~`` never
stands in a value kept as it is. So ``1.2.3/7``, ``1.2.3_7`` and ``1.2.3 7`` are three files.

Only the template's attributes and the SOP Instance UID are read from the spool file,
never a large value such as an Encapsulated Document. Files are written atomically
(temporary file, fsync, rename). An existing file of the same name is replaced only if it
holds the same SOP Instance UID (a newer version of the instance); one that holds another
instance is never overwritten: the delivery fails and is quarantined with the reason.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Literal

from pydantic import field_validator
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from router.backends.status import DeliveryResult, Outcome
from router.config.models import BackendConfig
from router.config.registry import register
from router.config.types import ConfigPath
from router.spool.queue import Delivery
from router.spool.splice import read_header_before_pixels
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
    """A path component made from an attribute value that cannot leave its directory, and
    that no other value maps to (see the module's docstring)."""
    original = "" if value is None else str(value).strip()
    text = _UNSAFE.sub("_", original)[:MAX_COMPONENT].strip(".")
    if not text:
        return "UNKNOWN" if not original else "UNKNOWN~" + _digest(original)
    return text if text == original else f"{text}~{_digest(original)}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def read_attributes(path: Path | str, keywords: list[str]) -> Dataset:
    """Only the named top-level attributes of a Part-10 file (other values are skipped, not read)."""
    return read_header_before_pixels(path, only=keywords)[0]


class FilesystemBackend:
    def __init__(self, name: str, config: FilesystemBackendConfig):
        self.name = name
        self.config = config
        self.root = Path(config.path)
        self.fields = [f for _, f, _, _ in string.Formatter().parse(config.template) if f]
        self.read_keywords = sorted(set(self.fields) | {"SOPInstanceUID"})

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

    def open_deliverer(self) -> FilesystemBackend:
        return self

    def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            header = read_attributes(delivery.path, self.read_keywords)
        except FileNotFoundError:
            return DeliveryResult(Outcome.PERMANENT, None, f"spool file missing: {delivery.path}")
        except (InvalidDicomError, ValueError, EOFError) as exc:
            return DeliveryResult(Outcome.PERMANENT, None, f"cannot read the instance header: {exc}")
        try:
            target = self.target_for(header)
            _refuse_other_instance(target, str(header.get("SOPInstanceUID", "")))
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


def _refuse_other_instance(target: Path, sop_instance_uid: str) -> None:
    """Raise ValueError if ``target`` exists and holds another SOP instance (or one that cannot be read)."""
    try:
        existing = read_attributes(target, ["SOPInstanceUID"])
    except FileNotFoundError:
        return
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{target} exists and is not a readable instance ({exc}); not overwritten") from None
    held = str(existing.get("SOPInstanceUID", ""))
    if held != sop_instance_uid:
        raise ValueError(f"{target} already holds another instance (SOP Instance UID {held!r}); not overwritten")


@register("backend", "filesystem", FilesystemBackendConfig)
def build_filesystem_backend(name: str, config: FilesystemBackendConfig, router_ae_title: str) -> FilesystemBackend:
    return FilesystemBackend(name, config)
