"""What ships is what was tested: the dependency lock, the Docker image and its configuration."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from router.config import load_config
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKER_CONFIG = ROOT / "examples" / "docker" / "router.toml"
DOCKER_STOP_DEFAULT_SECONDS = 10


def locked() -> dict[str, tuple[str, list[str]]]:
    """``requirements.lock`` as name -> (version, hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = (pin.group(2), [])
        elif current and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current][1].append(digest.group(1))
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [r for r in map(Requirement, project["dependencies"]) if r.marker is None or r.marker.evaluate()]


def runtime_closure() -> set[str]:
    """Every distribution the router needs here, following the installed packages' metadata."""
    seen: set[str] = set()
    todo = runtime_requirements()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            if nested.marker is None or nested.marker.evaluate({"extra": ""}):
                todo.append(nested)
    return seen


def test_the_lock_pins_every_runtime_dependency_with_hashes():
    pins = locked()
    assert runtime_closure() <= set(pins), sorted(runtime_closure() - set(pins))
    assert all(hashes for _, hashes in pins.values())
    for requirement in runtime_requirements():
        version, _ = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_the_tests_run_against_the_locked_versions():
    """tests/run.sh installs the lock first: what passes here is what the image and install.sh ship."""
    drift = {
        name: (version, metadata.version(name))
        for name, (version, _) in locked().items()
        if name in runtime_closure() and metadata.version(name) != version
    }
    assert not drift


def test_the_image_installs_the_lock_with_hashes_and_runs_under_an_init():
    assert re.search(r"^FROM python:3\.\d+-slim-\w+$", DOCKERFILE, re.MULTILINE)  # a named Debian release
    assert "--require-hashes -r requirements.lock" in DOCKERFILE
    assert "pip install --no-cache-dir --no-deps ." in DOCKERFILE
    assert "tini" in DOCKERFILE and 'ENTRYPOINT ["/usr/bin/tini", "--", "dicom-router"]' in DOCKERFILE


def test_the_image_configuration_serves_the_admin_port_it_exposes_and_stops_within_docker_stop():
    config = load_config(DOCKER_CONFIG)
    host, port = config.admin.listen.rsplit(":", 1)
    assert host == "0.0.0.0"  # the container's loopback is out of Prometheus' reach
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE).group(1).split()
    assert port in exposed and str(config.endpoints["ingest"].port) in exposed
    assert f"127.0.0.1:{port}/healthz" in DOCKERFILE
    assert config.router.shutdown_grace_seconds < DOCKER_STOP_DEFAULT_SECONDS - 2


def test_the_license_pyproject_names_is_there():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
