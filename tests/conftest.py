from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router import engine
from router.config import load_config
from router.observe.logging import setup_logging
from router.service import RouterService
from tests.support.deid import have_dciodvfy
from tests.support.dicomgen import write_series
from tests.support.pacs import have_orthanc
from tests.support.peers import free_port, have_dcmtk

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    engine.configure()
    setup_logging("debug", "json")


def pytest_collection_modifyitems(config, items):
    missing = {}
    if not have_dcmtk():
        missing["dcmtk"] = "DCMTK (storescu/storescp) is not installed: run tests/run.sh, which installs it"
    if not have_orthanc():
        missing["orthanc"] = "Orthanc is not installed: run tests/run.sh, which installs it"
    if not have_dciodvfy():
        missing["dicom3tools"] = "dicom3tools (dciodvfy) is not installed: run tests/run.sh, which installs it"
    if engine.report().mode != "owned":
        missing["owned_engine"] = "tests a speed change of the owned engine, which the stock engine mode leaves out"
    for item in items:
        for marker, reason in missing.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def no_router_left_running():
    """Stop every ``dicom-router serve`` a test started and left running (it failed half-way)."""
    from tests.support.cli import ServeProcess

    yield
    while ServeProcess.started:
        ServeProcess.started.pop().stop()


@pytest.fixture
def write_config(tmp_path):
    """Write a router.toml into tmp_path from TOML text; returns its path."""

    def write(text: str, name: str = "router.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def start_router():
    """Start a RouterService in this process from a config file; stopped at teardown."""
    services = []

    def start(config_path: Path) -> RouterService:
        service = RouterService(load_config(config_path))
        service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


@pytest.fixture(scope="session")
def ct_files(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("ct"), 12, "ct", patient="CT1")


@pytest.fixture(scope="session")
def small_files(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("small"), 120, "small", patient="SM1")


@pytest.fixture
def port():
    return free_port()


def dimse_backend_toml(port: int, ae_title: str = "PACS", name: str = "pacs", extra: str = "") -> str:
    """A ``dimse`` backend table for a peer on 127.0.0.1 (``extra``: more of its keys, as TOML lines)."""
    return f'''
[backends.{name}]
type = "dimse"
host = "127.0.0.1"
port = {port}
ae_title = "{ae_title}"
{extra}
'''


QUERY_AND_GET = 'store = false\nquery = true\nretrieve = "get"'
"""A ``dimse`` backend's keys for an upstream that is only searched and fetched from (C-GET)."""


def web_gateway_toml(data_dir: Path, web_port: int, upstream_port: int, upstream_ae: str) -> str:
    """A router with a ``dicomweb`` endpoint ``web`` whose pipeline finds and fetches (C-FIND,
    C-GET) from a DIMSE upstream ``pacs``, and stores nothing there."""
    return (
        router_section(data_dir)
        + f'\n[endpoints.web]\ntype = "dicomweb"\nbind = "127.0.0.1"\nport = {web_port}\n'
        + dimse_backend_toml(upstream_port, upstream_ae, "pacs", QUERY_AND_GET)
        + '\n[pipelines.web]\nendpoints = ["web"]\nbackends = ["pacs"]\n'
    )


def router_section(data_dir: Path, extra: str = "") -> str:
    """The ``[router]`` table every test configuration starts with (JSON logs, no free-space floor)."""
    return f'\n[router]\ndata_dir = "{data_dir}"\nmin_free_space_mb = 0\nlog_format = "json"\n{extra}\n'


def endpoint_section(name: str, port: int, extra: str = "") -> str:
    """A ``dimse`` endpoint on 127.0.0.1."""
    return f'\n[endpoints.{name}]\ntype = "dimse"\nbind = "127.0.0.1"\nport = {port}\n{extra}\n'


def router_toml(
    data_dir: Path,
    port: int,
    backends: str,
    pipeline_backends: list[str],
    extra: str = "",
    endpoint_extra: str = "",
    fast_retry: bool = True,
) -> str:
    """A config text with one endpoint on ``port`` and the given backend tables."""
    retry = ""
    if fast_retry:
        retry = "initial_delay_seconds = 0.2\nmax_delay_seconds = 1.0\n"
    text = (
        router_section(data_dir)
        + endpoint_section("ingest", port, endpoint_extra)
        + f"""
{backends}

[pipelines.default]
endpoints = ["ingest"]
backends = {pipeline_backends!r}
{extra}
"""
    )
    if retry:
        for name in pipeline_backends:
            text += f"\n[backends.{name}.retry]\n{retry}"
    return text.replace("'", '"')
