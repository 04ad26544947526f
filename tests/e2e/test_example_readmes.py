"""Every command an example's README tells the operator to run works, in the order given.

Each example is copied as a fresh clone has it, its ports moved to free ones (the only change
to its files), a pynetdicom peer started for every backend it names, and its README's shell
block run line by line: ``dicom-router serve`` in the background until the block ends, the
DCMTK tools against it. The Docker and systemd examples need a Docker engine or root and
are left to their own checks.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.test_cli import _copy_example
from tests.support.cli import ServeProcess, run_cli
from tests.support.dicomgen import write_series
from tests.support.peers import StorageSCP, dcmtk, dcmtk_env, free_port, have_dcmtk
from tests.support.qrpeer import ScriptedPACS
from tests.support.stowpeer import ScriptedStowServer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RUNNABLE = sorted(
    p.parent for p in (ROOT / "examples").glob("*/README.md") if p.parent.name not in ("docker", "systemd")
)
DCMTK_TOOLS = ("findscu", "echoscu", "storescu", "movescu", "getscu")
PORT_LINE = re.compile(r"^(port\s*=\s*)(\d+)", re.MULTILINE)
URL_PORT = re.compile(r'(url\s*=\s*"http://127\.0\.0\.1:)(\d+)')


def readme_commands(example: Path) -> list[str]:
    """The lines of the README's ``sh`` blocks, comments cut off."""
    blocks = re.findall(r"```sh\n(.*?)```", (example / "README.md").read_text(), re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def move_ports(config: Path) -> dict[int, int]:
    """Give every ``port = N`` of the file a free port instead; the old -> new map."""
    text = config.read_text()
    moved = {int(m.group(2)): free_port() for pattern in (PORT_LINE, URL_PORT) for m in pattern.finditer(text)}
    for pattern in (PORT_LINE, URL_PORT):
        text = pattern.sub(lambda m: f"{m.group(1)}{moved[int(m.group(2))]}", text)
    config.write_text(text)
    return moved


def start_backend_peers(config: Path, stack: ExitStack, site: Path) -> None:
    """A peer for every backend: a Q/R SCP holding one study of patient P001 where a ``dimse``
    backend answers queries, a storage SCP for the other ``dimse`` ones, a STOW-RS server for
    a ``dicomweb`` one."""
    study = write_series(site / "pacs-holds", 1, patient="P001")
    for name, backend in tomllib.loads(config.read_text()).get("backends", {}).items():
        if backend.get("type") == "dicomweb":
            stack.enter_context(
                ScriptedStowServer(lambda uids: (200, {}), port=int(backend["url"].split(":")[2].split("/")[0]))
            )
            continue
        if backend.get("type") != "dimse":
            continue
        if backend.get("query") or backend.get("worklist"):
            peer = ScriptedPACS(study, ae_title=backend["ae_title"])
            peer.port = backend["port"]
            stack.enter_context(peer)
        else:
            stack.enter_context(
                StorageSCP(site / "received" / name, ae_title=backend["ae_title"], port=backend["port"])
            )


def first_endpoint_port(config: Path) -> int:
    endpoints = tomllib.loads(config.read_text())["endpoints"]
    return next(iter(endpoints.values()))["port"]


def run_dcmtk_line(words: list[str], moved: dict[int, int], site: Path) -> subprocess.CompletedProcess:
    """A DCMTK tool from the README, aimed at the copy: host ``ROUTER`` is this machine and the
    example's ports are the moved ones."""
    words = ["127.0.0.1" if w == "ROUTER" else str(moved.get(int(w), w)) if w.isdigit() else w for w in words]
    return subprocess.run(
        [dcmtk(words[0]), *words[1:]], cwd=site, capture_output=True, text=True, timeout=60, env=dcmtk_env()
    )


def run_curl_line(words: list[str], moved: dict[int, int], site: Path, token: str) -> subprocess.CompletedProcess:
    """curl from the README: ``$TOKEN`` is the token ``dicom-router token`` printed last, the
    example's ports are the moved ones."""

    def aimed(word: str) -> str:
        word = word.replace("$TOKEN", token)
        return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{moved.get(int(m.group(1)), m.group(1))}", word)

    return subprocess.run(
        [w if i == 0 else aimed(w) for i, w in enumerate(words)], cwd=site, capture_output=True, text=True, timeout=60
    )


def test_every_runnable_example_has_commands():
    assert {p.name for p in RUNNABLE} >= {
        "forward",
        "fan-out",
        "filter-by-modality",
        "route-by-rules",
        "anonymize-to-research",
        "query-proxy",
        "dicomweb-to-cloud",
        "web-gateway",
    }
    for example in RUNNABLE:
        assert any(line.startswith("dicom-router serve") for line in readme_commands(example)), example.name


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK")
@pytest.mark.parametrize("example", RUNNABLE, ids=lambda p: p.name)
def test_the_readme_commands_of_each_example_run(example, tmp_path):
    site = tmp_path / example.name
    _copy_example(example, site)
    config = site / "router.toml"
    moved = move_ports(config)
    write_series(site / "sample", 1, patient="P001")
    (site / "some.dcm").write_bytes(next((site / "sample").glob("*.dcm")).read_bytes())
    with ExitStack() as stack:
        start_backend_peers(config, stack, site)
        serving: ServeProcess | None = None
        token = ""
        for line in readme_commands(example):
            words = shlex.split(line)
            if words[0] == "dicom-router" and words[1] == "serve":
                serving = ServeProcess(site / words[-1], tmp_path / "serve.log", cwd=site)
                stack.callback(serving.stop)  # also when a later line fails
                serving.start(first_endpoint_port(config))
                continue
            if words[0] == "dicom-router":
                result = run_cli(*words[1:], cwd=site)
                if words[1] == "token":
                    token = result.stdout.strip()
            elif words[0] == "curl":
                result = run_curl_line(words, moved, site, token)
            elif words[0] in DCMTK_TOOLS:
                result = run_dcmtk_line(words, moved, site)
            else:
                pytest.fail(f"{example.name}/README.md: no way to run {line!r}")
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            if words[0] == "findscu":
                assert "Find Response: 1 (Pending)" in result.stderr, result.stderr
        assert serving is not None
        assert serving.stop() == 0, serving.log_text()[-3000:]
