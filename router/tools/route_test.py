"""``dicom-router route-test``: what the pipelines would do with one instance, without doing it.

No network, no spool, no re-identification map: the instance is read where it lies,
run through the pipelines bound to the endpoint, and the outcome printed: each stage's
audit entry, the verdict, the backends that would receive it and the attribute-level
difference between the file and each version that would be sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from router.config.models import RouterConfig
from router.envelope import (
    AssociationInfo,
    Command,
    Drop,
    Reject,
    RequestEnvelope,
    SpooledInstance,
)
from router.pipeline import PipelineSet
from router.spool.splice import read_header_before_pixels


class RouteTestError(ValueError):
    pass


@dataclass(frozen=True)
class Change:
    path: str
    before: str | None  # None: added
    after: str | None  # None: removed

    def __str__(self) -> str:
        if self.before is None:
            return f"  + {self.path} = {self.after}"
        if self.after is None:
            return f"  - {self.path} (was {self.before})"
        return f"  ~ {self.path}: {self.before} -> {self.after}"


def dry_run_pipelines(config: RouterConfig) -> PipelineSet:
    """The configured pipelines with every stage's side effects (e.g. mapping files) turned off."""
    pipelines = PipelineSet(config)
    for pipeline in pipelines.pipelines.values():
        pipeline.stages = [
            (name, stage.without_side_effects() if hasattr(stage, "without_side_effects") else stage)
            for name, stage in pipeline.stages
        ]
    return pipelines


def route_test(
    config: RouterConfig,
    path: Path,
    *,
    endpoint: str | None = None,
    calling_aet: str = "ROUTE_TEST",
    called_aet: str | None = None,
    peer_address: str = "127.0.0.1",
) -> list[str]:
    """The report lines for ``path``; raises :class:`RouteTestError` for an unusable request."""
    endpoint = endpoint or _default_endpoint(config)
    if endpoint not in config.endpoints:
        raise RouteTestError(f"no endpoint named {endpoint!r}; configured: {', '.join(config.endpoints) or 'none'}")
    try:
        header = read_header_before_pixels(path)[0]
        transfer_syntax = str(header.file_meta.TransferSyntaxUID)
    except Exception as exc:
        raise RouteTestError(f"{path}: not a readable DICOM Part-10 file: {exc}") from None
    called = called_aet or getattr(config.endpoints[endpoint], "ae_title", None) or config.router.ae_title
    envelope = RequestEnvelope(
        association=AssociationInfo(endpoint, "route-test", calling_aet, called, peer_address, 0),
        command=Command(
            "store",
            str(header.get("SOPClassUID", "")),
            1,
            affected_sop_instance_uid=str(header.get("SOPInstanceUID", "")),
        ),
        instance=SpooledInstance(Path(path), transfer_syntax, Path(path).stat().st_size),
    )
    routing = dry_run_pipelines(config).route(envelope)
    lines = [
        f"instance {path}",
        f"  SOP instance {envelope.command.affected_sop_instance_uid}",
        f"  as received on endpoint {endpoint!r} from {calling_aet} ({peer_address}) calling {called}",
    ]
    if not routing.results:
        lines.append(f"no pipeline is bound to endpoint {endpoint!r}: the instance would be dropped")
        return lines
    for result in routing.results:
        lines.append(f"pipeline {result.pipeline}:")
        for entry in result.envelope.audit:
            lines.append(f"  {entry.stage}: {entry.action}" + (f" ({entry.detail})" if entry.detail else ""))
        verdict = result.verdict
        if isinstance(verdict, Reject):
            lines.append(f"  => rejected: status 0x{verdict.status:04X}, {verdict.reason}")
        elif isinstance(verdict, Drop):
            lines.append(f"  => dropped: {verdict.reason}")
        else:
            held = f" (held in quarantine: {result.envelope.hold_reason})" if result.envelope.hold_reason else ""
            lines.append(f"  => backends: {', '.join(result.backends) or 'none'}{held}")
    rejection = routing.rejection
    lines.append("outcome:")
    if rejection is not None:
        lines.append(f"  the sender would be told 0x{rejection.status:04X} ({rejection.reason}); nothing is forwarded")
        return lines
    if not routing.deliveries:
        lines.append("  dropped: the sender would be told 0x0000 and nothing is forwarded")
        return lines
    versions: dict[int, tuple[str, SpooledInstance]] = {}
    for target in routing.deliveries:
        instance = target.envelope.instance
        edited = instance is not None and instance.edited
        held = " [held for review]" if target.envelope.hold_reason else ""
        kind = "edited by pipeline " + target.pipeline if edited else "as received"
        lines.append(f"  -> {target.backend}: {kind}{held}")
        if instance is not None and edited:
            versions.setdefault(id(instance), (target.pipeline, instance))
    for pipeline, instance in versions.values():
        changes = list(diff_datasets(header, instance.header))
        changes += [
            Change("file meta " + c.path, c.before, c.after)
            for c in diff_datasets(header.file_meta, instance.header.file_meta)
        ]
        lines.append(f"changes made by pipeline {pipeline} ({len(changes)}; pixel data unchanged):")
        lines.extend(str(c) for c in changes)
    return lines


def _default_endpoint(config: RouterConfig) -> str:
    for name in config.endpoints:
        if config.pipelines_for_endpoint(name):
            return name
    return next(iter(config.endpoints), "")


def diff_datasets(before: Dataset, after: Dataset, prefix: str = "") -> Iterator[Change]:
    """Attribute-level differences, descending into sequence items; pixel data is not compared."""
    tags = sorted(set(before.keys()) | set(after.keys()))
    for tag in tags:
        if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
            continue
        old = before[tag] if tag in before else None
        new = after[tag] if tag in after else None
        name = prefix + _name(old or new)
        if old is not None and new is not None and old.VR == "SQ" and new.VR == "SQ":
            old_items, new_items = list(old.value or ()), list(new.value or ())
            for i in range(max(len(old_items), len(new_items))):
                if i >= len(old_items):
                    yield Change(f"{name}[{i}]", None, "(item added)")
                elif i >= len(new_items):
                    yield Change(f"{name}[{i}]", "(item)", None)
                else:
                    yield from diff_datasets(old_items[i], new_items[i], f"{name}[{i}].")
            continue
        old_text, new_text = _show(old), _show(new)
        if old_text != new_text:
            yield Change(name, old_text, new_text)


def _name(element) -> str:
    keyword = element.keyword or ""
    tag = f"({element.tag.group:04X},{element.tag.element:04X})"
    return f"{keyword}{tag}" if keyword else tag


def _show(element) -> str | None:
    if element is None:
        return None
    if element.VR == "SQ":
        return f"<sequence of {len(element.value or ())} item(s)>"
    value = element.value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if value is None or value == "":
        return '""'
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return repr("\\".join(str(v) for v in value))
    return repr(str(value))
