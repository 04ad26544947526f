"""Component registry: each component type is a config model plus a build function.

A new endpoint, backend or middleware type is one module that calls :func:`register`
at import time; :func:`load_builtin_components` imports the ones shipped with the router.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

KINDS = ("endpoint", "backend", "middleware")

BUILTIN_MODULES = (
    "router.endpoints.dimse",
    "router.endpoints.dicomweb.config",
    "router.backends.dimse",
    "router.backends.dicomweb.config",
    "router.backends.filesystem",
    "router.middleware.filter",
    "router.middleware.route",
    "router.middleware.coerce",
    "router.middleware.anonymize",
)


@dataclass(frozen=True)
class ComponentType:
    kind: str
    name: str
    model: type[BaseModel]
    build: Callable[..., Any]


_registry: dict[str, dict[str, ComponentType]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, model: type[BaseModel]) -> Callable:
    """Decorator for a build function: ``@register("backend", "dimse", DimseBackendConfig)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}")

    def decorate(build: Callable) -> Callable:
        _registry[kind][name] = ComponentType(kind, name, model, build)
        return build

    return decorate


def lookup(kind: str, name: str) -> ComponentType | None:
    load_builtin_components()
    return _registry[kind].get(name)


def get(kind: str, name: str) -> ComponentType:
    """The registered component of a configuration already validated (KeyError otherwise)."""
    component = lookup(kind, name)
    if component is None:
        raise KeyError(f"no {kind} type {name!r}")
    return component


def type_names(kind: str) -> list[str]:
    load_builtin_components()
    return sorted(_registry[kind])


def load_builtin_components() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
