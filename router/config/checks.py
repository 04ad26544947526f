"""Validation beyond the schema: references and topology, then the environment.

``check`` runs the tiers in order (schema in :mod:`router.config.loader`, then these)
and reports every issue of every tier it reached.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from router.config.errors import ConfigIssue
from router.config.models import RouterConfig

TIERS = ("schema", "references", "environment")


def check_references(config: RouterConfig, defined: dict[str, set[str]] | None = None) -> list[ConfigIssue]:
    """Names that must exist, bindings that must make sense.

    ``defined``: with a configuration that failed its schema tier, the names of every
    component defined, valid or not (references to them are not errors); the checks that
    need every pipeline (an endpoint no pipeline binds, a backend no pipeline uses) are
    then left for when the schema errors are fixed.
    """
    complete = defined is None
    endpoints = set(config.endpoints) if defined is None else defined["endpoints"]
    backends = set(config.backends) if defined is None else defined["backends"]
    issues: list[ConfigIssue] = []
    used_backends: set[str] = set()
    bound_endpoints: set[str] = set()
    for name, pipeline in config.pipelines.items():
        file = config.origin(f"pipelines.{name}")
        for i, endpoint in enumerate(pipeline.endpoints):
            if endpoint not in endpoints:
                issues.append(ConfigIssue(file, f"pipelines.{name}.endpoints[{i}]", f"no endpoint named {endpoint!r}"))
            bound_endpoints.add(endpoint)
        refs = [(f"backends[{i}]", b) for i, b in enumerate(pipeline.backends)]
        for s, stage in enumerate(pipeline.middleware):
            refs += [(f"middleware[{s}].{key}", b) for key, b in stage.backend_references()]
        for key, backend in refs:
            used_backends.add(backend)
            if backend not in backends:
                issues.append(ConfigIssue(file, f"pipelines.{name}.{key}", f"no backend named {backend!r}"))
        if not refs:
            issues.append(ConfigIssue(file, f"pipelines.{name}.backends", "the pipeline sends to no backend"))
    if not complete:
        return issues + _duplicate_listeners(config)
    for name in config.endpoints:
        if name not in bound_endpoints:
            issues.append(
                ConfigIssue(
                    config.origin(f"endpoints.{name}"), f"endpoints.{name}", "no pipeline is bound to this endpoint"
                )
            )
    retrieving = any(getattr(b, "retrieve", None) for b in config.backends.values())
    for name, backend_config in config.backends.items():
        if retrieving and backend_config.type == "dimse":
            continue  # a C-MOVE destination, named by its AE title in requests
        if name not in used_backends:
            issues.append(
                ConfigIssue(
                    config.origin(f"backends.{name}"),
                    f"backends.{name}",
                    "no pipeline sends to this backend",
                    "warning",
                )
            )
    if config.router.receive_processes > 1:
        for name, backend_config in config.backends.items():
            if getattr(backend_config, "retrieve", None) == "move":
                issues.append(
                    ConfigIssue(
                        config.origin(f"backends.{name}"),
                        f"backends.{name}.retrieve",
                        'retrieve = "move" needs router.receive_processes = 1 (the upstream\'s C-STOREs could reach '
                        'another receiving process); use retrieve = "get"',
                    )
                )
    issues += _duplicate_listeners(config)
    return issues


def _duplicate_listeners(config: RouterConfig) -> list[ConfigIssue]:
    issues = []
    seen: dict[int, str] = {}
    for name, endpoint in config.endpoints.items():
        port = getattr(endpoint, "port", None)
        if port is None:
            continue
        if port in seen:
            issues.append(
                ConfigIssue(
                    config.origin(f"endpoints.{name}"),
                    f"endpoints.{name}.port",
                    f"port {port} is also used by endpoint {seen[port]!r}",
                )
            )
        else:
            seen[port] = name
    return issues


def check_environment(config: RouterConfig) -> list[ConfigIssue]:
    """What the machine must allow: writable directories, bindable ports."""
    issues: list[ConfigIssue] = []
    main = config.origin("")
    problem = writable_dir_problem(config.router.data_dir)
    if problem:
        issues.append(ConfigIssue(main, "router.data_dir", problem))
    for name, backend in config.backends.items():
        path = getattr(backend, "path", None)
        if isinstance(path, Path):
            problem = writable_dir_problem(path)
            if problem:
                issues.append(ConfigIssue(config.origin(f"backends.{name}"), f"backends.{name}.path", problem))
    running = running_router_pid(config.router.data_dir) is not None
    for name, endpoint in config.endpoints.items():
        port, bind = getattr(endpoint, "port", None), getattr(endpoint, "bind", "0.0.0.0")
        if port is None:
            continue
        problem = bind_problem(bind, port, router_running=running)
        if problem:
            issues.append(ConfigIssue(config.origin(f"endpoints.{name}"), f"endpoints.{name}.port", problem))
    return issues + check_stage_files(config)


def check_stage_files(config: RouterConfig) -> list[ConfigIssue]:
    """The files the configuration names (TLS certificates and keys, the stages' key files, CSV
    tables, mapping folders): missing, unreadable or malformed ones. ``serve`` and ``reload``
    refuse a configuration with errors here."""
    issues: list[ConfigIssue] = []
    for kind, components in (("endpoints", config.endpoints), ("backends", config.backends)):
        for name, component in components.items():
            for key in ("tls", "auth"):
                files = getattr(component, key, None)
                problem = files.file_problem() if files is not None else None
                if problem:
                    issues.append(ConfigIssue(config.origin(f"{kind}.{name}"), f"{kind}.{name}.{key}", problem))
    for name, pipeline in config.pipelines.items():
        for index, stage in enumerate(pipeline.middleware):
            for key, message, severity in stage.environment_problems():
                location = f"pipelines.{name}.middleware[{index}].{key}"
                issues.append(ConfigIssue(config.origin(f"pipelines.{name}"), location, message, severity))
    return issues


def writable_dir_problem(path: Path) -> str | None:
    """None when ``path`` exists as a writable directory or can be created."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path}: no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} exists and is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def bind_problem(bind: str, port: int, router_running: bool = False) -> str | None:
    """Why this process could not listen on ``bind``:``port``; None when it could.

    With ``router_running`` (a router holds the configuration's data directory), a port
    that router listens on is not a problem: the router's listeners share their port
    (SO_REUSEPORT), so a second bind that shares succeeds where a plain one fails, which
    happens only for a listener of the same user that shares, the running router's.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        _bind(family, bind, port, share=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and router_running and _bindable_shared(family, bind, port):
            return None
        hint = " (is the router already running?)" if exc.errno == errno.EADDRINUSE else ""
        return f"cannot listen on {bind}:{port}: {exc.strerror}{hint}"
    return None


def _bind(family, bind: str, port: int, share: bool) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind, port))


def _bindable_shared(family, bind: str, port: int) -> bool:
    try:
        _bind(family, bind, port, share=True)
    except OSError:
        return False
    return True


def running_router_pid(data_dir: Path) -> int | None:
    """The PID of the router holding ``data_dir`` (its ``router.lock`` is locked), or None."""
    try:
        with open(Path(data_dir) / "router.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(lock.read().split()[0])
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
    except (OSError, ValueError, IndexError):
        return None
