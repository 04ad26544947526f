"""Read a configuration: TOML files, includes, schema validation per component type.

:func:`load_config` returns a :class:`RouterConfig` or raises :class:`ConfigError` with
every problem found, each naming its file and dotted key. Reference and environment
checks live in :mod:`router.config.checks`.
"""

from __future__ import annotations

import glob
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from router.config import registry
from router.config.errors import ConfigError, ConfigIssue, display_path, dotted
from router.config.models import (
    AdminSection,
    PipelineConfig,
    RouterConfig,
    RouterSection,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_LEVEL_KEYS = ("router", "admin", "endpoints", "backends", "pipelines")
COMPONENT_SECTIONS = {"endpoints": "endpoint", "backends": "backend"}
INCLUDABLE_KEYS = ("endpoints", "backends", "pipelines")


def default_config_text() -> str:
    """The embedded default configuration used by ``serve`` without ``-c``."""
    return resources.files("router").joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: Path | str | None) -> RouterConfig:
    """Load and schema-validate a configuration file (``None``: the embedded default)."""
    issues: list[ConfigIssue] = []
    if path is None:
        name = display_path(None)
        doc = _parse_toml(default_config_text(), name, issues)
        base_dir = Path.cwd()
    else:
        path = Path(path)
        name = display_path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigIssue(name, "", f"cannot read: {exc.strerror or exc}")]) from None
        doc = _parse_toml(text, name, issues)
        base_dir = path.absolute().parent
    if doc is None:
        raise ConfigError(issues)

    origins: dict[str, str] = {"": name}
    sections: dict[str, dict[str, tuple[Any, str, Path]]] = {k: {} for k in INCLUDABLE_KEYS}
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            issues.append(ConfigIssue(name, key, f"unknown key (expected one of: {', '.join(TOP_LEVEL_KEYS)})"))
    _collect_sections(doc, name, base_dir, sections, issues)

    router_section = _validate(RouterSection, doc.get("router", {}), name, "router", base_dir, issues)
    if router_section is not None:
        for pattern in router_section.include:
            _load_include(pattern, name, base_dir, sections, issues)
    admin = None
    if "admin" in doc:
        admin = _validate(AdminSection, doc["admin"], name, "admin", base_dir, issues)

    components: dict[str, dict[str, Any]] = {"endpoints": {}, "backends": {}, "pipelines": {}}
    for section, entries in sections.items():
        for comp_name, (raw, file, comp_base) in entries.items():
            origins[f"{section}.{comp_name}"] = file
            location = f"{section}.{comp_name}"
            if section == "pipelines":
                built = _validate_pipeline(raw, file, location, comp_base, issues)
            else:
                built = _validate_component(COMPONENT_SECTIONS[section], raw, file, location, comp_base, issues)
            if built is not None:
                components[section][comp_name] = built

    config = RouterConfig(
        router=router_section if router_section is not None else RouterSection(),
        admin=admin,
        endpoints=components["endpoints"],
        backends=components["backends"],
        pipelines=components["pipelines"],
        source=Path(path).absolute() if path is not None else None,
        origins=origins,
    )
    if any(i.severity == "error" for i in issues):
        raise ConfigError(issues, partial=config, defined={k: set(v) for k, v in sections.items()})
    return config


def _parse_toml(text: str, name: str, issues: list[ConfigIssue]) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        issues.append(ConfigIssue(name, "", f"invalid TOML: {exc}"))
        return None


def _collect_sections(doc: dict, file: str, base_dir: Path, sections: dict, issues: list[ConfigIssue]) -> None:
    for section in INCLUDABLE_KEYS:
        table = doc.get(section, {})
        if not isinstance(table, dict):
            issues.append(ConfigIssue(file, section, "must be a table"))
            continue
        for comp_name, raw in table.items():
            if comp_name in sections[section]:
                first = sections[section][comp_name][1]
                issues.append(ConfigIssue(file, f"{section}.{comp_name}", f"already defined in {first}"))
                continue
            sections[section][comp_name] = (raw, file, base_dir)


def _load_include(pattern: str, main_name: str, base_dir: Path, sections: dict, issues: list[ConfigIssue]) -> None:
    full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
    matches = sorted(glob.glob(full))
    if not matches and not glob.has_magic(pattern):
        issues.append(ConfigIssue(main_name, "router.include", f"file not found: {pattern}"))
    for match in matches:
        path = Path(match)
        name = display_path(path)
        try:
            doc = _parse_toml(path.read_text(encoding="utf-8"), name, issues)
        except OSError as exc:
            issues.append(ConfigIssue(name, "", f"cannot read: {exc.strerror or exc}"))
            continue
        if doc is None:
            continue
        for key in doc:
            if key not in INCLUDABLE_KEYS:
                issues.append(
                    ConfigIssue(name, key, f"not allowed in an included file (allowed: {', '.join(INCLUDABLE_KEYS)})")
                )
        _collect_sections(doc, name, path.absolute().parent, sections, issues)


def _validate(model: type[BaseModel], raw: Any, file: str, location: str, base_dir: Path, issues: list[ConfigIssue]):
    try:
        return model.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        issues.extend(_issues_from(exc, file, location))
        return None


def _validate_component(kind: str, raw: Any, file: str, location: str, base_dir: Path, issues: list[ConfigIssue]):
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(file, location, "must be a table"))
        return None
    type_name = raw.get("type")
    if type_name is None:
        issues.append(ConfigIssue(file, f"{location}.type", "required key is missing"))
        return None
    component = registry.lookup(kind, type_name) if isinstance(type_name, str) else None
    if component is None:
        known = ", ".join(registry.type_names(kind))
        issues.append(ConfigIssue(file, f"{location}.type", f"unknown {kind} type {type_name!r} (known: {known})"))
        return None
    return _validate(component.model, raw, file, location, base_dir, issues)


def _validate_pipeline(raw: Any, file: str, location: str, base_dir: Path, issues: list[ConfigIssue]):
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(file, location, "must be a table"))
        return None
    raw = dict(raw)
    stage_lists = {key: raw.pop(key, []) for key in STAGE_LISTS}
    pipeline = _validate(PipelineConfig, raw, file, location, base_dir, issues)
    update = {}
    for key, stages_raw in stage_lists.items():
        if not isinstance(stages_raw, list):
            issues.append(ConfigIssue(file, f"{location}.{key}", f"must be an array of tables ([[...{key}]])"))
            return None
        update[key] = [
            _validate_component("middleware", stage, file, f"{location}.{key}[{i}]", base_dir, issues)
            for i, stage in enumerate(stages_raw)
        ]
    if pipeline is None or any(s is None for stages in update.values() for s in stages):
        return None
    return pipeline.model_copy(update=update)


STAGE_LISTS = ("middleware", "response_middleware")


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _issues_from(exc: ValidationError, file: str, location: str) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = dotted([location, *err["loc"]]) if err["loc"] else location
        message = _MESSAGES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        issues.append(ConfigIssue(file, loc, message))
    return issues
